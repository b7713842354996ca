"""Finding run folders: the folders given, or the run folders anywhere inside them (a `--out`
root holds `<experiment>/<run>/`), for the report and the findings table alike.

A run folder holds `results.json`, or `run.json` with `config.json` (a run that failed or is
still running). The search never descends into a run folder: an experiment's own finetune folders
stay part of its run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

RESULTS_FILE = "results.json"
FINDINGS_FILE = "findings.json"
"""The finding rows an experiment wrote for its run folder (read by the report)."""
RUN_FOLDER_RULE = "a folder holding results.json, or run.json with config.json"


def is_run_folder(path: Path) -> bool:
    return (path / RESULTS_FILE).is_file() or (
        (path / "run.json").is_file() and (path / "config.json").is_file()
    )


def find_run_folders(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Each given path that is a run folder, else the run folders inside it, oldest first (run
    folder names start with their creation time); each folder once. A path that is not a folder
    raises FileNotFoundError naming it."""
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise FileNotFoundError(f"{given}: not a folder")
        if is_run_folder(given):
            inside = [given]
        else:
            inside = []
            for folder, subfolders, _ in os.walk(given):
                subfolders.sort()
                if folder != str(given) and is_run_folder(Path(folder)):
                    inside.append(Path(folder))
                    subfolders.clear()
            inside.sort(key=lambda p: (p.name, str(p)))
        found += [p for p in inside if p not in found]
    return found
