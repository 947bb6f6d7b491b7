"""Decompositions of conv kernels: KCP and the baselines, behind one result type.

Every method is a plain function ``method(weight, <ranks>, *, <options>) -> Decomposition``;
:func:`decompose` picks one by name from the method table (:mod:`kcp.methods`), into which each
method's file registers its function and its reconstruction.
"""

from __future__ import annotations

import torch

from kcp import methods
from kcp.decompose.cp import cp
from kcp.decompose.dense import dense
from kcp.decompose.kcp import AGREEMENT_TOL, REFINE_SWEEPS, REFINE_TOL, kcp
from kcp.decompose.kt import KTSpectrum, kt, kt_spectrum
from kcp.decompose.moments import PatchMoments, patch_moments
from kcp.decompose.outputs import FITS
from kcp.decompose.result import Decomposition
from kcp.decompose.svd import svd
from kcp.decompose.tucker2 import tucker2


def decompose(weight: torch.Tensor, method: str, **kwargs) -> Decomposition:
    """Decompose ``weight`` with ``method`` (a name in :data:`kcp.methods.METHODS`), passing ranks and options."""
    return methods.get(method).decompose(weight, **kwargs)


__all__ = ["AGREEMENT_TOL", "FITS", "REFINE_SWEEPS", "REFINE_TOL", "Decomposition", "KTSpectrum", "PatchMoments",
           "cp", "decompose", "dense", "kcp", "kt", "kt_spectrum", "patch_moments", "svd", "tucker2"]
