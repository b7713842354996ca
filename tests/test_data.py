from __future__ import annotations

import json

import pytest
from chat_data import KL, TRAIN

from mech.training.data import length_batches, load_chat_dataset, read_chat_jsonl, tokenize_conversations


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_good_file_loads_as_a_dataset(tmp_path):
    path = _write(tmp_path, [json.dumps({"messages": m, "id": i}) for i, m in enumerate(TRAIN)] + [""])
    dataset = load_chat_dataset(path)
    assert len(dataset) == len(TRAIN) and dataset[1]["messages"] == TRAIN[1]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}', "invalid JSON"),
        ('["not", "an", "object"]', "expected an object with a 'messages' field"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "messages\\[0\\].role is 'bot'"),
        ('{"messages": [{"content": "hi"}]}', "messages\\[0\\].role is None"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
            "empty assistant turn",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
        ('{"messages": []}', "non-empty list"),
    ],
)
def test_bad_lines_are_reported_with_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"messages": TRAIN[0]})
    path = _write(tmp_path, [good, "", bad_line, good])
    with pytest.raises(ValueError, match=f"data.jsonl:3: .*{message}"):
        read_chat_jsonl(path)


def test_missing_and_empty_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_chat_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no conversations"):
        read_chat_jsonl(_write(tmp_path, [""]))


def test_length_batches_group_similar_lengths_and_keep_everything(tiny_qwen2):
    examples = tokenize_conversations(tiny_qwen2.tokenizer, TRAIN + KL, source="t", max_len=128)
    batches = length_batches(tiny_qwen2.tokenizer, examples, batch_size=3)
    assert [b.tokens.shape[0] for b in batches] == [3, 3, 3]
    assert sum(int(b.attention_mask.sum()) for b in batches) == sum(len(e.tokens) for e in examples)
    widths = [b.tokens.shape[1] for b in batches]
    assert widths == sorted(widths)
    with pytest.raises(ValueError, match=r"t\[0\]: \d+ tokens, more than the model's n_ctx 5"):
        tokenize_conversations(tiny_qwen2.tokenizer, TRAIN, source="t", max_len=5)
