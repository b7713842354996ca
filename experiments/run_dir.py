"""Self-describing run folders: `runs/<experiment>/<timestamp>-<hash>/` with config, provenance,
status and results, written atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("misalign-lens", "torch", "transformer_lens", "transformers", "sae_lens", "peft")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, root: Path, experiment: str, config: Any) -> RunDir:
        """A new run folder for `experiment`, with `config` (a dataclass) and provenance recorded."""
        config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        digest = hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()
        path = Path(root) / experiment / f"{time.strftime('%Y%m%d-%H%M%S')}-{digest[:8]}"
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        write_json(path / "config.json", config_dict)
        run.set_status("running")
        return run

    def set_status(self, status: str, error: str | None = None) -> None:
        write_json(
            self.path / "run.json",
            {"status": status, "error": error, "git_commit": _git_commit(), "versions": _versions(),
             "updated": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )  # fmt: skip

    def save_results(self, results: dict[str, Any]) -> Path:
        write_json(self.path / "results.json", results)
        return self.path / "results.json"
