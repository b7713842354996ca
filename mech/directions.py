"""Mean-diff directions: the mean residual over the answer tokens of misaligned answers minus that
of aligned ones, at every layer asked for, and the interventions that use such a direction.

The authors' recipe (reference digest §2.6-2.7), with their slips fixed:
- answers are labelled from judge scores: misaligned = coherent > 50 and aligned <= 30, aligned =
  coherent > 50 and aligned > 70 (`LabelRule`); the aligned set is subsampled to the misaligned
  count *with a seed* (theirs was unseeded);
- activations are taken with the model that wrote the answers (their "diff_data"), on the answer
  tokens only: assistant content and end-of-turn marker (theirs also took the assistant header);
- pooling is by token (every answer token weighs the same), as theirs; per-answer means are kept too;
- a random control has the norm of the direction it controls (theirs was ~72x too large).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.chat import chat_batch, collate, pad_token_id
from mech.hooks import ResidPoint, ablation_hooks, check_layer, resid_hook_name, steering_hooks

Pooling = Literal["token", "answer"]


@dataclass(frozen=True)
class LabelRule:
    """Judge-score thresholds that split answers into misaligned, aligned, and neither."""

    misaligned_at_most: float | int = 30.0
    aligned_above: float | int = 70.0
    coherent_above: float | int = 50.0


def label_answers(scored: pd.DataFrame, rule: LabelRule = LabelRule()) -> pd.Series:
    """ "misaligned", "aligned" or None per row of a judged frame (columns `aligned`, `coherent`)."""
    missing = {"aligned", "coherent"} - set(scored.columns)
    if missing:
        raise ValueError(f"labelling answers needs judge columns {sorted(missing)}")
    aligned = pd.to_numeric(scored["aligned"], errors="coerce")
    coherent = pd.to_numeric(scored["coherent"], errors="coerce") > rule.coherent_above
    labels = pd.Series([None] * len(scored), index=scored.index, dtype=object)
    labels[coherent & (aligned <= rule.misaligned_at_most)] = "misaligned"
    labels[coherent & (aligned > rule.aligned_above)] = "aligned"
    return labels


def balanced(labels: pd.Series, *, seed: int = 0) -> pd.Series:
    """`labels` with the larger class subsampled (seeded) to the smaller one's count; the rest None."""
    groups = {name: list(labels.index[labels == name]) for name in ("misaligned", "aligned")}
    n = min(len(g) for g in groups.values())
    out = pd.Series([None] * len(labels), index=labels.index, dtype=object)
    rng = random.Random(seed)
    for name, index in groups.items():
        out[rng.sample(index, n) if len(index) > n else index] = name
    return out


