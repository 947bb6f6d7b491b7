"""Tucker-2 baseline (Kim et al. 2016): Tucker over the two channel modes, the window left whole."""

from __future__ import annotations

import torch

from kcp import methods
from kcp.decompose.numerics import relative_error
from kcp.decompose.numerics import tucker2 as tucker2_hooi
from kcp.decompose.result import Decomposition
from kcp.decompose.validate import check_kernel, check_positive, check_rank


@methods.implements("tucker2", "decompose")
def tucker2(weight: torch.Tensor, in_rank: int, out_rank: int, *, n_iter_max: int = 20) -> Decomposition:
    """``W ~ core x_0 U_out x_1 U_in``.

    Factors ``in`` (I x R_i), ``core`` (R_o x R_i x k_h x k_w) and ``out`` (O x R_o).
    """
    w = check_kernel(weight)
    out_c, in_c = w.shape[:2]
    window = w.shape[2] * w.shape[3]
    check_rank("in_rank", in_rank, in_c, "at most C_in")
    check_rank("out_rank", out_rank, min(out_c, in_rank * window), "at most C_out and in_rank * k_h * k_w")
    check_rank("in_rank", in_rank, min(in_c, out_rank * window), "at most C_in and out_rank * k_h * k_w")
    check_positive("n_iter_max", n_iter_max)
    core, u_out, u_in = tucker2_hooi(w, out_rank, in_rank, n_iter_max=n_iter_max)
    ranks = {"in_rank": in_rank, "out_rank": out_rank}
    result = Decomposition(method="tucker2", kernel_shape=tuple(w.shape), ranks=ranks,
                           factors={"in": u_in, "core": core, "out": u_out})
    result.rel_error = relative_error(result.reconstruct(), w)
    result.history = [result.rel_error]
    return result.to(weight.device, weight.dtype)


@methods.implements("tucker2", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    f = result.factors
    return torch.einsum("pqhw,op,iq->oihw", f["core"], f["out"], f["in"])
