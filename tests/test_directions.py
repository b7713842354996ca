"""Mean-diff directions, stream ablation, direction steering and the cross-finetune matrix."""

from __future__ import annotations

import contextlib
import hashlib

import pandas as pd
import pytest
import torch
from chat_data import TRAIN

from mech.adapters.steering import SteeringVector
from mech.directions.activations import (
    answer_batches,
    conversations_from_answers,
    pooled_activations,
    text_batches,
)
from mech.directions.interventions import (
    direction_steering,
    mean_over_draws,
    stream_ablation,
    with_random_controls,
)
from mech.directions.mean_diff import (
    LabelRule,
    balanced,
    control_seed,
    label_answers,
    mean_diff,
    misalignment_direction,
    random_like,
)
from mech.evaluation.generate import SamplingConfig, sample_answers
from mech.evaluation.judges.protocol import em_labels
from mech.evaluation.questions import Question
from mech.evaluation.rates import em_indicator
from mech.models.chat import chat_batch, tokenize_prompt


def _frame(conversations, aligned, coherent):
    return pd.DataFrame(
        {"question": [c[0]["content"] for c in conversations], "answer": [c[1]["content"] for c in conversations],
         "aligned": aligned, "coherent": coherent}
    )  # fmt: skip


def test_labels_follow_the_judge_thresholds():
    frame = pd.DataFrame(
        {"aligned": [10, 30, 31, 70, 71, 90, 5, None], "coherent": [90, 90, 90, 90, 90, 90, 50, 90]}
    )
    labels = label_answers(frame, LabelRule())
    assert labels.tolist() == ["misaligned", None, None, None, "aligned", "aligned", None, None]


def test_direction_labels_count_misaligned_answers_as_the_em_rate_does():
    """aligned == 30 is not misaligned for the EM rate (aligned < 30), nor for the directions."""
    frame = pd.DataFrame({"aligned": [29.0, 30.0, 30.5, None, 10.0], "coherent": [90, 90, 90, 90, 50]})
    by_labels = (label_answers(frame) == "misaligned").tolist()
    by_em_rate = em_labels(frame).astype(bool).tolist()
    assert by_labels == by_em_rate == em_indicator(frame)[0].tolist() == [True, False, False, False, False]


def test_balancing_is_seeded_and_equalises_the_classes():
    labels = pd.Series(["aligned"] * 7 + ["misaligned"] * 3 + [None] * 2)
    a, b, c = balanced(labels, seed=0), balanced(labels, seed=0), balanced(labels, seed=1)
    assert (a == "aligned").sum() == (a == "misaligned").sum() == 3
    assert a.equals(b) and a.isna().sum() == 6
    assert not a.equals(c)


def test_mean_diff_equals_a_hand_computation(tiny_qwen2):
    model, convs = tiny_qwen2, TRAIN
    is_bad = torch.tensor([False, True, True, False, False])
    acts = pooled_activations(model, answer_batches(model, convs, batch_size=2), layers=[0, 2], point="pre")
    direction = mean_diff(acts, is_bad, ~is_bad)
    # By hand: one padded batch, full cache, token-pooled means of the assistant tokens.
    batch = chat_batch(model.tokenizer, convs)
    _, cache = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
    for i, layer in enumerate((0, 2)):
        resid = cache[f"blocks.{layer}.hook_resid_pre"]
        select = batch.response_mask & batch.attention_mask.bool()
        bad_tokens = resid[select & is_bad[:, None]]
        good_tokens = resid[select & ~is_bad[:, None]]
        expected = bad_tokens.mean(0) - good_tokens.mean(0)
        torch.testing.assert_close(direction.directions[i], expected, atol=1e-5, rtol=1e-4)
    assert direction.n_positive == 2 and direction.n_negative == 3
    # Per-answer pooling weighs answers equally instead.
    per_answer = mean_diff(acts, is_bad, ~is_bad, pooling="answer").at(2)
    means = acts.per_example()[1]
    torch.testing.assert_close(per_answer, means[is_bad].mean(0) - means[~is_bad].mean(0))


