"""A TransformerLens KV cache that writes each step into buffers of the final length.

TransformerLens's cache concatenates every layer's keys, values and the attention mask with the new
step's, so step t copies t positions (and holds both copies for a moment). When the length of a
generation is known, `BufferedKVCache` writes the new positions in place and hands out views of
the filled part: the same values to every attention implementation, without the copies.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry


class _Buffer:
    """Positions [0, length) of a (batch, capacity, ...) buffer, made at the first write."""

    def __init__(self, empty: Tensor, capacity: int) -> None:
        self._empty, self._capacity = empty, capacity
        self._data: Tensor | None = None
        self.length = 0

    def filled(self) -> Tensor:
        return self._empty if self._data is None else self._data.narrow(1, 0, self.length)

    def write(self, new: Tensor, keep: bool) -> Tensor:
        """The filled part with `new` after it; the length grows only when `keep`."""
        end = self.length + new.shape[1]
        if end > self._capacity:
            raise ValueError(f"the KV cache holds {self._capacity} positions; {end} asked for")
        if self._data is None:
            shape = (new.shape[0], self._capacity, *new.shape[2:])
            dtype = torch.promote_types(self._empty.dtype, new.dtype)  # as torch.cat would
            self._data = torch.empty(shape, dtype=dtype, device=self._empty.device)
        self._data.narrow(1, self.length, new.shape[1]).copy_(new)
        if keep:
            self.length = end
        return self._data.narrow(1, 0, end)


class BufferedEntry(TransformerLensKeyValueCacheEntry):
    """One layer's keys and values, in buffers of `capacity` positions."""

    def __init__(self, entry: TransformerLensKeyValueCacheEntry, capacity: int) -> None:
        self._keys = _Buffer(entry.past_keys, capacity)
        self._values = _Buffer(entry.past_values, capacity)
        self.frozen = entry.frozen

    @property
    def past_keys(self) -> Float[Tensor, "batch pos_so_far n_heads d_head"]:
        return self._keys.filled()

    @property
    def past_values(self) -> Float[Tensor, "batch pos_so_far n_heads d_head"]:
        return self._values.filled()

    def append(
        self,
        new_keys: Float[Tensor, "batch new_tokens n_heads d_head"],
        new_values: Float[Tensor, "batch new_tokens n_heads d_head"],
    ) -> tuple[Tensor, Tensor]:
        keep = not self.frozen
        return self._keys.write(new_keys, keep), self._values.write(new_values, keep)


class BufferedKVCache(TransformerLensKeyValueCache):
    """`TransformerLensKeyValueCache` for at most `capacity` positions, written in place."""

    def __init__(self, model: HookedTransformer, batch_size: int, capacity: int) -> None:
        device = model.cfg.device
        plain = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch_size)
        self.entries = [BufferedEntry(entry, capacity) for entry in plain.entries]
        self._mask = _Buffer(plain.previous_attention_mask, capacity)
        self.frozen = False

    @property
    def previous_attention_mask(self) -> Int[Tensor, "batch pos_so_far"]:
        return self._mask.filled()

    def append_attention_mask(self, attention_mask: Int[Tensor, "batch new_tokens"]) -> Tensor:
        return self._mask.write(attention_mask, keep=not self.frozen)
