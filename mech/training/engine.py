"""The finetuning engine: train an adapter (steering vector, LoRA, a stack) on the assistant tokens
of a narrow data set, optionally holding the model's behaviour fixed elsewhere with a KL term.

    loss = CE(train assistant tokens) + kl_weight(step) * KL(chat || finetuned)(KL-set assistant tokens)
           + l2_weight * ||effective update||^2

Fast because nothing below the adapter changes: each example's residual stream entering the
adapter's first block is computed once (`stop_at_layer`) and every step runs only the blocks
above it (`start_at_layer`). The chat model's log-probabilities on the KL set are computed once
as well, with the adapter switched off on the same model (no second copy in memory).

A run can live in a folder: `config.json`, `trajectory.jsonl` (one `StepRecord` per step),
`snapshots/step_NNNNNN.{safetensors,json}` every `save_every` steps, `state.pt` (what resuming
needs), and the final `adapter.{safetensors,json}` with `result.json`. A killed run resumes from
its last state and ends bit-identical to an uninterrupted one: batch order is a function of the
step and the seed, and the optimizer state is saved with the adapter.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mech.adapters.base import Adapter
from mech.adapters.saving import save_adapter
from mech.io.atomic import write_json
from mech.io.provenance import write_status
from mech.models.load import model_info
from mech.training.cache import ContentCache
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, FinetuneResult, NonFiniteError, StepRecord
from mech.training.data import ChatData
from mech.training.frozen_weights import copy_free_weights
from mech.training.losses import response_targets
from mech.training.run_folder import RunFolder

_log = logging.getLogger(__name__)

KL_SEED_OFFSET = 7919
"""The KL set's batch order uses seed + KL_SEED_OFFSET, independent of the training order."""


def kl_reference(cfg: FinetuneConfig, n_tokens: int, d_vocab: int) -> dict:
    """How the chat model's KL-set distributions are kept: the mode, and for `reference="auto"`
    why (exact float32 log-probs need `n_tokens * d_vocab * 4` bytes; past the budget it is top-k,
    which makes the KL term a lower bound)."""
    exact_mib = n_tokens * d_vocab * 4 / 2**20
    if cfg.reference != "auto":
        return {"mode": cfg.reference, "chosen": "set", "exact_mib": round(exact_mib, 1)}
    mode = "exact" if exact_mib <= cfg.reference_budget_mb else "topk"
    record = {
        "mode": mode,
        "chosen": "auto",
        "exact_mib": round(exact_mib, 1),
        "budget_mib": cfg.reference_budget_mb,
    }
    if mode == "topk":
        record["note"] = (
            f"KL reference: exact log-probs of {n_tokens} KL tokens x {d_vocab} would take {exact_mib:.0f} MiB, over "
            f"the {cfg.reference_budget_mb:.0f} MiB budget; keeping the top {cfg.reference_topk} plus the rest, so "
            "the KL term is a lower bound (reference='exact' or 'recompute', or a larger reference_budget_mb, to avoid)"
        )
    return record