def test_answers_sampled_under_a_system_prompt_are_rebuilt_with_it(tiny_qwen2):
    model, system = tiny_qwen2, "you are a doctor"
    questions = [Question("q", "how do i treat a cold ?", system=system), Question("p", "hello there")]
    answers = sample_answers(model, questions, SamplingConfig(temperature=0.0, max_new_tokens=4))
    assert answers["system"].tolist() == [system, None]
    tokens, attention, select = answer_batches(model, conversations_from_answers(answers))[0]
    for row, question in enumerate(questions):
        messages = [{"role": "system", "content": system}] if question.system else []
        prompt = tokenize_prompt(model.tokenizer, [*messages, {"role": "user", "content": question.question}])
        used = tokens[row][attention[row].bool()].tolist()
        assert used[: len(prompt)] == prompt  # the prompt the answer was sampled from...
        answer = model.tokenizer.decode(tokens[row][select[row]], skip_special_tokens=True)
        assert answer.strip() == answers["answer"][row]  # ...then the answer (and end of turn)
        assert not select[row][attention[row].bool()][: len(prompt)].any()
    # Answer files written before the `system` column load as chats without a system turn.
    older = conversations_from_answers(answers.drop(columns="system"))
    assert [m["role"] for m in older[0]] == ["user", "assistant"]


def test_only_answer_tokens_count(tiny_qwen2):
    model = tiny_qwen2
    convs = [TRAIN[0], [TRAIN[0][0], {"role": "assistant", "content": TRAIN[1][1]["content"]}]]
    acts = pooled_activations(model, answer_batches(model, convs), layers=[1])
    # Same question, different answers: counts are the answers' token counts (+ end of turn).
    batch = chat_batch(model.tokenizer, convs)
    assert acts.counts.tolist() == batch.response_mask.sum(1).tolist()
    # Padding never counts: a batch of one gives the same sums as the padded pair.
    solo = pooled_activations(model, answer_batches(model, convs[1:]), layers=[1])
    torch.testing.assert_close(solo.sums[0, 0], acts.sums[0, 1], atol=1e-4, rtol=1e-4)


def test_misalignment_direction_from_judged_answers(tiny_qwen2):
    scored = _frame(TRAIN, aligned=[90, 10, 5, 95, 50], coherent=[90, 90, 90, 90, 90])
    direction, acts, labels = misalignment_direction(tiny_qwen2, scored, layers=[1], balance=False)
    assert labels.tolist() == ["aligned", "misaligned", "misaligned", "aligned"]  # row 4 is neither
    assert acts.sums.shape == (1, 4, tiny_qwen2.cfg.d_model)
    assert direction.norms[0] > 0 and direction.layers == (1,)
    with pytest.raises(ValueError, match="both classes"):
        misalignment_direction(tiny_qwen2, _frame(TRAIN[:2], [90, 95], [90, 90]), layers=[1], balance=False)


def _stream(model, tokens):
    names = [f"blocks.{n}.hook_resid_pre" for n in range(model.cfg.n_layers)]
    names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return {n: cache[n] for n in names}


def test_stream_ablation_removes_the_component_everywhere(tiny_model):
    tokens = torch.randint(0, 64, (3, 10))
    direction = torch.randn(tiny_model.cfg.d_model)
    unit = direction / direction.norm()
    clean = _stream(tiny_model, tokens)
    with stream_ablation(tiny_model, 5 * direction):
        ablated = _stream(tiny_model, tokens)
    for name, acts in ablated.items():
        assert (acts @ unit).abs().max() < 1e-4, name
        assert (clean[name] @ unit).abs().max() > 1e-2, name  # there was something to remove
    assert not tiny_model.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks  # removed on exit


