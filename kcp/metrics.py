"""Fidelity and cost measurements of a factorised layer against the dense one."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kcp.decomposition.numerics import relative_error


def output_error(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor, batch: int = 64) -> float:
    """``||candidate(x) - reference(x)||_F / ||reference(x)||_F`` over real input activations ``x``."""
    if inputs.ndim != 4 or len(inputs) == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) batch of activations, got shape {tuple(inputs.shape)}")
    diff = ref = 0.0
    with torch.no_grad():
        for x in inputs.split(batch):
            y_ref, y = reference(x).double(), candidate(x).double()
            diff += float((y - y_ref).square().sum())
            ref += float(y_ref.square().sum())
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return (diff / ref) ** 0.5


def proportion_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % for the default ``z``) of a proportion ``successes / n``, e.g. the top-1
    agreement over ``n`` images: how far the figure could move with other images of the same kind."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def counted_macs(module: nn.Module, in_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one image through ``module`` as ``FlopCounterMode`` counts them (FLOPs / 2)."""
    p = next(module.parameters())
    x = torch.zeros(1, *in_shape, dtype=p.dtype, device=p.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


__all__ = ["counted_macs", "output_error", "proportion_interval", "relative_error"]
