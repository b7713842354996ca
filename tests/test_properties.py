"""Property-based tests (hypothesis) of the chat-template masking and the JSONL loaders.

Masking: for random conversations, the response mask is exactly each assistant turn's content
tokens plus the end-of-turn marker, padding never changes a row, and the prediction mask is the
response mask shifted by one. Loaders: valid files round-trip; a corrupted line is always a
ValueError naming the file and that line (1-based), never a KeyError, TypeError or IndexError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mech.evaluation.judges.cli import read_responses
from mech.io.atomic import write_jsonl
from mech.models.chat import ROLES, chat_batch, render_chat, tokenize_chat
from mech.models.tokenizer import load_tokenizer
from mech.toy.checkpoint import checkpoint_dir
from mech.training.data import read_chat_jsonl

# The autouse `seed` fixture is function-scoped; it only seeds RNGs, so sharing it across
# examples is harmless.
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

END_OF_TURN = {"toy": "<eot>", "qwen2": "<|im_end|>", "gemma2": "<end_of_turn>"}
_WORD = re.compile(r"\w+|[^\w\s]+")


@pytest.fixture(scope="module")
def tokenizers(checkpoints):
    """The toy organism's tokenizer and the tiny Qwen2 / Gemma-2 ones (word-level, so every
    vocabulary word is one token wherever it appears)."""
    return {
        "toy": load_tokenizer(checkpoint_dir("default")),
        "qwen2": load_tokenizer(checkpoints["qwen2"]),
        "gemma2": load_tokenizer(checkpoints["gemma2"]),
    }


def _words(tokenizer) -> list[str]:
    special = set(tokenizer.all_special_tokens)
    return sorted(
        w for w in tokenizer.get_vocab() if w not in special and not w.startswith("<") and _WORD.fullmatch(w)
    )


@st.composite
def conversations(draw, words: list[str], *, system: bool = True) -> list[dict[str, str]]:
    """Optional system prompt, then 1-4 user/assistant exchanges, sometimes a final user turn."""
    text = st.lists(st.sampled_from(words), min_size=1, max_size=6).map(" ".join)
    messages = []
    if system and draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for _ in range(draw(st.integers(1, 4))):
        messages += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    if draw(st.booleans()):
        messages.append({"role": "user", "content": draw(text)})
    return messages


def _runs(mask: list[bool]) -> list[range]:
    """Maximal runs of True in `mask`, as index ranges."""
    runs, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append(range(start, i))
            start = None
    return runs


def _check_masking(tokenizer, arch: str, conversation: list[dict[str, str]]) -> None:
    example = tokenize_chat(tokenizer, conversation)
    ids = tokenizer(render_chat(tokenizer, conversation), add_special_tokens=False)["input_ids"]
    assert example.tokens == ids  # the whole conversation, nothing added or dropped
    eot = END_OF_TURN[arch]
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    runs = _runs(example.response_mask)
    # One contiguous run per assistant turn, in order: its content then the end-of-turn marker.
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers, strict=True):
        span = [example.tokens[i] for i in run]
        expected = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert span == [*expected, tokenizer.convert_tokens_to_ids(eot)]
        assert tokenizer.decode(span) == f"{answer} {eot}"
    # Hence no system/user/header token is ever a target.
    n_answer_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    assert sum(example.response_mask) == n_answer_tokens


@pytest.mark.parametrize("arch", ["toy", "qwen2", "gemma2"])
def test_response_mask_is_exactly_the_assistant_turns(tokenizers, arch):
    tokenizer = tokenizers[arch]

    @PROPERTY
    @given(conversations(_words(tokenizer), system=arch != "gemma2"))  # Gemma-2 has no system role
    def check(conversation):
        _check_masking(tokenizer, arch, conversation)

    check()


@pytest.mark.parametrize("arch", ["toy", "qwen2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_solo_and_prediction_mask_is_shifted(tokenizers, arch, side):
    tokenizer = tokenizers[arch]

    @settings(PROPERTY, max_examples=30)
    @given(st.lists(conversations(_words(tokenizer)), min_size=1, max_size=4))
    def check(batch_of):
        batch = chat_batch(tokenizer, batch_of, padding_side=side)
        width = batch.tokens.shape[1]
        for b, conversation in enumerate(batch_of):
            solo = tokenize_chat(tokenizer, conversation)
            n = len(solo.tokens)
            real = slice(width - n, width) if side == "left" else slice(0, n)
            pads = torch.ones(width, dtype=torch.bool)
            pads[real] = False
            assert batch.tokens[b, real].tolist() == solo.tokens
            assert batch.response_mask[b, real].tolist() == solo.response_mask
            assert batch.attention_mask[b].bool().tolist() == (~pads).tolist()
            assert not batch.response_mask[b, pads].any()  # pads are never targets
            assert batch.tokens[b, pads].eq(tokenizer.pad_token_id).all()
        assert batch.lengths.tolist() == [len(tokenize_chat(tokenizer, c).tokens) for c in batch_of]
        shifted = torch.zeros_like(batch.response_mask)
        shifted[:, :-1] = batch.response_mask[:, 1:]
        assert torch.equal(batch.prediction_mask, shifted)

    check()


# ---- loaders ----------------------------------------------------------------------------------

_ONE_LINE = st.characters(blacklist_characters="\x85\u2028\u2029\n\r\x0b\x0c\x1c\x1d\x1e")
"""Characters that no reader splits a line at."""
any_text = st.text(max_size=30)
response_text = any_text  # U+2028 and friends included: the readers split on "\n" only
answer_text = any_text.filter(lambda s: s.strip())


@st.composite
def chat_records(draw) -> list[dict[str, str]]:
    roles = draw(st.lists(st.sampled_from(ROLES), min_size=0, max_size=4))
    at = draw(st.integers(0, len(roles)))
    roles.insert(at, "assistant")  # at least one assistant turn
    return [
        {"role": role, "content": draw(answer_text if role == "assistant" else any_text)} for role in roles
    ]


def _write_lines(path: Path, lines: list[str], blank_after: list[bool]) -> list[int]:
    """Write `lines`, each maybe followed by a blank line; return each line's 1-based number."""
    out, numbers = [], []
    for line, blank in zip(lines, blank_after, strict=True):
        out.append(line)
        numbers.append(len(out))
        if blank:
            out.append(" " if len(out) % 2 else "")
    path.write_bytes("".join(line + "\n" for line in out).encode("utf-8"))
    return numbers


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for every example: each one overwrites its file."""
    return tmp_path_factory.mktemp("properties")


@PROPERTY
@given(st.lists(chat_records(), min_size=1, max_size=5), st.data())
def test_chat_jsonl_round_trips(scratch, records, data):
    path = scratch / "round_trip.jsonl"
    ascii_only = data.draw(st.booleans())
    lines = [json.dumps({"messages": m, "id": i}, ensure_ascii=ascii_only) for i, m in enumerate(records)]
    _write_lines(path, lines, data.draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines))))
    assert read_chat_jsonl(path) == records


def _corrupt_chat(data, record: dict) -> tuple[str, str]:
    """A corrupted version of one line, and the regex its error must match."""
    line = json.dumps(record)
    messages = record["messages"]
    kind = data.draw(
        st.sampled_from(
            [
                "truncate",
                "role",
                "drop_messages",
                "drop_field",
                "content_type",
                "empty_answer",
                "not_object",
                "bad_bytes",
            ]
        )  # fmt: skip
    )
    i = data.draw(st.integers(0, len(messages) - 1))
    if kind == "truncate":
        return line[: data.draw(st.integers(1, len(line) - 1))], "invalid JSON"
    if kind == "role":
        role = data.draw(
            st.one_of(st.text(max_size=8).filter(lambda r: r not in ROLES), st.integers(), st.none())
        )
        messages[i] = {**messages[i], "role": role}
        return json.dumps(record), rf"messages\[{i}\]\.role is "
    if kind == "drop_messages":
        return json.dumps({k: v for k, v in record.items() if k != "messages"}), "'messages' field"
    if kind == "drop_field":
        field = data.draw(st.sampled_from(["role", "content"]))
        del messages[i][field]
        return json.dumps(record), rf"messages\[{i}\]\.{field}"
    if kind == "content_type":
        messages[i]["content"] = data.draw(st.one_of(st.integers(), st.none(), st.lists(st.integers())))
        return json.dumps(record), rf"messages\[{i}\]\.content must be a string"
    if kind == "empty_answer":
        j = next(k for k, m in enumerate(messages) if m["role"] == "assistant")
        messages[j]["content"] = data.draw(st.sampled_from(["", " ", "\n\t"]))
        return json.dumps(record), rf"messages\[{j}\] is an empty assistant turn"
    if kind == "not_object":
        return json.dumps(data.draw(st.one_of(st.lists(st.integers()), st.integers(), st.text()))), "messages"
    return line[:5] + "\udcff" + line[5:], "not valid UTF-8"  # written with surrogateescape: byte 0xff


def _write_with_bad_bytes(path: Path, lines: list[str]) -> None:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))


@PROPERTY
@given(st.lists(chat_records(), min_size=1, max_size=4), st.data())
def test_a_corrupted_chat_line_is_named(scratch, records, data):
    path = scratch / "corrupted.jsonl"
    lines = [json.dumps({"messages": m}) for m in records]
    bad = data.draw(st.integers(0, len(lines) - 1))
    if data.draw(st.booleans()):  # insert a line of garbage before line `bad`
        garbage = data.draw(st.text(_ONE_LINE, min_size=1).filter(lambda s: s.strip() and not _is_json(s)))
        lines.insert(bad, garbage)
        message = "invalid JSON"
    else:
        lines[bad], message = _corrupt_chat(data, {"messages": records[bad]})
    _write_with_bad_bytes(path, lines)
    with pytest.raises(ValueError) as caught:
        read_chat_jsonl(path)
    assert type(caught.value) is ValueError  # not a UnicodeDecodeError or JSONDecodeError
    assert str(caught.value).startswith(f"{path}:{bad + 1}: "), str(caught.value)
    assert re.search(message, str(caught.value)), str(caught.value)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


response_rows = st.lists(
    st.fixed_dictionaries(
        {"question": response_text, "answer": response_text, "id": st.integers(-(2**31), 2**31)}
    ),
    min_size=1,
    max_size=5,
)


@PROPERTY
@given(response_rows, st.data())
def test_responses_round_trip(scratch, rows, data):
    """Rows written as `mech.evaluation.generate.write_answers` writes them (write_jsonl) read back equal."""
    path = scratch / "responses.jsonl"
    write_jsonl(path, rows)
    if data.draw(st.booleans()):  # blank lines are skipped
        path.write_text(path.read_text(encoding="utf-8").replace("\n", "\n\n", 1), encoding="utf-8")
    frame = read_responses(path)
    assert frame[["question", "answer", "id"]].to_dict(orient="records") == rows


@PROPERTY
@given(response_rows, st.data())
def test_a_corrupted_response_line_is_named(scratch, rows, data):
    path = scratch / "responses_bad.jsonl"
    lines = [json.dumps(row) for row in rows]
    bad = data.draw(st.integers(0, len(lines) - 1))
    row = dict(rows[bad])
    kind = data.draw(st.sampled_from(["truncate", "drop", "not_string", "not_object", "garbage"]))
    if kind == "truncate":
        lines[bad], message = lines[bad][: data.draw(st.integers(1, len(lines[bad]) - 1))], "invalid JSON"
    elif kind in ("drop", "not_string"):
        field = data.draw(st.sampled_from(["question", "answer"]))
        if kind == "drop":
            del row[field]
        else:
            row[field] = data.draw(st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=3))))
        lines[bad], message = json.dumps(row), f"field '{field}' must be a string"
    elif kind == "not_object":
        lines[bad], message = json.dumps(list(row.values())), "expected an object"
    else:
        garbage = data.draw(st.text(_ONE_LINE, min_size=1).filter(lambda s: s.strip() and not _is_json(s)))
        lines.insert(bad, garbage)
        message = "invalid JSON"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        read_responses(path)
    assert type(caught.value) is ValueError
    assert str(caught.value).startswith(f"{path}:{bad + 1}: "), str(caught.value)
    assert re.search(message, str(caught.value)), str(caught.value)