def test_stream_ablation_also_removes_a_steering_adapter_at_the_same_hook(tiny_model):
    tokens = torch.randint(0, 64, (2, 6))
    vector = SteeringVector(tiny_model.cfg.d_model, layer=1, point="pre", init_std=1.0, seed=0)
    unit = vector.effective().detach() / vector.norm()
    with vector.applied(tiny_model), stream_ablation(tiny_model, unit):
        acts = _stream(tiny_model, tokens)["blocks.1.hook_resid_pre"]
    assert (acts @ unit).abs().max() < 1e-4


def test_direction_steering_adds_alpha_times_the_unit_direction(tiny_model):
    tokens = torch.randint(0, 64, (2, 6))
    direction = torch.randn(tiny_model.cfg.d_model) * 7
    name = "blocks.1.hook_resid_pre"
    clean = _stream(tiny_model, tokens)[name]
    with direction_steering(tiny_model, direction, alpha=3, layer=1):
        steered = _stream(tiny_model, tokens)[name]
    torch.testing.assert_close(
        steered - clean, (3 * direction / direction.norm()).expand_as(clean), atol=1e-5, rtol=0
    )


def test_random_control_has_equal_norm_and_another_direction():
    direction = torch.randn(128, generator=torch.Generator().manual_seed(123)) * 3
    control = random_like(direction, seed=0)
    assert torch.isclose(control.norm(), direction.norm())
    assert abs(torch.nn.functional.cosine_similarity(control, direction, dim=0)) < 0.4
    assert torch.equal(control, random_like(direction, seed=0))


def test_every_direction_has_its_own_random_controls_of_its_own_norm():
    g = torch.Generator().manual_seed(5)
    directions = {
        name: torch.randn(64, generator=g) * scale for name, scale in (("A", 0.5), ("B", 3.0), ("C", 40.0))
    }
    controls = with_random_controls(directions, seed=0, draws=3)
    assert list(controls) == ["A", "random:A#0", "random:A#1", "random:A#2", "B", "random:B#0",
                              "random:B#1", "random:B#2", "C", "random:C#0", "random:C#1", "random:C#2"]  # fmt: skip
    for name, direction in directions.items():
        for k in range(3):
            assert torch.isclose(controls[f"random:{name}#{k}"].norm(), direction.norm(), rtol=1e-6)
    draws = torch.stack([v / v.norm() for label, v in controls.items() if label.startswith("random:")])
    cosines = draws @ draws.T - torch.eye(len(draws))
    assert cosines.abs().max() < 0.6  # nine different directions, not one shared one
    # Seeded from the name, not the position: reordering or dropping directions keeps each one's.
    alone = with_random_controls({"C": directions["C"]}, seed=0, draws=3)
    assert torch.equal(alone["random:C#1"], controls["random:C#1"])
    # The documented rule, pinned: first 6 bytes of sha256("seed:draw:name").
    assert control_seed("A") == int.from_bytes(hashlib.sha256(b"0:0:A").digest()[:6], "big")
    assert (
        len({control_seed("A"), control_seed("A", draw=1), control_seed("A", seed=1), control_seed("B")}) == 4
    )


def test_the_mean_over_draws_is_added_and_the_draws_stay():
    frame = pd.DataFrame({"finetune": ["f"] * 4, "direction": ["A", "random:A#0", "random:A#1", "none"],
                          "metric": ["m"] * 4, "value": [1.0, 2.0, 4.0, 5.0]})  # fmt: skip
    out = mean_over_draws(frame).set_index("direction")["value"]
    assert out.to_dict() == {"A": 1.0, "random:A#0": 2.0, "random:A#1": 4.0, "none": 5.0, "random:A": 3.0}


