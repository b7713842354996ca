"""The on-disk side of a finetuning run: config (checked on resume), trajectory, snapshots and the
state resuming needs. Every file is written atomically."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mech.adapters.base import Adapter
from mech.adapters.saving import save_adapter
from mech.io.atomic import atomic_write, write_json, write_text
from mech.io.provenance import write_status
from mech.training.config import StepRecord


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


ADDED_SETTINGS = {"finetune.grad_accum": 1, "finetune.warmup_steps": 0}
"""Config fields added after runs were first written, at the value that means what a run without
them did: a folder whose config lacks one resumes as if it held that value."""
RECORDED_LATER = ("kl_data.reference.",)
PLACEMENT = ("finetune.cache_device",)
"""Settings that say where tensors live, not what is computed: a run may resume with others."""


class RunFolder:
    """The on-disk side of a run: config, trajectory, snapshots, resumable state."""

    def __init__(self, path: str | os.PathLike, description: dict[str, Any], *, resume: bool):
        self.path = Path(path)
        self.config_path, self.trajectory_path = self.path / "config.json", self.path / "trajectory.jsonl"
        self.state_path = self.path / "state.pt"
        if self.config_path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.path} already holds a run; pass resume=True to continue it, or choose another folder"
                )
            before = {**ADDED_SETTINGS, **_flatten(json.loads(self.config_path.read_text()))}
            now = _flatten(json.loads(json.dumps(description)))
            # Records added later (how the KL reference is kept) are compared only where the old
            # config has them: they follow from fields that are compared.
            now = {k: v for k, v in now.items() if k in before or not k.startswith(RECORDED_LATER)}
            changed = sorted(
                k for k in before.keys() | now.keys() if before.get(k) != now.get(k) and k not in PLACEMENT
            )
            if changed:
                raise ValueError(
                    f"{self.path}: cannot resume, the run was started with different {', '.join(changed)}"
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(self.config_path, description)
        write_status(self.path, "running")

    def load_state(self) -> tuple[dict[str, Any] | None, list[StepRecord]]:
        if not self.state_path.exists():
            self.trajectory_path.unlink(missing_ok=True)
            return None, []
        try:
            # weights_only: a state file is tensors and numbers; anything else is refused, never run.
            state = torch.load(self.state_path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{self.state_path}: refused to load, it holds more than tensors and numbers "
                f"(torch.load weights_only=True: {str(err).splitlines()[0]})"
            ) from None
        records = []
        if self.trajectory_path.exists():
            lines = self.trajectory_path.read_text().split("\n")
            for lineno, line in enumerate(lines, start=1):
                try:
                    record = StepRecord(**json.loads(line)) if line else None
                except (json.JSONDecodeError, TypeError):
                    if lineno == len(lines):  # the half line a kill left behind
                        break
                    raise ValueError(f"{self.trajectory_path}:{lineno}: not a step record") from None
                if record is not None and record.step <= state["step"]:
                    records.append(record)
        write_text(self.trajectory_path, "".join(json.dumps(asdict(r)) + "\n" for r in records))
        return state, records

    def append(self, record: StepRecord) -> None:
        with self.trajectory_path.open("a") as out:
            out.write(json.dumps(asdict(record)) + "\n")

    def save_state(self, step: int, adapter: Adapter, optimizer: torch.optim.Optimizer, model, meta) -> None:
        save_adapter(self.path / "snapshots" / f"step_{step:06d}", adapter, model, config=meta)
        state = {"step": step, "adapter": adapter.state_dict(), "optimizer": optimizer.state_dict()}
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))
