"""SVD baseline (Zhang et al. 2015): the kernel as an O x (I k_h k_w) matrix of rank r."""

from __future__ import annotations

import torch

from kcp import methods
from kcp.decomposition.moments import PatchMoments
from kcp.decomposition.numerics import relative_error, truncated_svd
from kcp.decomposition.outputs import OutputObjective, check_fit, whitened_svd
from kcp.decomposition.result import Decomposition
from kcp.decomposition.validate import check_kernel, check_rank


@methods.implements("svd", "decompose")
def svd(
    weight: torch.Tensor, rank: int, *, fit: str = "kernel", calibration: PatchMoments | None = None
) -> Decomposition:
    """Truncated SVD: factors ``first`` (r x I x k_h x k_w, a k x k conv) and ``second`` (O x r, a 1x1 conv).

    ``fit="outputs"`` gives the exact optimum of the output error over ``calibration`` (whitening by the patch
    second moment) instead of the kernel error's.
    """
    w = check_kernel(weight)
    out_c, in_c, kh, kw = w.shape
    rank = check_rank("rank", rank, min(out_c, in_c * kh * kw), "at most min(C_out, C_in k_h k_w)")
    moments = check_fit(fit, calibration, tuple(w.shape))
    if moments is None:
        left, right = truncated_svd(w.reshape(out_c, -1), rank)
        right, info = right.T, {"fit": "kernel"}
    else:
        left, right = whitened_svd(w, moments, rank)
        info = {"fit": "outputs", "calibration_patches": int(moments.count), "calibration_inputs": moments.n_inputs}
    result = Decomposition(method="svd", kernel_shape=tuple(w.shape), ranks={"rank": rank},
                           factors={"first": right.reshape(rank, in_c, kh, kw), "second": left}, info=info)
    if moments is not None:
        info["objective"] = [OutputObjective(w, moments).value(result.reconstruct()) ** 0.5]
    result.rel_error = relative_error(result.reconstruct(), w)
    result.history = [result.rel_error]
    return result.to(weight.device, weight.dtype)


@methods.implements("svd", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    f = result.factors
    first = f["first"]
    return (f["second"] @ first.reshape(first.shape[0], -1)).reshape(result.kernel_shape)
