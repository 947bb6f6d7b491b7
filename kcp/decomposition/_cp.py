"""CP baseline (Lebedev et al. 2015): the whole kernel as one rank-R CP tensor."""

from __future__ import annotations

import numpy as np
import torch

from kcp import methods
from kcp.decomposition.als import cp_batch
from kcp.decomposition.moments import PatchMoments
from kcp.decomposition.numerics import cp_als, rng_for
from kcp.decomposition.outputs import check_fit, finish_direct
from kcp.decomposition.result import Decomposition
from kcp.decomposition.stopping import convergence
from kcp.decomposition.validate import check_kernel, check_positive, check_rank, check_tol
from kcp.kron import max_cp_rank_of

KEYS = ("out", "in", "h", "w")


@methods.implements("cp", "decompose")
def cp(
    weight: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 3000,
    tol: float = 1e-5,
    random_state: int | np.random.Generator | None = 0,
    fit: str = "kernel",
    calibration: PatchMoments | None = None,
) -> Decomposition:
    """CP-ALS of the kernel at ``rank``: factors ``out`` (O x R), ``in`` (I x R), ``h`` (k_h x R), ``w`` (k_w x R).

    A 1x1 (or otherwise matrix-shaped) kernel gets its optimal truncated SVD; a true tensor goes to
    TensorLy's CP-ALS, whose einsum path stays lean in memory on large kernels, run until a window of iterations
    (:data:`kcp.decomposition.stopping.WINDOW`) together lowers the error by less than ``tol`` (relative) or
    ``n_iter_max`` have run. ``fit="outputs"`` refines
    that start on the output error over ``calibration``.
    """
    w = check_kernel(weight)
    bound = max_cp_rank_of(tuple(w.shape))
    rank = check_rank("rank", rank, bound, f"an upper bound on the CP rank of a {tuple(w.shape)} kernel")
    n_iter_max = check_positive("n_iter_max", n_iter_max)
    tol = check_tol("tol", tol)
    moments = check_fit(fit, calibration, tuple(w.shape))
    rng = rng_for(random_state)
    free = [m for m, d in enumerate(w.shape) if d > 1]
    info: dict = {"iterations": 0, "converged": True, "final_change": 0.0}
    if not bool(w.any()):  # nothing to fit (and ALS's normal equations would be singular)
        factors = [torch.zeros(n, rank, dtype=w.dtype) for n in w.shape]
    elif len(free) < 3:
        factors = [f[0] for f in cp_batch(w.unsqueeze(0), rank, rng)]
    else:
        found, errors = cp_als(w.reshape([w.shape[m] for m in free]), rank, n_iter_max=n_iter_max, tol=tol,
                               random_state=rng)
        factors = [torch.ones(1, rank, dtype=w.dtype) for _ in range(4)]
        for m, f in zip(free, found):
            factors[m] = f
        info = {"iterations": len(errors) - 1, **convergence(errors, tol)}
    result = Decomposition(method="cp", kernel_shape=tuple(w.shape), ranks={"rank": rank},
                           factors=dict(zip(KEYS, factors)), info=info)
    return finish_direct(result, w, moments, weight)


@methods.implements("cp", "factored")
def _factored(result: Decomposition) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel as the rank-R matrix product ``out @ right``, ``right`` (R x I k_h k_w) the rest of each term."""
    f = result.factors
    return f["out"], torch.einsum("ir,hr,wr->rihw", f["in"], f["h"], f["w"]).reshape(f["out"].shape[1], -1)


@methods.implements("cp", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    left, right = _factored(result)
    return (left @ right).reshape(result.kernel_shape)
