"""Loss-landscape findings, per seed: efficiency, stability, pre-training KL, reversion."""

from __future__ import annotations

import pandas as pd

from experiments.findings.rows import Row, judged, no_estimate
from mech.verdicts.bootstrap import cluster_bootstrap, mean_of, ratio_of_means
from mech.verdicts.margins import (
    cosine_rise,
    ratio_above,
    relative_loss_gap,
)
from mech.verdicts.rule import INCONCLUSIVE, combine, verdict

# ---------------------------------------------------------------------------------------------
# Loss-landscape findings: per seed


def efficiency_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, r in results["adapters"].items():
        per_seed = pd.DataFrame(
            [
                {
                    "seed": i,
                    "gap": s["loss_at_matched_norm"]["narrow"] - s["loss_at_matched_norm"]["general"],
                    "learned": s["chat_loss"] - s["loss_at_matched_norm"]["general"]
                    if "chat_loss" in s
                    else float("nan"),
                }
                for i, s in enumerate(r["per_seed"])
            ]  # fmt: skip
        )
        if per_seed["learned"].isna().any():
            estimate = no_estimate(f"{len(per_seed)} seed(s); no chat loss stored (an older run)")
        else:
            estimate = cluster_bootstrap(per_seed, ratio_of_means("gap", "learned"), levels=("seed",))
        measured = f"narrow - general loss at matched norm {per_seed['gap'].mean():+.4f} nats ({len(per_seed)} seeds)"
        rows.append(judged("efficiency: general has lower loss at matched norm", kind,
                           "loss gap / loss learned", estimate, relative_loss_gap(), measured, source))  # fmt: skip
    return rows


def stability_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, r in results["adapters"].items():
        eps = f"{r['eps_compared']}"
        per_seed = pd.DataFrame([{"seed": i, "narrow": s["mean_delta"]["narrow"][_key(s["mean_delta"]["narrow"], eps)],
                                  "general": s["mean_delta"]["general"][_key(s["mean_delta"]["general"], eps)]}
                                 for i, s in enumerate(r["per_seed"])])  # fmt: skip
        estimate = cluster_bootstrap(per_seed, ratio_of_means("narrow", "general"), levels=("seed",))
        measured = (f"loss rise at eps {r['eps_compared']:g}: narrow {per_seed['narrow'].mean():.4f}, "
                    f"general {per_seed['general'].mean():.4f}" +
                    ("; the general rise is not positive: the ratio is undefined" if per_seed["general"].mean() <= 0 else ""))  # fmt: skip
        rows.append(judged("stability: general loses less under orthogonal noise (matched norm)", kind,
                           "narrow / general loss rise", estimate, ratio_above(), measured, source))  # fmt: skip
    return rows


def _key(by_eps: dict, eps: str) -> str:
    """The key of `by_eps` for `eps` ("0.5" vs "0.50" across versions)."""
    return next(k for k in by_eps if float(k) == float(eps))


def pretraining_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, r in results["adapters"].items():
        cells = pd.DataFrame([{"seed": i, "norm": norm, **kls} for i, s in enumerate(r["per_seed"])
                              for norm, kls in s["kl_by_norm"].items()])  # fmt: skip
        over_narrow = cluster_bootstrap(cells, ratio_of_means("general", "narrow"), levels=("seed", "norm"))
        if "random" in cells.columns:
            over_random = cluster_bootstrap(
                cells, ratio_of_means("narrow", "random"), levels=("seed", "norm")
            )
            control = verdict(over_random, ratio_above())
            tail = f"narrow / random {over_random.value:.3g} [{over_random.ci_low:.3g}, {over_random.ci_high:.3g}]"
        else:
            control, tail = INCONCLUSIVE, "no equal-norm random control stored"
        measured = (f"KL on pre-training text, mean over norms: general {cells['general'].mean():.3g}, "
                    f"narrow {cells['narrow'].mean():.3g}; " + tail)  # fmt: skip
        rows.append(judged("pre-training significance: the general direction changes pre-training text more (and both more than random)",
                           kind, "general / narrow KL", over_narrow, ratio_above(), measured, source,
                           verdict_=combine([verdict(over_narrow, ratio_above()), control]), note=f"{tail} ({control})"))  # fmt: skip
    return rows


def revert_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, trajectories in results["adapters"].items():
        per_seed = []
        for name, trajectory in trajectories.items():
            direction, _, seed = name.partition("/")
            if direction != "remove_kl":
                continue
            with_kl = [p for p in trajectory if p["kl_weight"] != 0]
            before = with_kl[-1] if with_kl else trajectory[0]  # the last snapshot before the KL went
            control = trajectories.get(f"keep_kl/{seed}")
            kept = _cosine_change(control, before["step"]) if control else float("nan")
            per_seed.append({"seed": seed, "removed": trajectory[-1]["cosine_to_general"] - before["cosine_to_general"],
                             "kept": kept})  # fmt: skip
        if not per_seed:
            continue
        frame = pd.DataFrame(per_seed)
        if frame["kept"].isna().any():
            estimate = no_estimate(f"{len(frame)} seed(s); no KL-kept control in this run")
        else:
            estimate = cluster_bootstrap(
                frame.assign(diff=frame["removed"] - frame["kept"]), mean_of("diff"), levels=("seed",)
            )
        measured = (f"cosine to the general solution after the KL is removed {frame['removed'].mean():+.3f}, "
                    f"with it kept {frame['kept'].mean():+.3f} ({len(frame)} seeds)")  # fmt: skip
        rows.append(judged("revert: without KL, training drifts back to the general solution (vs KL kept)", kind,
                           "cosine rise, KL removed - KL kept", estimate, cosine_rise(), measured, source))  # fmt: skip
    return rows


def _cosine_change(trajectory: list[dict], from_step: int) -> float:
    at = [p for p in trajectory if p["step"] <= from_step]
    start = at[-1] if at else trajectory[0]
    return trajectory[-1]["cosine_to_general"] - start["cosine_to_general"]
