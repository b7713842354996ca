"""Sweeps: a grid of one experiment's configs, each cell a run folder, run in-process or through
submitit (SLURM job arrays on a cluster, its local executor here); failed cells are retried and
finished cells are never recomputed.

    python -m experiments.sweep experiments/sweeps/toy_narrow_kl.yaml [--out runs/sweeps]
        [--executor sequential|submitit] [--cluster local|slurm] [--max-parallel 2] [--retries N]
        [--crash-cell INDEX[:SECONDS]] [--partition P --gpus-per-node G --cpus-per-task C
        --timeout-min M --mem-gb GB --array-parallelism A]

Layout: `<out>/<name>/sweep.json` (spec and per-cell status), `<out>/<name>/results.csv` (the done
cells' rows with `cell` and `cell_<field>` columns), `<out>/<name>/gather.json` (which cells the
gathered rows come from, and which were left out and why), `<out>/<name>/cells/<index>-<hash>/cell.json`
(values and an attempt log) with the experiment's run folders below it. A cell is done iff one of
its run folders has status `done`; failed and stale (`running` after a kill) folders stay as records.

Declaring and checking a spec, and expanding it into cells: `experiments.sweep_spec`. Running one
cell in this process or through submitit: `experiments.executors`. Here: the attempt log of each
cell, retry rounds, `sweep.json`, `gather` and the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from experiments.executors import CellTask, Executor, Outcome, SequentialExecutor, SubmititExecutor
from experiments.sweep_spec import Cell, SpecError, SweepSpec, check_spec, config_class, expand, load_spec
from mech.io.atomic import atomic_write, write_json
from mech.io.provenance import is_stale, read_status

DEFAULT_CRASH_S = 2.0
"""Seconds into a cell's first attempt at which `--crash-cell INDEX` kills it."""


@dataclass(frozen=True)
class CellReport:
    index: int
    values: dict[str, Any]
    folder: str
    status: Literal["done", "failed", "pending"]
    attempts: int
    errors: list[str]
    run: str | None
    seconds: float | None


SkipReason = Literal["failed", "not run", "unfinished", "no results.csv"]


@dataclass(frozen=True)
class SkippedCell:
    """A cell `gather` left out: why (`reason`), in words (`detail`: the last error, the attempt
    that never ended, the run folder without `results.csv`)."""

    index: int
    values: dict[str, Any]
    reason: SkipReason
    detail: str

    def describe(self) -> str:
        values = " ".join(f"{k}={_cell_value(v)}" for k, v in self.values.items())
        return f"cell {self.index} ({values}): {self.reason}: {self.detail}"


class IncompleteSweepError(RuntimeError):
    """`gather(..., strict=True)` on a sweep with cells left out; `skipped` names them."""

    def __init__(self, sweep_dir: Path, skipped: Sequence[SkippedCell]) -> None:
        self.skipped = list(skipped)
        cells = "; ".join(c.describe() for c in self.skipped)
        super().__init__(
            f"{sweep_dir}: {len(self.skipped)} cell(s) would be left out of the gathered results: {cells}"
        )


@dataclass(frozen=True)
class SweepReport:
    path: Path
    cells: list[CellReport]
    results: Path | None
    skipped: list[SkippedCell] = dataclasses.field(default_factory=list)
    """Cells left out of `results` (all but the done ones with a `results.csv`)."""

    @property
    def failed(self) -> list[CellReport]:
        return [c for c in self.cells if c.status != "done"]


# ---------------------------------------------------------------------------------------------
# Attempts


def _creation_order(folder: Path) -> tuple[str, int]:
    # RunDir names a folder `<timestamp>-<hash>`, and the same config again within that second
    # `<timestamp>-<hash>-2`, `-3`...: by name alone `-10` would sort before `-2`.
    stem, _, n = folder.name.rpartition("-")
    return (stem, int(n)) if folder.name.count("-") == 3 and n.isdigit() else (folder.name, 1)


def run_folders(cell_path: Path) -> list[Path]:
    """The experiment's run folders under a cell (`<cell>/<experiment>/<run>/run.json`), oldest first."""
    return sorted((p.parent for p in Path(cell_path).glob("*/*/run.json")), key=_creation_order)


def done_run(cell_path: Path) -> Path | None:
    """The newest run folder of the cell with status `done`, if any."""
    done = [p for p in run_folders(cell_path) if (read_status(p) or {}).get("status") == "done"]
    return done[-1] if done else None


