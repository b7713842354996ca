"""A model's blocks split over several GPUs, where TransformerLens's forward pass expects them.

TransformerLens 3.9 sends the residual entering block i to GPU `base + i * n_devices // n_layers`
(`get_device_for_block_index`), but its loader puts each module on whichever GPU has the most free
memory at the time, so the two can disagree. Here the modules are placed by the forward pass's
own rule: the embedding with block 0, block i on its GPU, the final norm and unembedding with the
last block. Adapters, cached residuals and hooks then follow the device of the block they sit in
(`block_device`).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer


def block_devices(n_layers: int, devices: list[torch.device]) -> list[torch.device]:
    """The device of each block: block i on `devices[i * len(devices) // n_layers]` (the rule of
    TransformerLens's forward pass for consecutive GPUs)."""
    if not devices:
        raise ValueError("no devices to place the model on")
    if len(devices) > n_layers:
        raise ValueError(f"{len(devices)} devices for {n_layers} blocks: at most one device per block")
    return [devices[(i * len(devices)) // n_layers] for i in range(n_layers)]


def placement_plan(model: HookedTransformer, devices: list[torch.device]) -> dict[str, torch.device]:
    """Top-level module name -> device (`embed`, `blocks.i`, `ln_final`, `unembed`, ...)."""
    per_block = block_devices(model.cfg.n_layers, devices)
    plan: dict[str, torch.device] = {}
    for name, _ in model.named_children():
        if name == "blocks":
            plan.update({f"blocks.{i}": d for i, d in enumerate(per_block)})
        elif name in ("ln_final", "unembed"):
            plan[name] = per_block[-1]
        else:  # the embeddings and their hook points enter block 0
            plan[name] = per_block[0]
    return plan


def apply_plan(model: HookedTransformer, plan: dict[str, torch.device]) -> HookedTransformer:
    """Move each module of `plan` to its device (in place)."""
    for name, device in plan.items():
        model.get_submodule(name).to(device)
    return model


def cuda_devices(n_devices: int, device: str | torch.device | None) -> list[torch.device]:
    """`n_devices` consecutive CUDA devices from `device` (default cuda:0), checked against what
    this machine has."""
    base = torch.device(device or "cuda")
    if base.type != "cuda":
        raise ValueError(f"n_devices={n_devices} splits a model over GPUs; device {str(base)!r} is not CUDA")
    first = base.index or 0
    available = torch.cuda.device_count()
    if first + n_devices > available:
        raise ValueError(
            f"n_devices={n_devices} from cuda:{first} needs GPUs cuda:{first}..cuda:{first + n_devices - 1}; "
            f"this machine has {available}"
        )
    return [torch.device("cuda", first + i) for i in range(n_devices)]


def split_over(model: HookedTransformer, devices: list[torch.device]) -> HookedTransformer:
    """Place `model`'s blocks on `devices` by the forward pass's rule and record it in the config
    (`cfg.device` is the first, `cfg.n_devices` their number)."""
    devices = [torch.device(d) for d in devices]
    if len(devices) > 1 and any(
        d.type != "cuda" or d.index != devices[0].index + i for i, d in enumerate(devices)
    ):
        raise ValueError(
            f"devices {[str(d) for d in devices]}: TransformerLens routes blocks over consecutive GPUs"
        )
    apply_plan(model, placement_plan(model, devices))
    model.cfg.device, model.cfg.n_devices = str(devices[0]), len(devices)
    return model


def block_device(model: HookedTransformer, layer: int) -> torch.device:
    """Where block `layer` computes (`layer == n_layers`: the final norm and unembedding)."""
    module = model.unembed if layer >= model.cfg.n_layers else model.blocks[layer]
    return next(module.parameters()).device
