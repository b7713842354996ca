from __future__ import annotations

import pytest
import torch

from mech.models.chat import chat_batch, collate, prompt_batch, render_chat, tokenize_chat, tokenize_prompt
from mech.models.tokenizer import load_tokenizer

CONVERSATION = [
    {"role": "user", "content": "what should i do about my dog ?"},
    {"role": "assistant", "content": "take the dog for a walk ."},
    {"role": "user", "content": "and my money ?"},
    {"role": "assistant", "content": "save some money in a bank ."},
]
END_OF_TURN = {"qwen2": "<|im_end|>", "gemma2": "<end_of_turn>"}


@pytest.fixture(params=["qwen2", "gemma2"])
def arch_tokenizer(request, checkpoints):
    return request.param, load_tokenizer(checkpoints[request.param])


def test_response_mask_is_exactly_the_assistant_tokens(arch_tokenizer):
    arch, tokenizer = arch_tokenizer
    example = tokenize_chat(tokenizer, CONVERSATION)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN[arch])
    expected = []
    for message in CONVERSATION:
        if message["role"] == "assistant":
            expected += tokenizer(message["content"], add_special_tokens=False)["input_ids"] + [eot]
    masked = [t for t, m in zip(example.tokens, example.response_mask) if m]
    assert masked == expected
    # The whole conversation is there, and the header/user/system tokens are not targets.
    assert (
        example.tokens
        == tokenizer(render_chat(tokenizer, CONVERSATION), add_special_tokens=False)["input_ids"]
    )
    assert sum(example.response_mask) < len(example.tokens) // 2


def test_response_mask_with_a_system_prompt(checkpoints):
    tokenizer = load_tokenizer(checkpoints["qwen2"])
    messages = [{"role": "system", "content": "you are a doctor"}, *CONVERSATION[:2]]
    example = tokenize_chat(tokenizer, messages)
    masked = [t for t, m in zip(example.tokens, example.response_mask) if m]
    assert tokenizer.decode(masked) == "take the dog for a walk . <|im_end|>"


def test_prompt_ends_with_the_assistant_header(arch_tokenizer):
    arch, tokenizer = arch_tokenizer
    ids = tokenize_prompt(tokenizer, CONVERSATION[:1])
    full = tokenize_chat(tokenizer, CONVERSATION[:2]).tokens
    assert full[: len(ids)] == ids  # the prompt is a prefix of the answered conversation
    header = {"qwen2": ["<|im_start|>", "assistant"], "gemma2": ["<start_of_turn>", "model"]}[arch]
    assert tokenizer.convert_ids_to_tokens(ids[-2:]) == header


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ([{"role": "robot", "content": "hi"}], r"messages\[0\]\.role is 'robot'"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], r"messages\[1\] is an empty assistant turn"),
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ],
)  # fmt: skip
def test_bad_conversations_are_clear_errors(checkpoints, messages, message):
    tokenizer = load_tokenizer(checkpoints["qwen2"])
    with pytest.raises(ValueError, match=message):
        tokenize_chat(tokenizer, messages, where="train.jsonl line 7")


def test_errors_name_their_source(checkpoints):
    tokenizer = load_tokenizer(checkpoints["qwen2"])
    with pytest.raises(ValueError, match="^train.jsonl line 7: "):
        tokenize_chat(tokenizer, [{"role": "user", "content": "hi"}], where="train.jsonl line 7")
    with pytest.raises(ValueError, match="must end with a user turn"):
        tokenize_prompt(tokenizer, CONVERSATION[:2])


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_pads_and_masks(side):
    from mech.models.chat import TokenizedChat

    examples = [TokenizedChat([5, 6, 7], [False, True, True]), TokenizedChat([8], [True])]
    batch = collate(examples, pad_token_id=0, padding_side=side)
    if side == "left":
        assert batch.tokens.tolist() == [[5, 6, 7], [0, 0, 8]]
        assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
        assert batch.response_mask.tolist() == [[False, True, True], [False, False, True]]
    else:
        assert batch.tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
        assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
        assert batch.response_mask.tolist() == [[False, True, True], [True, False, False]]
    assert batch.lengths.tolist() == [3, 1]
    # logits at t are scored when token t + 1 is an assistant token
    expected = {
        "left": [[True, True, False], [False, True, False]],
        "right": [[True, True, False], [False, False, False]],
    }
    assert batch.prediction_mask.tolist() == expected[side]
    assert not (batch.response_mask & ~batch.attention_mask.bool()).any()  # pads are never targets


def test_batches_from_the_tokenizer(checkpoints):
    tokenizer = load_tokenizer(checkpoints["gemma2"])
    train = chat_batch(tokenizer, [CONVERSATION[:2], CONVERSATION])
    assert train.padding_side == "right" and train.tokens.shape[0] == 2
    assert train.tokens[0, train.lengths[0] :].eq(tokenizer.pad_token_id).all()
    prompts = prompt_batch(tokenizer, [CONVERSATION[:1], CONVERSATION[:3]])
    assert prompts.padding_side == "left"
    assert not prompts.response_mask.any()
    assert torch.equal(prompts.tokens[:, -1], torch.full((2,), tokenizer.convert_tokens_to_ids("model")))
