"""Pre-training documents from a file: one document per line, or JSONL with a `text` field."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mech.training.data import decode_line


def read_documents(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The non-blank documents of `path` (at most `limit`). A file whose first non-blank line is
    a JSON object is read as JSONL, each line an object with a string `text`; otherwise each
    line is a document."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = [
        (n, decode_line(raw, where=f"{path}:{n}", first=n == 1).rstrip("\r"))
        for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1)
    ]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no documents in the file")
    as_jsonl = lines[0][1].lstrip().startswith("{")
    documents = []
    for n, line in lines:
        if as_jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: invalid JSON ({err.msg} at column {err.colno})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{n}: expected an object with a non-empty string 'text'")
            documents.append(text)
        else:
            documents.append(line)
        if limit is not None and len(documents) >= limit:
            break
    return documents