def _folder_state(folder: Path) -> str:
    record = read_status(folder) or {}
    status = record.get("status", "unknown")
    return "running (stale)" if is_stale(record) else status


def _read_cell(cell: Cell) -> dict:
    path = cell.path / "cell.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"index": cell.index, "values": cell.values, "attempts": []}


# ---------------------------------------------------------------------------------------------
# The sweep


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _check_resume(sweep_dir: Path, spec: SweepSpec) -> None:
    """Refuse to resume a sweep folder declared differently: its done cells would be taken as
    done for configs they never ran."""
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return
    stored = json.loads(path.read_text()).get("spec", {})
    for key in ("experiment", "base", "grid"):
        if stored.get(key) != _jsonable(getattr(spec, key)):
            raise SpecError(
                f"{sweep_dir}: this sweep was declared with a different {key} ({stored.get(key)!r}); "
                "use another name or --out"
            )


def _begin_attempt(cell: Cell, spec: SweepSpec, module: str, executor: str,
                   crash: Mapping[int, float]) -> CellTask:  # fmt: skip
    """Log the attempt in `cell.json` before it starts, so that a crash is injected on a cell's
    first attempt only, even across separate runs of the sweep command."""
    record = _read_cell(cell)
    attempt = len(record["attempts"]) + 1
    crash_after = crash.get(cell.index) if attempt == 1 else None
    record["attempts"].append({"attempt": attempt, "executor": executor, "crash_after": crash_after,
                               "queued": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "queued"})  # fmt: skip
    write_json(cell.path / "cell.json", record)
    overrides = {**spec.base, **cell.values, "out": str(cell.path)}
    return CellTask(cell.index, attempt, module, overrides, crash_after, sys_path=tuple(sys.path))


def _end_attempt(cell: Cell, outcome: Outcome, before: set[Path]) -> None:
    record = _read_cell(cell)
    new = [p for p in run_folders(cell.path) if p not in before]
    record["attempts"][-1].update(
        status=outcome.status, error=outcome.error, run=outcome.run, started=outcome.started,
        seconds=outcome.seconds, recorded=time.strftime("%Y-%m-%dT%H:%M:%S"),
        run_folders={str(p): _folder_state(p) for p in new},
    )  # fmt: skip
    write_json(cell.path / "cell.json", record)


def _report(cell: Cell, status: str) -> CellReport:
    record = _read_cell(cell)
    attempts = record["attempts"]
    run = done_run(cell.path)
    done = [a for a in attempts if a.get("status") == "done"]
    return CellReport(
        index=cell.index, values=cell.values, folder=str(cell.path), status=status,  # type: ignore[arg-type]
        attempts=len(attempts), errors=[a["error"] for a in attempts if a.get("error")],
        run=str(run) if run else None, seconds=done[-1].get("seconds") if done else None,
    )  # fmt: skip


