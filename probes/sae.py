"""Sparse autoencoders (sae_lens) on a model's activations: train offline, save, load, analyse.

`train_sae` caches one hook's activations on real tokens (never pads) and trains a sae_lens SAE on
them in memory, with sae_lens's own `SAETrainer`; no dataset download, no wandb. `load_sae` reads a
saved folder, the SAE shipped with a toy organism, or a sae_lens release from the local Hugging
Face cache. The analysis functions return DataFrames and tensors; nothing here prints or plots.
`python -m probes.sae --train-toy` trains and ships the toy organism's SAE.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mech._quiet import quiet_sae_lens_import
from mech.atomic import write_json
from mech.chat import collate, pad_token_id
from mech.model import model_info
from probes.metrics import auroc_per_column

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
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from sae_lens.saes.sae import SAEMetadata

Architecture = Literal["topk", "standard"]
TOY_HOOK = "blocks.2.hook_resid_pre"
"""The toy organism's middle layer (n_layers // 2 = 2), where its adapters enter block 2."""
TOY_SAE_FOLDER = "sae"
"""Subfolder of an organism's checkpoint directory holding its SAE."""
TOY_TRAIN_SEED, TOY_EVAL_SEED = 1, 2
"""`World.pretraining_sample` seeds: documents the toy SAE is trained on, and fresh ones to score it."""
_ENCODE_CHUNK = 4096  # rows encoded at once: bounds the [rows, d_sae] activations in memory


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


@dataclass(frozen=True)
class SaeEvaluation:
    """How well an SAE reconstructs a set of activations."""

    n_tokens: int
    mse: float
    """Mean squared error per activation entry."""
    fvu: float
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2."""
    l0: float
    """Mean number of active latents per token."""
    dead_share: float
    """Share of latents that never fire on these activations."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


# ----------------------------------------------------------------------------- activations
def _token_ids(model: HookedTransformer, texts: Sequence[str]) -> list[list[int]]:
    """Each text tokenised as the model's tokenizer does by default, cut to n_ctx."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; attach one to tokenise texts")
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty sequence of strings")
    ids = [model.tokenizer(text)["input_ids"][: model.cfg.n_ctx] for text in texts]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise ValueError(f"texts {empty[:5]} tokenise to nothing")
    return ids


def _stop_layer(hook_name: str) -> int | None:
    """The block after the hook's, so the forward pass stops there; None for hooks outside blocks."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) + 1 if match else None


