"""Decompositions of conv kernels: KCP and the baselines, behind one result type.

Every method is a plain function ``method(weight, <ranks>, *, <options>) -> Decomposition``;
:func:`decompose` picks one by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kcp.decompose.cp import cp
from kcp.decompose.dense import dense
from kcp.decompose.kcp import AGREEMENT_TOL, REFINE_SWEEPS, REFINE_TOL, kcp
from kcp.decompose.kt import KTSpectrum, kt, kt_spectrum
from kcp.decompose.moments import PatchMoments, patch_moments
from kcp.decompose.outputs import FITS
from kcp.decompose.result import Decomposition
from kcp.decompose.svd import svd
from kcp.decompose.tucker2 import tucker2

METHODS: dict[str, Callable[..., Decomposition]] = {
    "dense": dense, "kcp": kcp, "kt": kt, "cp": cp, "tucker2": tucker2, "svd": svd,
}


def decompose(weight: torch.Tensor, method: str, **kwargs) -> Decomposition:
    """Decompose ``weight`` with ``method`` (one of :data:`METHODS`), passing ranks and options through."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    return METHODS[method](weight, **kwargs)


__all__ = ["AGREEMENT_TOL", "FITS", "METHODS", "REFINE_SWEEPS", "REFINE_TOL", "Decomposition", "KTSpectrum",
           "PatchMoments", "cp", "decompose", "dense", "kcp", "kt", "kt_spectrum", "patch_moments", "svd", "tucker2"]
