"""Saving and loading trained adapters as artifacts (safetensors + JSON sidecar, `mech.adapters.artifacts`).

The sidecar's `config["adapter"]` is the adapter's `spec()`, from which it is rebuilt; loading
checks the model (width, layers, loading flags, name) before any tensor is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformer_lens import HookedTransformer

from mech.adapters.artifacts import ArtifactMeta, artifact_meta, load_artifact, save_artifact
from mech.adapters.base import Adapter, AdapterStack
from mech.adapters.lora import LoraAdapter
from mech.adapters.steering import SteeringVector
from mech.models.load import model_info


def adapter_from_spec(spec: Mapping[str, Any], model: HookedTransformer) -> Adapter:
    """A freshly initialised adapter of the kind and shape `spec` describes, for `model`."""
    kind = spec.get("kind")
    if kind == SteeringVector.kind:
        return SteeringVector(
            int(spec["d_model"]), layer=int(spec["layer"]), point=spec["point"], alpha=float(spec["alpha"]),
            response_only=bool(spec.get("response_only", False)),
        )  # fmt: skip
    if kind == LoraAdapter.kind:
        sites = [(int(layer), matrix) for layer, matrix in spec["sites"]]
        return LoraAdapter(
            model,
            sites=sites,
            rank=int(spec["rank"]),
            alpha=float(spec["alpha"]),
            rslora=bool(spec["rslora"]),
        )
    if kind == AdapterStack.kind:
        return AdapterStack([adapter_from_spec(s, model) for s in spec["adapters"]])
    raise ValueError(f"unknown adapter kind {kind!r}; expected steering_vector, lora or stack")


def _hook_name(adapter: Adapter, model: HookedTransformer) -> str:
    return adapter.hook_name if isinstance(adapter, SteeringVector) else adapter.entry(model).cache_hook


def save_adapter(
    path: str | os.PathLike,
    adapter: Adapter,
    model: HookedTransformer,
    *,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write `path.safetensors` (the adapter's tensors) and `path.json` (what it is, for which model)."""
    meta = artifact_meta(
        model, kind=adapter.kind, hook_name=_hook_name(adapter, model),
        config={"adapter": adapter.spec(), **dict(config or {})},
    )  # fmt: skip
    return save_artifact(path, adapter.state_dict(), meta)


def load_adapter(
    path: str | os.PathLike, model: HookedTransformer, *, allow_other_model: bool = False
) -> tuple[Adapter, ArtifactMeta]:
    """Rebuild a saved adapter for `model`, checking it fits."""
    tensors, meta = load_artifact(path, model=model, allow_other_model=allow_other_model)
    spec = meta.config.get("adapter")
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{path}: no adapter spec in its metadata (config.adapter); was it saved by save_adapter?"
        )
    try:
        adapter = adapter_from_spec(spec, model).to(model.cfg.device)
    except (KeyError, TypeError, ValueError) as err:
        detail = f"its spec has no field {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(
            f"{path}: cannot rebuild the saved {spec.get('kind', 'adapter')} for model "
            f"{model_info(model).name!r}: {detail}"
        ) from None
    expected = set(adapter.state_dict())
    if set(tensors) != expected:
        raise ValueError(f"{path}: tensors {sorted(tensors)} do not match the adapter's {sorted(expected)}")
    for name, tensor in adapter.state_dict().items():
        if tensors[name].shape != tensor.shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(tensor.shape)}"
            )
    adapter.load_state_dict(tensors)
    return adapter, meta