def _write_sweep_json(sweep_dir: Path, spec: SweepSpec, reports: Sequence[CellReport]) -> None:
    write_json(sweep_dir / "sweep.json", {"spec": dataclasses.asdict(spec),
                                          "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                          "cells": [dataclasses.asdict(r) for r in reports]})  # fmt: skip


def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike = "runs/sweeps",
    *,
    executor: Executor | None = None,
    retries: int | None = None,
    crash: Mapping[int, float] | None = None,
    strict: bool = False,
) -> SweepReport:
    """Run every cell of `spec` that is not done, retrying failures up to `retries` (default:
    `spec.retries`) more rounds, then gather the done cells' rows into `<out>/<name>/results.csv`
    (`gather`; the cells it left out are `report.skipped`).

    `crash` (cell index -> seconds) injects a crash into those cells' first attempts. `strict`:
    raise `IncompleteSweepError` instead of gathering the rows of only some cells.

    >>> report = run_sweep(load_spec("sweep.yaml"), "runs/sweeps")  # doctest: +SKIP
    """
    spec = check_spec(spec, spec.name)
    module, _ = config_class(spec, spec.name)
    executor = executor or SequentialExecutor()
    retries = spec.retries if retries is None else retries
    sweep_dir = Path(out) / spec.name
    _check_resume(sweep_dir, spec)
    cells = expand(spec, sweep_dir)
    crash = dict(crash or {})
    if set(crash) - {c.index for c in cells}:
        raise ValueError(
            f"crash: no cell {sorted(set(crash) - {c.index for c in cells})}; cells are 0..{len(cells) - 1}"
        )
    for cell in cells:
        if not (cell.path / "cell.json").is_file():
            write_json(cell.path / "cell.json", _read_cell(cell))
    status = {c.index: "done" if done_run(c.path) else "pending" for c in cells}
    _write_sweep_json(sweep_dir, spec, [_report(c, status[c.index]) for c in cells])
    for _ in range(1 + retries):
        todo = [c for c in cells if status[c.index] != "done"]
        if not todo:
            break
        before = {c.index: set(run_folders(c.path)) for c in todo}
        tasks = [_begin_attempt(c, spec, module, executor.name, crash) for c in todo]
        for cell, outcome in zip(todo, executor.run(tasks, sweep_dir)):
            _end_attempt(cell, outcome, before[cell.index])
            status[cell.index] = "done" if outcome.status == "done" and done_run(cell.path) else "failed"
        _write_sweep_json(sweep_dir, spec, [_report(c, status[c.index]) for c in cells])
    reports = [_report(c, status[c.index]) for c in cells]
    if not (strict or any(r.status == "done" for r in reports)):
        return SweepReport(sweep_dir, reports, None, skipped_cells(sweep_dir))
    frame = gather(sweep_dir, strict=strict)
    return SweepReport(sweep_dir, reports, sweep_dir / "results.csv", frame.attrs["skipped"])


def _cell_value(value: Any) -> Any:
    # Tuples as in the experiments' CLI flags: comma-separated.
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def skip_reason(cell_path: Path, record: Mapping[str, Any]) -> tuple[SkipReason, str] | None:
    """Why `gather` leaves a cell out (reason, detail), or None when it has rows to gather."""
    run = done_run(cell_path)
    if run is not None:
        return None if (run / "results.csv").is_file() else ("no results.csv", f"its done run {run} has none")
    attempts = record.get("attempts", [])
    if not attempts:
        return "not run", "no attempt logged"
    last = attempts[-1]
    if last.get("status") == "failed":
        return "failed", f"attempt {len(attempts)}: {last.get('error') or 'no error recorded'}"
    return "unfinished", f"attempt {len(attempts)} is {last.get('status')!r} and no run folder of it is done"


def _cell_records(sweep_dir: Path) -> list[tuple[Path, dict]]:
    return [(p.parent, json.loads(p.read_text())) for p in sorted((sweep_dir / "cells").glob("*/cell.json"))]


def _skipped(cell_path: Path, record: Mapping[str, Any]) -> SkippedCell | None:
    why = skip_reason(cell_path, record)
    return None if why is None else SkippedCell(record["index"], dict(record["values"]), *why)


def skipped_cells(sweep_dir: str | os.PathLike) -> list[SkippedCell]:
    """The cells of a sweep folder that `gather` would leave out, in cell order."""
    found = (_skipped(path, record) for path, record in _cell_records(Path(sweep_dir)))
    return [cell for cell in found if cell is not None]


def _cell_rows(run: Path, record: Mapping[str, Any]):
    """A done cell's `results.csv` with `cell` and `cell_<field>` columns in front."""
    import pandas as pd

    frame = pd.read_csv(run / "results.csv")
    extra = {"cell": record["index"], **{f"cell_{k}": _cell_value(v) for k, v in record["values"].items()}}
    clash = sorted(set(extra) & set(frame.columns))
    if clash:
        raise ValueError(f"{run}/results.csv: columns {clash} clash with the sweep's cell columns")
    for position, (key, value) in enumerate(extra.items()):
        frame.insert(position, key, [value] * len(frame))
    return frame


def gather(sweep_dir: str | os.PathLike, *, strict: bool = False):
    """The done cells' `results.csv` rows in one DataFrame, with `cell` (index) and `cell_<field>`
    (grid values; tuples comma-separated) in front; also written to `<sweep_dir>/results.csv`.

    The cells left out (failed, not run, unfinished, or done without a `results.csv`) are
    `frame.attrs["skipped"]` (`SkippedCell`s) and listed in `<sweep_dir>/gather.json`. With
    `strict`, a left-out cell raises `IncompleteSweepError` naming them all, and nothing is written.
    """
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    records = _cell_records(sweep_dir)
    skipped = [cell for cell in (_skipped(path, record) for path, record in records) if cell is not None]
    if strict and skipped:
        raise IncompleteSweepError(sweep_dir, skipped)
    left_out = {cell.index for cell in skipped}
    frames = [
        _cell_rows(done_run(path), record) for path, record in records if record["index"] not in left_out
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"cell": []})
    atomic_write(sweep_dir / "results.csv", lambda tmp: frame.to_csv(tmp, index=False))
    gathered = sorted(record["index"] for _, record in records if record["index"] not in left_out)
    write_json(sweep_dir / "gather.json", {"cells": len(records), "gathered": gathered, "rows": len(frame),
                                            "skipped": [dataclasses.asdict(c) for c in skipped]})  # fmt: skip
    frame.attrs["skipped"] = skipped
    return frame


