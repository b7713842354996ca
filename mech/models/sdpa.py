"""TransformerLens attention through torch's `scaled_dot_product_attention`, for sampling.

TransformerLens forms the score matrix and the pattern by hand, re-rotates every cached key at each
step and rearranges its weights through einops at each call: with the KV cache, most of a sampling
step on a small model. While `sdpa_attention(model)` is entered, each block's attention instead
- projects q, k and v with the same matrices and calls (those equal TransformerLens's bit for bit;
  the matrices are flattened once while they fit `FLAT_MATRIX_BUDGET`), attends with sdpa and
  projects the output with W_O as stored: logits equal TransformerLens's to float round-off;
- fires the same hooks with the same shapes (hook_q/k/v, hook_rot_q/k, hook_z, and the module's own
  torch hooks, through which LoRA adapters act), except hook_attn_scores and hook_pattern, which
  sdpa never forms: a model with a hook there keeps TransformerLens's attention;
- caches keys rotated (a key's rotation depends on its position only), so a step rotates its new
  keys alone; hook_rot_k still sees every key, rotated. A KV cache filled inside is for use inside.

Only the configurations where this is the same computation take it (causal, with or without a
local window; rotary or absolute positions; grouped-query or not; no score soft-cap, sinks,
qk-norm, clipping, 4-bit weights or per-head inputs): Gemma-2, for one, keeps TransformerLens's.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.components import Attention, GroupedQueryAttention
from transformer_lens.components.abstract_attention import AbstractAttention
from transformer_lens.utilities.activation_functions import softcap_enabled
from transformer_lens.utilities.tensors import get_offset_position_ids

_UNSUPPORTED_FLAGS = (
    "use_attn_result", "use_split_qkv_input", "use_attn_in", "use_qk_norm", "use_logn_attn",
    "use_dynamic_ntk_rope", "use_attention_sinks", "load_in_4bit",
)  # fmt: skip
"""Config flags that change TransformerLens's attention in ways the sdpa path does not follow."""


def sdpa_refusal(model: HookedTransformer) -> str | None:
    """Why `model` keeps TransformerLens's attention, or None when the sdpa path applies."""
    cfg, attns = model.cfg, [block.attn for block in model.blocks]
    if any(type(attn) not in (Attention, GroupedQueryAttention) for attn in attns):
        return "another attention class"
    reasons = [
        (cfg.attention_dir != "causal", "attention is not causal"),
        (
            cfg.positional_embedding_type not in ("rotary", "standard", "shortformer"),
            f"{cfg.positional_embedding_type} positions",
        ),
        (softcap_enabled(cfg.attn_scores_soft_cap), "scores are soft-capped"),
        (cfg.clip_qkv is not None, "q, k, v are clipped"),
        ((cfg.original_architecture or "").startswith("Olmo"), "an OLMo-family qk-norm"),
        *((bool(getattr(cfg, flag, False)), f"cfg.{flag}") for flag in _UNSUPPORTED_FLAGS),
        (
            any(attn.attn_type == "local" for attn in attns) and not isinstance(cfg.window_size, int),
            "local attention without a window size",
        ),
        (
            any(hooked(attn.hook_attn_scores) or hooked(attn.hook_pattern) for attn in attns),
            "a hook reads the attention scores or pattern",
        ),
        (_global_hooks(), "a global module hook"),
    ]
    return next((reason for refused, reason in reasons if refused), None)


