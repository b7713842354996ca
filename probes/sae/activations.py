"""A hook's activations on real tokens (never pads), for training SAEs and reading their latents, and
the check that an SAE reads a hook the model has, at the model's width."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech._quiet import quiet_sae_lens_import
from mech.models.chat import collate, pad_token_id
from mech.models.load import model_info

with quiet_sae_lens_import():
    from sae_lens import SAE

_ENCODE_CHUNK = 4096  # rows encoded at once: bounds the [rows, d_sae] activations in memory


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


# ----------------------------------------------------------------------------- analysis
@torch.no_grad()
def latent_activations(sae: SAE, acts: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
    """The SAE's latent activations for each row of `acts` (on the SAE's device, float32)."""
    if acts.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"activations have width {acts.shape[-1]}; the SAE reads width {sae.cfg.d_in}")
    rows = acts.to(sae.device, sae.dtype)
    return torch.cat([sae.encode(chunk) for chunk in rows.split(_ENCODE_CHUNK)]).float()


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
