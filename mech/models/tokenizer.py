"""Word-level tokenizers with a chat template, built offline with `tokenizers`.

Used for the embedded toy organism and for tiny stand-ins of real chat models in tests: the result
is a `PreTrainedTokenizerFast`, so `apply_chat_template`, offsets and padding behave as for a real
model's tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

_GENERIC_FAST_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def word_level_tokenizer(
    words: Iterable[str],
    *,
    special_tokens: Sequence[str],
    chat_template: str,
    bos_token: str | None,
    eos_token: str,
    pad_token: str,
    unk_token: str,
) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer; special tokens take the first ids in order.

    Words are deduplicated in first-seen order after the special tokens, so the vocabulary (and
    every id) is a deterministic function of the inputs.
    """
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *words]:
        vocab.setdefault(token, len(vocab))
    for required in (t for t in (bos_token, eos_token, pad_token, unk_token) if t is not None):
        if required not in special_tokens:
            raise ValueError(f"special token {required!r} must be listed in special_tokens")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(special_tokens))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in checkpoint directory `path`, offline.

    A generic fast tokenizer (our word-level ones) is loaded from its `tokenizer.json` as it is:
    `AutoTokenizer` would map the model type (e.g. qwen2) to that model's BPE tokenizer class and
    rebuild a different tokenizer from the same files.
    """
    path = Path(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config.get("tokenizer_class") in _GENERIC_FAST_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