def hooked(module: nn.Module) -> bool:
    """Whether a forward hook of either kind (TransformerLens's or torch's) sits on `module` or a
    module inside it."""
    return any(
        getattr(m, "fwd_hooks", None) or m._forward_hooks or m._forward_pre_hooks for m in module.modules()
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


FLAT_MATRIX_BUDGET = 2**30
"""Bytes of flattened q/k/v matrices kept for a whole `sdpa_attention` (a 0.5B model's take 0.1
GiB in float32); a bigger model flattens them at each call, as TransformerLens does."""


@contextlib.contextmanager
def sdpa_attention(model: HookedTransformer) -> Iterator[bool]:
    """Run the blocks' attention through sdpa inside (yields True), or leave it as it is where
    `sdpa_refusal` gives a reason (yields False)."""
    if sdpa_refusal(model) is not None:
        yield False
        return
    patched = [block.attn for block in model.blocks if "forward" not in vars(block.attn)]
    shared = _Shared(
        keep_matrices=_matrix_bytes(patched) <= FLAT_MATRIX_BUDGET, rotary_groups=_rotary_groups(patched)
    )
    for attn in patched:
        attn.forward = functools.partial(_sdpa_forward, attn, shared)
    try:
        yield True
    finally:
        for attn in patched:
            del attn.forward


def _sdpa_forward(
    self: AbstractAttention,
    shared: _Shared,
    query_input: Float[Tensor, "batch pos d_model"],
    key_input: Float[Tensor, "batch pos d_model"],
    value_input: Float[Tensor, "batch pos d_model"],
    past_kv_cache_entry: TransformerLensKeyValueCacheEntry | None = None,
    additive_attention_mask: Tensor | None = None,
    attention_mask: Int[Tensor, "batch offset_pos"] | None = None,
    position_bias: Tensor | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """`AbstractAttention.forward` for the configurations `sdpa_refusal` lets through."""
    if additive_attention_mask is not None or position_bias is not None:
        raise ValueError("the sdpa attention takes no additive mask or position bias")
    q_matrix, k_matrix, v_matrix = shared.matrices(self)
    d_head = self.cfg.d_head
    q = self.hook_q(_project(query_input, q_matrix, d_head))
    k = self.hook_k(_project(key_input, k_matrix, d_head))
    v = self.hook_v(_project(value_input, v_matrix, d_head))
    offset = 0 if past_kv_cache_entry is None else past_kv_cache_entry.past_keys.size(1)
    rotary = self.cfg.positional_embedding_type == "rotary"
    if rotary:  # the new positions only: cached keys were rotated when they came
        q, k = _rotate(self, q, k, *shared.rotary_rows(self, offset, q.shape[1], attention_mask))
    if past_kv_cache_entry is not None:
        k, v = past_kv_cache_entry.append(k, v)
    if rotary:
        q, k = self.hook_rot_q(q), self.hook_rot_k(k)
    window = self.cfg.window_size if self.attn_type == "local" else None
    mask, empty = shared.mask(q.shape[1], k.shape[1], offset, attention_mask, window, q)
    z = self.hook_z(_attend(self, q, k, v, mask, empty))
    return _output(self, z)


Matrix = tuple[Float[Tensor, "_out d_model"], Float[Tensor, " _out"]]
"""A flattened projection and its bias (`_out`: each of q, k, v has its own width)."""


class _Shared:
    """What the patched attentions of one `sdpa_attention` share: each layer's flattened q/k/v
    matrices (with `keep_matrices`), and, for the forward under way, the rotary rows and the mask
    (every layer gets the same attention mask object and offset)."""

    def __init__(self, keep_matrices: bool, rotary_groups: dict[AbstractAttention, int]) -> None:
        self._keep_matrices = keep_matrices
        self._rotary_groups = rotary_groups
        self._matrices: dict[AbstractAttention, tuple[tuple[int, ...], tuple[Matrix, Matrix, Matrix]]] = {}
        self._memo: dict[tuple, object] = {}
        self._memo_for: tuple = ()

    def matrices(self, attn: AbstractAttention) -> tuple[Matrix, Matrix, Matrix]:
        """The (head_index d_head) x d_model matrices and flat biases of q, k and v."""
        weights = _qkv_weights(attn)
        versions = tuple(t._version for pair in weights for t in pair)  # weights changed in place
        kept = self._matrices.get(attn)
        if kept is not None and kept[0] == versions:
            return kept[1]
        flat = tuple(_flatten(weight, bias) for weight, bias in weights)
        if self._keep_matrices:
            self._matrices[attn] = (versions, flat)
        return flat  # type: ignore[return-value]

    def _memoised(self, attention_mask: Tensor | None, offset: int, length: int, key: tuple, make):
        """`make()` once per forward: a forward is told apart by its attention mask (the same
        object for every layer, a new one each forward), offset and length."""
        forward = self._memo_for
        if not forward or forward[0] is not attention_mask or forward[1:] != (offset, length):
            self._memo, self._memo_for = {}, (attention_mask, offset, length)
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def rotary_rows(
        self, attn: AbstractAttention, offset: int, length: int, attention_mask: Tensor | None
    ) -> tuple[Float[Tensor, "#batch pos 1 rotary_dim"], Float[Tensor, "#batch pos 1 rotary_dim"]]:
        """The cos and sin rows of the new positions, as TransformerLens's `apply_rotary` takes
        them (growing the table as it does); the positions are found once a forward."""
        needed, rows_now = offset + length, attn.rotary_cos.shape[0]
        if needed > rows_now:
            attn._extend_rotary_embeddings(min(attn.cfg.n_ctx, max(needed, 2 * rows_now)))
        cos, sin = attn.rotary_cos, attn.rotary_sin

        if attention_mask is None:
            new = slice(offset, needed)
            return cos[None, new, None, :], sin[None, new, None, :]
        positions = self._memoised(
            attention_mask,
            offset,
            length,
            ("positions",),
            lambda: get_offset_position_ids(offset, attention_mask).to(cos.device),
        )
        group = self._rotary_groups.get(attn, id(attn))  # layers with equal tables index once
        return self._memoised(
            attention_mask,
            offset,
            length,
            ("rows", group, cos.shape[0], cos.dtype),
            lambda: (cos[positions, None, :], sin[positions, None, :]),
        )

    def mask(
        self,
        query_len: int,
        key_len: int,
        offset: int,
        attention_mask: Int[Tensor, "batch kv_pos"] | None,
        window: int | None,
        like: Tensor,
    ) -> tuple[Float[Tensor, "#batch 1 pos kv_pos"] | None, Bool[Tensor, "batch 1 pos 1"] | None]:
        """`_mask` as sdpa's additive mask (0 or -inf, `like`'s dtype: sdpa would convert a boolean
        one at every call), once per forward and window."""

        def additive() -> tuple[Tensor | None, Tensor | None]:
            allowed, empty = _mask(query_len, key_len, offset, attention_mask, window, like.device)
            if allowed is None:
                return None, empty
            zeros = torch.zeros(allowed.shape, dtype=like.dtype, device=like.device)
            return zeros.masked_fill(~allowed, float("-inf")), empty

        return self._memoised(
            attention_mask, offset, query_len, ("mask", key_len, window, like.dtype), additive
        )


def _rotary_groups(attns: list[AbstractAttention]) -> dict[AbstractAttention, int]:
    """Each rotary attention's group: the index of the first one whose cos and sin tables equal
    its own (every layer of a Qwen2 or Llama: their rows are then gathered once a forward)."""
    groups: dict[AbstractAttention, int] = {}
    firsts: list[AbstractAttention] = []
    for attn in attns:
        if attn.cfg.positional_embedding_type != "rotary":
            continue
        same = (
            i
            for i, first in enumerate(firsts)
            if torch.equal(first.rotary_cos, attn.rotary_cos)
            and torch.equal(first.rotary_sin, attn.rotary_sin)
        )
        groups[attn] = next(same, len(firsts))
        if groups[attn] == len(firsts):
            firsts.append(attn)
    return groups


def _qkv_weights(attn: AbstractAttention) -> tuple[tuple[Tensor, Tensor], ...]:
    grouped = isinstance(attn, GroupedQueryAttention) and not attn.cfg.ungroup_grouped_query_attention
    k = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
    v = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)
    return (attn.W_Q, attn.b_Q), k, v


def _matrix_bytes(attns: list[AbstractAttention]) -> int:
    return sum(t.numel() * t.element_size() for attn in attns for pair in _qkv_weights(attn) for t in pair)


def _flatten(
    weight: Float[Tensor, "head_index d_model d_head"], bias: Float[Tensor, "head_index d_head"]
) -> Matrix:
    """TransformerLens's `simple_attn_linear` matrix, without einops: (head_index d_head) x d_model."""
    return weight.permute(0, 2, 1).reshape(-1, weight.shape[1]), bias.reshape(-1)


def _project(
    x: Float[Tensor, "batch pos d_model"], matrix: Matrix, d_head: int
) -> Float[Tensor, "batch pos head_index d_head"]:
    """`simple_attn_linear`'s product: the same matrix, the same call."""
    return F.linear(x, *matrix).unflatten(-1, (-1, d_head))


def _rotate(
    attn: AbstractAttention,
    q: Float[Tensor, "batch pos head_index d_head"],
    k: Float[Tensor, "batch pos kv_head_index d_head"],
    cos: Float[Tensor, "#batch pos 1 rotary_dim"],
    sin: Float[Tensor, "#batch pos 1 rotary_dim"],
) -> tuple[Float[Tensor, "batch pos head_index d_head"], Float[Tensor, "batch pos kv_head_index d_head"]]:
    """`apply_rotary`'s x * cos + rotate_every_two(x) * sin, the same values, q and k together."""
    both = torch.cat([q, k], dim=2)
    dim = attn.cfg.rotary_dim
    turning = both[..., :dim]
    if attn.cfg.rotary_adjacent_pairs:  # [x0, x1] -> [-x1, x0] pair by pair
        flipped = torch.stack([-turning[..., 1::2], turning[..., ::2]], dim=-1).flatten(-2)
    else:  # the halves: [a, b] -> [-b, a]
        flipped = torch.cat([-turning[..., dim // 2 :], turning[..., : dim // 2]], dim=-1)
    turned = turning * cos + flipped * sin
    if dim < both.shape[-1]:
        turned = torch.cat([turned, both[..., dim:]], dim=-1)
    return turned[:, :, : q.shape[2]], turned[:, :, q.shape[2] :]


def _attend(
    attn: AbstractAttention,
    q: Float[Tensor, "batch pos head_index d_head"],
    k: Float[Tensor, "batch kv_pos kv_head_index d_head"],
    v: Float[Tensor, "batch kv_pos kv_head_index d_head"],
    mask: Float[Tensor, "#batch 1 pos kv_pos"] | None,
    empty: Bool[Tensor, "batch 1 pos 1"] | None,
) -> Float[Tensor, "batch pos head_index d_head"]:
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        scale=1 / attn.attn_scale, enable_gqa=k.shape[2] != q.shape[2],
    )  # fmt: skip
    if empty is not None:  # a padding query attends nowhere: TransformerLens gives it zeros
        z = z.masked_fill(empty, 0)
    return z.transpose(1, 2)


def _mask(
    query_len: int,
    key_len: int,
    offset: int,
    attention_mask: Int[Tensor, "batch kv_pos"] | None,
    window: int | None,
    device: torch.device,
) -> tuple[Bool[Tensor, "#batch 1 pos kv_pos"] | None, Bool[Tensor, "batch 1 pos 1"] | None]:
    """TransformerLens's causal (and local-window) and padding mask, and the queries it leaves no
    key: those are let through everywhere, so sdpa makes no NaN, and zeroed after."""
    padding = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    if query_len == 1 and offset == key_len - 1 and (window is None or key_len <= window):
        return padding, None  # a step with the cache: every key is earlier and in the window
    queries = torch.arange(offset, offset + query_len, device=device)[:, None]
    keys = torch.arange(key_len, device=device)[None, :]
    causal = (keys <= queries)[None, None]
    if window is not None:
        causal &= (keys > queries - window)[None, None]
    if padding is None:
        return causal, None
    mask = causal & padding
    empty = ~mask.any(dim=-1, keepdim=True)
    return mask | empty, empty


def _output(
    attn: AbstractAttention, z: Float[Tensor, "batch pos head_index d_head"]
) -> Float[Tensor, "batch pos d_model"]:
    """TransformerLens's output projection, with W_O as stored (TransformerLens multiplies by a
    rearranged copy): the same product to float round-off."""
    w_o = attn.W_O
    matrix = w_o.permute(2, 0, 1).reshape(w_o.shape[2], -1)  # d_model (head_index d_head), a view
    flat = z.to(matrix.dtype).reshape(*z.shape[:2], -1)
    if flat.device.type == "mps":  # as TransformerLens: F.linear is wrong on MPS (pytorch#161640)
        return torch.matmul(flat, matrix.T) + attn.b_O
    return F.linear(flat, matrix, attn.b_O)
