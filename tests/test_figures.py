"""The figures on small synthetic tidy frames: the data saved next to each PNG, and the marks a
reader needs (loss-optimal norm, KL switch, sd bands), read back from the matplotlib Axes."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from experiments.outputs import save_figure
from viz import figures


def _efficiency_frame() -> pd.DataFrame:
    """Loss against effective norm, a parabola per (adapter, solution) with its own optimum."""
    rng = np.random.default_rng(0)
    rows = []
    for (adapter, best), kl_weight, seed in itertools.product(
        [("steering", 1.0), ("lora_r1", 2.0)], (0.0, 1.0), (0, 1)
    ):
        optimum = best + kl_weight  # narrow solutions need a larger norm
        for norm in np.linspace(0.0, 4.0, 9):
            loss = (norm - optimum) ** 2 + 0.01 * rng.standard_normal()
            rows.append({"adapter": adapter, "kl_weight": kl_weight, "seed": seed, "scale": norm / 2,
                         "effective_norm": norm, "metric": "loss", "value": loss})  # fmt: skip
    return pd.DataFrame(rows)


def test_save_figure_writes_the_png_and_the_rows_it_plots(tmp_path):
    frame = _efficiency_frame()
    data = figures.curve_data(frame, metric="loss")
    run = SimpleNamespace(path=tmp_path)
    path = save_figure(
        run, "loss_vs_norm", figures.curves(frame, x="effective_norm", metric="loss", title="t"), data
    )
    assert path == tmp_path / "figures" / "loss_vs_norm.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = pd.read_csv(path.with_suffix(".csv"))
    assert list(back.columns) == list(data.columns)
    pd.testing.assert_frame_equal(back, data.reset_index(drop=True), check_dtype=False)
    assert len(back) == len(frame)  # every row is a plotted point
    assert set(back["solution"]) == {"general (KL 0)", "narrow (KL 1)"}

    bare = save_figure(run, "bare", figures.curves(frame, x="effective_norm", metric="loss", title="t"))
    assert bare.is_file() and not bare.with_suffix(".csv").exists()


def test_save_figure_keeps_a_heatmap_index_as_a_column(tmp_path):
    table = pd.DataFrame(
        [[1.0, 0.2], [0.2, 1.0]], index=pd.Index(["a", "b"], name="latent"), columns=["u", "v"]
    )
    path = save_figure(
        SimpleNamespace(path=tmp_path), "map", figures.heatmap(table, title="t"), table.reset_index()
    )
    back = pd.read_csv(path.with_suffix(".csv"))
    assert list(back.columns) == ["latent", "u", "v"]
    pd.testing.assert_frame_equal(back.set_index("latent"), table)


def test_efficiency_curves_mark_each_lines_minimum():
    frame = _efficiency_frame()
    fig = figures.curves(frame, x="effective_norm", metric="loss", title="t", mark_minimum=True)
    ax = fig.axes[0]
    stars = [line for line in ax.lines if line.get_gid() == "minimum"]
    data = figures.curve_data(frame, metric="loss")
    expected = set()
    for _, group in data.groupby(["adapter", "solution"]):
        mean = group.groupby("effective_norm")["value"].mean()
        expected.add((float(mean.idxmin()), round(float(mean.min()), 9)))
    marked = {(float(s.get_xdata()[0]), round(float(s.get_ydata()[0]), 9)) for s in stars}
    assert len(stars) == 4 and marked == expected
    # the optimum of each parabola: 1, 2 (general) and 2, 3 (narrow, KL 1)
    assert sorted(x for x, _ in marked) == [1.0, 2.0, 2.0, 3.0]
    notes = [t.get_text() for t in ax.texts]
    assert sorted(notes) == sorted(f"min {x:.3g}" for x, _ in marked)
    # off by default
    plain = figures.curves(frame, x="effective_norm", metric="loss", title="t")
    assert not [line for line in plain.axes[0].lines if line.get_gid() == "minimum"]


def _revert_frame() -> pd.DataFrame:
    """Cosine to general along training; KL removed after step 4, added after step 2."""
    rows = []
    for kind, seed, (direction, before, after, toggle) in itertools.product(
        ("steering", "lora_r1"), (0, 1), [("remove_kl", 1.0, 0.0, 4), ("add_kl", 0.0, 1.0, 2)]
    ):
        for step in (2, 4, 6, 8):
            rows.append({"adapter": f"{kind}_{direction}", "kl_weight": before if step <= toggle else after,
                         "seed": seed, "metric": "cosine_to_general", "value": step / 10 + seed / 100,
                         "scale": float(step)})  # fmt: skip
        rows.append({"adapter": kind, "kl_weight": 0.0, "seed": seed, "metric": "loss", "value": 1.0})
    return pd.DataFrame(rows)


def test_revert_figure_marks_the_kl_switch_in_one_panel_per_direction():
    frame = _revert_frame()
    fig = figures.switch_trajectories(frame, metric="cosine_to_general", title="t")
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"KL removed", "KL added"}
    for title, step in (("KL removed", 6.0), ("KL added", 4.0)):
        ax = panels[title]
        vertical = [
            line
            for line in ax.lines
            if len(set(np.asarray(line.get_xdata(), dtype=float))) == 1 and line.get_linestyle() == "--"
        ]
        assert [float(line.get_xdata()[0]) for line in vertical] == [step]
        assert vertical[0].get_gid() == "kl_switch"
        assert title in [t.get_text() for t in ax.texts]
    data = figures.switch_data(frame, metric="cosine_to_general")
    assert len(data) == 32 and set(data["direction"]) == {"remove_kl", "add_kl"}
    assert set(data["kind"]) == {"steering", "lora_r1"}


def test_switch_step_is_none_without_a_switch():
    rows = pd.DataFrame({"scale": [3.0, 1.0, 2.0], "kl_weight": [1.0, 1.0, 1.0]})
    assert figures.switch_step(rows) is None
    assert figures.switch_step(rows.assign(kl_weight=[0.0, 1.0, 1.0])) == 3.0


def test_stability_curves_band_is_one_sd_each_side():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        [{"adapter": "lora_r1", "kl_weight": 0.0, "seed": 0, "metric": "relative", "eps": eps,
          "value": eps + eps * rng.standard_normal()} for eps in (0.0, 0.5, 1.0) for _ in range(6)]
    )  # fmt: skip
    fig = figures.curves(frame, x="eps", metric="relative", title="t", errorbar="sd")
    (band,) = fig.axes[0].collections
    vertices = np.concatenate([p.vertices for p in band.get_paths()])
    at = vertices[np.isclose(vertices[:, 0], 0.5)][:, 1]
    values = frame.loc[frame["eps"] == 0.5, "value"]
    assert at.max() - at.min() == pytest.approx(2 * values.std(ddof=1))
    assert at.max() == pytest.approx(values.mean() + values.std(ddof=1))


def test_curves_can_colour_by_solution_with_a_legend():
    frame = pd.DataFrame(
        [{"adapter": f"lora_r1_{s}", "kind": "lora_r1", "solution": s, "kl_weight": 0.0, "seed": 0,
          "metric": "text_kl", "value": v * n, "scale": n}
         for s, v in (("general", 1.0), ("narrow", 0.5), ("random", 0.1)) for n in (1.0, 2.0)]
    )  # fmt: skip
    fig = figures.curves(frame, x="scale", metric="text_kl", hue="solution", style="kind", title="t")
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert {"general", "narrow", "random"} <= labels
    assert figures.curve_data(frame, metric="text_kl")["solution"].tolist() == frame["solution"].tolist()


def test_the_forest_plot_draws_each_effect_its_interval_bound_and_verdict_colour():
    rows = [
        {"finding": "efficiency", "adapter": a, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "null": 0.0,
         "bound_value": 0.05, "verdict": verdict}
        for a, v, verdict in (("steering", 0.3, "reproduced"), ("lora_r1", 0.0, "not reproduced"))
    ] + [{"finding": "stability", "adapter": "lora_r1", "value": 2.0, "ci_low": float("nan"), "ci_high": float("nan"),
          "null": 1.0, "bound_value": 1.25, "verdict": "inconclusive"},
         {"finding": "old run", "adapter": "x", "verdict": "reproduced"}]  # fmt: skip
    fig = figures.forest(rows)
    efficiency, stability = fig.axes
    marks = lambda ax, gid: [line for line in ax.get_lines() if line.get_gid() == gid]  # noqa: E731
    assert [tuple(m.get_xdata()) for m in marks(efficiency, "effect")] == [(0.3,), (0.0,)]
    assert [m.get_color() for m in marks(efficiency, "effect")] == ["#2a9d4b", "#c0392b"]
    assert [tuple(m.get_xdata()) for m in marks(efficiency, "bound")] == [(0.05, 0.05)]
    assert marks(stability, "interval") == [] and tuple(marks(stability, "null")[0].get_xdata()) == (1.0, 1.0)
    assert len(figures.forest_data(rows)) == 3  # the row without a bound is left out
