"""Saving and loading SAEs: a saved folder, the SAE shipped with a toy organism, or a sae_lens
release from the local Hugging Face cache (never the network)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mech._quiet import quiet_sae_lens_import

with quiet_sae_lens_import():
    from sae_lens import SAE, TrainingSAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

TOY_SAE_FOLDER = "sae"


"""Subfolder of an organism's checkpoint directory holding its SAE."""


# ----------------------------------------------------------------------------- save / load / check
def save_sae(sae: SAE, folder: str | os.PathLike) -> Path:
    """Write `sae` in sae_lens's format (`cfg.json` + `sae_weights.safetensors`); returns the folder.

    The SAE must record the hook it reads (`sae.cfg.metadata.hook_name`): a saved SAE always says
    where it belongs.
    """
    if not sae.cfg.metadata.hook_name:
        raise ValueError("the SAE records no hook name; set sae.cfg.metadata.hook_name before saving")
    folder = Path(folder)
    if isinstance(sae, TrainingSAE):
        sae.save_inference_model(folder)
    else:
        sae.save_model(folder)
    return folder


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE for the duration; huggingface_hub reads the variable once, at import, so its
    module constant is switched too, and both are restored afterwards."""
    from huggingface_hub import constants

    previous_env, previous_constant = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous_constant
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def load_pretrained_sae(release: str, sae_id: str, *, device: str = "cpu") -> SAE:
    """A sae_lens pretrained SAE (e.g. Gemma Scope), from the local Hugging Face cache only."""
    try:
        with _hub_offline():
            return SAE.from_pretrained(release, sae_id, device=device)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError and OfflineModeIsEnabled
        raise ValueError(
            f"SAE {sae_id!r} of release {release!r} is not in the local Hugging Face cache "
            f"(loading offline; download it first on a machine with network access): {err}"
        ) from err


def toy_sae_dir(organism: str = "default") -> Path:
    """Where the SAE of a shipped toy organism lives (it may not exist yet)."""
    from mech.toy.checkpoint import checkpoint_dir

    return checkpoint_dir(organism) / TOY_SAE_FOLDER


def load_sae(spec: str | os.PathLike, *, device: str = "cpu") -> SAE:
    """Load an SAE from a saved folder, "toy" / "toy:ORGANISM", or "release/sae_id".

    - a folder in sae_lens's format (as written by `save_sae`);
    - "toy" (the default organism's SAE) or "toy:ORGANISM": the SAE shipped in that organism's
      checkpoint directory;
    - "release/sae_id": a sae_lens pretrained release, split at the first "/" (release names
      have none; sae ids may), loaded from the local Hugging Face cache only.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if text == "toy" or text.startswith("toy:"):
        organism = text.partition(":")[2] or "default"
        folder = toy_sae_dir(organism)
        if not (folder / "cfg.json").is_file():
            raise ValueError(
                f"toy organism {organism!r} has no SAE at {folder}; train one with "
                f"`python -m probes.sae --train-toy --organism {organism}`"
            )
        return SAE.load_from_disk(folder, device=device)
    if path.is_dir():
        if not (path / "cfg.json").is_file():
            raise ValueError(f"{path}: not a sae_lens SAE folder (no cfg.json)")
        return SAE.load_from_disk(path, device=device)
    release, _, sae_id = text.partition("/")
    if not sae_id or release not in get_pretrained_saes_directory():
        raise ValueError(
            f"{text!r} is no SAE folder, no 'toy[:ORGANISM]' and no 'release/sae_id' of a sae_lens "
            f"pretrained release (for a Hugging Face repo id as release, call load_pretrained_sae)"
        )
    return load_pretrained_sae(release, sae_id, device=device)
