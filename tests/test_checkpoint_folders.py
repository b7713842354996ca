"""A local checkpoint loads whatever its folder is called: the config comes from `config.json`.

TransformerLens picks config branches by substrings of the path ("llama", "gemma-2-",
"Llama-3.1-8B" with hard-coded 8B dimensions), so the same files used to load or fail depending on
the folder's name. Each architecture is loaded from folders named after its family's official
checkpoints and from misleading names, and must give the HF model's log-probs every time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hf_reference import hf_logprobs

from mech.models.chat import prompt_batch
from mech.models.load import load_model
from mech.models.tiny_checkpoints import write_tiny_checkpoint

# Folder names as users keep them: the family's official names, and names of another family.
FOLDERS = {
    "qwen2": ["Qwen2.5-14B-Instruct", "gemma-2-9b-it"],
    "gemma2": ["gemma-2-9b-it", "Meta-Llama-3.1-8B-Instruct"],
    "llama": ["Meta-Llama-3.1-8B-Instruct", "tiny-llama", "Llama-3.1-8B"],
    "mistral": ["Mistral-7B-Instruct-v0.3", "mistral-tiny-llama"],
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {arch: write_tiny_checkpoint(arch, root / f"src-{arch}", n_layers=2) for arch in FOLDERS}


@pytest.mark.parametrize(
    ("arch", "folder"), [(arch, folder) for arch, folders in FOLDERS.items() for folder in folders]
)
def test_checkpoint_loads_under_any_folder_name(arch, folder, sources, tmp_path):
    path = tmp_path / folder
    shutil.copytree(sources[arch], path)
    model = load_model(path)
    hf_config = json.loads((path / "config.json").read_text())
    assert model.cfg.n_layers == hf_config["num_hidden_layers"]  # not an official model's depth
    assert model.cfg.d_model == hf_config["hidden_size"]
    assert model.cfg.original_architecture == hf_config["architectures"][0]
    # Longer than the sliding windows (6) and the Llama RoPE scaling's pre-training length band.
    tokens = torch.randint(8, model.cfg.d_vocab, (2, 24))
    ours = model(tokens).log_softmax(-1)
    theirs = hf_logprobs(path, tokens)
    assert (ours - theirs).abs().max() < 1e-4
    assert theirs.std() > 0.1  # a non-trivial distribution, so the comparison means something


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_chat_prompts_with_left_padding_match_hf(arch, sources):
    model = load_model(sources[arch])
    prompts = [
        [{"role": "user", "content": "what should i do about my dog"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
    ]
    batch = prompt_batch(model.tokenizer, prompts)
    ours = model(batch.tokens, attention_mask=batch.attention_mask).log_softmax(-1)
    theirs = hf_logprobs(sources[arch], batch.tokens, batch.attention_mask)
    real = batch.attention_mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def test_unsupported_architecture_names_what_is_supported(sources, tmp_path):
    path = tmp_path / "Qwen2.5-14B-Instruct"  # the name of a supported model does not help
    shutil.copytree(sources["qwen2"], path)
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Qwen2\.5-14B-Instruct: config.json declares architecture "
                       r"'GPTNeoXForCausalLM'.*supported architectures: Qwen2ForCausalLM"):  # fmt: skip
        load_model(path)


def test_architecture_from_model_type_when_architectures_is_missing(sources, tmp_path):
    path = tmp_path / "no-architectures"
    shutil.copytree(sources["llama"], path)
    config = json.loads((path / "config.json").read_text())
    del config["architectures"]
    (path / "config.json").write_text(json.dumps(config))
    assert load_model(path).cfg.original_architecture == "LlamaForCausalLM"
