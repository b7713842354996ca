"""Local checkpoints are converted layer by layer from their safetensors files, never through a whole
Hugging Face model, and give exactly the HookedTransformer the whole-model conversion gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mech.models.load as load
from mech.models import safetensors_loading
from mech.models.load import LoadingFlags, _load_local, load_model
from mech.models.tiny_checkpoints import write_tiny_checkpoint

# (architecture, tied embeddings, sharded files, dtype): every architecture in both dtypes, tied
# and untied embeddings, one file and several with an index.
CASES = [
    ("qwen2", False, False, torch.float32),
    ("qwen2", True, True, torch.bfloat16),
    ("gemma2", True, False, torch.bfloat16),
    ("gemma2", False, True, torch.float32),
    ("llama", False, True, torch.bfloat16),
    ("llama", True, False, torch.float32),
    ("mistral", False, False, torch.bfloat16),
    ("mistral", False, True, torch.float32),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    written: dict[tuple[str, bool, bool], Path] = {}

    def get(arch: str, tied: bool, sharded: bool) -> Path:
        if (arch, tied, sharded) not in written:
            path = tmp_path_factory.mktemp(f"{arch}-{'tied' if tied else 'untied'}")
            written[arch, tied, sharded] = write_tiny_checkpoint(
                arch, path, n_layers=3, tie_embeddings=tied, max_shard_size="20KB" if sharded else None
            )
        return written[arch, tied, sharded]

    return get


def _whole_hf_model(path: Path, dtype: torch.dtype):
    """The conversion through the whole Hugging Face model, as before."""
    return _load_local(path, None, LoadingFlags(), "cpu", dtype, None, via_hf_model=True)


@pytest.mark.parametrize(("arch", "tied", "sharded", "dtype"), CASES)
def test_layer_by_layer_gives_exactly_the_whole_model_conversion(arch, tied, sharded, dtype, checkpoint):
    path = checkpoint(arch, tied, sharded)
    assert (path / "model.safetensors.index.json").is_file() == sharded
    assert (len(list(path.glob("*.safetensors"))) > 1) == sharded
    assert ("lm_head.weight" in _file_tensors(path)) != tied
    ours = load_model(path, dtype=dtype, device="cpu")
    theirs = _whole_hf_model(path, dtype)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd.keys() == theirs_sd.keys()
    for key, value in theirs_sd.items():
        assert ours_sd[key].dtype == value.dtype and torch.equal(ours_sd[key], value), key
    assert {p.device.type for p in ours.parameters()} == {"cpu"}
    assert ours.cfg == theirs.cfg
    if tied:  # the unembedding is the embedding the file holds once
        embedding = _file_tensors(path)["model.embed_tokens.weight"].to(dtype)
        assert torch.equal(ours.W_U.T, embedding)


def _file_tensors(path: Path) -> dict[str, torch.Tensor]:
    return {key: t for file in path.glob("*.safetensors") for key, t in load_file(file).items()}


def test_the_hf_model_is_never_materialized_whole(checkpoint, monkeypatch):
    """At most one layer's (or one outside parameter's) HF tensors are real at any time."""
    path = checkpoint("qwen2", False, True)

    def refuse(*args, **kwargs):
        raise AssertionError("the whole HF model was loaded")

    monkeypatch.setattr(load.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(load.tl_loading, "get_pretrained_state_dict", refuse)
    converter = safetensors_loading.TL_CONVERTERS["Qwen2ForCausalLM"]
    real_per_call: list[set[str]] = []

    def spy(hf_model, cfg):
        real_per_call.append({n for n, p in hf_model.named_parameters() if not p.is_meta})
        return converter(hf_model, cfg)

    monkeypatch.setitem(safetensors_loading.TL_CONVERTERS, "Qwen2ForCausalLM", spy)
    model = load_model(path)
    names = set(_file_tensors(path))
    layers = [{n for n in names if n.startswith(f"model.layers.{layer}.")} for layer in range(3)]
    assert all(len(layer) == 12 for layer in layers)  # q, k, v (weights and biases), o, 3 MLP, 2 norms
    outside = [{"model.embed_tokens.weight"}, {"model.norm.weight"}, {"lm_head.weight"}]
    assert sorted(map(sorted, real_per_call)) == sorted(map(sorted, [*outside, *layers]))
    assert model.cfg.n_layers == 3


@pytest.mark.parametrize(
    "flags, adapter", [(LoadingFlags(fold_ln=True), False), (LoadingFlags(), True)], ids=["flags", "adapter"]
)
def test_adapters_and_processing_go_through_the_whole_hf_model(
    flags, adapter, checkpoint, tmp_path, monkeypatch
):
    from mech.models.tiny_checkpoints import write_tiny_lora_adapter

    path = checkpoint("qwen2", False, False)
    adapter_dir = write_tiny_lora_adapter(path, tmp_path / "adapter") if adapter else None
    monkeypatch.setattr(safetensors_loading, "load_weights_by_group", None)  # would fail if called
    monkeypatch.setattr(load, "load_weights_by_group", None)
    model = load_model(path, flags=flags, adapter=adapter_dir)
    assert model.cfg.n_layers == 3


def _rewrite_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_a_tensor_missing_from_the_files_is_named(checkpoint, tmp_path):
    import shutil

    path = shutil.copytree(checkpoint("qwen2", False, False), tmp_path / "no-lm-head")
    _rewrite_weights(path, lambda tensors: tensors.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"no-lm-head: no tensor lm_head\.weight in the checkpoint"):
        load_model(path)


def test_a_tensor_of_the_wrong_shape_is_named(checkpoint, tmp_path):
    import shutil

    path = shutil.copytree(checkpoint("llama", False, False), tmp_path / "narrow")

    def narrow(tensors):
        tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:-1]

    _rewrite_weights(path, narrow)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight has shape \[63, 32\], but "
                       r"the model's config gives .* shape \[64, 32\]"):  # fmt: skip
        load_model(path)


def _converter_without(monkeypatch, drop):
    converter = safetensors_loading.TL_CONVERTERS["MistralForCausalLM"]

    def edited(hf_model, cfg):
        state_dict = converter(hf_model, cfg)
        drop(state_dict)
        return state_dict

    monkeypatch.setitem(safetensors_loading.TL_CONVERTERS, "MistralForCausalLM", edited)


def test_a_bias_the_converter_does_not_give_is_zero(checkpoint, monkeypatch):
    _converter_without(monkeypatch, lambda sd: sd.pop("blocks.2.mlp.b_out"))
    model = load_model(checkpoint("mistral", False, False))
    assert torch.equal(model.blocks[2].mlp.b_out, torch.zeros_like(model.blocks[2].mlp.b_out))


def test_a_matrix_the_converter_does_not_give_is_an_error(checkpoint, monkeypatch):
    _converter_without(monkeypatch, lambda sd: sd.pop("blocks.0.mlp.W_gate"))
    with pytest.raises(
        ValueError, match=r"the MistralForCausalLM conversion gives no blocks\.0\.mlp\.W_gate"
    ):
        load_model(checkpoint("mistral", False, False))


@pytest.mark.parametrize("combine", ["real_plus_meta", "meta_plus_meta"])
def test_an_entry_needing_two_layers_at_once_is_an_error(combine, checkpoint, monkeypatch):
    def mix(sd):  # real only when layers 0 and 1 are both real: never, layer by layer
        a, b = sd["blocks.0.attn.W_O"], sd["blocks.1.attn.W_O"]
        if combine == "real_plus_meta":  # mixing a real and a meta tensor fails in the converter
            sd["blocks.0.attn.W_O"] = a + b
        else:  # an entry that is meta in every group is never written
            sd["blocks.0.attn.W_O"] = a.to("meta") + b.to("meta")

    _converter_without(monkeypatch, mix)
    expected = (
        "conversion fails with only layer 0 loaded"
        if combine == "real_plus_meta"
        else "depends on weights of more than one"
    )
    with pytest.raises(ValueError, match=rf"{expected}.*this checkpoint cannot be converted layer by layer"):
        load_model(checkpoint("mistral", False, False))


def test_the_index_file_decides_where_each_tensor_is(checkpoint):
    path = checkpoint("gemma2", False, True)
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    files = safetensors_loading.WeightFiles.of(path)
    assert {name: file.name for name, file in files.file_of.items()} == index
