"""Orthogonal noise, the paper's stability probe: x' = sqrt(1 - eps^2) x + eps y, with y random,
orthogonal to x and as long as x. Then ||x'|| = ||x|| and cos(x', x) = sqrt(1 - eps^2) exactly."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def orthogonal_noise(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """Rotate `x` (any shape, treated as one flat vector) by angle arcsin(eps) towards a random y.

    The noise is drawn on the CPU from `generator`, so a seed gives the same perturbation on
    every device. `x` must be non-zero: the orthogonal complement of 0 is everything.
    """
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1], got {eps}")
    flat = x.detach().double().flatten().cpu()
    length = flat.norm()
    if length == 0:
        raise ValueError(
            f"cannot perturb a zero tensor of shape {tuple(x.shape)}: its direction is undefined"
        )
    y = torch.randn(flat.shape, generator=generator, dtype=torch.float64)
    y = y - (y @ flat) / (flat @ flat) * flat
    y = y * (length / y.norm())
    out = math.sqrt(1.0 - eps**2) * flat + eps * y
    return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)
