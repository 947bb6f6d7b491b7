"""Tucker-2 baseline (Kim et al. 2016): Tucker over the two channel modes, the window left whole."""

from __future__ import annotations

import torch

from kcp import methods
from kcp.decomposition.moments import PatchMoments
from kcp.decomposition.numerics import tucker2 as tucker2_hooi
from kcp.decomposition.outputs import check_fit, finish_direct
from kcp.decomposition.result import Decomposition
from kcp.decomposition.validate import check_kernel, check_positive, check_rank


@methods.implements("tucker2", "decompose")
def tucker2(
    weight: torch.Tensor,
    in_rank: int,
    out_rank: int,
    *,
    n_iter_max: int = 100,
    fit: str = "kernel",
    calibration: PatchMoments | None = None,
) -> Decomposition:
    """``W ~ core x_0 U_out x_1 U_in``.

    Factors ``in`` (I x R_i), ``core`` (R_o x R_i x k_h x k_w) and ``out`` (O x R_o). ``fit="outputs"``
    refines the HOOI start on the output error over ``calibration``.
    """
    w = check_kernel(weight)
    out_c, in_c = w.shape[:2]
    window = w.shape[2] * w.shape[3]
    in_rank = check_rank("in_rank", in_rank, in_c, "at most C_in")
    out_rank = check_rank("out_rank", out_rank, min(out_c, in_rank * window), "at most C_out and in_rank * k_h * k_w")
    check_rank("in_rank", in_rank, min(in_c, out_rank * window), "at most C_in and out_rank * k_h * k_w")
    n_iter_max = check_positive("n_iter_max", n_iter_max)
    moments = check_fit(fit, calibration, tuple(w.shape))
    if bool(w.any()):
        core, u_out, u_in, errors = tucker2_hooi(w, out_rank, in_rank, n_iter_max=n_iter_max)
    else:  # nothing to fit: any orthonormal bases, a zero core
        core = torch.zeros(out_rank, in_rank, *w.shape[2:], dtype=w.dtype)
        u_out, u_in, errors = torch.eye(out_c, out_rank, dtype=w.dtype), torch.eye(in_c, in_rank, dtype=w.dtype), [0.0]
    ranks = {"in_rank": in_rank, "out_rank": out_rank}
    result = Decomposition(method="tucker2", kernel_shape=tuple(w.shape), ranks=ranks,
                           factors={"in": u_in, "core": core, "out": u_out},
                           info={"iterations": len(errors), "converged": len(errors) < n_iter_max,
                                 "final_change": abs(errors[-2] - errors[-1]) / errors[-2] if len(errors) > 1
                                 and errors[-2] > 0 else 0.0})
    return finish_direct(result, w, moments, weight)


@methods.implements("tucker2", "factored")
def _factored(result: Decomposition) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel as the rank-R_o matrix product ``out @ right``, ``right`` the core times ``in`` (R_o x I k_h k_w)."""
    f = result.factors
    return f["out"], torch.einsum("pqhw,iq->pihw", f["core"], f["in"]).reshape(f["out"].shape[1], -1)


@methods.implements("tucker2", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    left, right = _factored(result)
    return (left @ right).reshape(result.kernel_shape)
