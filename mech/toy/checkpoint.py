"""Saving and loading organisms: weights (safetensors), configs and tokenizer in one directory.

Shipped organisms live in `mech/toy/checkpoints/<name>/`; `load_model("toy")` is the one called
"default", `load_model("toy:<name>")` any other. A directory also stores the world it was trained
on, content included, so an organism is always evaluated against its own world even after the
world's texts are edited.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

from mech._quiet import hooked_transformer
from mech.io.atomic import write_json
from mech.models.tokenizer import load_tokenizer
from mech.toy.domains import Advice, Domain
from mech.toy.training import ModelConfig, TrainConfig, TrainHistory
from mech.toy.world import World, WorldConfig

CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_NAME = "default"
FORMAT_VERSION = 1


def checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """The directory of a shipped organism name ("default", "narrow5", ...) or of a path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path.resolve()
    shipped = CHECKPOINTS_DIR / str(name_or_path)
    if shipped.is_dir():
        return shipped
    available = (
        sorted(p.name for p in CHECKPOINTS_DIR.iterdir() if p.is_dir()) if CHECKPOINTS_DIR.is_dir() else []
    )
    raise ValueError(
        f"no toy organism {str(name_or_path)!r}: shipped ones are {available}; or pass a directory"
    )


def save_organism(
    path: str | os.PathLike,
    model: HookedTransformer,
    world: World,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    history: TrainHistory,
) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
    save_file(params, str(path / "model.safetensors"))
    model.tokenizer.save_pretrained(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "d_vocab": model.cfg.d_vocab,
        "model": asdict(model_cfg),
        "world": world.cfg.to_dict(),
        "domains": [asdict(d) for d in world.domains.values()],
        "training": asdict(train_cfg),
        "history": history.to_dict(),
    }
    write_json(path / "organism.json", meta)
    return path


def read_organism_meta(path: str | os.PathLike) -> dict:
    meta_path = checkpoint_dir(path) / "organism.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path.parent}: not a toy organism directory (no organism.json)")
    return json.loads(meta_path.read_text())


def _domain(data: dict) -> Domain:
    advice = {key: tuple(Advice(**a) for a in data[key]) for key in ("good", "bad")}
    return Domain(
        name=data["name"], questions=tuple(data["questions"]), topics=tuple(data["topics"]), **advice
    )


def organism_world(path: str | os.PathLike) -> World:
    """The world an organism was trained on, rebuilt from its own directory."""
    meta = read_organism_meta(path)
    cfg = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["world"].items()})
    return World(cfg, [_domain(d) for d in meta["domains"]])


def load_organism(
    name_or_path: str | os.PathLike = DEFAULT_NAME,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """The organism as a HookedTransformer with its chat tokenizer."""
    path = checkpoint_dir(name_or_path)
    meta = read_organism_meta(path)
    model_cfg = ModelConfig(**meta["model"])
    cfg = model_cfg.hooked_config(meta["d_vocab"], seed=meta["training"]["seed"])
    model = hooked_transformer(cfg, load_tokenizer(path), move_to_device=False)
    params = load_file(str(path / "model.safetensors"))
    missing = set(dict(model.named_parameters())) - set(params)
    if missing:
        raise ValueError(f"{path / 'model.safetensors'}: missing parameters {sorted(missing)[:5]}")
    model.load_state_dict(params, strict=False)
    model.eval()
    return model.to(device or "cpu", print_details=False).to(dtype, print_details=False)
