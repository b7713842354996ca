"""Sampling-time stand-ins for the parts of a TransformerLens forward that cost per call, not per
FLOP. Inside `fast_decoding(model)`:

- attention runs through sdpa (`mech.models.sdpa`, where the configuration allows);
- each GatedMLP multiplies by its weights as stored: TransformerLens hands F.linear
  `W.T.contiguous()`, a fresh copy of each of its three matrices at every call (on a 14B model,
  more bytes a decoding step than the weights themselves). The products equal TransformerLens's
  to float round-off (another memory layout, another summation order); the hooks are the same;
- the unembedding multiplies by W_U as stored, where TransformerLens copies it at every call (at
  Qwen's vocabulary, 1.5 GB a step on a 14B model);
- a norm with no hook inside (RMSNorm) normalises with torch's fused `F.rms_norm` (x times the
  inverse root mean square where TransformerLens divides by the root: the same to float
  round-off), and a block's ln1 normalises once: TransformerLens's block calls it on the same
  residual three times (for the q, k and v inputs), and the second and third calls return the
  first call's output, which is what they would compute.

Which parts take the fast path is decided on entering, from the hooks attached then. Outside, the
model is as it was. `next_token_logits` runs the final norm and the unembedding on
the last position only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre, Unembed
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.utilities.activation_functions import apply_softcap

from mech.models.sdpa import hooked, sdpa_attention

_PURE_NORMS = (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)
"""TransformerLens norms whose output is a function of their input (and weights) alone."""


@contextlib.contextmanager
def fast_decoding(model: HookedTransformer) -> Iterator[None]:
    """Model forwards inside are TransformerLens's up to float round-off, with the same hooks
    (but hook_attn_scores and hook_pattern: see `mech.models.sdpa`), at less cost a call."""
    last_norm = _Slot()
    forwards = {**_uncopied_mlps(model), **_uncopied_unembed(model), **_fast_norms(model, last_norm)}
    try:
        with sdpa_attention(model), _instance_forwards(forwards):
            yield
    finally:
        last_norm.clear()  # no residual outlives the context


def next_token_logits(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    cache: TransformerLensKeyValueCache,
) -> Float[Tensor, "batch d_vocab_out"]:
    """The logits after each row's last position. On a prompt the blocks run on every position and
    the final norm and unembedding on the last alone (every position's logits at Qwen's vocabulary
    are gigabytes a batch), unless a hook sits on those, which then sees every position."""
    final = [model.unembed, *([model.ln_final] if model.cfg.normalization_type is not None else [])]
    if tokens.shape[1] == 1 or any(hooked(module) for module in final):
        return model(tokens, attention_mask=attention_mask, past_kv_cache=cache)[:, -1]
    residual = model(
        tokens, attention_mask=attention_mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers
    )
    last = residual[:, -1:]
    if model.cfg.normalization_type is not None:
        last = model.ln_final(last)
    return apply_softcap(model.unembed(last), model.cfg.output_logits_soft_cap)[:, -1]


@contextlib.contextmanager
def _instance_forwards(forwards: dict[nn.Module, Callable]) -> Iterator[None]:
    """Each module's `forward` replaced on the instance (hooks and __call__ stay), then restored."""
    patched = [module for module in forwards if "forward" not in vars(module)]
    for module in patched:
        module.forward = forwards[module]
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _uncopied_mlps(model: HookedTransformer) -> dict[nn.Module, Callable]:
    if (
        model.cfg.is_layer_norm_activation()
        or str(model.cfg.device).startswith("mps")
        or model.cfg.load_in_4bit
    ):
        return {}  # SoLU's extra norm; MPS's F.linear (pytorch#161640); quantised weights
    mlps = [block.mlp for block in model.blocks if type(block.mlp) is GatedMLP]
    return {mlp: functools.partial(_gated_mlp_forward, mlp) for mlp in mlps}


def _gated_mlp_forward(
    self: GatedMLP, x: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos d_model"]:
    """`GatedMLP.forward` with the weights as stored (F.linear of W.T multiplies by W, uncopied)."""
    if self.W_gate.device != x.device:
        x = x.to(self.W_gate.device)
    pre_act = self.hook_pre(F.linear(x, self.W_gate.T))
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T))
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear + self.b_in)
    return F.linear(post_act, self.W_out.T, self.b_out)


def _uncopied_unembed(model: HookedTransformer) -> dict[nn.Module, Callable]:
    if type(model.unembed) is not Unembed or str(model.cfg.device).startswith("mps"):
        return {}
    return {model.unembed: functools.partial(_unembed_forward, model.unembed)}


def _unembed_forward(
    self: Unembed, residual: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos d_vocab_out"]:
    """`Unembed.forward` with W_U as stored."""
    return self.hook_out(F.linear(self.hook_in(residual), self.W_U.T, self.b_U))


def _fast_norms(model: HookedTransformer, last_norm: _Slot) -> dict[nn.Module, Callable]:
    """Fused RMSNorms, and each block's ln1 computed once a forward, where no hook is inside (the
    ln1s share `last_norm`, so one residual and its norm are held at a time, not one a layer)."""
    final = [model.ln_final] if model.cfg.normalization_type is not None else []
    norms = [(block.ln1, True) for block in model.blocks] + [(block.ln2, False) for block in model.blocks]
    forwards: dict[nn.Module, Callable] = {}
    for norm, repeated in norms + [(norm, False) for norm in final]:
        if not isinstance(norm, _PURE_NORMS) or hooked(norm):
            continue
        forward = functools.partial(_rms_forward if type(norm) is RMSNorm else type(norm).forward, norm)
        forwards[norm] = _LastCall(forward, last_norm) if repeated else forward
    return forwards


def _rms_forward(self: RMSNorm, x: Float[Tensor, "batch pos length"]) -> Float[Tensor, "batch pos length"]:
    """`RMSNorm.forward` through `F.rms_norm`, for a norm whose hook points have no hooks."""
    if self.cfg.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    return F.rms_norm(x, (x.shape[-1],), None, self.eps).to(self.cfg.dtype) * self.w


class _Slot:
    """The last (forward, input, input version, output, output version) of the `_LastCall`s
    sharing it: one, so a 48-layer prefill at batch 400 holds one residual here, not 48."""

    def __init__(self) -> None:
        self.held: tuple[object, Tensor, int, Tensor, int] | None = None

    def clear(self) -> None:
        self.held = None


class _LastCall:
    """A pure forward that returns its last output again when called on the same, unchanged
    tensor (the version counters tell whether either was written in place since), remembered in
    a `_Slot` it may share with others."""

    def __init__(self, forward: Callable[[Tensor], Tensor], slot: _Slot | None = None) -> None:
        self._forward = forward
        self._slot = _Slot() if slot is None else slot

    def __call__(self, x: Tensor) -> Tensor:
        held = self._slot.held
        if (
            held is not None
            and held[0] is self
            and held[1] is x
            and held[2] == x._version
            and held[4] == held[3]._version
        ):
            return held[3]
        out = self._forward(x)
        self._slot.held = (self, x, x._version, out, out._version)
        return out
