"""Saving and loading vectors and adapters: safetensors for tensors, a JSON sidecar for metadata.

`name.safetensors` holds the tensors, `name.json` says what they are: the model they belong to,
hook point and layer, the TransformerLens loading flags, norms and the training config. Loading
against a model checks all of it, so a vector is never silently applied to another model, width,
layer or coordinate system. Nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.io.atomic import atomic_write, write_json
from mech.io.provenance import read_status
from mech.models.load import LoadingFlags, model_info

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ArtifactMeta:
    """What a saved set of tensors is and which model it belongs to."""

    kind: str
    """e.g. "steering_vector", "direction", "lora"."""
    model: str
    """`ModelInfo.name` of the model it was made on (the base, without adapter)."""
    d_model: int
    n_layers: int
    hook_name: str
    layer: int
    flags: LoadingFlags
    norms: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    """Training config or anything else JSON-serialisable that produced the tensors."""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "metadata") -> ArtifactMeta:
        known = {f for f in cls.__dataclass_fields__}
        missing = {"kind", "model", "d_model", "n_layers", "hook_name", "layer", "flags"} - set(data)
        if missing:
            raise ValueError(f"{source}: missing field(s) {sorted(missing)}")
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {sorted(unknown)}")
        for name in ("d_model", "n_layers", "layer", "format_version"):
            value = data.get(name, FORMAT_VERSION)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{source}: field {name!r} must be an integer, found {value!r}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version {data['format_version']} is newer than this package's "
                f"{FORMAT_VERSION}; upgrade misalign-lens to read it"
            )
        flags, flag_names = data["flags"], set(LoadingFlags.__dataclass_fields__)
        if not isinstance(flags, Mapping) or not set(flags) <= flag_names:
            found = (
                f"unknown {sorted(set(flags) - flag_names)}" if isinstance(flags, Mapping) else repr(flags)
            )
            raise ValueError(
                f"{source}: 'flags' must be an object with keys from {sorted(flag_names)}, found {found}"
            )
        return cls(**{**data, "flags": LoadingFlags(**flags)})


def artifact_meta(
    model: HookedTransformer, *, kind: str, hook_name: str, config: Mapping[str, Any] | None = None
) -> ArtifactMeta:
    """Metadata for tensors made on `model` at `hook_name` (`blocks.L....`)."""
    try:
        layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else -1
    except (IndexError, ValueError):
        raise ValueError(f"cannot read a layer from hook name {hook_name!r}") from None
    info = model_info(model)
    return ArtifactMeta(
        kind=kind, model=info.name, d_model=model.cfg.d_model, n_layers=model.cfg.n_layers,
        hook_name=hook_name, layer=layer, flags=info.flags, config=dict(config or {}),
    )  # fmt: skip


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_artifact(path: str | os.PathLike, tensors: Mapping[str, Tensor], meta: ArtifactMeta) -> Path:
    """Write `path.safetensors` and `path.json` (each atomically); return the safetensors path."""
    if not tensors:
        raise ValueError("nothing to save: no tensors given")
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to save tensor {name!r}: it contains NaN or inf")
    norms = {name: float(t.float().norm()) for name, t in tensors.items()}
    meta = ArtifactMeta(**{**asdict(meta), "flags": meta.flags, "norms": norms})
    tensor_path, json_path = _paths(path)
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    atomic_write(tensor_path, lambda tmp: save_file(contiguous, tmp))
    write_json(json_path, meta.to_dict())
    return tensor_path


def check_compatible(
    meta: ArtifactMeta, model: HookedTransformer, *, allow_other_model: bool = False
) -> None:
    """Raise if tensors described by `meta` cannot be applied to `model` as they are."""
    info = model_info(model)
    if meta.d_model != model.cfg.d_model:
        raise ValueError(
            f"{meta.kind} has width {meta.d_model} but model {info.name!r} has d_model {model.cfg.d_model}"
        )
    if meta.layer >= model.cfg.n_layers:
        raise ValueError(
            f"{meta.kind} sits at layer {meta.layer} ({meta.hook_name}) but model {info.name!r} "
            f"has only {model.cfg.n_layers} layers"
        )
    if meta.flags != info.flags:
        raise ValueError(
            f"{meta.kind} was made under loading flags {meta.flags.to_dict()} but model {info.name!r} "
            f"was loaded with {info.flags.to_dict()}: residual coordinates differ; reload the model "
            "with the artifact's flags"
        )
    if meta.model != info.name and not allow_other_model:
        raise ValueError(
            f"{meta.kind} was made on model {meta.model!r}, not {info.name!r}; "
            "pass allow_other_model=True if they share a base (e.g. a finetune and its chat model)"
        )


def load_artifact(
    path: str | os.PathLike,
    *,
    model: HookedTransformer | None = None,
    allow_other_model: bool = False,
) -> tuple[dict[str, Tensor], ArtifactMeta]:
    """Read tensors and metadata; if `model` is given, check they fit it (see `check_compatible`)."""
    tensor_path, json_path = _paths(path)
    for p in (tensor_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (artifacts are a .safetensors + .json pair)")
    try:
        data = json.loads(json_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{json_path}: not valid UTF-8, so not a sidecar written by save_artifact") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: expected a JSON object of metadata, found {type(data).__name__}")
    meta = ArtifactMeta.from_dict(data, source=str(json_path))
    try:
        tensors = load_file(str(tensor_path))
    except SafetensorError as err:
        raise ValueError(
            f"{tensor_path}: not a readable safetensors file ({err}); pickled tensors (torch.save) are refused"
        ) from None
    if model is not None:
        try:
            check_compatible(meta, model, allow_other_model=allow_other_model)
        except ValueError as err:
            raise ValueError(f"{tensor_path}: {err}") from None
        tensors = {name: t.to(model.cfg.device) for name, t in tensors.items()}
    return tensors, meta


def save_vector(
    path: str | os.PathLike,
    vector: Tensor,
    model: HookedTransformer,
    *,
    hook_name: str,
    kind: str = "steering_vector",
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Save one d_model vector (a steering vector or a direction) made on `model` at `hook_name`."""
    if vector.shape != (model.cfg.d_model,):
        raise ValueError(f"{kind} has shape {tuple(vector.shape)}; model d_model is {model.cfg.d_model}")
    meta = artifact_meta(model, kind=kind, hook_name=hook_name, config=config)
    return save_artifact(path, {"vector": vector}, meta)


