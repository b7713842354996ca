"""Counting bytes on real tensors: the tensors autograd saves for backward (unique storages) and a
step's peak, tracked at the dispatch level as `torch.cuda.max_memory_allocated` would count it."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


# -- counting -------------------------------------------------------------------------------------
def _key(t: Tensor) -> int:
    # The StorageImpl's address: views share it, and it is unique on "meta" too (data_ptr() is 0 there).
    return t.untyped_storage()._cdata


def saved_bytes(fn: Callable[[], Any], exclude: Sequence[Tensor] = ()) -> tuple[Any, int]:
    """`fn()` and the bytes autograd saved for backward while it ran: unique storages, not `exclude`."""
    skip = {_key(t) for t in exclude}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        key = _key(t)
        if key not in skip:
            storages[key] = t.untyped_storage().nbytes()
        # Not `t` itself: a saved output would then hold its own grad_fn, a cycle never freed.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


class AllocationTracker(TorchDispatchMode):
    """Live bytes of the tensor storages created inside it, and their peak.

    Every op's outputs are seen at the dispatcher (forward, backward and optimizer alike); a
    storage counts until its last reference dies. Tensors that existed before are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def _add(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._alive:
            return
        nbytes = storage.nbytes()

        def freed(_: object, key: int = key, nbytes: int = nbytes) -> None:
            self.live -= nbytes
            self._alive.pop(key, None)

        self._alive[key] = weakref.ref(storage, freed)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ARG002
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # Views and in-place results share an input's storage: no new memory (and the input may
        # predate the tracker, like a weight seen through `W.T`).
        inputs = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and _key(t) not in inputs:
                self._add(t)
        return out


def tensor_bytes(tensors: Any) -> int:
    return sum(t.untyped_storage().nbytes() for t in tree_flatten(tensors)[0] if isinstance(t, Tensor))
