"""Seaborn figures from the experiments' tidy `results.csv` frames (columns of
`experiments.outputs.COLUMNS`). Each function returns a matplotlib Figure; nothing is shown.
Each `*_data` function returns the exact tidy rows its figure plots (saved next to the PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

ROLE_ORDER = ["narrow", "kl", "heldout_domain"]


def _rates(frame: pd.DataFrame) -> pd.DataFrame:
    if not frame["metric"].isin(["p_bad", "p_technical"]).any():
        return _sampled_rates(frame)
    rates = frame[frame["metric"].isin(["p_bad", "p_technical"])]
    # the narrow domain on held-out topics, the others on their held-out topics (KL domains) or all
    keep = ((rates["role"] == "heldout_domain") & (rates["split"] == "all")) | (
        (rates["role"] != "heldout_domain") & (rates["split"] == "heldout")
    )
    return rates[keep]


def _sampled_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Rates of judged answers (a real model): the narrow rate on the narrow domain (its EM rate
    without a narrow judge), the EM rate elsewhere, as scored by the first judge."""
    rates = frame[frame["metric"].isin(["em_rate", "narrow_rate"])]
    if "judge" in rates.columns and len(rates):
        rates = rates[rates["judge"] == rates["judge"].iloc[0]]
    narrow_metric = "narrow_rate" if (rates["metric"] == "narrow_rate").any() else "em_rate"
    keep = (rates["role"] == "narrow") == (rates["metric"] == narrow_metric)
    return rates[keep | ((rates["role"] != "narrow") & (rates["metric"] == "em_rate"))]


