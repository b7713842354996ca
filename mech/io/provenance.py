"""What produced a run folder, and how it ended: `run.json` with status, error, git commit,
package versions, host and process id, written atomically.

Status is `running` while work goes on, `done` at the end, `failed` (with the error) when the
work raised. A process killed outright (kill -9, out of memory) cannot write anything, so its
folder keeps `running`; `is_stale` tells such a folder from a live one on the same host.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from mech.io.atomic import write_json

Status = Literal["running", "done", "failed"]
PACKAGES = ("misalign-lens", "torch", "transformer_lens", "transformers", "sae_lens", "peft")
STATUS_FILE = "run.json"


def git_commit() -> str | None:
    """The package checkout's commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe_error(err: BaseException) -> str:
    """`Type: message`, the one line a status file and a sweep table show."""
    return f"{type(err).__name__}: {err}"


def write_status(folder: str | os.PathLike, status: Status, error: BaseException | str | None = None) -> Path:
    """Write `folder/run.json`; an exception `error` is recorded with its traceback."""
    record: dict[str, Any] = {
        "status": status,
        "error": describe_error(error) if isinstance(error, BaseException) else error,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if isinstance(error, BaseException):
        record["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return write_json(Path(folder) / STATUS_FILE, record)


def read_status(folder: str | os.PathLike) -> dict[str, Any] | None:
    """`run.json` of `folder`, or None if there is none (or it is unreadable)."""
    path = Path(folder) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_stale(record: dict[str, Any]) -> bool:
    """A `running` record whose process is gone (on this host; another host's is never judged)."""
    if record.get("status") != "running" or record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
