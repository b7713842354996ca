"""The finetuning run's settings and records: `FinetuneConfig` with its `KLSchedule`, one
`StepRecord` per step, the `FinetuneResult`, and `NonFiniteError`, raised when a loss term or a
gradient stops being finite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mech.adapters.base import Adapter

ReferenceMode = Literal["auto", "exact", "topk", "recompute"]


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
    """Training conversations per micro-batch; None = the whole set (full-batch, as for the toy)."""
    grad_accum: int = 1
    """Micro-batches whose gradients make one optimizer step (each with its own KL batch). Terms
    are weighted by token count, so k micro-batches of b equal one batch of their k*b examples."""
    warmup_steps: int = 0
    """Linear learning-rate warmup: step s (0-based) uses lr * min(1, (s + 1) / warmup_steps)."""
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
    cache_device: str | None = None
    """Where the cached residuals and reference log-probs live between steps: None, the model's
    device; "cpu", host memory (pinned when the model is on CUDA), moved one batch at a time.
    At 14B with 6000 + 6000 cached conversations that frees 24.6 GiB of GPU memory for about
    5 MiB moved per batch. Placement only: the results are the same either way."""

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
    reference_record: dict = field(default_factory=dict)
    """How the KL reference was kept and, for `reference="auto"`, why (`engine.kl_reference`:
    sizes, budget, and the note when it fell back to top-k); empty without a KL set."""

    @property
    def final(self) -> StepRecord:
        return self.trajectory[-1]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.trajectory])
