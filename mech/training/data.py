"""Chat training data: JSONL files in the `messages` format, checked line by line, and
length-bucketed, right-padded batches of tokenized conversations.

One conversation per line: `{"messages": [{"role": "user", "content": ...},
{"role": "assistant", "content": ...}]}` (other keys are kept but unused). A bad line raises an
error naming the file and line; nothing is read half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from mech.models.chat import (
    ChatBatch,
    Messages,
    TokenizedChat,
    collate,
    pad_token_id,
    tokenize_chat,
    validate_messages,
)

ChatData = str | os.PathLike | datasets.Dataset | Sequence[Messages]
"""A JSONL path, a `datasets.Dataset` with a `messages` column, or a list of conversations."""


def read_chat_jsonl(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    """Every conversation in a `messages` JSONL file, validated; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    conversations = []
    # Bytes, split on b"\n" only: a decoding error names its line, and the line numbers are
    # those of `wc -l` and editors (text mode would also split on a lone "\r").
    with path.open("rb") as lines:
        for lineno, raw in enumerate(lines, start=1):
            where = f"{path}:{lineno}"
            line = decode_line(raw, where=where, first=lineno == 1).rstrip("\r\n")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict) or "messages" not in record:
                found = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{where}: expected an object with a 'messages' field, found {found}")
            messages = validate_messages(record["messages"], where=where)
            if not any(m["role"] == "assistant" for m in messages):
                raise ValueError(f"{where}: no assistant turn, so there is nothing to train on")
            conversations.append(messages)
    if not conversations:
        raise ValueError(f"{path}: no conversations in the file")
    return conversations


def decode_line(raw: bytes, *, where: str, first: bool = False) -> str:
    """One line of a UTF-8 text file (a byte-order mark on the first line is dropped)."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{where}: not valid UTF-8 (byte {raw[err.start]:#04x} at byte {err.start + 1} of the line); "
            "save the file as UTF-8"
        ) from None


def load_chat_dataset(path: str | os.PathLike) -> datasets.Dataset:
    """A `messages` JSONL file as a `datasets.Dataset`, after `read_chat_jsonl`'s checks."""
    return datasets.Dataset.from_list([{"messages": m} for m in read_chat_jsonl(path)])


def conversations_of(data: ChatData, *, name: str = "data") -> tuple[list[list[dict[str, str]]], str]:
    """The conversations in `data` and a description of where they came from."""
    if isinstance(data, (str, os.PathLike)):
        return read_chat_jsonl(data), str(data)
    if isinstance(data, datasets.Dataset):
        if "messages" not in data.column_names:
            raise ValueError(f"{name}: dataset has no 'messages' column (columns: {data.column_names})")
        rows = data["messages"]
        source = f"{name} (datasets.Dataset)"
    else:
        rows, source = list(data), f"{name} (in memory)"
    if not rows:
        raise ValueError(f"{name}: no conversations")
    return [validate_messages(m, where=f"{source}[{i}]") for i, m in enumerate(rows)], source


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages], *, source: str, max_len: int
) -> list[TokenizedChat]:
    """Tokenize with response masks; a conversation longer than `max_len` tokens is an error."""
    examples = []
    for i, conversation in enumerate(conversations):
        example = tokenize_chat(tokenizer, conversation, where=f"{source}[{i}]")
        if len(example.tokens) > max_len:
            raise ValueError(
                f"{source}[{i}]: {len(example.tokens)} tokens, more than the model's n_ctx {max_len}"
            )
        examples.append(example)
    return examples


def fingerprint(examples: Sequence[TokenizedChat]) -> str:
    """A short hash of token ids and masks: a resumed run must see the same data."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.tokens, ex.response_mask]).encode())
    return digest.hexdigest()[:16]


def length_batches(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[TokenizedChat], batch_size: int | None
) -> list[ChatBatch]:
    """Right-padded batches of examples of similar length (sorted, then chunked): little padding.

    `batch_size=None` puts everything in one batch. Membership is fixed; trainers shuffle the order.
    """
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].tokens), i))
    size = batch_size or len(order)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad = pad_token_id(tokenizer)
    return [
        collate([examples[i] for i in order[start : start + size]], pad_token_id=pad, padding_side="right")
        for start in range(0, len(order), size)
    ]


def seeded_sample(items: list, size: int | None, seed: int = 0) -> list:
    """A seeded sample of `size` items (conversations); all of them when `size` is None or too large."""
    if size is None or size >= len(items):
        return items
    return random.Random(seed).sample(items, size)
