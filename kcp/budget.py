"""Baselines at matching budgets: the largest rank of a method whose cost does not exceed a budget."""

from __future__ import annotations

from kcp import costs
from kcp.geometry import ConvGeometry
from kcp.kron import FactorShape
from kcp.methods import rank_family

BUDGET_KINDS = ("params", "macs")


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
