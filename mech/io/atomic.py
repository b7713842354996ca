"""Atomic file writes: a temp file in the same folder, then a rename.

A reader (or a run resumed after kill -9) sees the old file or the new one, never half of
either. Every artefact the package writes goes through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)` on a fresh temp file next to `path`, then rename it over `path`.

    On any error (or interrupt) the temp file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; run folders and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON atomically (non-JSON values such as paths become strings)."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Any) -> Path:
    """Write one JSON object per line atomically."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
