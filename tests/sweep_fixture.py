"""A stand-in experiment for the sweep tests: no model, just a run folder with two tidy rows,
so a sweep of it costs milliseconds in-process (a submitit job: one Python start)."""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.run_dir import RunDir, records_failure
from mech.io.atomic import atomic_write

CALLS: list[Config] = []
"""Every config `main` was called with in this process."""


@dataclass(frozen=True)
class Config:
    seed: int = 0
    scale: float = 1.0
    tags: tuple[str, ...] = ("a",)
    fail: bool = False
    """Fail on every attempt."""
    fail_first: bool = False
    """Fail while the cell has no earlier run folder (a flaky cell: fails once, then works)."""
    work_s: float = 0.0
    """Seconds of "work" after the run folder exists (room for a crash mid-work)."""
    out: str = "runs"


QUICK: dict = {}


@records_failure
def main(cfg: Config) -> Path:
    CALLS.append(cfg)
    earlier = list((Path(cfg.out) / "sweep_fixture").glob("*/run.json"))
    run = RunDir.create(Path(cfg.out), "sweep_fixture", cfg)
    time.sleep(cfg.work_s)
    if cfg.fail or (cfg.fail_first and not earlier):
        raise RuntimeError(f"fixture failure (seed {cfg.seed})")
    rows = [
        {"seed": cfg.seed, "metric": m, "value": cfg.seed * cfg.scale * k} for k, m in ((1, "x"), (2, "y"))
    ]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["seed", "metric", "value"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(run.path / "results.csv", write)
    run.save_results({"config": asdict(cfg), "rows": len(rows)})
    run.set_status("done")
    return run.path
