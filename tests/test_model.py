from __future__ import annotations

import pytest
import torch
from hf_reference import hf_logprobs
from transformers import AutoModelForCausalLM

from mech.models.chat import prompt_batch
from mech.models.load import LoadingFlags, load_model, model_info
from mech.models.tiny_checkpoints import write_tiny_checkpoint, write_tiny_lora_adapter


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_local_checkpoint_matches_hf(arch, checkpoints, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    tokens = torch.randint(4, model.cfg.d_vocab, (2, 24))  # longer than Gemma's sliding window
    ours = model(tokens).log_softmax(-1)
    theirs = hf_logprobs(checkpoints[arch], tokens)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-4
    assert theirs.std() > 0.1  # non-trivial distribution, so the comparison means something


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_chat_prompts_match_hf_with_left_padding(arch, checkpoints, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    prompts = [[{"role": "user", "content": "what should i do about my dog"}],
               [{"role": "user", "content": "hello"}]]  # fmt: skip
    batch = prompt_batch(model.tokenizer, prompts)
    ours = model(batch.tokens, attention_mask=batch.attention_mask).log_softmax(-1)
    theirs = hf_logprobs(checkpoints[arch], batch.tokens, batch.attention_mask)
    real = batch.attention_mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def test_model_info_records_source_and_flags(tiny_qwen2, checkpoints):
    info = model_info(tiny_qwen2)
    assert info.name == str(checkpoints["qwen2"].resolve())
    assert info.flags == LoadingFlags()
    assert info.adapter is None


def test_residuals_are_hf_hidden_states(tiny_qwen2, checkpoints):
    """No processing by default: TL residuals are the HF model's hidden states."""
    tokens = torch.randint(4, tiny_qwen2.cfg.d_vocab, (1, 12))
    _, cache = tiny_qwen2.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
    hf = AutoModelForCausalLM.from_pretrained(checkpoints["qwen2"], attn_implementation="eager")
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    for layer in range(tiny_qwen2.cfg.n_layers):
        assert torch.allclose(cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer], atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_peft_adapter_matches_peft_model(arch, checkpoints, tmp_path):
    adapter = write_tiny_lora_adapter(checkpoints[arch], tmp_path / "adapter")
    model = load_model(checkpoints[arch], adapter=adapter)
    tokens = torch.randint(4, model.cfg.d_vocab, (2, 16))
    ours = model(tokens).log_softmax(-1)
    with_adapter = hf_logprobs(checkpoints[arch], tokens, adapter=adapter)
    without = hf_logprobs(checkpoints[arch], tokens)
    assert (ours - with_adapter).abs().max() < 1e-4
    assert (with_adapter - without).abs().max() > 1e-2  # the adapter really changes the model
    assert model_info(model).adapter == str(adapter.resolve())


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"unknown model 'Qwen/Qwen2.5-14B-Instrct'.*Did you mean Qwen/Qwen2.5-14B-Instruct"
    ):
        load_model("Qwen/Qwen2.5-14B-Instrct")


def test_official_name_not_in_cache_is_a_clear_error():
    # Assumes this small model is not in the machine's HF cache (true on CI's fresh machines).
    with pytest.raises(ValueError, match="could not be loaded from the local Hugging Face cache"):
        load_model("Qwen/Qwen2.5-0.5B-Instruct")


def test_bad_paths_are_clear_errors(tmp_path, checkpoints):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="checkpoint directory, not a file"):
        load_model(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path / "empty")
    adapter = write_tiny_lora_adapter(checkpoints["qwen2"], tmp_path / "adapter")
    with pytest.raises(ValueError, match="is a PEFT adapter, not a model"):
        load_model(adapter)
    with pytest.raises(ValueError, match="no such directory"):
        load_model(checkpoints["qwen2"], adapter=tmp_path / "missing")


def test_adapter_for_a_different_base_is_refused(tmp_path, checkpoints):
    three_layer_adapter = write_tiny_lora_adapter(checkpoints["qwen2"], tmp_path / "adapter")
    shallow = write_tiny_checkpoint("qwen2", tmp_path / "shallow", n_layers=2)
    with pytest.raises(
        ValueError, match=r"targets module 'model\.layers\.2\..*' which model .* does not have \(2 layers\)"
    ):
        load_model(shallow, adapter=three_layer_adapter)
    wide = write_tiny_checkpoint("qwen2", tmp_path / "wide", n_layers=3, d_model=48)
    wide_adapter = write_tiny_lora_adapter(wide, tmp_path / "wide_adapter")
    with pytest.raises(
        ValueError,
        match=r"does not fit model .*lora_A.* has shape \[4, 96\], but .*down_proj has width 64 \(adapter: 96\)",
    ):
        load_model(checkpoints["qwen2"], adapter=wide_adapter)


def test_pickled_adapters_are_refused(tmp_path, checkpoints):
    adapter = write_tiny_lora_adapter(checkpoints["qwen2"], tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickled .bin adapters are refused"):
        load_model(checkpoints["qwen2"], adapter=adapter)


def test_processing_flags_are_recorded(checkpoints):
    flags = LoadingFlags(fold_ln=True)
    model = load_model(checkpoints["qwen2"], flags=flags)
    assert model_info(model).flags == flags
    assert model.cfg.normalization_type == "RMSPre"
