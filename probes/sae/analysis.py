"""Reading an SAE against directions and labels: reconstruction quality, latents nearest a direction,
latents that differ between two sets, per-latent AUROC, the best detector latent (chosen on one
split of the examples, scored on the other), and the contexts a latent fires on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mech._quiet import quiet_sae_lens_import
from probes.metrics import auroc_per_column

with quiet_sae_lens_import():
    from sae_lens import SAE
from probes.sae.activations import (
    _ENCODE_CHUNK,
    _activations_of_ids,
    _token_ids,
    check_sae_fits,
    latent_activations,
)


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


@dataclass(frozen=True)
class LatentSelection:
    """The latent that best detects a label on the selection split, and every latent's AUROC on
    both splits: `heldout_auroc[latent]` is the selected latent's unbiased score."""

    latent: int
    selection_auroc: Float[Tensor, " d_sae"]
    heldout_auroc: Float[Tensor, " d_sae"]
    n_selection: int
    n_heldout: int

    def ranked(self, k: int) -> list[int]:
        """The `k` latents of highest selection-split AUROC, best first."""
        return torch.argsort(self.selection_auroc, descending=True, stable=True)[:k].tolist()


def select_latent(
    latents: Float[Tensor, "n d_sae"],
    labels: Bool[Tensor, " n"] | Tensor,
    selection: Bool[Tensor, " n"] | Tensor,
) -> LatentSelection:
    """The argmax-AUROC latent over the `selection` rows, scored on the others (held out), so its
    reported AUROC is not the maximum of d_sae noisy scores on the data it was picked on."""
    latents, labels = latents.detach().float().cpu(), labels.detach().bool().cpu()
    selection = selection.detach().bool().cpu()
    if selection.all() or not selection.any():
        raise ValueError("selecting a latent needs rows on both sides of the split")
    chosen = auroc_per_column(latents[selection], labels[selection])
    heldout = auroc_per_column(latents[~selection], labels[~selection])
    return LatentSelection(
        int(torch.argmax(chosen)), chosen, heldout, int(selection.sum()), int((~selection).sum())
    )


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
