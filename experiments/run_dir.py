"""Self-describing run folders: `runs/<experiment>/<timestamp>-<hash>/` with config, provenance,
status and results, all written atomically.

An experiment's `main` is wrapped in `records_failure`: if it raises, every run folder it opened
and had not finished is marked `failed` with the error, and what was written so far stays.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mech.io.atomic import write_json
from mech.io.provenance import Status, read_status, write_status

F = TypeVar("F", bound=Callable[..., Any])
_OPEN: list[RunDir] = []
"""Run folders created inside the `records_failure` calls now on the stack."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, root: Path, experiment: str, config: Any) -> RunDir:
        """A new run folder for `experiment`, with `config` (a dataclass) and provenance recorded."""
        config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        digest = hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()
        base = Path(root) / experiment / f"{time.strftime('%Y%m%d-%H%M%S')}-{digest[:8]}"
        path, n = base, 1
        (Path(root) / experiment).mkdir(parents=True, exist_ok=True)
        while True:  # the same config again within a second (a retry) gets its own folder
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        run = cls(path)
        write_json(path / "config.json", config_dict)
        run.set_status("running")
        _OPEN.append(run)
        return run

    def set_status(self, status: Status, error: BaseException | str | None = None) -> None:
        write_status(self.path, status, error)

    def save_results(self, results: dict[str, Any]) -> Path:
        return write_json(self.path / "results.json", results)


def records_failure(main: F) -> F:
    """Mark the run folders `main` opens as `failed` (with the error) when it raises."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = len(_OPEN)
        try:
            return main(*args, **kwargs)
        except BaseException as err:
            for run in _OPEN[depth:]:
                record = read_status(run.path)
                if record is None or record.get("status") == "running":
                    run.set_status("failed", err)
            raise
        finally:
            del _OPEN[depth:]

    return wrapper  # type: ignore[return-value]
