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

import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mech.adapter_io import save_adapter
from mech.adapters import Adapter, AdapterSite
from mech.atomic import atomic_write, write_json, write_text
from mech.cache import ContentCache, model_identity
from mech.chat import ChatBatch
from mech.data import ChatData, conversations_of, fingerprint, length_batches, tokenize_conversations
from mech.hooks import has_hooks
from mech.metrics import kl_from_logprobs, topk_kl
from mech.model import model_info
from mech.provenance import write_status

ReferenceMode = Literal["auto", "exact", "topk", "recompute"]
KL_SEED_OFFSET = 7919
"""The KL set's batch order uses seed + KL_SEED_OFFSET, independent of the training order."""


class NonFiniteError(FloatingPointError):
    """Training met a NaN or inf; the message names the step and the term."""


@dataclass(frozen=True)
class KLSchedule:
    """KL weight per step: `weight`, switched to `weight_after` from step `toggle_step` on.

    `KLSchedule(10, toggle_step=200, weight_after=0)` is the paper's "remove the KL" experiment.
    """

    weight: float = 0.0
    toggle_step: int | None = None
    weight_after: float = 0.0

    def at(self, step: int) -> float:
        """Weight for the optimizer step with 0-based index `step`."""
        return self.weight_after if self.toggle_step is not None and step >= self.toggle_step else self.weight

    @property
    def ever_on(self) -> bool:
        return self.weight != 0 or (self.toggle_step is not None and self.weight_after != 0)


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    lr: float = 1e-2
    """Adam(W). LoRA converges at 1e-2 on the toy organism; a single vector needs ~5e-2."""
    batch_size: int | None = None
    """Training conversations per step; None = the whole set (full-batch, as for the toy)."""
    kl_batch_size: int | None = None
    kl: KLSchedule = KLSchedule()
    l2_weight: float = 0.0
    """Norm control: penalty on ||effective update||^2 (||Delta W||_F^2 for LoRA, ||v||^2 for vectors).
    Without it an unregularised LoRA drifts to large norms in directions the loss ignores."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay on the raw parameters."""
    seed: int = 0
    """Batch order. The adapter's initialisation has its own seed, in its constructor."""
    save_every: int | None = None
    reference: ReferenceMode = "auto"
    """How the chat model's KL-set distributions are kept: "exact" log-probs (d_vocab floats per
    token), "topk" (`reference_topk` values + the rest, a lower bound on KL), "recompute" (run the
    upper blocks without the adapter every step), or "auto": exact under `reference_budget_mb`."""
    reference_topk: int = 256
    reference_budget_mb: float = 2048.0
    track_kl: bool = True
    """Measure the KL every step even while its weight is 0 (the revert experiment's trajectory)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepRecord:
    """Values at the parameters *before* optimizer step `step` (1-based) was taken."""

    step: int
    loss: float
    ce: float
    kl: float | None
    kl_weight: float
    norm: float


@dataclass
class FinetuneResult:
    adapter: Adapter
    trajectory: list[StepRecord]
    reference: str
    seconds: float
    run_dir: Path | None = None

    @property
    def final(self) -> StepRecord:
        return self.trajectory[-1]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.trajectory])


def response_targets(batch: ChatBatch) -> Int[Tensor, " n_targets"]:
    """The assistant tokens, in the order `logits[batch.prediction_mask]` predicts them."""
    return batch.tokens[:, 1:][batch.prediction_mask[:, :-1]]


def response_cross_entropy(logits: Float[Tensor, "batch pos d_vocab"], batch: ChatBatch) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over assistant tokens only (never prompt tokens or pads)."""
    return torch.nn.functional.cross_entropy(logits[batch.prediction_mask].float(), response_targets(batch))