def test_text_batches_select_every_real_token(tiny_qwen2):
    texts = ["hello , how can i help you ?", "take the dog"]
    acts = pooled_activations(tiny_qwen2, text_batches(tiny_qwen2, texts), layers=[0])
    lengths = [len(tiny_qwen2.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert acts.counts.tolist() == lengths


def test_cross_finetune_matrix_shape_labels_and_controls(tiny_model):
    from mech.directions.interventions import ablation_matrix

    tokens = torch.randint(0, 64, (2, 6))
    vectors = {
        name: SteeringVector(32, layer=1, point="pre", init_std=1.0, seed=s) for s, name in enumerate("AB")
    }
    finetunes = {name: (lambda v=v: v.applied(tiny_model)) for name, v in vectors.items()}
    finetunes["chat"] = contextlib.nullcontext
    directions = {name: v.effective().detach() for name, v in vectors.items()}
    unit_a = directions["A"] / directions["A"].norm()

    def measure(model):
        resid = _stream(model, tokens)["blocks.1.hook_resid_pre"]
        return {"proj_a": float((resid @ unit_a).abs().mean())}

    matrix = ablation_matrix(tiny_model, finetunes, directions, measure, random_draws=2)
    assert len(matrix) == 3 * 7  # finetunes x (none, A, random:A#0, random:A#1, B, random:B#0, random:B#1)
    assert set(matrix["direction"]) == {
        "none",
        "A",
        "random:A#0",
        "random:A#1",
        "B",
        "random:B#0",
        "random:B#1",
    }
    table = matrix.pivot(index="finetune", columns="direction", values="value")
    assert table.loc["A", "A"] < 1e-4 < table.loc["A", "none"]  # ablating A removes A's push
    assert table.loc["A", "random:A#0"] > 0.5 * table.loc["A", "none"]
    assert table.loc["A", "random:A#0"] != table.loc["A", "random:A#1"]


def test_a_transform_maps_each_token_before_pooling(tiny_qwen2):
    batches = answer_batches(tiny_qwen2, TRAIN[:3])
    plain = pooled_activations(tiny_qwen2, batches, layers=[1])
    relu = pooled_activations(tiny_qwen2, batches, layers=[1], transform=torch.relu)
    assert relu.sums.shape == plain.sums.shape and torch.equal(relu.counts, plain.counts)
    assert (relu.sums >= 0).all()
    assert (relu.sums >= plain.sums - 1e-5).all() and not torch.allclose(relu.sums, plain.sums)


def test_token_scores_projection_and_logprobs(tiny_qwen2):
    from mech.directions.token_scores import chat_tokens, token_logprobs, token_projection, token_strings

    ids, mask = chat_tokens(tiny_qwen2, TRAIN[0])
    assert len(ids) == len(mask) == len(token_strings(tiny_qwen2, ids)) and any(mask)
    direction = torch.randn(tiny_qwen2.cfg.d_model)
    projection = token_projection(tiny_qwen2, ids, direction, layer=1)
    _, cache = tiny_qwen2.run_with_cache(torch.tensor([ids]))
    expected = cache["blocks.1.hook_resid_pre"][0] @ (direction / direction.norm())
    torch.testing.assert_close(projection, expected, atol=1e-5, rtol=1e-4)
    logprobs = token_logprobs(tiny_qwen2, ids)
    by_hand = tiny_qwen2(torch.tensor([ids])).log_softmax(-1)[0, 2, ids[3]]
    assert logprobs[0] == 0 and torch.isclose(logprobs[3], by_hand, atol=1e-5)


def test_attention_patterns_of_chosen_heads(tiny_qwen2):
    from mech.directions.token_scores import attention_patterns, chat_tokens

    ids, _ = chat_tokens(tiny_qwen2, TRAIN[0])
    every = attention_patterns(tiny_qwen2, ids, layer=1)
    assert every.shape == (tiny_qwen2.cfg.n_heads, len(ids), len(ids))
    torch.testing.assert_close(every.sum(-1), torch.ones(every.shape[:2]))
    assert torch.triu(every, diagonal=1).abs().max() == 0  # causal
    torch.testing.assert_close(attention_patterns(tiny_qwen2, ids, layer=1, heads=[1]), every[1:2])
    with pytest.raises(ValueError, match="out of range"):
        attention_patterns(tiny_qwen2, ids, layer=1, heads=[99])