def _check_hook(model: HookedTransformer, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        raise ValueError(
            f"model {model_info(model).name!r} ({model.cfg.n_layers} layers) has no hook {hook_name!r}"
        )


@torch.no_grad()
def _activations_of_ids(
    model: HookedTransformer, ids: Sequence[Sequence[int]], hook_name: str, batch_size: int
) -> Float[Tensor, "n_tokens d"]:
    _check_hook(model, hook_name)
    pad = pad_token_id(model.tokenizer)
    stop = _stop_layer(hook_name)
    chunks = []
    for start in range(0, len(ids), batch_size):
        # Right padding: a causal model's real tokens never see the pads after them.
        batch = collate(ids[start : start + batch_size], pad_token_id=pad, padding_side="right")
        mask = batch.attention_mask.to(model.cfg.device)
        _, cache = model.run_with_cache(
            batch.tokens.to(model.cfg.device),
            attention_mask=mask,
            names_filter=lambda name: name == hook_name,
            stop_at_layer=stop,
            return_type=None,
        )
        acts = cache[hook_name]
        if acts.ndim != 3:
            raise ValueError(
                f"hook {hook_name!r} gives {acts.ndim}-d activations; only [batch pos d] hooks are supported"
            )
        chunks.append(acts[mask.bool()])
    return torch.cat(chunks)


def token_activations(
    model: HookedTransformer, texts: Sequence[str], hook_name: str, *, batch_size: int = 32
) -> Float[Tensor, "n_tokens d"]:
    """Activations at `hook_name` on every real token of `texts` (pads excluded), text by text.

    Texts are tokenised with the model's tokenizer as is (add your BOS to the texts if the tokenizer
    does not) and cut to n_ctx. Row order: text 0's positions, then text 1's, and so on.
    """
    return _activations_of_ids(model, _token_ids(model, texts), hook_name, batch_size)


def latents_on_tokens(
    model: HookedTransformer, sae: SAE, ids: Sequence[int], latents: Sequence[int]
) -> Float[Tensor, "pos k"]:
    """Activation of each of `latents` at every position of one token sequence (hooks in force
    apply, e.g. an adapter's), for token views."""
    hook = check_sae_fits(sae, model)
    acts = _activations_of_ids(model, [list(ids)], hook, 1)
    return latent_activations(sae, acts)[:, [int(j) for j in latents]].cpu()


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


# ----------------------------------------------------------------------------- save / load / check
def save_sae(sae: SAE, folder: str | os.PathLike) -> Path:
    """Write `sae` in sae_lens's format (`cfg.json` + `sae_weights.safetensors`); returns the folder.

    The SAE must record the hook it reads (`sae.cfg.metadata.hook_name`): a saved SAE always says
    where it belongs.
    """
    if not sae.cfg.metadata.hook_name:
        raise ValueError("the SAE records no hook name; set sae.cfg.metadata.hook_name before saving")
    folder = Path(folder)
    if isinstance(sae, TrainingSAE):
        sae.save_inference_model(folder)
    else:
        sae.save_model(folder)
    return folder


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE for the duration; huggingface_hub reads the variable once, at import, so its
    module constant is switched too, and both are restored afterwards."""
    from huggingface_hub import constants

    previous_env, previous_constant = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous_constant
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def load_pretrained_sae(release: str, sae_id: str, *, device: str = "cpu") -> SAE:
    """A sae_lens pretrained SAE (e.g. Gemma Scope), from the local Hugging Face cache only."""
    try:
        with _hub_offline():
            return SAE.from_pretrained(release, sae_id, device=device)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError and OfflineModeIsEnabled
        raise ValueError(
            f"SAE {sae_id!r} of release {release!r} is not in the local Hugging Face cache "
            f"(loading offline; download it first on a machine with network access): {err}"
        ) from err


def toy_sae_dir(organism: str = "default") -> Path:
    """Where the SAE of a shipped toy organism lives (it may not exist yet)."""
    from mech.toy.checkpoint import checkpoint_dir

    return checkpoint_dir(organism) / TOY_SAE_FOLDER


def load_sae(spec: str | os.PathLike, *, device: str = "cpu") -> SAE:
    """Load an SAE from a saved folder, "toy" / "toy:ORGANISM", or "release/sae_id".

    - a folder in sae_lens's format (as written by `save_sae`);
    - "toy" (the default organism's SAE) or "toy:ORGANISM": the SAE shipped in that organism's
      checkpoint directory;
    - "release/sae_id": a sae_lens pretrained release, split at the first "/" (release names
      have none; sae ids may), loaded from the local Hugging Face cache only.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if text == "toy" or text.startswith("toy:"):
        organism = text.partition(":")[2] or "default"
        folder = toy_sae_dir(organism)
        if not (folder / "cfg.json").is_file():
            raise ValueError(
                f"toy organism {organism!r} has no SAE at {folder}; train one with "
                f"`python -m probes.sae --train-toy --organism {organism}`"
            )
        return SAE.load_from_disk(folder, device=device)
    if path.is_dir():
        if not (path / "cfg.json").is_file():
            raise ValueError(f"{path}: not a sae_lens SAE folder (no cfg.json)")
        return SAE.load_from_disk(path, device=device)
    release, _, sae_id = text.partition("/")
    if not sae_id or release not in get_pretrained_saes_directory():
        raise ValueError(
            f"{text!r} is no SAE folder, no 'toy[:ORGANISM]' and no 'release/sae_id' of a sae_lens "
            f"pretrained release (for a Hugging Face repo id as release, call load_pretrained_sae)"
        )
    return load_pretrained_sae(release, sae_id, device=device)


def check_sae_fits(sae: SAE, model: HookedTransformer, hook_name: str | None = None) -> str:
    """Return the hook the SAE reads on `model`, or raise a ValueError naming the width or hook.

    The SAE's recorded hook must exist in the model (and equal `hook_name` if given); its input
    width must be the model's d_model (residual-stream SAEs).
    """
    recorded = sae.cfg.metadata.hook_name
    name = model_info(model).name
    if hook_name is not None and recorded and hook_name != recorded:
        raise ValueError(f"the SAE was trained on hook {recorded!r}, not {hook_name!r}")
    hook = hook_name or recorded
    if not hook:
        raise ValueError("the SAE records no hook name; pass hook_name=")
    if sae.cfg.d_in != model.cfg.d_model:
        raise ValueError(
            f"the SAE reads width {sae.cfg.d_in} at hook {hook!r}, but model {name!r} has d_model "
            f"{model.cfg.d_model} (SAE trained on {sae.cfg.metadata.model_name!r})"
        )
    _check_hook(model, hook)
    return hook


# ----------------------------------------------------------------------------- analysis
@torch.no_grad()
def latent_activations(sae: SAE, acts: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
    """The SAE's latent activations for each row of `acts` (on the SAE's device, float32)."""
    if acts.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"activations have width {acts.shape[-1]}; the SAE reads width {sae.cfg.d_in}")
    rows = acts.to(sae.device, sae.dtype)
    return torch.cat([sae.encode(chunk) for chunk in rows.split(_ENCODE_CHUNK)]).float()


@torch.no_grad()
def evaluate_sae(sae: SAE, acts: Float[Tensor, "n d_in"]) -> SaeEvaluation:
    """Reconstruction error (MSE, fraction of variance unexplained), L0 and dead-latent share on `acts`."""
    x = acts.to(sae.device, torch.float32)
    squared_error, fires, active = 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=sae.device), 0.0
    for chunk in x.split(_ENCODE_CHUNK):
        latents = sae.encode(chunk.to(sae.dtype))
        squared_error += float((sae.decode(latents).float() - chunk).pow(2).sum())
        fires |= (latents > 0).any(0)
        active += float((latents > 0).sum())
    variance = float((x - x.mean(0)).pow(2).sum())
    return SaeEvaluation(
        n_tokens=len(x),
        mse=squared_error / x.numel(),
        fvu=squared_error / variance,
        l0=active / len(x),
        dead_share=1.0 - float(fires.float().mean()),
    )


def latents_by_cosine(
    sae: SAE, direction: Float[Tensor, " d_in"], *, k: int = 10, absolute: bool = False
) -> pd.DataFrame:
    """The `k` latents whose decoder rows point most along `direction`: columns latent, cosine.

    Sorted by signed cosine, descending (latents that write the direction). With `absolute`, ranked
    by |cosine| instead, so latents writing its opposite count too; cosine stays signed.
    """
    if direction.shape != (sae.cfg.d_in,):
        raise ValueError(f"direction has shape {tuple(direction.shape)}; the SAE reads width {sae.cfg.d_in}")
    decoder = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)
    cosines = decoder @ torch.nn.functional.normalize(direction.float().to(decoder.device), dim=0)
    order = torch.argsort(cosines.abs() if absolute else cosines, descending=True, stable=True)[:k]
    return pd.DataFrame({"latent": order.tolist(), "cosine": cosines[order].tolist()})


