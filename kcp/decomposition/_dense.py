"""The dense kernel itself, as a decomposition (the reference point of every comparison)."""

from __future__ import annotations

import torch

from kcp import methods
from kcp.decomposition.outputs import check_fit_name
from kcp.decomposition.result import Decomposition
from kcp.decomposition.validate import check_kernel


@methods.implements("dense", "decompose")
def dense(weight: torch.Tensor, *, fit: str = "kernel", calibration: object = None) -> Decomposition:
    """The kernel unchanged: one factor ``weight``, zero error.

    ``fit`` and ``calibration`` are accepted (and ignored: the dense kernel is exact under both) so that callers
    of :func:`kcp.decomposition.decompose` need no special case.
    """
    check_kernel(weight)
    check_fit_name(fit)
    return Decomposition(method="dense", kernel_shape=tuple(weight.shape), ranks={},
                         factors={"weight": weight.detach().clone()}, rel_error=0.0, history=[0.0],
                         info={"fit": "kernel"})


@methods.implements("dense", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    return result.factors["weight"]
