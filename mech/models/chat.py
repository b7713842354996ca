"""Chat formatting: conversations -> token ids with a response mask, and padded batches.

The response mask marks exactly the tokens an assistant turn must generate: its content and the
template's end-of-turn marker (`<|im_end|>`, `<end_of_turn>`), not the role header before it nor
the newline after it. System and user tokens are never loss targets (the authors' trainer scored
them all). Spans are found by rendering the conversation up to each assistant turn, so any
prefix-stable chat template works without knowing its markers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Int
from jinja2.exceptions import TemplateError
from torch import Tensor
from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
PaddingSide = Literal["left", "right"]
Messages = Sequence[Mapping[str, str]]


def validate_messages(messages: object, *, where: str = "conversation") -> list[dict[str, str]]:
    """Check roles and contents; return plain dicts. `where` names the source in error messages.

    `messages` is typed `object`: this is where parsed JSON of any shape is checked, so a wrong
    shape must reach the ValueError below rather than a runtime type checker.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}: messages[{i}] is {type(message).__name__}, not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: messages[{i}].role is {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: messages[{i}].content must be a string, got {type(content).__name__}")
        if role == "assistant" and not content.strip():
            raise ValueError(f"{where}: messages[{i}] is an empty assistant turn")
        clean.append({"role": role, "content": content})
    return clean


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages,
    *,
    add_generation_prompt: bool = False,
    where: str = "conversation",
) -> str:
    """The conversation as text in the tokenizer's chat template.

    A template that refuses the conversation (Gemma's: no system role, strict user/assistant
    alternation) raises a ValueError naming `where` and the roles, not a bare jinja2 error.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template")
    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as err:
        roles = ", ".join(str(m.get("role")) if isinstance(m, Mapping) else "?" for m in messages)
        raise ValueError(
            f"{where}: the tokenizer's chat template refuses this conversation (roles: {roles}): {err}"
        ) from None


@dataclass(frozen=True)
class TokenizedChat:
    """One conversation's token ids; `response_mask[t]` is True where token t is an assistant token."""

    tokens: list[int]
    response_mask: list[bool]


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], where: str
) -> tuple[str, list[tuple[int, int]]]:
    full = render_chat(tokenizer, messages, where=where)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_chat(tokenizer, messages[:i], add_generation_prompt=True, where=where)
        upto = render_chat(tokenizer, messages[: i + 1], where=where)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise ValueError(
                f"{where}: the chat template is not prefix-stable around messages[{i}] "
                "(rendering the conversation up to that turn is not a prefix of the whole), "
                "so its assistant tokens cannot be located"
            )
        spans.append((len(prefix), len(upto.rstrip())))
    return full, spans


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, *, where: str = "conversation"
) -> TokenizedChat:
    """Token ids of a full conversation and the mask of its assistant tokens.

    A token belongs to a turn when it starts inside the turn's character span (content plus
    end-of-turn marker). Needs a fast tokenizer (offsets).
    """
    clean = validate_messages(messages, where=where)
    if not any(m["role"] == "assistant" for m in clean):
        raise ValueError(f"{where}: no assistant turn, so there is nothing to train on")
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer (offsets needed)")
    text, spans = _assistant_spans(tokenizer, clean, where)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        end > start and any(lo <= start < hi for lo, hi in spans) for start, end in encoded["offset_mapping"]
    ]
    return TokenizedChat(tokens=list(encoded["input_ids"]), response_mask=mask)


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, *, where: str = "prompt"
) -> list[int]:
    """Token ids of a conversation that ends with a user turn, plus the assistant header."""
    clean = validate_messages(messages, where=where)
    if clean[-1]["role"] == "assistant":
        raise ValueError(f"{where}: a prompt must end with a user turn, not an assistant turn")
    text = render_chat(tokenizer, clean, add_generation_prompt=True, where=where)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class ChatBatch:
    """A padded batch. Loss targets: `response_mask[b, t]` marks token t, predicted at t - 1."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    response_mask: Bool[Tensor, "batch pos"]
    padding_side: PaddingSide

    def to(self, device: torch.device | str) -> ChatBatch:
        return ChatBatch(
            self.tokens.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            self.padding_side,
        )

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(dim=1)

    @property
    def prediction_mask(self) -> Bool[Tensor, "batch pos"]:
        """Positions whose logits predict an assistant token: `response_mask` shifted left by one."""
        shifted = torch.zeros_like(self.response_mask)
        shifted[:, :-1] = self.response_mask[:, 1:]
        return shifted


def collate(
    examples: Sequence[TokenizedChat | Sequence[int]],
    *,
    pad_token_id: int,
    padding_side: PaddingSide = "right",
) -> ChatBatch:
    """Pad examples to one length. Use left padding for generation, either side for training."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [
        (ex.tokens, ex.response_mask) if isinstance(ex, TokenizedChat) else (list(ex), [False] * len(ex))
        for ex in examples
    ]
    width = max(len(tokens) for tokens, _ in rows)
    tokens = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (ids, mask) in enumerate(rows):
        n = len(ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        tokens[b, cols] = torch.tensor(ids, dtype=torch.long)
        attention[b, cols] = 1
        response[b, cols] = torch.tensor(mask, dtype=torch.bool)
    return ChatBatch(tokens, attention, response, padding_side)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
    return pad


def chat_batch(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    *,
    padding_side: PaddingSide = "right",
) -> ChatBatch:
    """Tokenize full conversations (with assistant answers) into a padded training batch."""
    examples = [
        tokenize_chat(tokenizer, conv, where=f"conversation {i}") for i, conv in enumerate(conversations)
    ]
    return collate(examples, pad_token_id=pad_token_id(tokenizer), padding_side=padding_side)


def prompt_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    *,
    padding_side: PaddingSide = "left",
) -> ChatBatch:
    """Tokenize prompts (ending in a user turn) with the assistant header, left-padded for generation."""
    examples = [tokenize_prompt(tokenizer, p, where=f"prompt {i}") for i, p in enumerate(prompts)]
    return collate(examples, pad_token_id=pad_token_id(tokenizer), padding_side=padding_side)
