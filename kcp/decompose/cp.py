"""CP baseline (Lebedev et al. 2015): the whole kernel as one rank-R CP tensor."""

from __future__ import annotations

import numpy as np
import torch

from kcp import methods
from kcp.decompose.als import cp_batch
from kcp.decompose.numerics import cp_als, relative_error, rng_for
from kcp.decompose.result import Decomposition
from kcp.decompose.validate import check_kernel, check_positive, check_rank
from kcp.kron import max_cp_rank_of

KEYS = ("out", "in", "h", "w")


@methods.implements("cp", "decompose")
def cp(
    weight: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 100,
    tol: float = 1e-7,
    random_state: int | np.random.Generator | None = 0,
) -> Decomposition:
    """CP-ALS of the kernel at ``rank``: factors ``out`` (O x R), ``in`` (I x R), ``h`` (k_h x R), ``w`` (k_w x R).

    A 1x1 (or otherwise matrix-shaped) kernel gets its optimal truncated SVD; a true tensor goes to
    TensorLy's CP-ALS, whose einsum path stays lean in memory on large kernels.
    """
    w = check_kernel(weight)
    bound = max_cp_rank_of(tuple(w.shape))
    check_rank("rank", rank, bound, f"an upper bound on the CP rank of a {tuple(w.shape)} kernel")
    check_positive("n_iter_max", n_iter_max)
    rng = rng_for(random_state)
    free = [m for m, d in enumerate(w.shape) if d > 1]
    if len(free) < 3:
        factors = [f[0] for f in cp_batch(w.unsqueeze(0), rank, rng)]
    else:
        found, _ = cp_als(w.reshape([w.shape[m] for m in free]), rank, n_iter_max=n_iter_max, tol=tol,
                          random_state=rng)
        factors = [torch.ones(1, rank, dtype=w.dtype) for _ in range(4)]
        for m, f in zip(free, found):
            factors[m] = f
    result = Decomposition(method="cp", kernel_shape=tuple(w.shape), ranks={"rank": rank},
                           factors=dict(zip(KEYS, factors)), info={"iterations": n_iter_max})
    result.rel_error = relative_error(result.reconstruct(), w)
    result.history = [result.rel_error]
    return result.to(weight.device, weight.dtype)


@methods.implements("cp", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    f = result.factors
    return torch.einsum("or,ir,hr,wr->oihw", f["out"], f["in"], f["h"], f["w"])
