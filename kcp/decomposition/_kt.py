"""KT (Kronecker) decomposition by rearrangement and truncated SVD, and a layer's KT spectrum."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kcp import methods
from kcp.decomposition.moments import PatchMoments
from kcp.decomposition.outputs import check_fit, finish_direct
from kcp.decomposition.result import Decomposition
from kcp.decomposition.validate import check_kernel, check_rank
from kcp.kron import FactorShape, make_factor_shape, max_kt_rank, rearrange, unrearrange


def kt_terms(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` terms of the rearranged matrix: ``(rows, cols)`` of shapes (R, m) and (R, n).

    The leading singular vectors come from the eigh of the smaller Gram matrix; the other side is the
    matrix applied to them, so at full rank ``sum_r rows_r cols_r^T`` is a projection onto all of
    the matrix and reproduces it to round-off.
    """
    m, n = matrix.shape
    transposed = m > n
    mat = matrix.T if transposed else matrix
    vals, vecs = torch.linalg.eigh(mat @ mat.T)
    u = vecs[:, torch.argsort(vals, descending=True)[:rank]]
    other = mat.T @ u
    s = other.norm(dim=0)
    root = s.sqrt()
    safe = torch.where(root > 0, root, torch.ones_like(root))
    left, right = (u * root).T, (other / safe).T
    return (right, left) if transposed else (left, right)


@dataclass(frozen=True)
class KTSpectrum:
    """Singular values of the rearranged kernel and the KT-only error for every KT rank.

    ``rel_errors[R]`` is the relative error with R terms (``rel_errors[0] == 1``);
    ``energy[R - 1]`` the fraction of ``||W||_F^2`` that the first R terms hold.
    """

    factor_shape: FactorShape
    singular_values: torch.Tensor
    rel_errors: torch.Tensor
    energy: torch.Tensor


def kt_spectrum(
    weight: torch.Tensor, *, factors: tuple[int, int, int, int] | None = None, placement: str = "split"
) -> KTSpectrum:
    """The KT spectrum of a kernel: singular values of its rearrangement, and errors for every R."""
    w = check_kernel(weight)
    shape = make_factor_shape(w.shape, factors, placement)
    s = torch.linalg.svdvals(rearrange(w, shape))
    sq = s.square()
    total = sq.sum()
    tail = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])
    rel = torch.cat([tail, torch.zeros(1, dtype=s.dtype)]) / total
    return KTSpectrum(shape, s, rel.clamp_min(0).sqrt(), torch.cumsum(sq, 0) / total)


@methods.implements("kt", "decompose")
def kt(
    weight: torch.Tensor,
    kt_rank: int,
    *,
    factors: tuple[int, int, int, int] | None = None,
    placement: str = "split",
    fit: str = "kernel",
    calibration: PatchMoments | None = None,
) -> Decomposition:
    """KT only (GKPD): ``W ~ sum_r A_r (x) B_r``, optimal for the rank by Van Loan-Pitsianis.

    ``fit="outputs"`` refines that start on the output error over ``calibration``
    (:func:`kcp.decomposition.outputs.refine_outputs`).
    """
    w = check_kernel(weight)
    shape = make_factor_shape(w.shape, factors, placement)
    largest = max_kt_rank(shape)
    kt_rank = check_rank("kt_rank", kt_rank, largest,
                         f"the largest meaningful KT rank for factor shape {shape}, {placement}")
    moments = check_fit(fit, calibration, tuple(w.shape))
    a, b = kt_terms(rearrange(w, shape), kt_rank)
    result = Decomposition(
        method="kt",
        kernel_shape=tuple(w.shape),
        ranks={"kt_rank": kt_rank},
        factors={"a": a.reshape(kt_rank, *shape.a_shape), "b": b.reshape(kt_rank, *shape.b_shape)},
        factor_shape=shape,
    )
    return finish_direct(result, w, moments, weight)


@methods.implements("kt", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    a, b = result.factors["a"], result.factors["b"]
    r = a.shape[0]
    return unrearrange(a.reshape(r, -1).T @ b.reshape(r, -1), result.factor_shape)
