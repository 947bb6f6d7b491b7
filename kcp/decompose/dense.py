"""The dense kernel itself, as a decomposition (the reference point of every comparison)."""

from __future__ import annotations

import torch

from kcp import methods
from kcp.decompose.result import Decomposition
from kcp.decompose.validate import check_kernel


@methods.implements("dense", "decompose")
def dense(weight: torch.Tensor) -> Decomposition:
    """The kernel unchanged: one factor ``weight``, zero error."""
    check_kernel(weight)
    return Decomposition(method="dense", kernel_shape=tuple(weight.shape), ranks={},
                         factors={"weight": weight.detach().clone()}, rel_error=0.0, history=[0.0])


@methods.implements("dense", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    return result.factors["weight"]