def batch_index(step: int, n_batches: int, seed: int) -> int:
    """Epoch-wise shuffled order, a pure function of the step: resuming needs no RNG state."""
    epoch, position = divmod(step, n_batches)
    order = torch.randperm(n_batches, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return int(order[position])


def finetune(
    model: HookedTransformer,
    adapter: Adapter,
    train: ChatData,
    kl_data: ChatData | CachedChatSet | None = None,
    cfg: FinetuneConfig = FinetuneConfig(),
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[StepRecord], None] | None = None,
    cache: ContentCache | None = None,
) -> FinetuneResult:
    """Train `adapter` (in place) on `train`'s assistant tokens, with the KL term on `kl_data`.

    `kl_data` may be a `CachedChatSet` built at the adapter's entry, shared by many runs (its
    batching then overrides `cfg.kl_batch_size`, and its reference is computed once). With a
    `cache` (`mech.training.cache.ContentCache`), residuals and reference log-probs are read from it when
    model, data, site and batching match, and written to it otherwise.

    The KL is KL(chat || finetuned) = sum_w p_chat(w) (log p_chat(w) - log p_ft(w)) per assistant
    token of the KL set, averaged over tokens (not divided by the vocabulary size). This forward,
    mass-covering direction asks the finetuned model to keep giving probability to everything the
    chat model would say on other domains, i.e. to keep its behaviour there: it is the
    cross-entropy of the finetuned model on the chat model's own distribution, minus a constant,
    and it needs only the chat model's probabilities, which are fixed and can be cached. The
    reverse direction would let the finetuned model drop chat behaviours (mode seeking) and needs
    its own samples. It is also the authors' choice. Pads and prompt tokens never count.
    """
    if cfg.kl.ever_on and kl_data is None:
        raise ValueError("the KL schedule has a non-zero weight but no kl_data was given")
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.grad_accum < 1 or cfg.warmup_steps < 0:
        raise ValueError(
            f"grad_accum must be >= 1 and warmup_steps >= 0, got {cfg.grad_accum} and {cfg.warmup_steps}"
        )
    site = adapter.entry(model)
    adapter.place(model)
    store = cfg.cache_device
    train_set = CachedChatSet.build(
        model, train, site, batch_size=cfg.batch_size, name="train", cache=cache, store_device=store
    )
    kl_set = kl_data if isinstance(kl_data, CachedChatSet) else None
    if kl_set is not None and kl_set.site != site:
        raise ValueError(f"kl_data was cached at {kl_set.site}, but this adapter enters at {site}")
    if kl_set is not None and store is not None and kl_set.store_device != store:
        kl_set.store_on(store, model)
    if kl_data is not None and kl_set is None:
        kl_set = CachedChatSet.build(
            model,
            kl_data,
            site,
            batch_size=cfg.kl_batch_size,
            name="kl_data",
            cache=cache,
            store_device=store,
        )
    reference = kl_reference(cfg, kl_set.n_targets() if kl_set else 0, model.cfg.d_vocab)
    if kl_set is not None:
        kl_set.cache_reference(model, reference["mode"], cfg.reference_topk)
        if "note" in reference:
            _log.warning(reference["note"])

    meta = {
        "finetune": cfg.to_dict(), "adapter": adapter.spec(), "model": model_info(model).name,
        "train": {"source": train_set.source, "fingerprint": train_set.fingerprint},
        "kl_data": None if kl_set is None else {"source": kl_set.source, "fingerprint": kl_set.fingerprint,
                                                "reference": reference},
    }  # fmt: skip
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    folder, start, trajectory = None, 0, []
    if run_dir is not None:
        folder = RunFolder(run_dir, meta, resume=resume)
        state, trajectory = folder.load_state()
        if state is not None:
            adapter.load_state_dict(state["adapter"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])

    began = time.perf_counter()
    # Freeze the model for the loop only: requires_grad is global state on the caller's model.
    was_trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        bar = tqdm(
            range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="finetune"
        )
        for step in bar:
            record = _step(model, adapter, optimizer, train_set, kl_set, cfg, step)
            trajectory.append(record)
            if folder is not None:
                folder.append(record)
                if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                    folder.save_state(step + 1, adapter, optimizer, model, meta)
            bar.set_postfix(ce=f"{record.ce:.4f}", kl="-" if record.kl is None else f"{record.kl:.4f}")
            if on_step is not None:
                on_step(record)
    except BaseException as err:
        if folder is not None:
            write_status(folder.path, "failed", err)
        raise
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(was_trainable[name])
    result = FinetuneResult(
        adapter, trajectory, reference["mode"] if kl_set else "none", time.perf_counter() - began,
        reference_record=reference if kl_set else {},
    )  # fmt: skip
    if folder is not None:
        result.run_dir = folder.path
        save_adapter(folder.path / "adapter", adapter, model, config=meta)
        summary = {
            "final": asdict(result.final),
            "norm": adapter.norm(),
            "reference": result.reference,
            "reference_record": result.reference_record,
            "seconds": result.seconds,
        }
        write_json(folder.path / "result.json", summary)
        write_status(folder.path, "done")
    return result