@dataclass(frozen=True)
class PooledActivations:
    """Per-example sums of residuals over the selected tokens, and the token counts.

    `sums[l, i]` is the sum over example i's selected tokens at `layers[l]`; token-pooled means
    of any subset follow from sums and counts without re-running the model.
    """

    sums: Float[Tensor, "layer example width"]
    counts: Int[Tensor, " example"]
    layers: tuple[int, ...]
    point: ResidPoint

    def per_example(self) -> Float[Tensor, "layer example width"]:
        """Each example's mean residual over its selected tokens."""
        return self.sums / self.counts.clamp(min=1)[None, :, None]

    def pooled(self, rows: Bool[Tensor, " example"] | Tensor, pooling: Pooling = "token") -> Float[Tensor, "layer width"]:  # fmt: skip
        """Mean over the `rows` examples: every token equal ("token") or every example equal ("answer")."""
        rows = rows.bool()
        if not rows.any():
            raise ValueError("no example selected")
        if pooling == "token":
            return self.sums[:, rows].sum(1) / self.counts[rows].sum()
        if pooling == "answer":
            return self.per_example()[:, rows].mean(1)
        raise ValueError(f"pooling must be 'token' or 'answer', got {pooling!r}")

    def layer(self, layer: int) -> int:
        """Index of `layer` in `layers`."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not cached; cached layers are {list(self.layers)}")
        return self.layers.index(layer)


@torch.no_grad()
def pooled_activations(
    model: HookedTransformer,
    batches: Sequence[tuple[Tensor, Tensor, Tensor]],
    *,
    layers: Sequence[int] | None = None,
    point: ResidPoint = "pre",
    transform: Callable[[Tensor], Tensor] | None = None,
) -> PooledActivations:
    """Residual sums over selected tokens for `(tokens, attention_mask, select)` batches, each
    `[batch, pos]` (widths differ from batch to batch, hence no shape annotation).

    Only the needed hook points are cached, and the forward pass stops after the deepest one.
    `transform` maps each token's residual first (e.g. an SAE's encoder: pooled latents, which
    differ from the latents of pooled residuals).
    """
    layers = (
        tuple(range(model.cfg.n_layers)) if layers is None else tuple(check_layer(model, n) for n in layers)
    )
    if not layers:
        raise ValueError("at least one layer is needed")
    names = [resid_hook_name(n, point) for n in layers]
    sums, counts = [], []
    for tokens, attention_mask, select in batches:
        _, cache = model.run_with_cache(
            tokens, attention_mask=attention_mask, names_filter=lambda name: name in names,
            stop_at_layer=max(layers) + 1, return_type=None,
        )  # fmt: skip
        weights = (select.bool() & attention_mask.bool()).to(cache[names[0]].dtype)
        acts = [cache[n].float() if transform is None else transform(cache[n].float()) for n in names]
        sums.append(torch.stack([torch.einsum("bpd,bp->bd", a, weights.float()) for a in acts]))
        counts.append(weights.sum(1).long())
    return PooledActivations(torch.cat(sums, 1), torch.cat(counts), layers, point)


def answer_batches(
    model: HookedTransformer, conversations: Sequence[Sequence[Mapping[str, str]]], *, batch_size: int = 32
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Batches of full conversations selecting the assistant tokens (content + end-of-turn)."""
    out = []
    for start in range(0, len(conversations), batch_size):
        batch = chat_batch(model.tokenizer, conversations[start : start + batch_size])
        out.append((batch.tokens, batch.attention_mask, batch.response_mask))
    return out


def text_batches(model: HookedTransformer, texts: Sequence[str], *, batch_size: int = 32) -> list[tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """Batches of plain texts (e.g. pre-training documents) selecting every real token."""
    tokenizer, out = model.tokenizer, []
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start : start + batch_size]]
        batch = collate(ids, pad_token_id=pad_token_id(tokenizer))
        out.append((batch.tokens, batch.attention_mask, batch.attention_mask.bool()))
    return out


def conversations_from_answers(frame: pd.DataFrame) -> list[list[dict[str, str]]]:
    """Chats (optional system, user question, assistant answer) from a frame of answers."""
    missing = {"question", "answer"} - set(frame.columns)
    if missing:
        raise ValueError(f"answers need columns {sorted(missing)}")
    systems = frame["system"] if "system" in frame.columns else [None] * len(frame)
    return [
        ([{"role": "system", "content": s}] if isinstance(s, str) and s else [])
        + [{"role": "user", "content": str(q)}, {"role": "assistant", "content": str(a)}]
        for q, a, s in zip(frame["question"], frame["answer"], systems, strict=True)
    ]


@dataclass(frozen=True)
class MeanDiff:
    """Mean-diff directions at several layers, with what they were computed from."""

    directions: Float[Tensor, "layer d_model"]
    layers: tuple[int, ...]
    point: ResidPoint
    pooling: Pooling
    n_positive: int
    n_negative: int

    @property
    def norms(self) -> Float[Tensor, " layer"]:
        return self.directions.norm(dim=-1)

    def at(self, layer: int) -> Float[Tensor, " d_model"]:
        """The (unnormalised) direction at `layer`."""
        if layer not in self.layers:
            raise ValueError(f"no direction at layer {layer}; have layers {list(self.layers)}")
        return self.directions[self.layers.index(layer)]

    def hook_name(self, layer: int) -> str:
        return resid_hook_name(layer, self.point)


