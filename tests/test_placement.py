"""Blocks split over several devices where TransformerLens's forward pass sends them, and the
adapters and cached residuals that follow them. No machine here has two GPUs: the plan is checked
against TransformerLens's own routing on fake device lists, and applied with "cpu" and "meta"."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_shape import TINY
from transformer_lens.utilities.multi_gpu import get_device_for_block_index

from benchmarks.memory import shapes
from mech.adapters.base import AdapterSite, AdapterStack
from mech.adapters.lora import LoraAdapter
from mech.adapters.steering import SteeringVector
from mech.models.load import load_model
from mech.models.placement import apply_plan, block_devices, placement_plan, split_over
from mech.training.cached_set import CachedChatSet

CPU, META = torch.device("cpu"), torch.device("meta")


@pytest.mark.parametrize(("n_layers", "n_devices"), [(4, 2), (48, 2), (48, 3), (62, 8), (80, 5), (7, 7)])
def test_blocks_go_where_the_forward_pass_sends_them(n_layers, n_devices):
    gpus = [torch.device("cuda", i) for i in range(n_devices)]
    cfg = SimpleNamespace(device="cuda:0", n_layers=n_layers, n_devices=n_devices)
    routed = [get_device_for_block_index(i, cfg) for i in range(n_layers)]
    assert block_devices(n_layers, gpus) == routed
    assert sorted({d.index for d in routed}) == list(range(n_devices))  # every GPU gets blocks


def test_more_devices_than_blocks_is_refused():
    with pytest.raises(ValueError, match="5 devices for 4 blocks"):
        block_devices(4, [torch.device("cuda", i) for i in range(5)])


@pytest.fixture
def split():
    """A fresh 4-block Qwen2 with blocks 2-3, the final norm and the unembedding on "meta"."""
    model = shapes.qwen2_model(TINY, dtype=torch.float32, device="cpu")
    plan = placement_plan(model, [CPU, META])
    return apply_plan(model, plan), plan


def test_the_plan_moves_embedding_blocks_and_unembedding(split):
    model, plan = split
    assert plan["embed"] == CPU and plan["blocks.1"] == CPU and plan["blocks.2"] == META
    assert plan["ln_final"] == META and plan["unembed"] == META
    assert {p.device for p in model.blocks[1].parameters()} == {CPU}
    assert {p.device for p in model.blocks[2].parameters()} == {META}
    assert model.unembed.W_U.device == META and model.embed.W_E.device == CPU


def test_adapters_follow_the_blocks_they_act_in(split):
    model, _ = split
    lora = LoraAdapter(model, layers=[1, 3], matrices=["W_out", "W_Q"], rank=2).place(model)
    for name, p in [*lora.A.items(), *lora.B.items()]:
        assert p.device == (CPU if name.startswith("1") else META), name
    vectors = AdapterStack([SteeringVector(model.cfg.d_model, layer=n) for n in (0, 3)]).place(model)
    assert [v.raw.device for v in vectors.adapters] == [CPU, META]


def test_a_cached_residual_goes_to_the_device_of_its_first_block(split):
    model, _ = split
    resid = torch.zeros(1, 3, model.cfg.d_model)
    for start, device in ((1, CPU), (3, META)):
        cached = CachedChatSet([], [resid], AdapterSite(f"blocks.{start}.hook_resid_pre", start), "s", "f")
        assert cached.residual(model, 0).device == device


def test_split_over_needs_consecutive_gpus():
    model = shapes.qwen2_model(TINY, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="consecutive GPUs"):
        split_over(model, [torch.device("cuda", 0), torch.device("cuda", 2)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_devices": 0}, "n_devices must be >= 1"), ({"n_devices": 2, "device": "cpu"}, "is not CUDA"),
     ({"n_devices": 2, "device": "cuda"}, "this machine has")],
)  # fmt: skip
def test_load_model_names_what_is_wrong_with_n_devices(kwargs, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the same answer on a multi-GPU machine
    with pytest.raises(ValueError, match=message):
        load_model("toy", **kwargs)
