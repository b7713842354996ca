from __future__ import annotations

import json

import pytest
import torch

from mech.adapters.artifacts import (
    ArtifactMeta,
    artifact_meta,
    load_artifact,
    load_vector,
    save_artifact,
    save_vector,
)
from mech.hooks import steering_hooks
from mech.models.load import LoadingFlags, ModelInfo


def test_vector_round_trip(tiny_qwen2, tmp_path):
    vector = torch.randn(tiny_qwen2.cfg.d_model)
    path = save_vector(tmp_path / "general", vector, tiny_qwen2, hook_name="blocks.1.hook_resid_post",
                       config={"lr": 1e-4, "alpha": 256, "kl_weight": 0.0})  # fmt: skip
    assert path.name == "general.safetensors"
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    loaded, meta = load_vector(tmp_path / "general.safetensors", model=tiny_qwen2)
    assert torch.equal(loaded, vector)
    assert meta.hook_name == "blocks.1.hook_resid_post" and meta.layer == 1
    assert meta.d_model == tiny_qwen2.cfg.d_model and meta.n_layers == 3
    assert meta.flags == LoadingFlags()
    assert meta.config["alpha"] == 256
    assert meta.norms["vector"] == pytest.approx(float(vector.norm()))
    sidecar = json.loads((tmp_path / "general.json").read_text())
    assert sidecar["model"].endswith("Qwen2.5-tiny-Instruct") and sidecar["flags"]["fold_ln"] is False
    steering_hooks(tiny_qwen2, loaded, layer=meta.layer)  # usable as is


def test_adapter_tensors_round_trip(tiny_model, tmp_path):
    tensors = {"A": torch.randn(4, 64), "B": torch.randn(32, 4)}
    meta = artifact_meta(tiny_model, kind="lora", hook_name="blocks.1.hook_mlp_out", config={"rank": 4})
    save_artifact(tmp_path / "lora", tensors, meta)
    loaded, loaded_meta = load_artifact(tmp_path / "lora", model=tiny_model)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert loaded_meta.kind == "lora" and loaded_meta.config == {"rank": 4}


def test_vector_under_other_flags_is_refused(tiny_model, tmp_path):
    save_vector(tmp_path / "v", torch.randn(32), tiny_model, hook_name="blocks.1.hook_resid_post")
    tiny_model._misalign_lens_info = ModelInfo(
        name=tiny_model.cfg.model_name, flags=LoadingFlags(fold_ln=True)
    )
    try:
        with pytest.raises(
            ValueError, match=r"made under loading flags .*'fold_ln': False.* loaded with .*'fold_ln': True"
        ):
            load_vector(tmp_path / "v", model=tiny_model)
    finally:
        del tiny_model._misalign_lens_info


def test_vector_for_another_model_is_refused(tiny_model, tiny_qwen2, tmp_path):
    save_vector(tmp_path / "v", torch.randn(32), tiny_model, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match=r"made on model .*, not .*allow_other_model=True"):
        load_vector(tmp_path / "v", model=tiny_qwen2)
    loaded, _ = load_vector(tmp_path / "v", model=tiny_qwen2, allow_other_model=True)
    assert loaded.shape == (32,)


def test_wrong_width_and_layer_are_refused(tiny_model, tiny_gemma2, tmp_path):
    meta = artifact_meta(tiny_gemma2, kind="steering_vector", hook_name="blocks.2.hook_resid_post")
    save_artifact(tmp_path / "deep", {"vector": torch.randn(32)}, meta)
    with pytest.raises(
        ValueError, match=r"sits at layer 2 \(blocks\.2\.hook_resid_post\) but model .* has only 2 layers"
    ):
        load_vector(tmp_path / "deep", model=tiny_model, allow_other_model=True)
    wide = ArtifactMeta(**{**meta.to_dict(), "flags": meta.flags, "d_model": 48, "layer": 0})
    save_artifact(tmp_path / "wide", {"vector": torch.randn(48)}, wide)
    with pytest.raises(ValueError, match="has width 48 but model .* has d_model 32"):
        load_vector(tmp_path / "wide", model=tiny_model, allow_other_model=True)
    with pytest.raises(ValueError, match=r"steering_vector has shape \(48,\); model d_model is 32"):
        save_vector(tmp_path / "bad", torch.randn(48), tiny_model, hook_name="blocks.0.hook_resid_post")


def test_bad_files_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors: no such file"):
        load_vector(tmp_path / "missing")
    save_vector(tmp_path / "v", torch.randn(32), tiny_model, hook_name="blocks.1.hook_resid_post")
    (tmp_path / "v.json").write_text('{"kind": "steering_vector",\n "model": }')
    with pytest.raises(ValueError, match=r"v\.json: invalid JSON at line 2"):
        load_vector(tmp_path / "v")
    (tmp_path / "v.json").write_text('{"kind": "steering_vector"}')
    with pytest.raises(ValueError, match=r"v\.json: missing field\(s\) \['d_model'"):
        load_vector(tmp_path / "v")


def test_non_finite_tensors_are_not_saved_and_nothing_is_overwritten(tiny_model, tmp_path):
    good = torch.randn(32)
    save_vector(tmp_path / "v", good, tiny_model, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="contains NaN or inf"):
        save_vector(
            tmp_path / "v", torch.full((32,), float("nan")), tiny_model, hook_name="blocks.1.hook_resid_post"
        )
    assert torch.equal(load_vector(tmp_path / "v")[0], good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.safetensors"]