def learning_rate(cfg: FinetuneConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then `cfg.lr`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return float(cfg.lr) * (step + 1) / cfg.warmup_steps
    return float(cfg.lr)


def _step(
    model: HookedTransformer,
    adapter: Adapter,
    optimizer: torch.optim.Optimizer,
    train_set: CachedChatSet,
    kl_set: CachedChatSet | None,
    cfg: FinetuneConfig,
    step: int,
) -> StepRecord:
    k = cfg.grad_accum
    # Micro-step m of step s reads batch index s*k + m: resuming still needs no RNG state.
    train_ids = [batch_index(step * k + m, len(train_set.batches), cfg.seed) for m in range(k)]
    weight = cfg.kl.at(step)
    kl_ids: list[int] = []
    if kl_set is not None and (weight != 0 or cfg.track_kl):
        kl_ids = [batch_index(step * k + m, len(kl_set.batches), cfg.seed + KL_SEED_OFFSET) for m in range(k)]
    # Token-weighted terms, so the micro-batches together give the mean over all their tokens.
    n_train = [int(train_set.batches[i].prediction_mask.sum()) for i in train_ids]
    n_kl = [int(kl_set.batches[j].prediction_mask.sum()) for j in kl_ids] if kl_set is not None else []
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {"loss": 0.0, "cross-entropy": 0.0}
    if kl_ids:
        totals["KL"] = 0.0
    for m, i in enumerate(train_ids):
        targets = response_targets(train_set.batches[i])
        with copy_free_weights(model):  # backward remakes weight copies instead of keeping them
            logits = train_set.target_logits(model, adapter, i)
            ce = torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device))
            kl = None
            if kl_ids:
                with contextlib.nullcontext() if weight != 0 else torch.no_grad():
                    kl = kl_set.kl(model, adapter, kl_ids[m])
        if k > 1:  # with k = 1 the step is computed exactly as before accumulation existed
            ce = ce * (n_train[m] / sum(n_train))
        loss = ce
        if kl_ids:
            if k > 1:
                kl = kl * (n_kl[m] / sum(n_kl))
            if weight != 0:
                loss = loss + weight * kl
        norm_sq = None
        if m == k - 1:  # the norm term once per optimizer step
            norm_sq = adapter.update_norm_sq()
            if cfg.l2_weight:
                loss = loss + cfg.l2_weight * norm_sq
        # Each term is read to the host once: for the check and for the step's record.
        terms = {"cross-entropy": ce, "KL": kl, "update norm": norm_sq}
        values = {term: float(value.detach()) for term, value in terms.items() if value is not None}
        for term, value in values.items():
            if not math.isfinite(value):
                micro = f" (micro-batch {m + 1} of {k})" if k > 1 else ""
                raise NonFiniteError(
                    f"step {step + 1}{micro}: the {term} term is {value}; training stopped before "
                    "this step's update, nothing saved was overwritten"
                )
        loss.backward()
        totals["loss"] += float(loss.detach())
        totals["cross-entropy"] += values["cross-entropy"]
        if "KL" in values:
            totals["KL"] += values["KL"]
    grads = {name: p.grad for name, p in adapter.named_parameters() if p.grad is not None}
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads.values()]).all()):
        name = next(n for n, g in grads.items() if not torch.isfinite(g).all())
        raise NonFiniteError(
            f"step {step + 1}: the gradient of adapter parameter {name!r} is not finite "
            "(loss terms were finite); training stopped before this step's update"
        )
    lr = learning_rate(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return StepRecord(
        step=step + 1, loss=totals["loss"], ce=totals["cross-entropy"], kl=totals.get("KL"),
        kl_weight=weight, norm=float(norm_sq.detach().sqrt()),
    )  # fmt: skip
