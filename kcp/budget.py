"""Baselines at matching budgets: the largest rank of a method whose cost does not exceed a budget."""

from __future__ import annotations

import math

from kcp import costs
from kcp.geometry import ConvGeometry
from kcp.kron import FactorShape, max_cp_rank_of, max_kt_rank

BUDGET_KINDS = ("params", "macs")


def rank_family(method: str, kernel_shape: tuple[int, int, int, int], factor_shape: FactorShape | None):
    """``(largest r, ranks(r))``: a one-parameter family of ranks whose cost grows with r.

    Tucker-2 keeps its two ranks in proportion to the channels (r for the larger side).
    """
    out_c, in_c, kh, kw = kernel_shape
    if method == "kt":
        return max_kt_rank(factor_shape), lambda r: {"kt_rank": r}
    if method == "cp":
        return max_cp_rank_of(kernel_shape), lambda r: {"rank": r}
    if method == "svd":
        return min(out_c, in_c * kh * kw), lambda r: {"rank": r}
    if method == "tucker2":
        big, window = max(out_c, in_c), kh * kw

        def tucker(r: int) -> dict[str, int]:
            ri, ro = max(1, math.ceil(r * in_c / big)), max(1, math.ceil(r * out_c / big))
            # Past r_i * k_h * k_w (or r_o * k_h * k_w) the other rank adds nothing.
            return {"in_rank": min(ri, ro * window), "out_rank": min(ro, ri * window)}

        return big, tucker
    raise ValueError(f"no rank family for method {method!r}")


def largest_within(
    method: str,
    kernel_shape: tuple[int, int, int, int],
    budget: int,
    *,
    kind: str = "params",
    factor_shape: FactorShape | None = None,
    in_hw: tuple[int, int] | None = None,
    geometry: ConvGeometry | None = None,
) -> dict[str, int] | None:
    """Ranks of ``method`` at the largest r whose params (or MACs) stay within ``budget``; None if even r=1 is over."""
    if kind not in BUDGET_KINDS:
        raise ValueError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}, got {kind!r}")
    top, ranks = rank_family(method, kernel_shape, factor_shape)

    def cost(r: int) -> int:
        if kind == "params":
            return costs.params(method, kernel_shape, ranks(r), factor_shape)
        return costs.macs(method, kernel_shape, ranks(r), in_hw, geometry, factor_shape)

    if cost(1) > budget:
        return None
    lo, hi = 1, top
    while lo < hi:  # cost is non-decreasing in r
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return ranks(lo)