def latents_by_activation_diff(
    sae: SAE, acts_pos: Float[Tensor, "n_pos d_in"], acts_neg: Float[Tensor, "n_neg d_in"], *, k: int = 10
) -> pd.DataFrame:
    """The `k` latents most more active on `acts_pos` than on `acts_neg` (mean activation, pos - neg).

    Columns latent, diff, mean_pos, mean_neg; sorted by diff, descending.
    """
    mean_pos = latent_activations(sae, acts_pos).mean(0)
    mean_neg = latent_activations(sae, acts_neg).mean(0)
    diff = mean_pos - mean_neg
    order = torch.argsort(diff, descending=True, stable=True)[:k]
    return pd.DataFrame(
        {
            "latent": order.tolist(),
            "diff": diff[order].tolist(),
            "mean_pos": mean_pos[order].tolist(),
            "mean_neg": mean_neg[order].tolist(),
        }
    )


def latent_auroc(
    sae: SAE, acts: Float[Tensor, "n d_in"], labels: Bool[Tensor, " n"] | Int[Tensor, " n"]
) -> Float[Tensor, " d_sae"]:
    """AUROC of each latent's activation as a detector of `labels` (0.5: chance; 1: separates)."""
    return auroc_per_column(latent_activations(sae, acts).cpu(), labels.cpu())


def _context(tokenizer, ids: Sequence[int], position: int, window: int) -> str:
    """The tokens around `position`, the token itself in [brackets]."""
    left = tokenizer.decode(ids[max(0, position - window) : position])
    right = tokenizer.decode(ids[position + 1 : position + 1 + window])
    token = tokenizer.decode(ids[position : position + 1]).strip()
    return " ".join(part for part in (left.strip(), f"[{token}]", right.strip()) if part)


