"""run.json: status, error and provenance, and telling a killed run from a live one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mech.io.provenance import is_stale, read_status, write_status


def test_status_records_the_error_with_its_traceback_and_provenance(tmp_path):
    write_status(tmp_path, "running")
    assert read_status(tmp_path)["status"] == "running" and read_status(tmp_path)["error"] is None
    try:
        raise KeyError("seed")
    except KeyError as err:
        write_status(tmp_path, "failed", err)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "KeyError: 'seed'"
    assert "raise KeyError" in record["traceback"]
    assert record["pid"] == os.getpid() and record["versions"]["torch"]
    assert read_status(tmp_path / "nowhere") is None


def test_a_running_record_is_stale_only_when_its_process_is_gone(tmp_path):
    write_status(tmp_path, "running")
    assert not is_stale(read_status(tmp_path))  # this process
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    record = {**read_status(tmp_path), "pid": int(dead.stdout)}
    assert is_stale(record)
    assert not is_stale({**record, "host": "another-host"})  # cannot be judged from here
    assert not is_stale({**record, "status": "done"})
