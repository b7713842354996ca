"""Measurements of the engine's step on real tensors (eager, CPU), the same step replayed on the
meta device at any size, and one model's measured case."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from benchmarks.memory.counting import AllocationTracker, saved_bytes, tensor_bytes
from benchmarks.memory.formula import (
    Batch,
    adapter_saved_bytes,
    adapter_state_bytes,
    block_bytes,
    estimate_step,
)
from benchmarks.memory.shapes import KINDS, TOPK, dtype_bytes, make_adapter, shape_of
from mech.models.chat import ChatBatch
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import _step
from mech.training.frozen_weights import copy_free_weights
from mech.training.losses import kl_from_logprobs, topk_kl


# -- measurements on real tensors -----------------------------------------------------------------
def _residual(model: HookedTransformer, batch: int, seq: int, seed: int) -> Tensor:
    """A stand-in for a cached residual: what is saved depends on shapes, not values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, model.cfg.d_model, generator=g).to(model.cfg.device, model.cfg.dtype)


def fit_block_costs(model: HookedTransformer, kind: str, seq: int) -> dict[str, float]:
    """Saved bytes of the blocks above the adapter at (batch, seq) = (1, P), (2, P), (1, 2P), solved
    for S = C + T * per_token + T * P * per_token_per_key (T = batch * P tokens), per block run."""
    adapter = make_adapter(kind, model, model.cfg.n_layers // 2).to(model.cfg.device)
    start = adapter.entry(model).start_at_layer
    n_blocks = model.cfg.n_layers - start
    saved = {}
    for b, p in ((1, seq), (2, seq), (1, 2 * seq)):
        resid = _residual(model, b, p, seed=b * 1000 + p)
        exclude = [*model.parameters(), *model.buffers(), *adapter.parameters(), resid]
        with copy_free_weights(model), adapter.applied(model, start_at_layer=start):
            _, saved[b, p] = saved_bytes(
                lambda r=resid: model(r, start_at_layer=start, stop_at_layer=model.cfg.n_layers), exclude
            )
    s1, s2, s3 = saved[1, seq], saved[2, seq], saved[1, 2 * seq]
    per_key = (s3 - s2) / (2 * seq * seq)
    per_token = (s2 - s1) / seq - seq * per_key
    constant = s1 - seq * per_token - seq * seq * per_key
    return {
        "blocks": n_blocks, "constant_per_block": constant / n_blocks,
        "per_token_per_block": per_token / n_blocks, "per_token_per_key_per_block": per_key / n_blocks,
        "saved": {f"{b}x{p}": v for (b, p), v in saved.items()},
    }  # fmt: skip


def measure_head(model: HookedTransformer, n: int = 64) -> dict[str, float]:
    """Saved bytes of the tail (final norm, unembedding, loss) per assistant row and per call, for
    CE, exact KL and top-k KL, and the cached reference per row; fitted from n and 2n rows."""
    end, s = model.cfg.n_layers, dtype_bytes(model)
    out: dict[str, float] = {}
    for loss in ("ce", "exact", "topk"):
        saved = {}
        for rows in (n, 2 * n):
            g = torch.Generator().manual_seed(rows)
            final = torch.randn(rows, model.cfg.d_model, generator=g).to(model.cfg.device, model.cfg.dtype)
            final.requires_grad_(True)
            with torch.no_grad():
                ref = model(final[None], start_at_layer=end)[0].float().log_softmax(-1)
            top = torch.topk(ref, min(TOPK, ref.shape[-1]))
            targets = torch.randint(model.cfg.d_vocab, (rows,), generator=g).to(model.cfg.device)

            def run(final=final, ref=ref, top=top, targets=targets, loss=loss) -> Tensor:
                logits = model(final[None], start_at_layer=end)[0]
                if loss == "ce":
                    return torch.nn.functional.cross_entropy(logits.float(), targets)
                if loss == "exact":
                    return kl_from_logprobs(ref, logits).mean()
                return topk_kl(top.values, top.indices, logits).mean()

            exclude = [*model.parameters(), *model.buffers(), final, ref, *top]
            with copy_free_weights(model):
                _, saved[rows] = saved_bytes(run, exclude)
            if loss == "exact":
                out["reference_exact_per_token"] = tensor_bytes(ref) / rows
            elif loss == "topk":
                out["reference_topk_per_token"] = tensor_bytes(list(top)) / rows
        per_row = (saved[2 * n] - saved[n]) / n
        out[f"{loss}_per_token"] = per_row
        out[f"{loss}_constant"] = saved[n] - n * per_row
    out["w_u_copy_formula"] = s * model.cfg.d_model * model.cfg.d_vocab
    return out


def _chat_batch(batch: Batch, d_vocab: int, device: str, seed: int) -> ChatBatch:
    tokens = torch.randint(d_vocab, (batch.batch, batch.seq), generator=torch.Generator().manual_seed(seed))
    response = torch.zeros(batch.batch, batch.seq, dtype=torch.bool)
    response[:, batch.seq - batch.assistant :] = True
    attention = torch.ones(batch.batch, batch.seq, dtype=torch.long)
    return ChatBatch(tokens, attention, response, "right").to(device)


def chat_sets(model: HookedTransformer, train: Batch, kl: Batch) -> tuple[list[ChatBatch], list[Tensor]]:
    """Two synthetic chat batches and the residuals the engine caches for them (at the middle block)."""
    start = model.cfg.n_layers // 2
    batches = [
        _chat_batch(b, model.cfg.d_vocab, model.cfg.device, seed) for seed, b in enumerate((train, kl))
    ]
    with torch.no_grad():
        return batches, [model(b.tokens, stop_at_layer=start) for b in batches]


def engine_step_peak(
    model: HookedTransformer, kind: str, batches: list[ChatBatch], residuals: list[Tensor]
) -> dict[str, float]:
    """Peak bytes allocated during one `mech.training.engine._step` (CE + top-k KL, backward, AdamW):
    the engine's own code, eager. The peak comes in backward, before AdamW creates its state."""
    adapter = make_adapter(kind, model, model.cfg.n_layers // 2).to(model.cfg.device)
    site = adapter.entry(model)
    assert site.start_at_layer == model.cfg.n_layers // 2, site
    train_set, kl_set = (
        CachedChatSet([b], [r], site, name, name) for b, r, name in zip(batches, residuals, ("train", "kl"))
    )
    # The chat model's top-k log-probs, as `cache_reference` keeps them (their values do not matter here).
    n_targets = kl_set.n_targets()
    logprobs = torch.randn(n_targets, model.cfg.d_vocab, device=model.cfg.device).log_softmax(-1)
    kl_set.references, kl_set.reference_mode = (
        [torch.topk(logprobs, min(TOPK, model.cfg.d_vocab))],
        ("topk", TOPK),
    )
    cfg = FinetuneConfig(lr=1e-3, kl=KLSchedule(1.0), reference="topk")
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr)
    tracker = AllocationTracker()
    with tracker:
        _step(model, adapter, optimizer, train_set, kl_set, cfg, 0)
    return {
        "peak": tracker.peak,
        "adapter_state": tensor_bytes([*adapter.parameters(), *optimizer.state.values()])
        + tensor_bytes([p.grad for p in adapter.parameters() if p.grad is not None]),
        "reference_topk_per_token": tensor_bytes(list(kl_set.references[0])) / n_targets,
    }


# -- the step replayed without data (meta) --------------------------------------------------------
def replay_step(
    model: HookedTransformer, kind: str, train: Batch, kl: Batch | None, layer: int | None = None
) -> float:
    """Peak bytes allocated during one step that mirrors `mech.training.engine._step` (CE, top-k KL,
    backward, AdamW) but selects assistant rows by index instead of boolean mask, so that it runs
    on "meta" tensors: the real-size step, traced without memory or a GPU. The adapter sits at
    `layer` (default: the middle block)."""
    device = model.cfg.device
    with torch.device(device):
        adapter = make_adapter(kind, model, model.cfg.n_layers // 2 if layer is None else layer)
    start, end = adapter.entry(model).start_at_layer, model.cfg.n_layers
    d = model.cfg.d_model

    def inputs(batch: Batch) -> tuple[Tensor, Tensor]:
        resid = torch.zeros(batch.batch, batch.seq, d, dtype=model.cfg.dtype, device=device)
        cols = torch.arange(batch.seq - batch.assistant - 1, batch.seq - 1)
        rows = (torch.arange(batch.batch)[:, None] * batch.seq + cols).flatten().to(device)
        return resid, rows

    def target_logits(resid: Tensor, rows: Tensor) -> Tensor:
        with adapter.applied(model, start_at_layer=start):
            final = model(resid, start_at_layer=start, stop_at_layer=end)
        return model(final.flatten(0, 1)[rows][None], start_at_layer=end)[0]

    train_in = inputs(train)
    kl_in = inputs(kl) if kl is not None else None
    targets = torch.zeros(train.targets, dtype=torch.long, device=device)
    if kl is not None:
        k = min(TOPK, model.cfg.d_vocab)
        ref_values = torch.zeros(kl.targets, k, device=device)
        ref_indices = torch.zeros(kl.targets, k, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3)

    def step() -> None:
        with copy_free_weights(model):
            loss = torch.nn.functional.cross_entropy(target_logits(*train_in).float(), targets)
            if kl_in is not None:
                loss = loss + topk_kl(ref_values, ref_indices, target_logits(*kl_in)).mean()
        norm_sq = adapter.update_norm_sq()  # as the engine: computed, not in the loss (l2_weight 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        del norm_sq

    tracker = AllocationTracker()
    with tracker:
        step()
    return tracker.peak


# -- the cases ------------------------------------------------------------------------------------
def measure_model(
    model: HookedTransformer, label: str, *, seq: int, step_train: Batch, step_kl: Batch
) -> dict:
    """Everything measured (eager) on one model, with the formula's values beside it."""
    shape, s = shape_of(model), dtype_bytes(model)
    began = time.perf_counter()
    out: dict[str, Any] = {
        "model": label, "dtype": str(model.cfg.dtype).removeprefix("torch."), "shape": asdict(shape),
        "layer": shape.layer, "weights_bytes": tensor_bytes(list(model.parameters())),
        "weights_formula_bytes": shape.params() * s,
    }  # fmt: skip
    out["head"] = measure_head(model)
    batches, residuals = chat_sets(model, step_train, step_kl)
    out["residual_per_token"] = tensor_bytes(residuals[0]) / step_train.tokens
    out["kinds"] = {}
    for kind in KINDS:
        fit = fit_block_costs(model, kind, seq)
        if kind == "steering":
            formula = {
                "constant_per_block": block_bytes(shape, s, 0, seq),
                "per_token_per_block": block_bytes(shape, s, 1, 0) - block_bytes(shape, s, 0, 0),
                "per_token_per_key_per_block": (block_bytes(shape, s, 1, 1) - block_bytes(shape, s, 1, 0)),
            }
            fit["formula"] = formula
            fit["ratio"] = {k: fit[k] / v for k, v in formula.items() if v}  # no constant: no copies
        fit["saved_formula"] = {
            f"{b}x{p}": fit["blocks"] * block_bytes(shape, s, b * p, p)
            + adapter_saved_bytes(shape, kind, s, b * p, p)
            for b, p in ((1, seq), (2, seq), (1, 2 * seq))
        }
        fit["saved_ratio_to_formula"] = {k: fit["saved"][k] / v for k, v in fit["saved_formula"].items()}
        step = engine_step_peak(model, kind, batches, residuals)
        estimate = estimate_step(shape, kind, s, step_train, step_kl)
        step["estimate"] = estimate["total"]
        step["ratio_to_estimate"] = step["peak"] / estimate["total"]
        step["adapter_state_formula"] = adapter_state_bytes(shape, kind)
        fit["step"] = step
        out["kinds"][kind] = fit
    out["seconds"] = time.perf_counter() - began
    return out