def rates_data(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows `rates_by_role` plots, with the `condition` (adapter and KL weight) on the x axis."""
    rates = _rates(frame).copy()
    rates["condition"] = rates["adapter"] + rates["kl_weight"].map(lambda w: f" (KL {w:g})" if w else "")
    return rates


def rates_by_role(frame: pd.DataFrame, *, title: str) -> plt.Figure:
    """Trait probability per adapter (and KL weight) in the narrow domain, KL domains, held-out domains."""
    rates = rates_data(frame)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * rates["condition"].nunique() + 3), 4))
    sns.barplot(rates, x="condition", y="value", hue="role", hue_order=ROLE_ORDER, errorbar=("ci", 95), ax=ax)
    ylabel = " / ".join(pd.unique(rates["metric"])) if len(rates) else "p"
    ax.set(ylabel=ylabel, xlabel="", title=title, ylim=(0, 1))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


Errorbar = str | tuple[str, float] | None
"""A seaborn `errorbar`: "sd" (mean ± 1 sd), ("ci", 95) (bootstrap CI) or None (no band)."""


def curve_data(frame: pd.DataFrame, *, metric: str) -> pd.DataFrame:
    """The rows `curves` plots: those of `metric`, with a `solution` column (from the KL weight)
    unless the frame already has one."""
    data = frame[frame["metric"] == metric].copy()
    if "solution" not in data:
        data["solution"] = data["kl_weight"].map(
            lambda w: "general (KL 0)" if w == 0 else f"narrow (KL {w:g})"
        )
    return data


def _palette(values: pd.Series) -> dict:
    order = list(pd.unique(values))
    return dict(zip(order, sns.color_palette(n_colors=len(order)), strict=True))


def curves(
    frame: pd.DataFrame,
    *,
    x: str,
    metric: str,
    title: str,
    xlabel: str | None = None,
    ylabel: str | None = None,
    hue: str = "adapter",
    style: str = "solution",
    errorbar: Errorbar = ("ci", 95),
    mark_minimum: bool = False,
) -> plt.Figure:
    """`metric` against `x` ("scale", "eps" or "norm"), one line per `hue` and `style` value
    (default: adapter and KL weight), with an `errorbar` band over the rows at each x.

    `mark_minimum` puts a star (gid "minimum") on the lowest point of each plotted line, the
    mean over rows sharing an x, and writes its x above it (e.g. the loss-optimal norm).
    """
    data = curve_data(frame, metric=metric)
    palette = _palette(data[hue])
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data, x=x, y="value", hue=hue, style=style, palette=palette, errorbar=errorbar, ax=ax,
                 marker="o")  # fmt: skip
    if mark_minimum:
        for i, ((line, _), group) in enumerate(data.groupby([hue, style], sort=False)):
            plotted = group.groupby(x)["value"].mean()  # what seaborn's line shows
            best_x, best_y = plotted.idxmin(), plotted.min()
            ax.plot([best_x], [best_y], marker="*", markersize=14, linestyle="", color=palette[line],
                    markeredgecolor="black", zorder=4, gid="minimum")  # fmt: skip
            # stacked above the star, so that minima at the same point stay readable
            ax.annotate(f"min {best_x:.3g}", (best_x, best_y), xytext=(0, 9 + 10 * i), textcoords="offset points",
                        ha="center", fontsize=7, color=palette[line])  # fmt: skip
    ax.set(xlabel=xlabel or x, ylabel=ylabel or metric, title=title)
    fig.tight_layout()
    return fig


SWITCH_LABELS = {"remove_kl": "KL removed", "add_kl": "KL added", "keep_kl": "KL kept (control)"}
"""Adapter-name suffixes of the revert experiment and how the switch is labelled."""


def switch_data(frame: pd.DataFrame, *, metric: str) -> pd.DataFrame:
    """The rows `switch_trajectories` plots: `metric` on adapters named `<kind>_remove_kl`,
    `<kind>_add_kl` or `<kind>_keep_kl`, with `kind` and `direction` columns (the training step is in `scale`)."""
    data = frame[frame["metric"] == metric].copy()
    pattern = "^(?P<kind>.+)_(?P<direction>" + "|".join(SWITCH_LABELS) + ")$"
    parts = data["adapter"].str.extract(pattern)
    data[["kind", "direction"]] = parts[["kind", "direction"]]
    return data[data["direction"].notna()]


def switch_step(rows: pd.DataFrame, *, x: str = "scale") -> float | None:
    """The first step whose `kl_weight` differs from the first step's; None if it never changes."""
    ordered = rows.sort_values(x, kind="stable")
    changed = ordered[ordered["kl_weight"] != ordered["kl_weight"].iloc[0]]
    return float(changed[x].iloc[0]) if len(changed) else None


def switch_trajectories(
    frame: pd.DataFrame, *, metric: str, title: str, x: str = "scale", xlabel: str = "step",
    errorbar: Errorbar = ("ci", 95),
) -> plt.Figure:  # fmt: skip
    """`metric` against the training step, one panel per KL switch direction (KL removed, KL
    added, and the control that keeps it), one line per adapter kind, and a dashed vertical line (gid "kl_switch") at the step
    where the KL weight changes."""
    data = switch_data(frame, metric=metric)
    directions = [d for d in SWITCH_LABELS if d in set(data["direction"])]
    palette = _palette(data["kind"])
    fig, axes = plt.subplots(1, max(len(directions), 1), figsize=(5 * max(len(directions), 1), 4),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, direction in zip(axes[0], directions, strict=False):
        rows = data[data["direction"] == direction]
        sns.lineplot(rows, x=x, y="value", hue="kind", palette=palette, errorbar=errorbar, marker="o", ax=ax)
        step = switch_step(rows, x=x)
        if step is not None:
            ax.axvline(step, color="grey", linestyle="--", gid="kl_switch")
            ax.annotate(SWITCH_LABELS[direction], (step, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="grey")  # fmt: skip
        ax.set(title=SWITCH_LABELS[direction], xlabel=xlabel, ylabel=metric)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def share_data(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows `share_plot` plots, with its `panel` and `kind` columns."""
    rates = _rates(frame[frame["kl_weight"] == 0]).assign(panel=lambda d: "general solution: " + d["role"])
    gaps = frame[frame["metric"].isin(["efficiency_gap", "stability_ratio"])].assign(
        panel=lambda d: d["metric"]
    )
    data = pd.concat([rates, gaps])
    data["kind"] = data["adapter"].str.split("/").str[1]
    return data


def share_plot(frame: pd.DataFrame) -> plt.Figure:
    """Persona share: the general solution's trait rates and the efficiency / stability gaps
    against the share of narrowly-bad personas in pre-training."""
    data = share_data(frame)
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


def save(fig: plt.Figure, path: Path, *, format: str | None = None) -> None:
    """Write `fig` to `path` and close it (figures hold memory until closed)."""
    fig.savefig(path, dpi=110, format=format)
    plt.close(fig)


VERDICT_COLOURS = {"reproduced": "#2a9d4b", "not reproduced": "#c0392b", "inconclusive": "#8a8a8a"}


def forest_data(rows) -> pd.DataFrame:
    """The finding rows a forest plot draws: finding, adapter, effect and its interval, null,
    bound and verdict (rows without a numeric bound, e.g. from older runs, are left out)."""
    columns = ["finding", "adapter", "value", "ci_low", "ci_high", "null", "bound_value", "verdict"]
    frame = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows if r.get("bound_value") is not None])
    return frame.reindex(columns=columns)


def forest(rows, *, title: str = "every finding: effect, 95% interval, bound") -> plt.Figure:
    """One panel per finding (each on its own scale), one line per adapter kind: the effect with
    its 95% interval, coloured by verdict; the null as a grey line, the bound as a dashed one."""
    data = forest_data(rows)
    findings = list(dict.fromkeys(data["finding"]))
    fig, axes = plt.subplots(
        max(len(findings), 1), 1, figsize=(8, 0.5 + 0.9 * max(len(findings), 1)), squeeze=False
    )
    for ax, finding in zip(axes[:, 0], findings, strict=False):
        part = data[data["finding"] == finding].reset_index(drop=True)
        for y, r in part.iterrows():
            colour = VERDICT_COLOURS.get(r["verdict"], "black")
            if pd.notna(r["ci_low"]) and pd.notna(r["ci_high"]):
                ax.plot([r["ci_low"], r["ci_high"]], [y, y], color=colour, linewidth=2, gid="interval")
            if pd.notna(r["value"]):
                ax.plot([r["value"]], [y], "o", color=colour, gid="effect")
        ax.axvline(part["null"].iloc[0], color="grey", linewidth=1, gid="null")
        ax.axvline(part["bound_value"].iloc[0], color="black", linestyle="--", linewidth=1, gid="bound")
        ax.set_yticks(range(len(part)), part["adapter"], fontsize=7)
        ax.set_ylim(-0.7, len(part) - 0.3)
        ax.set_title(finding if len(finding) < 90 else finding[:87] + "...", fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    handles = [
        plt.Line2D([], [], color=c, marker="o", linewidth=2, label=v) for v, c in VERDICT_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
