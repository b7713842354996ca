"""Training a sae_lens SAE offline: `train_sae` caches one hook's activations on real tokens
(never pads) and trains on them in memory with sae_lens's own `SAETrainer`; no dataset
download, no wandb. Same seed, same weights.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech._quiet import quiet_sae_lens_import
from mech.models.load import model_info

with quiet_sae_lens_import():
    from sae_lens import (
        SAE,
        LoggingConfig,
        SAETrainer,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
        TrainingSAE,
    )
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
from probes.sae.activations import _activations_of_ids, _token_ids

Architecture = Literal["topk", "standard"]


@dataclass(frozen=True)
class SaeTrainingConfig:
    """How `train_sae` trains an SAE on one hook's activations."""

    hook_name: str
    """TransformerLens hook the SAE reads, e.g. "blocks.2.hook_resid_pre"."""
    d_sae: int = 512
    """Number of latents."""
    architecture: Architecture = "topk"
    """"topk" (k largest pre-activations kept, sae_lens's TopK SAE) or "standard" (ReLU + L1)."""
    k: int = 32
    """Active latents per token for "topk"."""
    l1_coefficient: float = 5.0
    """L1 penalty for "standard" (on normalised activations, so it transfers between models)."""
    lr: float = 1e-3
    steps: int = 1000
    """Optimiser steps; the SAE sees `steps * batch_tokens` activations (the cache is reshuffled each epoch)."""
    batch_tokens: int = 4096
    """Activations (token positions) per step."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up (and L1 warm-up for "standard")."""
    decay_steps: int | None = None
    """Linear learning-rate decay to 0 at the end; None: the last fifth of the steps."""
    normalize_activations: bool = True
    """Scale inputs to mean norm sqrt(d_model) while training; the scale is folded into the weights after."""
    dead_feature_window: int = 200
    """Steps without firing after which a latent counts as dead (TopK's auxiliary loss revives those)."""
    seed: int = 0
    """Seeds the initial weights and the order of activations: same seed, same weights."""
    text_batch_size: int = 32
    """Texts per forward pass of the model while caching."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "standard"):
            raise ValueError(f"architecture must be 'topk' or 'standard', got {self.architecture!r}")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae ({self.d_sae}), got {self.k}")
        if (
            min(self.d_sae, self.steps, self.batch_tokens, self.dead_feature_window, self.text_batch_size)
            <= 0
        ):
            raise ValueError(
                "d_sae, steps, batch_tokens, dead_feature_window and text_batch_size must be positive"
            )
        if self.warmup_steps == 1:  # sae_lens's warm-up LinearLR needs 0 or at least 2 steps
            raise ValueError("warmup_steps must be 0 or at least 2")
        if self.warmup_steps + self.lr_decay_steps > self.steps:
            raise ValueError(
                f"warm-up and decay ({self.warmup_steps} + {self.lr_decay_steps}) exceed {self.steps} steps"
            )

    @property
    def lr_decay_steps(self) -> int:
        return self.steps // 5 if self.decay_steps is None else self.decay_steps

    @property
    def training_tokens(self) -> int:
        return self.steps * self.batch_tokens


# ----------------------------------------------------------------------------- training
def _training_sae(cfg: SaeTrainingConfig, d_in: int, metadata: SAEMetadata) -> TrainingSAE:
    common = dict(
        d_in=d_in,
        d_sae=cfg.d_sae,
        device=cfg.device,
        normalize_activations="expected_average_only_in" if cfg.normalize_activations else "none",
        metadata=metadata,
    )
    if cfg.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, **common))
    sae_cfg = StandardTrainingSAEConfig(
        l1_coefficient=cfg.l1_coefficient, l1_warm_up_steps=cfg.warmup_steps, **common
    )
    return StandardTrainingSAE(sae_cfg)


def _shuffled_batches(
    acts: Float[Tensor, "n d"], batch_size: int, generator: torch.Generator
) -> Iterator[Float[Tensor, "batch d"]]:
    """Endless batches of rows, each epoch in a fresh random order (epochs may straddle batches)."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(len(acts), generator=generator)])
        index, pending = pending[:batch_size], pending[batch_size:]
        yield acts[index.to(acts.device)]


def _to_inference_sae(training_sae: TrainingSAE, device: str) -> SAE:
    """The inference SAE sae_lens itself would load from the training SAE's saved files."""
    with tempfile.TemporaryDirectory() as folder:
        training_sae.save_inference_model(folder)
        return SAE.load_from_disk(folder, device=device)


def train_sae_on_activations(
    acts: Float[Tensor, "n_tokens d_in"], cfg: SaeTrainingConfig, *, metadata: dict | None = None
) -> SAE:
    """Train an SAE on cached activations with sae_lens's `SAETrainer`; returns the inference `SAE`.

    `metadata` (model_name, hook_name, ...) is stored in the SAE's config. The global torch RNG is
    left as it was: initial weights come from `cfg.seed` inside a forked RNG.
    """
    acts = acts.detach().to(cfg.device, torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        training_sae = _training_sae(cfg, acts.shape[1], SAEMetadata(**(metadata or {})))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_tokens,
        train_batch_size_samples=cfg.batch_tokens,
        lr=cfg.lr,
        lr_end=cfg.lr,  # only cosine schedules use it; the linear decay runs from lr to 0
        lr_warm_up_steps=cfg.warmup_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        device=cfg.device,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.dead_feature_window,  # the window of the l0 stored in the metadata
        logger=LoggingConfig(log_to_wandb=False),
    )
    batches = _shuffled_batches(acts, cfg.batch_tokens, torch.Generator().manual_seed(cfg.seed))
    trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=batches)
    if cfg.normalize_activations:
        # The exact mean norm over the whole cache (sae_lens estimates it from a sample of batches).
        trainer.activation_scaler.scaling_factor = math.sqrt(acts.shape[1]) / float(acts.norm(dim=-1).mean())
    # The loop of `SAETrainer.fit` through its public per-step seams, minus its progress bar
    # and wandb calls: library code here stays silent.
    while trainer.n_training_samples < trainer_cfg.total_training_samples:
        trainer.maybe_reset_sparsity()
        trainer.step(next(batches))
        trainer.n_training_steps += 1
    if trainer.activation_scaler.scaling_factor is not None:
        training_sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
        trainer.activation_scaler.scaling_factor = None
    trainer.set_final_sae_metadata()
    return _to_inference_sae(training_sae, cfg.device)


def train_sae(model: HookedTransformer, texts: Sequence[str], cfg: SaeTrainingConfig) -> SAE:
    """Train an SAE on `cfg.hook_name`'s activations on the real tokens of `texts`, offline.

    Any HookedTransformer with a tokenizer works. Deterministic for a fixed `cfg.seed` (on a given
    device and thread count). The model's name and the hook are recorded in `sae.cfg.metadata`.

    Example (not run)::

        sae = train_sae(model, world.pretraining_sample(2000), SaeTrainingConfig("blocks.2.hook_resid_pre"))
    """
    ids = _token_ids(model, texts)
    acts = _activations_of_ids(model, ids, cfg.hook_name, cfg.text_batch_size)
    metadata = dict(
        model_name=model_info(model).name,
        hook_name=cfg.hook_name,
        hook_head_index=None,
        context_size=model.cfg.n_ctx,
        prepend_bos=False,  # texts are tokenised as given; no BOS is added beyond the tokenizer's own
        dataset_path=f"{len(ids)} in-memory texts",
        n_training_texts=len(ids),
        n_activation_tokens=len(acts),
    )
    return train_sae_on_activations(acts, cfg, metadata=metadata)
