"""Linear and mean-diff probes, AUROC, cosines and trajectory PCA."""

from __future__ import annotations

import pytest
import torch

from probes.geometry import cosine_matrix, trajectory_pca
from probes.linear import (
    LogisticProbe,
    MeanDiffProbe,
    ProbeConfig,
    evaluate,
    split,
    stratified_split,
    transfer_auroc,
)
from probes.metrics import auroc, auroc_per_column


def _separable(n=400, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.1, 10, d)  # very different widths
    w = torch.randn(d, generator=g)
    y = x @ w > 0
    return x, y


def test_auroc_by_hand():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auroc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1, 0, 1])) == 0.75  # a tie counts half
    assert auroc(-torch.arange(5.0), torch.tensor([0, 0, 1, 1, 1])) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.ones(3), torch.ones(3))
    per = auroc_per_column(
        torch.stack([torch.arange(4.0), -torch.arange(4.0)], 1), torch.tensor([0, 0, 1, 1])
    )
    assert per.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("kind", ["logistic", "mean_diff"])
def test_probe_separates_a_separable_set_and_not_a_shuffled_one(kind):
    x, y = _separable()
    train, test = split(len(y), seed=0)
    fit = (lambda x, y: LogisticProbe.fit(x, y)) if kind == "logistic" else MeanDiffProbe.fit
    if kind == "mean_diff":  # mean-diff needs class means that differ along the separating direction
        x = torch.randn(400, 32) * 0.3
        x[y] += torch.linspace(1, 2, 32)
    assert evaluate(fit(x[train], y[train]), x[test], y[test])["auroc"] > 0.99
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    result = evaluate(fit(x[train], shuffled[train]), x[test], shuffled[test])
    assert abs(result["auroc"] - 0.5) < 0.12


def test_logistic_probe_weight_lives_in_the_raw_space():
    x, y = _separable()
    probe = LogisticProbe.fit(x, y, ProbeConfig(l2=1e-4))
    z_score = probe.score(x)
    torch.testing.assert_close(z_score, x @ probe.direction + probe.bias)
    assert ((z_score > 0) == y).float().mean() > 0.97


def test_probe_input_errors():
    with pytest.raises(ValueError, match="both classes"):
        MeanDiffProbe.fit(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))
    # Under pytest jaxtyping rejects the shape first (a TypeError); plain runs get our ValueError.
    with pytest.raises((ValueError, TypeError)):
        LogisticProbe.fit(torch.randn(4), torch.ones(4))


def test_split_is_seeded_and_disjoint():
    train, test = split(10, test_fraction=0.3, seed=3)
    assert int(test.sum()) == 3 and not (train & test).any()
    assert torch.equal(test, split(10, test_fraction=0.3, seed=3)[1])


def test_stratified_split_keeps_the_class_ratio_on_both_sides():
    labels = torch.tensor([True] * 30 + [False] * 70)
    selection, heldout = stratified_split(labels, heldout_fraction=0.5, seed=3)
    assert not (selection & heldout).any() and (selection | heldout).all()
    assert (int(labels[heldout].sum()), int((~labels[heldout]).sum())) == (15, 35)
    assert torch.equal(heldout, stratified_split(labels, seed=3)[1])
    assert not torch.equal(heldout, stratified_split(labels, seed=4)[1])


def test_a_transfer_diagonal_is_scored_on_held_out_rows_only():
    # Labels are noise and there are more dimensions than training rows: a probe fits its own
    # training rows perfectly, so scored on all of its data set it would look like a detector.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 300, generator=g), torch.rand(200, generator=g) > 0.5
    other = (torch.randn(50, 300, generator=g), torch.rand(50, generator=g) > 0.5)
    train, test = split(200, test_fraction=0.5, seed=0)
    probe = LogisticProbe.fit(x[train], y[train])
    table = transfer_auroc({"a": probe}, {"a": (x, y), "b": other}, {"a": test}).set_index("scored_on")
    assert table.loc["a", "split"] == "held-out" and table.loc["a", "n"] == int(test.sum())
    assert table.loc["a", "auroc"] == evaluate(probe, x[test], y[test])["auroc"] < 0.65
    assert evaluate(probe, x, y)["auroc"] > 0.7  # what the diagonal read before: partly its training rows
    assert (table.loc["b", "split"], table.loc["b", "n"]) == ("all", 50)


def test_cosine_matrix_and_errors():
    e = torch.eye(3)
    frame = cosine_matrix({"a": e[0], "b": e[0] * 5 + e[1] * 5, "c": -e[0]})
    assert frame.loc["a", "a"] == pytest.approx(1) and frame.loc["a", "c"] == pytest.approx(-1)
    assert frame.loc["a", "b"] == pytest.approx(2**-0.5)
    with pytest.raises(ValueError, match="zero vectors"):
        cosine_matrix({"a": e[0], "z": torch.zeros(3)})


def test_trajectory_pca_finds_the_axis_of_motion():
    steps = [(s, torch.tensor([float(s), 0.0, 0.01 * (-1) ** s])) for s in range(10)]
    other = [(s, torch.tensor([float(s), 3.0, 0.0])) for s in range(10)]
    frame, explained = trajectory_pca({"KL 0": steps, "KL 10": other})
    assert list(frame.columns) == ["label", "step", "pc1", "pc2"]
    assert explained[0] > 0.7 and sum(explained) > 0.99
    # pc1 follows the step, pc2 separates the runs.
    pc1 = frame[frame.label == "KL 0"]["pc1"].to_numpy()
    assert abs(pc1[-1] - pc1[0]) > 5
    pc2 = frame.groupby("label")["pc2"].mean()
    assert abs(pc2["KL 0"] - pc2["KL 10"]) > 2.5
