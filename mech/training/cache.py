"""A content-addressed cache for expensive intermediate results: residual streams at a layer,
the chat model's reference log-probabilities, generated answers.

An entry's key is a hash of everything its value depends on: the model (name, loading flags,
dtype, device type and a fingerprint of its weights), the data (a hash of its tokens), the
settings (site, batching, sampling config) and the code version (a hash of the package's
source, so any code change recomputes). A re-run reuses what is still valid and recomputes what
changed; nothing is ever looked up by a name that could go stale.

Layout: `root/<kind>/<key[:2]>/<key>.safetensors` (tensors) or `.jsonl` (rows), each with a
`.json` sidecar naming what went into the key. Writes are atomic; a half-written entry never
exists, so a killed run leaves the cache valid. Nothing is pickled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.io.atomic import atomic_write, write_json, write_jsonl
from mech.models.load import model_info

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The `mech` package: a change to any of its modules recomputes every entry."""


@functools.cache
def code_version() -> str:
    """sha256 (16 hex) of every .py file of the `mech` package, path and content."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tensor_digest(tensors: Sequence[Tensor]) -> str:
    """sha256 (16 hex) of the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


WEIGHT_SAMPLE = 4096
"""Evenly spaced entries of each parameter hashed as they are (besides its row sums)."""


def weights_fingerprint(model: HookedTransformer) -> str:
    """sha256 (16 hex) over every parameter of `model`, by name: its shape, dtype,
    `WEIGHT_SAMPLE` evenly spaced entries, and its sums along the last axis (float32, computed on
    the model's device, so only about one value per row leaves it). A merged adapter on any block,
    a changed checkpoint or an edit of one weight changes it; a 14B model costs one pass over its
    weights on the device. Buffers (masks, rotary tables) follow from the config, so are left out."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // WEIGHT_SAMPLE)
            rows = (
                tensor.detach().sum(-1, dtype=torch.float32) if tensor.dim() else tensor.detach().float()
            ).reshape(-1)
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor_digest([flat[::step], rows]).encode())
    return digest.hexdigest()[:16]


def model_identity(model: HookedTransformer) -> dict[str, Any]:
    """What identifies a model's computation: name, flags, dtype, device type and a fingerprint of
    all its weights (`weights_fingerprint`)."""
    info = model_info(model)
    return {
        "name": info.name,
        "flags": info.flags.to_dict(),
        "dtype": str(model.cfg.dtype),
        "device": torch.device(model.cfg.device).type,
        "weights": weights_fingerprint(model),
    }


def cache_key(kind: str, parts: Mapping[str, Any]) -> str:
    """sha256 over `kind`, `parts` (JSON, keys sorted) and the code version."""
    payload = json.dumps({"kind": kind, "parts": parts, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class ContentCache:
    """Entries under `root`; `get_*` returns None on a miss, `put_*` writes atomically."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.stats = CacheStats()

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def _describe(self, kind: str, key: str, parts: Mapping[str, Any]) -> None:
        write_json(self._path(kind, key, ".json"), {"kind": kind, "code": code_version(), "parts": parts})

    def get_tensors(self, kind: str, parts: Mapping[str, Any]) -> dict[str, Tensor] | None:
        path = self._path(kind, cache_key(kind, parts), ".safetensors")
        if not path.is_file():
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return load_file(str(path))

    def put_tensors(self, kind: str, parts: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
        key = cache_key(kind, parts)
        contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        path = atomic_write(self._path(kind, key, ".safetensors"), lambda tmp: save_file(contiguous, tmp))
        self._describe(kind, key, parts)
        return path

    def get_rows(self, kind: str, parts: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        path = self._path(kind, cache_key(kind, parts), ".jsonl")
        if not path.is_file():
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def put_rows(self, kind: str, parts: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Path:
        key = cache_key(kind, parts)
        path = write_jsonl(self._path(kind, key, ".jsonl"), rows)
        self._describe(kind, key, parts)
        return path

    def entries(self, kind: str | None = None) -> list[Path]:
        """The cached value files (of one `kind`, or all)."""
        base = self.root / kind if kind else self.root
        return sorted(p for p in base.rglob("*") if p.suffix in (".safetensors", ".jsonl"))