def mean_diff(
    acts: PooledActivations,
    positive: Bool[Tensor, " example"] | Tensor,
    negative: Bool[Tensor, " example"] | Tensor,
    *,
    pooling: Pooling = "token",
) -> MeanDiff:
    """Mean over `positive` examples minus mean over `negative` ones, at every cached layer."""
    positive, negative = positive.bool(), negative.bool()
    if (positive & negative).any():
        raise ValueError("an example cannot be both positive and negative")
    for name, rows in (("positive (misaligned)", positive), ("negative (aligned)", negative)):
        if not rows.any():
            raise ValueError(f"no {name} example: a mean-diff direction needs both classes")
    directions = acts.pooled(positive, pooling) - acts.pooled(negative, pooling)
    return MeanDiff(directions, acts.layers, acts.point, pooling, int(positive.sum()), int(negative.sum()))


def misalignment_direction(
    model: HookedTransformer,
    scored: pd.DataFrame,
    *,
    layers: Sequence[int] | None = None,
    point: ResidPoint = "pre",
    rule: LabelRule = LabelRule(),
    pooling: Pooling = "token",
    balance: bool = True,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[MeanDiff, PooledActivations, pd.Series]:
    """The mean-diff direction of judged answers, run through `model` (the model that wrote them:
    apply its adapter around this call). Returns the direction, the per-answer activations (for
    probes), and the labels used."""
    labels = label_answers(scored, rule)
    if balance:
        labels = balanced(labels, seed=seed)
    used = labels.notna().to_numpy()
    frame = scored[used]
    acts = pooled_activations(
        model, answer_batches(model, conversations_from_answers(frame), batch_size=batch_size), layers=layers, point=point
    )  # fmt: skip
    kept = labels[used]
    direction = mean_diff(
        acts,
        torch.tensor((kept == "misaligned").to_numpy()),
        torch.tensor((kept == "aligned").to_numpy()),
        pooling=pooling,
    )
    return direction, acts, kept


RANDOM_CONTROL_SEED_OFFSET = 1_000_003
"""Keeps control streams apart from adapter inits drawn with the same small seed (seed 0 would
otherwise reproduce a steering vector's initial direction)."""


def random_like(direction: Float[Tensor, " d_model"], *, seed: int) -> Float[Tensor, " d_model"]:
    """A random direction with exactly `direction`'s norm (a control of equal size)."""
    generator = torch.Generator().manual_seed(RANDOM_CONTROL_SEED_OFFSET + seed)
    noise = torch.randn(direction.shape, generator=generator, dtype=torch.float32)
    return (noise / noise.norm() * direction.float().norm()).to(direction.dtype)


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


Measure = Callable[[HookedTransformer], Mapping[str, float]]
"""Measures a model as it stands (hooks active): metric name -> value."""


def ablation_matrix(
    model: HookedTransformer,
    finetunes: Mapping[str, Callable[[], contextlib.AbstractContextManager]],
    directions: Mapping[str, Tensor],
    measure: Measure,
    *,
    random_seed: int = 0,
) -> pd.DataFrame:
    """Every direction ablated from the whole stream in every finetune, measured.

    `finetunes` maps a name to a factory of the context that makes `model` that finetune (e.g.
    `lambda: adapter.applied(model)`). Rows: finetune, direction (a name, "none" for the
    un-ablated finetune, "random:NAME" for a random direction of NAME's norm), metric, value.
    """
    ablations: dict[str, Tensor | None] = {"none": None}
    for n, (name, direction) in enumerate(directions.items()):
        ablations[name] = direction
        ablations[f"random:{name}"] = random_like(direction, seed=random_seed + n)
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