@dataclass
class CachedChatSet:
    """Batches of a chat data set with the residual entering `site.start_at_layer`, computed once."""

    batches: list[ChatBatch]
    residuals: list[Tensor]
    site: AdapterSite
    source: str
    fingerprint: str
    references: list[Any] = field(default_factory=list)
    reference_mode: tuple[str, int] | None = None
    """(mode, k) of the cached `references`, so a set shared by several runs is cached once."""
    cache: ContentCache | None = None
    cache_parts: dict[str, Any] = field(default_factory=dict)
    """What the residuals depend on: the content cache's key for them and the references."""

    @classmethod
    def build(
        cls,
        model: HookedTransformer,
        data: ChatData,
        site: AdapterSite,
        *,
        batch_size: int | None,
        name: str,
        cache: ContentCache | None = None,
    ) -> CachedChatSet:
        """Tokenize `data`, batch it, and run the model up to `site` once (or read the residuals
        from `cache`, keyed by model, data, site and batching)."""
        conversations, source = conversations_of(data, name=name)
        examples = tokenize_conversations(
            model.tokenizer, conversations, source=source, max_len=model.cfg.n_ctx
        )
        batches = [b.to(model.cfg.device) for b in length_batches(model.tokenizer, examples, batch_size)]
        data_hash = fingerprint(examples)
        if cache is not None and has_hooks(model):
            cache = None  # hooks change what the model computes; the key cannot see them
        parts = {}
        if cache is not None:
            parts = {"model": model_identity(model), "site": site.start_at_layer,
                     "data": data_hash, "batch_size": batch_size}  # fmt: skip
            stored = cache.get_tensors("residuals", parts)
            if stored is not None and len(stored) == len(batches):
                residuals = [stored[f"batch_{i}"].to(model.cfg.device) for i in range(len(batches))]
                return cls(batches, residuals, site, source, data_hash, cache=cache, cache_parts=parts)
        with torch.no_grad():
            residuals = [model(b.tokens, stop_at_layer=site.start_at_layer) for b in batches]
        for i, residual in enumerate(residuals):
            if not torch.isfinite(residual).all():
                raise NonFiniteError(
                    f"{source}: the model's residual stream entering block {site.start_at_layer} is not "
                    f"finite in batch {i} (dtype {residual.dtype}; try float32 or bfloat16)"
                )
        if cache is not None:
            cache.put_tensors("residuals", parts, {f"batch_{i}": r for i, r in enumerate(residuals)})
        return cls(batches, residuals, site, source, data_hash, cache=cache, cache_parts=parts)

    def logits(
        self, model: HookedTransformer, adapter: Adapter | None, i: int
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of batch `i` with `adapter` active (or the unadapted model if None)."""
        start = self.site.start_at_layer
        if adapter is None:
            return model(self.residuals[i], start_at_layer=start)
        batch = self.batches[i]
        with adapter.applied(model, start_at_layer=start, response_mask=batch.response_mask):
            return model(self.residuals[i], start_at_layer=start)

    def target_logits(
        self, model: HookedTransformer, adapter: Adapter | None, i: int
    ) -> Float[Tensor, "n_targets d_vocab"]:
        """Logits at batch `i`'s assistant-predicting positions only.

        The final norm and unembedding act per position, so they run on the needed rows alone
        (TransformerLens's own tail, via `start_at_layer=n_layers`): prompts and pads are
        never unembedded, which matters when d_vocab is large.
        """
        start, end = self.site.start_at_layer, model.cfg.n_layers
        batch = self.batches[i]
        if adapter is None:
            final = model(self.residuals[i], start_at_layer=start, stop_at_layer=end)
        else:
            with adapter.applied(model, start_at_layer=start, response_mask=batch.response_mask):
                final = model(self.residuals[i], start_at_layer=start, stop_at_layer=end)
        return model(final[batch.prediction_mask][None], start_at_layer=end)[0]

    @torch.no_grad()
    def mean_cross_entropy(self, model: HookedTransformer, adapter: Adapter | None) -> float:
        """Cross-entropy per assistant token over the whole set (token-weighted over batches)."""
        total, count = 0.0, 0
        for i, batch in enumerate(self.batches):
            logits = self.target_logits(model, adapter, i).float()
            total += float(
                torch.nn.functional.cross_entropy(logits, response_targets(batch), reduction="sum")
            )
            count += logits.shape[0]
        return total / count

    def n_targets(self) -> int:
        return sum(int(b.prediction_mask.sum()) for b in self.batches)

    def cache_reference(self, model: HookedTransformer, mode: str, k: int) -> None:
        """Keep the unadapted model's log-probs at assistant positions ("exact"/"topk")."""
        if self.reference_mode == (mode, k):
            return
        self.reference_mode = (mode, k)
        if mode == "recompute":
            self.references = [None] * len(self.batches)
            return
        cache = self.cache if self.cache is not None and not has_hooks(model) else None
        parts = {**self.cache_parts, "mode": mode, "k": k if mode == "topk" else None}
        stored = cache.get_tensors("reference", parts) if cache is not None else None
        if stored is not None:
            self.references = [
                _reference_from(stored, i, mode, model.cfg.device) for i in range(len(self.batches))
            ]
            return
        references = []
        with torch.no_grad():
            for i, batch in enumerate(self.batches):
                logprobs = self.target_logits(model, None, i).float().log_softmax(-1)
                references.append(
                    logprobs if mode == "exact" else torch.topk(logprobs, min(k, logprobs.shape[-1]))
                )
        self.references = references
        if cache is not None:
            tensors = {}
            for i, ref in enumerate(references):
                if mode == "exact":
                    tensors[f"batch_{i}"] = ref
                else:
                    tensors[f"batch_{i}.values"], tensors[f"batch_{i}.indices"] = ref.values, ref.indices
            cache.put_tensors("reference", parts, tensors)

    def kl(self, model: HookedTransformer, adapter: Adapter, i: int) -> Float[Tensor, ""]:
        """Mean KL(unadapted || adapted) over batch `i`'s assistant positions."""
        current = self.target_logits(model, adapter, i)
        reference = self.references[i]
        if reference is None:
            with torch.no_grad():
                reference = self.target_logits(model, None, i).float().log_softmax(-1)
        elif not isinstance(reference, Tensor):
            return topk_kl(reference.values, reference.indices, current).mean()
        return kl_from_logprobs(reference, current).mean()


def _reference_from(stored: dict[str, Tensor], i: int, mode: str, device) -> Any:
    if mode == "exact":
        return stored[f"batch_{i}"].to(device)
    values, indices = stored[f"batch_{i}.values"].to(device), stored[f"batch_{i}.indices"].to(device)
    return torch.return_types.topk((values, indices))


def _reference_mode(cfg: FinetuneConfig, n_tokens: int, d_vocab: int) -> str:
    if cfg.reference != "auto":
        return cfg.reference
    return "exact" if n_tokens * d_vocab * 4 <= cfg.reference_budget_mb * 2**20 else "topk"


def batch_index(step: int, n_batches: int, seed: int) -> int:
    """Epoch-wise shuffled order, a pure function of the step: resuming needs no RNG state."""
    epoch, position = divmod(step, n_batches)
    order = torch.randperm(n_batches, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return int(order[position])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _RunFolder:
    """The on-disk side of a run: config, trajectory, snapshots, resumable state."""

    def __init__(self, path: str | os.PathLike, description: dict[str, Any], *, resume: bool):
        self.path = Path(path)
        self.config_path, self.trajectory_path = self.path / "config.json", self.path / "trajectory.jsonl"
        self.state_path = self.path / "state.pt"
        if self.config_path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.path} already holds a run; pass resume=True to continue it, or choose another folder"
                )
            before = _flatten(json.loads(self.config_path.read_text()))
            now = _flatten(json.loads(json.dumps(description)))
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            if changed:
                raise ValueError(
                    f"{self.path}: cannot resume, the run was started with different {', '.join(changed)}"
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(self.config_path, description)
        write_status(self.path, "running")

    def load_state(self) -> tuple[dict[str, Any] | None, list[StepRecord]]:
        if not self.state_path.exists():
            self.trajectory_path.unlink(missing_ok=True)
            return None, []
        try:
            # weights_only: a state file is tensors and numbers; anything else is refused, never run.
            state = torch.load(self.state_path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{self.state_path}: refused to load, it holds more than tensors and numbers "
                f"(torch.load weights_only=True: {str(err).splitlines()[0]})"
            ) from None
        records = []
        if self.trajectory_path.exists():
            lines = self.trajectory_path.read_text().split("\n")
            for lineno, line in enumerate(lines, start=1):
                try:
                    record = StepRecord(**json.loads(line)) if line else None
                except (json.JSONDecodeError, TypeError):
                    if lineno == len(lines):  # the half line a kill left behind
                        break
                    raise ValueError(f"{self.trajectory_path}:{lineno}: not a step record") from None
                if record is not None and record.step <= state["step"]:
                    records.append(record)
        write_text(self.trajectory_path, "".join(json.dumps(asdict(r)) + "\n" for r in records))
        return state, records

    def append(self, record: StepRecord) -> None:
        with self.trajectory_path.open("a") as out:
            out.write(json.dumps(asdict(record)) + "\n")

    def save_state(self, step: int, adapter: Adapter, optimizer: torch.optim.Optimizer, model, meta) -> None:
        save_adapter(self.path / "snapshots" / f"step_{step:06d}", adapter, model, config=meta)
        state = {"step": step, "adapter": adapter.state_dict(), "optimizer": optimizer.state_dict()}
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))


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
    `cache` (`mech.cache.ContentCache`), residuals and reference log-probs are read from it when
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
    site = adapter.entry(model)
    adapter.to(model.cfg.device)
    train_set = CachedChatSet.build(model, train, site, batch_size=cfg.batch_size, name="train", cache=cache)
    kl_set = kl_data if isinstance(kl_data, CachedChatSet) else None
    if kl_set is not None and kl_set.site != site:
        raise ValueError(f"kl_data was cached at {kl_set.site}, but this adapter enters at {site}")
    if kl_data is not None and kl_set is None:
        kl_set = CachedChatSet.build(
            model, kl_data, site, batch_size=cfg.kl_batch_size, name="kl_data", cache=cache
        )
    mode = _reference_mode(cfg, kl_set.n_targets() if kl_set else 0, model.cfg.d_vocab)
    if kl_set is not None:
        kl_set.cache_reference(model, mode, cfg.reference_topk)

    meta = {
        "finetune": cfg.to_dict(), "adapter": adapter.spec(), "model": model_info(model).name,
        "train": {"source": train_set.source, "fingerprint": train_set.fingerprint},
        "kl_data": None if kl_set is None else {"source": kl_set.source, "fingerprint": kl_set.fingerprint},
    }  # fmt: skip
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    folder, start, trajectory = None, 0, []
    if run_dir is not None:
        folder = _RunFolder(run_dir, meta, resume=resume)
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
    result = FinetuneResult(adapter, trajectory, mode if kl_set else "none", time.perf_counter() - began)
    if folder is not None:
        result.run_dir = folder.path
        save_adapter(folder.path / "adapter", adapter, model, config=meta)
        summary = {
            "final": asdict(result.final),
            "norm": adapter.norm(),
            "reference": result.reference,
            "seconds": result.seconds,
        }
        write_json(folder.path / "result.json", summary)
        write_status(folder.path, "done")
    return result