def top_contexts(
    model: HookedTransformer,
    sae: SAE,
    texts: Sequence[str],
    latents: Sequence[int],
    *,
    k: int = 5,
    window: int = 6,
    batch_size: int = 32,
) -> pd.DataFrame:
    """For each latent, the `k` token positions of `texts` where it is most active.

    Columns latent, rank (0 = strongest), activation, text (index into `texts`), position, token,
    context (`window` tokens each side, the token in [brackets]). Pads never count, and positions
    where a latent is silent (activation 0) are left out, so a latent may get fewer than `k` rows.
    """
    hook = check_sae_fits(sae, model)
    latents = [int(j) for j in latents]
    if any(not 0 <= j < sae.cfg.d_sae for j in latents):
        raise ValueError(f"latents must be in 0..{sae.cfg.d_sae - 1}, got {latents}")
    ids = _token_ids(model, texts)
    acts = _activations_of_ids(model, ids, hook, batch_size)
    chosen = torch.cat([latent_activations(sae, chunk)[:, latents] for chunk in acts.split(_ENCODE_CHUNK)])
    # Row r of `acts` is where[r] = (text, position): the texts' real tokens laid end to end.
    where = [(text, position) for text, row in enumerate(ids) for position in range(len(row))]
    values, rows = chosen.cpu().topk(min(k, len(chosen)), dim=0)
    records = []
    for column, latent in enumerate(latents):
        for rank in range(values.shape[0]):
            value = float(values[rank, column])
            if value <= 0:
                break
            text, position = where[int(rows[rank, column])]
            records.append(
                dict(
                    latent=latent,
                    rank=rank,
                    activation=value,
                    text=text,
                    position=position,
                    token=model.tokenizer.decode(ids[text][position : position + 1]).strip(),
                    context=_context(model.tokenizer, ids[text], position, window),
                )
            )
    columns = ["latent", "rank", "activation", "text", "position", "token", "context"]
    return pd.DataFrame(records, columns=columns)


# ----------------------------------------------------------------------------- the toy organism's SAE
def toy_sae_config(*, steps: int = 600, seed: int = 0) -> SaeTrainingConfig:
    """The shipped toy SAE's settings: 1024 TopK latents, k = 16, on the middle layer's resid_pre.

    Measured on 1 CPU thread: 600 steps of 4096 tokens take about two minutes and leave about 5%
    of the variance of fresh documents unexplained (see `metrics.json` next to the SAE).
    """
    return SaeTrainingConfig(
        hook_name=TOY_HOOK, d_sae=1024, architecture="topk", k=16, lr=2e-3, steps=steps,
        batch_tokens=4096, warmup_steps=50 if steps >= 250 else 0, seed=seed,
    )  # fmt: skip


def train_toy_sae(
    organism: str = "default",
    *,
    steps: int = 600,
    n_train_texts: int = 2000,
    n_eval_texts: int = 200,
    out: str | os.PathLike | None = None,
) -> Path:
    """Train the toy organism's SAE and write it, with `metrics.json`, to its `sae/` folder (or `out`)."""
    from mech.model import load_model
    from mech.toy.checkpoint import organism_world

    model = load_model("toy" if organism == "default" else f"toy:{organism}")
    world = organism_world(organism)
    cfg = toy_sae_config(steps=steps)
    started = time.perf_counter()
    sae = train_sae(model, world.pretraining_sample(n_train_texts, seed=TOY_TRAIN_SEED), cfg)
    seconds = time.perf_counter() - started
    eval_acts = token_activations(
        model, world.pretraining_sample(n_eval_texts, seed=TOY_EVAL_SEED), cfg.hook_name
    )
    folder = save_sae(sae, Path(out) if out is not None else toy_sae_dir(organism))
    metrics = {
        "organism": organism,
        "hook_name": cfg.hook_name,
        "config": asdict(cfg),
        "training_texts": n_train_texts,
        "activation_tokens": sae.cfg.metadata.n_activation_tokens,
        "training_tokens": cfg.training_tokens,
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "heldout": {"texts": n_eval_texts, "seed": TOY_EVAL_SEED, **evaluate_sae(sae, eval_acts).to_dict()},
        "final_training_window": {
            "l0": sae.cfg.metadata.l0,
            "dead_latents": sae.cfg.metadata.num_dead_features,
        },
    }
    write_json(folder / "metrics.json", metrics)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m probes.sae", description="Train SAEs with sae_lens, offline."
    )
    parser.add_argument("--train-toy", action="store_true", help="train and ship the toy organism's SAE")
    parser.add_argument("--organism", default="default", help="shipped toy organism (default: default)")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps of 4096 tokens")
    parser.add_argument("--texts", type=int, default=2000, help="pre-training documents to cache")
    parser.add_argument("--out", default=None, help="folder to write to (default: the organism's sae/)")
    args = parser.parse_args(argv)
    if not args.train_toy:
        parser.error("nothing to do: pass --train-toy")
    folder = train_toy_sae(args.organism, steps=args.steps, n_train_texts=args.texts, out=args.out)
    metrics = json.loads((folder / "metrics.json").read_text())
    sys.stdout.write(
        json.dumps({"out": str(folder), "seconds": metrics["seconds"], **metrics["heldout"]}) + "\n"
    )


if __name__ == "__main__":
    main()
