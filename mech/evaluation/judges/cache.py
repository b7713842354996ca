"""A persistent cache of raw judge responses in SQLite, so no paid call is ever made twice.

Values are the raw response data (top logprobs, sampled text, token usage), never scores: the
scoring rule can change and be re-applied to old responses without new calls. The command line
(`python -m mech.evaluation.judges`) caches in `default_judge_cache_path()` unless told otherwise;
the library caches only where `OpenAIJudgeConfig.cache_path` says.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def default_judge_cache_path() -> Path:
    """The user's judge cache: `$XDG_CACHE_HOME/misalign-lens/judge.sqlite`, where an unset, empty
    or relative XDG_CACHE_HOME means `~/.cache` (the XDG rule). Nothing is created here."""
    root = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(root) if root and Path(root).is_absolute() else Path.home() / ".cache"
    return base / "misalign-lens" / "judge.sqlite"


def cache_key(
    *,
    model: str,
    prompt_version: str,
    metric: str,
    question: str,
    answer: str,
    params: Mapping[str, Any],
) -> str:
    """sha256 over everything that determines a response; `params` are the sampling parameters."""
    payload = json.dumps(
        [model, prompt_version, metric, question, answer, json.dumps(dict(params), sort_keys=True)],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Key -> JSON value store in one SQLite file (`":memory:"` works too).

    Every `put` commits, so a run killed mid-way keeps all the responses it paid for. One
    connection is shared and guarded by a lock: meant for one event loop (writes on its thread),
    tolerant of being created on another thread.
    """

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._lock = threading.Lock()
        # A shared user cache may be written by several runs at once: wait for their short
        # transactions rather than fail after sqlite's default 5 s.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=60.0)
        with self._lock:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._conn.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        text = json.dumps(dict(value), ensure_ascii=False)
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, text))
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