def load_vector(
    path: str | os.PathLike,
    *,
    model: HookedTransformer | None = None,
    allow_other_model: bool = False,
    hook_name: str | None = None,
) -> tuple[Tensor, ArtifactMeta]:
    """Load a vector saved by `save_vector`, checked against `model` when given.

    With `hook_name` (the caller asked for a layer or site), a vector recorded at any other hook
    is refused rather than applied where it was not made. The vector keeps its stored dtype (the
    hooks cast it where it meets activations); with `model` it is moved to the model's device.
    """
    tensors, meta = load_artifact(path, model=model, allow_other_model=allow_other_model)
    vector = tensors.get("vector")
    if vector is None or vector.shape != (meta.d_model,):
        got = "no 'vector' tensor" if vector is None else f"shape {tuple(vector.shape)}"
        raise ValueError(f"{_paths(path)[0]}: expected a 'vector' of shape ({meta.d_model},), found {got}")
    if hook_name is not None and meta.hook_name != hook_name:
        raise ValueError(
            f"{_paths(path)[0]}: the {meta.kind} was made at {meta.hook_name}, not at {hook_name} "
            "as asked; a vector only means something at the hook it was made at"
        )
    return vector, meta


AdapterSource = Literal["peft", "saved"]


def adapter_location(path: str | os.PathLike) -> tuple[AdapterSource, Path]:
    """Where an adapter named on a command line lives, and what it is.

    - a PEFT adapter directory (`adapter_config.json`): ("peft", dir), for `load_model(adapter=dir)`;
    - a training run folder (`python -m mech.training --out DIR`): ("saved", DIR/adapter);
    - anything else is a saved adapter's path or stem: ("saved", path), for
      `mech.adapters.saving.load_adapter`.
    A run folder whose run has not finished has no final adapter: refused, naming its snapshots.
    """
    path = Path(path)
    if not path.is_dir():
        return "saved", path
    if (path / "adapter_config.json").is_file():
        return "peft", path
    final = path / "adapter"
    if all(p.is_file() for p in _paths(final)):
        return "saved", final
    status = read_status(path)
    if status is not None and (path / "config.json").is_file():
        snapshots = sorted((path / "snapshots").glob("step_*.safetensors"))
        hint = f"; its latest snapshot is {snapshots[-1].with_suffix('')}" if snapshots else ""
        raise FileNotFoundError(
            f"{path}: a training run folder without its final adapter (adapter.safetensors; run status "
            f"{status.get('status')!r}): re-run its training command to finish it{hint}"
        )
    raise ValueError(
        f"{path}: a directory that is neither a PEFT adapter (no adapter_config.json) nor a training run "
        "folder (no adapter.safetensors + adapter.json); pass a saved adapter's path or stem"
    )
