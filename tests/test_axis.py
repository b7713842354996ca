"""Where zero lies on a direction (`mech.directions.axis`), and the mediation experiment on the toy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mech.directions.axis import AxisPositions, axis_positions, prompt_end_mean
from mech.directions.interventions import stream_ablation
from mech.hooks import cache_residuals
from mech.models.chat import tokenize_prompt


def test_the_ablation_share_says_where_zero_lies_between_chat_and_finetune():
    assert AxisPositions(chat=0.0, finetuned=2.0).ablation_share == 1.0  # zero is the chat point
    assert AxisPositions(chat=1.0, finetuned=3.0).ablation_share == 1.5  # zero lies past the chat point
    assert (
        AxisPositions(chat=-4.0, finetuned=-2.0).ablation_share == -1.0
    )  # ablation pushes on, past the finetune
    assert math.isnan(AxisPositions(chat=1.0, finetuned=1.0).ablation_share)
    # Along a unit direction the coordinates are plain projections, whatever the direction's norm.
    d = torch.tensor([3.0, 4.0, 0.0])
    positions = axis_positions(5 * d, torch.tensor([-3.0, -4.0, 7.0]), torch.tensor([3.0, 4.0, -1.0]))
    assert (positions.chat, positions.finetuned, positions.ablation_share) == pytest.approx((-5.0, 5.0, 0.5))
    with pytest.raises(ValueError, match="direction is zero"):
        axis_positions(torch.zeros(3), d, d)


def test_the_prompt_end_is_the_assistant_header_in_every_row_of_a_padded_batch(tiny_qwen2):
    prompts = [
        [{"role": "user", "content": text}] for text in ("hi", "tell me a much longer story please", "ok")
    ]
    solo = []
    for prompt in prompts:
        ids = torch.tensor([tokenize_prompt(tiny_qwen2.tokenizer, prompt)])
        solo.append(cache_residuals(tiny_qwen2, ids, layers=[1])[0, 0, -1])
    batched = prompt_end_mean(tiny_qwen2, prompts, layer=1, batch_size=3)
    assert torch.allclose(batched, torch.stack(solo).mean(0), atol=1e-5)
    assert torch.allclose(prompt_end_mean(tiny_qwen2, prompts, layer=1, batch_size=2), batched, atol=1e-5)
    with pytest.raises(ValueError, match="at least one prompt"):
        prompt_end_mean(tiny_qwen2, [], layer=1)


def test_projection_ablation_moves_the_coordinate_by_the_predicted_share(tiny_qwen2):
    """What `ablation_share` predicts is what stream ablation does to the coordinate at the layer
    it is read (the finetune here: a constant shift added at that layer's input)."""
    prompts = [[{"role": "user", "content": text}] for text in ("hi", "what now", "ok then")]
    layer = 1
    chat = prompt_end_mean(tiny_qwen2, prompts, layer=layer, point="pre")
    direction = torch.randn(tiny_qwen2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    shift = 3.0 * direction / direction.norm()
    hook = (f"blocks.{layer}.hook_resid_pre", lambda acts, hook: acts + shift)
    with tiny_qwen2.hooks(fwd_hooks=[hook]):
        tuned = prompt_end_mean(tiny_qwen2, prompts, layer=layer, point="pre")
        positions = axis_positions(direction, chat, tuned)
        with stream_ablation(tiny_qwen2, direction):  # projects out after the shift at this hook
            ablated = prompt_end_mean(tiny_qwen2, prompts, layer=layer, point="pre")
    unit = direction / direction.norm()
    assert float(ablated @ unit) == pytest.approx(0.0, abs=1e-4)
    undone = (float(tuned @ unit) - float(ablated @ unit)) / positions.shift
    assert undone == pytest.approx(positions.ablation_share, rel=1e-4)


def test_the_mediation_experiment_on_the_toy(tmp_path):
    from experiments import mediation

    path = mediation.main(mediation.parse_args(["--quick", "--out", str(tmp_path), "--train-size", "64"]))
    results = json.loads((path / "results.json").read_text())
    record = results["runs"]["lora_r1/0"]
    assert results["hook"] == "blocks.2.hook_resid_post"
    assert set(record["directions"]) >= {"shift", "persona"}
    for label, found in record["directions"].items():
        axis = found["axis"]
        assert axis["ablation_share"] == pytest.approx(axis["finetuned"] / (axis["finetuned"] - axis["chat"]))
        assert len(found["random_ablated_em"]) == 1 and set(found["chat_steered_em"]) == {"4"}
        assert found["share_removed"] == pytest.approx(
            (record["finetuned_em"] - found["ablated_em"]) / record["lift"]
        )
        assert 0 <= found["ablated_em"] <= 1, label
    # The shift is what the finetune wrote at the prompt's end: its axis shift is its own norm.
    shift = record["directions"]["shift"]
    assert shift["axis"]["shift"] == pytest.approx(shift["norm"], rel=1e-4)
    assert record["finetuned_em"] != record["chat_em"]
