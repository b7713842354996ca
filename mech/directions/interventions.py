"""Interventions with a direction: ablating it from the whole residual stream, adding it at a layer,
and the cross-finetune ablation matrix with equal-norm random controls (several draws per
direction, each seeded from the direction's name), and their mean over draws."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import pandas as pd
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.directions.mean_diff import Measure, random_controls
from mech.hooks import ResidPoint, ablation_hooks, steering_hooks


def stream_ablation_hooks(model: HookedTransformer, direction: Float[Tensor, " d_model"]) -> list:
    """Hooks projecting `direction` out of the whole residual stream: the input of every block and
    the output of the last one, so no block reads it and the unembedding never sees it."""
    last = model.cfg.n_layers - 1
    return ablation_hooks(model, direction, layers="all", point="pre") + ablation_hooks(
        model, direction, layers=[last], point="post"
    )


@contextlib.contextmanager
def stream_ablation(model: HookedTransformer, direction: Tensor) -> Iterator[HookedTransformer]:
    """Context manager: `direction` ablated from the whole residual stream (`stream_ablation_hooks`)."""
    with model.hooks(fwd_hooks=stream_ablation_hooks(model, direction)):
        yield model


@contextlib.contextmanager
def direction_steering(
    model: HookedTransformer, direction: Tensor, *, alpha: float | int, layer: int, point: ResidPoint = "pre"
) -> Iterator[HookedTransformer]:
    """Context manager: `alpha` times the unit `direction` added at every position of one layer."""
    unit = direction.float() / direction.float().norm()
    with model.hooks(fwd_hooks=steering_hooks(model, unit, layer=layer, point=point, scale=float(alpha))):
        yield model


def with_random_controls(
    directions: Mapping[str, Tensor], *, seed: int = 0, draws: int = 1
) -> dict[str, Tensor]:
    """Each direction followed by its `draws` equal-norm random controls ("random:NAME#k", seeded
    from NAME: `mech.directions.mean_diff.random_controls`)."""
    out: dict[str, Tensor] = {}
    for name, direction in directions.items():
        out[name] = direction
        out.update(random_controls(direction, name, seed=seed, draws=draws))
    return out


def ablation_matrix(
    model: HookedTransformer,
    finetunes: Mapping[str, Callable[[], contextlib.AbstractContextManager]],
    directions: Mapping[str, Tensor],
    measure: Measure,
    *,
    random_seed: int = 0,
    random_draws: int = 1,
) -> pd.DataFrame:
    """Every direction ablated from the whole stream in every finetune, measured.

    `finetunes` maps a name to a factory of the context that makes `model` that finetune (e.g.
    `lambda: adapter.applied(model)`). Rows: finetune, direction (a name, "none" for the
    un-ablated finetune, "random:NAME#k" for random draw k of NAME's norm, seeded from NAME and
    `random_seed`), metric, value. `mean_over_draws` adds each control's mean, "random:NAME".
    """
    ablations: dict[str, Tensor | None] = {"none": None}
    ablations.update(with_random_controls(directions, seed=random_seed, draws=random_draws))
    rows = []
    for finetune_name, make_context in finetunes.items():
        for direction_name, direction in ablations.items():
            with (
                make_context(),
                contextlib.nullcontext() if direction is None else stream_ablation(model, direction),
            ):
                values = measure(model)
            rows += [{"finetune": finetune_name, "direction": direction_name, "metric": k, "value": float(v)}
                     for k, v in values.items()]  # fmt: skip
    return pd.DataFrame(rows, columns=["finetune", "direction", "metric", "value"])


def mean_over_draws(frame: pd.DataFrame, *, column: str = "direction") -> pd.DataFrame:
    """`frame` plus, for each random control, a row "random:NAME" holding the mean `value` of its
    draws "random:NAME#k" (grouped by every other column but `value`); the draws stay."""
    labels = frame[column].astype(str)
    draws = frame[labels.str.match(r"^random:.*#\d+$")]
    keys = [c for c in frame.columns if c not in (column, "value")]
    parent = draws[column].str.replace(r"#\d+$", "", regex=True).rename(column)
    means = draws.groupby([*keys, parent], sort=False, dropna=False)["value"].mean().reset_index()
    return pd.concat([frame, means[frame.columns]], ignore_index=True)