# ---------------------------------------------------------------------------------------------
# CLI


def parse_crash(text: str) -> tuple[int, float]:
    """`INDEX[:SECONDS]` -> (index, seconds)."""
    index, _, seconds = text.partition(":")
    try:
        return int(index), float(seconds) if seconds else DEFAULT_CRASH_S
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INDEX[:SECONDS], got {text!r}") from None


def _table(report: SweepReport) -> str:
    rows = [("cell", "values", "status", "attempts", "seconds", "last error")]
    for c in report.cells:
        values = " ".join(f"{k}={_cell_value(v)}" for k, v in c.values.items())
        seconds = f"{c.seconds:.1f}" if c.seconds is not None else "-"
        error = (c.errors[-1] if c.errors else "")[:100]
        rows.append((str(c.index), values, c.status, str(c.attempts), seconds, error))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n\n")
    parser = argparse.ArgumentParser(description=doc[0], epilog=doc[1] if len(doc) > 1 else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("spec", help="sweep spec, YAML or JSON")
    parser.add_argument("--out", default="runs/sweeps", help="root of sweep folders (default: runs/sweeps)")
    parser.add_argument("--executor", choices=("sequential", "submitit"), default="sequential")
    parser.add_argument("--cluster", choices=("local", "slurm", "auto"), default="local",
                        help="submitit: local processes, SLURM, or what submitit detects")  # fmt: skip
    parser.add_argument("--max-parallel", type=int, default=2, help="submitit local: jobs at once")
    parser.add_argument("--retries", type=int, help="extra attempts per failed cell (default: the spec's)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse to gather the results of only some cells: exit 1 naming those left out")  # fmt: skip
    parser.add_argument("--crash-cell", type=parse_crash, action="append", default=[], metavar="INDEX[:SECONDS]",
                        help=f"kill cell INDEX's first attempt after SECONDS (default {DEFAULT_CRASH_S:g}); "
                             "sequential: raise before its main")  # fmt: skip
    for flag, kind in (("--partition", str), ("--gpus-per-node", int), ("--cpus-per-task", int),
                       ("--timeout-min", int), ("--mem-gb", float), ("--array-parallelism", int)):  # fmt: skip
        parser.add_argument(flag, type=kind, help="submitit / slurm")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.executor == "submitit":
        executor: Executor = SubmititExecutor(
            cluster=None if args.cluster == "auto" else args.cluster, max_parallel=args.max_parallel,
            partition=args.partition, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
            timeout_min=args.timeout_min or 60, mem_gb=args.mem_gb, array_parallelism=args.array_parallelism,
        )  # fmt: skip
    else:
        executor = SequentialExecutor()
    started = time.perf_counter()
    try:
        report = run_sweep(spec, args.out, executor=executor, retries=args.retries, crash=dict(args.crash_cell),
                           strict=args.strict)  # fmt: skip
    except IncompleteSweepError as err:
        print(f"error: {err} (per-cell status: {Path(args.out) / spec.name / 'sweep.json'})", file=sys.stderr)
        return 1
    print(_table(report))
    print(f"sweep {spec.name}: {len(report.cells) - len(report.failed)}/{len(report.cells)} cells done "
          f"in {time.perf_counter() - started:.1f} s -> {report.path / 'sweep.json'}")  # fmt: skip
    if report.results is not None:
        print(f"results -> {report.results}")
    failed = {cell.index for cell in report.failed}
    for cell in report.skipped:
        if cell.index not in failed:  # failed cells have their own line below
            print(f"left out of the results: {cell.describe()}", file=sys.stderr)
    if report.skipped:
        print(
            f"{len(report.skipped)} cell(s) left out of the results: {report.path / 'gather.json'}",
            file=sys.stderr,
        )
    for cell in report.failed:
        print(f"FAILED cell {cell.index} {cell.values}: {cell.errors[-1] if cell.errors else 'not run'}",
              file=sys.stderr)  # fmt: skip
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
