"""The committed results behind the README's tables: run folders copied into `results/`, kept to
what the findings need (config, results, tidy rows), each config carrying the command that reruns
it. The README's result tables are rendered from them (`python -m experiments.summary --markdown
results --readme README.md`), and a test fails when the README differs from that rendering.

    python -m experiments.results_store runs/science/narrow_kl/<run> [...] --into results/toy

A stored run keeps its `<experiment>/<run>` path, so every tool that reads run folders reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
from pathlib import Path

from mech.io.atomic import write_json
from mech.io.run_folders import find_run_folders

STORED_FILES = ("results.json", "results.csv")
MAX_BYTES = 1_000_000
"""No stored file may reach this: results/ is for tables, not for checkpoints or answers."""


def command_for(experiment: str, config: dict) -> str:
    """`python -m experiments.<experiment>` with a flag for every field of `config` that differs
    from the experiment's default `Config` (tuples comma-separated, booleans as --x / --no-x)."""
    defaults = importlib.import_module(f"experiments.{experiment}").Config()
    flags = []
    for field in dataclasses.fields(defaults):
        if field.name not in config:
            continue
        value, default = config[field.name], getattr(defaults, field.name)
        if _same(value, default):
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(default, tuple) or isinstance(value, list):
            flags.append(f"{flag} {','.join(_text(v) for v in value)}")
        else:
            flags.append(f"{flag} {_text(value)}")
    return " ".join([f"python -m experiments.{experiment}", *flags])


def _same(value, default) -> bool:
    if isinstance(default, tuple):
        return list(default) == list(value or [])
    return value == default


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def store(run: Path, into: Path) -> Path:
    """Copy `run` (`.../<experiment>/<run>`) to `into/<experiment>/<run>`; its config gains
    `command`. Raises naming the file when one would reach `MAX_BYTES`."""
    run = Path(run)
    experiment = run.parent.name
    target = Path(into) / experiment / run.name
    config = json.loads((run / "config.json").read_text())
    for name in STORED_FILES:
        size = (run / name).stat().st_size
        if size >= MAX_BYTES:
            raise ValueError(f"{run / name}: {size} bytes, over the {MAX_BYTES} a stored result may hold")
    target.mkdir(parents=True, exist_ok=True)
    for name in STORED_FILES:
        shutil.copyfile(run / name, target / name)
    write_json(target / "config.json", {**config, "command": command_for(experiment, config)})
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders, or folders holding them")
    parser.add_argument(
        "--into", required=True, help="the results folder to copy them into, e.g. results/toy"
    )
    args = parser.parse_args(argv)
    for run in find_run_folders(args.runs):
        print(f"stored {run} -> {store(run, Path(args.into))}")


if __name__ == "__main__":
    main()
