"""Seaborn figures from the experiments' tidy `results.csv` frames (columns of
`experiments.common.COLUMNS`). Each function returns a matplotlib Figure; nothing is shown."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

ROLE_ORDER = ["narrow", "kl", "heldout_domain"]


def _rates(frame: pd.DataFrame) -> pd.DataFrame:
    rates = frame[frame["metric"].isin(["p_bad", "p_technical"])]
    # the narrow domain on held-out topics, the others on their held-out topics (KL domains) or all
    keep = ((rates["role"] == "heldout_domain") & (rates["split"] == "all")) | (
        (rates["role"] != "heldout_domain") & (rates["split"] == "heldout")
    )
    return rates[keep]


def rates_by_role(frame: pd.DataFrame, *, title: str) -> plt.Figure:
    """Trait probability per adapter (and KL weight) in the narrow domain, KL domains, held-out domains."""
    rates = _rates(frame).copy()
    rates["condition"] = rates["adapter"] + rates["kl_weight"].map(lambda w: f" (KL {w:g})" if w else "")
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * rates["condition"].nunique() + 3), 4))
    sns.barplot(rates, x="condition", y="value", hue="role", hue_order=ROLE_ORDER, errorbar=("ci", 95), ax=ax)
    ax.set(ylabel=rates["metric"].iloc[0] if len(rates) else "p", xlabel="", title=title, ylim=(0, 1))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def curves(frame: pd.DataFrame, *, x: str, metric: str, title: str, xlabel: str | None = None) -> plt.Figure:
    """`metric` against `x` ("scale", "eps" or "norm"), one line per adapter and KL weight."""
    data = frame[frame["metric"] == metric].copy()
    data["solution"] = data["kl_weight"].map(lambda w: "general (KL 0)" if w == 0 else f"narrow (KL {w:g})")
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(
        data, x=x, y="value", hue="adapter", style="solution", errorbar=("ci", 95), ax=ax, marker="o"
    )
    ax.set(xlabel=xlabel or x, ylabel=metric, title=title)
    fig.tight_layout()
    return fig


def share_plot(frame: pd.DataFrame) -> plt.Figure:
    """Persona share: the general solution's trait rates and the efficiency / stability gaps
    against the share of narrowly-bad personas in pre-training."""
    rates = _rates(frame[frame["kl_weight"] == 0]).assign(panel=lambda d: "general solution: " + d["role"])
    gaps = frame[frame["metric"].isin(["efficiency_gap", "stability_ratio"])].assign(
        panel=lambda d: d["metric"]
    )
    data = pd.concat([rates, gaps])
    data["kind"] = data["adapter"].str.split("/").str[1]
    grid = sns.relplot(data, x="narrow_share", y="value", hue="kind", col="panel", col_wrap=3, kind="line",
                       marker="o", facet_kws={"sharey": False}, height=3)  # fmt: skip
    return grid.figure


def heatmap(table: pd.DataFrame, *, title: str, fmt: str = ".2f", center: float | None = None) -> plt.Figure:
    """A labelled matrix (rows x columns of `table`) with its values written in the cells."""
    fig, ax = plt.subplots(figsize=(1.1 * len(table.columns) + 3, 0.6 * len(table) + 2))
    sns.heatmap(table.astype(float), annot=True, fmt=fmt, cmap="vlag" if center is not None else "rocket_r",
                center=center, ax=ax, cbar=False)  # fmt: skip
    ax.set(title=title, xlabel=table.columns.name or "", ylabel=table.index.name or "")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def sweep_plot(frame: pd.DataFrame, *, x: str, y: str, hue: str, title: str) -> plt.Figure:
    """`y` against `x`, one line per `hue` value (e.g. EM rate against steering strength)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(frame, x=x, y=y, hue=hue, marker="o", ax=ax)
    ax.set(title=title)
    fig.tight_layout()
    return fig


def trajectory_plot(frame: pd.DataFrame, *, explained: list[float], title: str) -> plt.Figure:
    """Checkpoints on the first two principal components, one path per label, start marked."""
    fig, ax = plt.subplots(figsize=(6, 5))
    sns.lineplot(frame, x="pc1", y="pc2", hue="label", sort=False, marker="o", ax=ax)
    starts = frame.sort_values("step").groupby("label").head(1)
    ax.scatter(starts["pc1"], starts["pc2"], color="black", marker="x", zorder=3, label="start")
    ax.set(
        title=title,
        xlabel=f"PC1 ({explained[0]:.0%})",
        ylabel=f"PC2 ({explained[1]:.0%})" if len(explained) > 1 else "",
    )
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