def _step(
    model: HookedTransformer,
    adapter: Adapter,
    optimizer: torch.optim.Optimizer,
    train_set: CachedChatSet,
    kl_set: CachedChatSet | None,
    cfg: FinetuneConfig,
    step: int,
) -> StepRecord:
    i = batch_index(step, len(train_set.batches), cfg.seed)
    targets = response_targets(train_set.batches[i])
    ce = torch.nn.functional.cross_entropy(train_set.target_logits(model, adapter, i).float(), targets)
    loss = ce
    weight, kl = cfg.kl.at(step), None
    if kl_set is not None and (weight != 0 or cfg.track_kl):
        j = batch_index(step, len(kl_set.batches), cfg.seed + KL_SEED_OFFSET)
        if weight != 0:
            kl = kl_set.kl(model, adapter, j)
            loss = loss + weight * kl
        else:
            with torch.no_grad():
                kl = kl_set.kl(model, adapter, j)
    norm_sq = adapter.update_norm_sq()
    if cfg.l2_weight:
        loss = loss + cfg.l2_weight * norm_sq
    # Each term is read to the host once: for the check and for the step's record.
    terms = {"cross-entropy": ce, "KL": kl, "update norm": norm_sq}
    values = {term: float(value.detach()) for term, value in terms.items() if value is not None}
    for term, value in values.items():
        if not math.isfinite(value):
            raise NonFiniteError(
                f"step {step + 1}: the {term} term is {value}; training stopped before "
                "this step's update, nothing saved was overwritten"
            )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad for name, p in adapter.named_parameters() if p.grad is not None}
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads.values()]).all()):
        name = next(n for n, g in grads.items() if not torch.isfinite(g).all())
        raise NonFiniteError(
            f"step {step + 1}: the gradient of adapter parameter {name!r} is not finite "
            "(loss terms were finite); training stopped before this step's update"
        )
    optimizer.step()
    return StepRecord(
        step=step + 1, loss=float(loss.detach()), ce=values["cross-entropy"], kl=values.get("KL"),
        kl_weight=weight, norm=float(norm_sq.detach().sqrt()),
    )  # fmt: skip
