"""`copy_free_weights`: the same logits and gradients as TransformerLens's own matmuls, without
the weight copies they keep for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_shape import TINY

from benchmarks.memory import formula, shapes
from benchmarks.memory.counting import saved_bytes
from mech.training.frozen_weights import copy_free_weights


def _run(model, kind: str, copy_free: bool):
    """Logits from block 2 on, the gradients of the residual and the adapter, and saved bytes."""
    adapter = shapes.make_adapter(kind, model, 2)
    start = adapter.entry(model).start_at_layer
    generator = torch.Generator().manual_seed(0)
    resid = torch.randn(2, 8, TINY.d_model, generator=generator).to(model.cfg.dtype).requires_grad_(True)
    exclude = [*model.parameters(), *model.buffers(), *adapter.parameters(), resid]

    def forward():
        with adapter.applied(model, start_at_layer=start):
            return model(resid, start_at_layer=start)

    if copy_free:
        with copy_free_weights(model):
            logits, saved = saved_bytes(forward, exclude)
    else:
        logits, saved = saved_bytes(forward, exclude)
    logits.float().logsumexp(-1).sum().backward()
    return logits.detach(), resid.grad, [p.grad for p in adapter.parameters()], saved


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_logits_and_gradients_are_bit_identical(tiny_qwen2_shaped, kind):
    logits, grad, adapter_grads, _ = _run(tiny_qwen2_shaped, kind, copy_free=False)
    logits_cf, grad_cf, adapter_grads_cf, _ = _run(tiny_qwen2_shaped, kind, copy_free=True)
    assert torch.equal(logits, logits_cf)
    assert torch.equal(grad, grad_cf)
    assert all(torch.equal(a, b) for a, b in zip(adapter_grads, adapter_grads_cf, strict=True))


def test_no_weight_copy_is_saved(tiny_qwen2_shaped):
    """Saved bytes fall by exactly the copies of the two blocks' matrices and of W_U."""
    s = shapes.dtype_bytes(tiny_qwen2_shaped)
    *_, kept = _run(tiny_qwen2_shaped, "steering", copy_free=False)
    *_, copy_free = _run(tiny_qwen2_shaped, "steering", copy_free=True)
    copies = 2 * formula.weight_copy_bytes(TINY, s) + s * TINY.d_model * TINY.d_vocab
    assert kept - copy_free == copies


class _Scaled(torch.nn.Module):
    """A frozen weight copied, changed in place (by a constant, or by an activation), then used."""

    def __init__(self) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(1)))

    def forward(self, x, shift=None):
        w = self.W.T.contiguous()
        w.mul_(2.0)
        if shift is not None:
            w.add_(shift)
        return F.linear(x, w)


@pytest.mark.parametrize("with_activation", [False, True])
def test_in_place_changes_to_a_copy_are_replayed_or_the_copy_kept(with_activation):
    module = _Scaled().requires_grad_(False)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    shift = x[:3].detach() if with_activation else None  # made from an activation
    grads = []
    for copy_free in (False, True):
        leaf = x.clone().requires_grad_(True)
        if copy_free:
            with copy_free_weights(module):
                out = module(leaf, shift)
        else:
            out = module(leaf, shift)
        out.square().sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


def test_trainable_weights_keep_their_gradient():
    module = _Scaled()  # W requires grad: its copy must be kept for W's own gradient
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    with copy_free_weights(module):
        module(x).sum().backward()
    expected = 2 * x.sum(0)[:, None].expand(5, 3)
    assert torch.allclose(module.W.grad, expected)
