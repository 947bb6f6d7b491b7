"""Decompositions of conv kernels: KCP and the baselines, behind one result type.

Every method is a plain function ``method(weight, <ranks>, *, <options>) -> Decomposition``;
:func:`decompose` picks one by name from the method table (:mod:`kcp.methods`), into which each
method's file registers its function and its reconstruction.
"""

from __future__ import annotations

import torch

from kcp import methods
from kcp.decomposition._cp import cp
from kcp.decomposition._dense import dense
from kcp.decomposition._kcp import AGREEMENT_TOL, REFINE_SWEEPS, REFINE_TOL, kcp
from kcp.decomposition._kt import KTSpectrum, kt, kt_spectrum
from kcp.decomposition._svd import svd
from kcp.decomposition._tucker2 import tucker2
from kcp.decomposition.moments import PatchMoments, patch_moments
from kcp.decomposition.outputs import FITS
from kcp.decomposition.result import Decomposition


def decompose(weight: torch.Tensor, method: str, **kwargs) -> Decomposition:
    """Decompose ``weight`` with ``method`` (a name in :data:`kcp.methods.METHODS`), passing ranks and options."""
    return methods.get(method).decompose(weight, **kwargs)


__all__ = ["AGREEMENT_TOL", "FITS", "REFINE_SWEEPS", "REFINE_TOL", "Decomposition", "KTSpectrum", "PatchMoments",
           "cp", "decompose", "dense", "kcp", "kt", "kt_spectrum", "patch_moments", "svd", "tucker2"]
