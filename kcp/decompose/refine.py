"""Joint block-ALS refinement of a 2nd-order KCP model.

The model in rearranged form is ``M ~ sum_r vec(A_r) vec(B_r)^T`` with A_r and B_r each a rank-K CP
tensor of four modes. Holding the B side fixed, the error is quadratic in any one A-side factor
block (all R terms at once): with ``P_r = M vec(B_r)`` folded to A's shape and ``G = B^T B`` (R x R),
the normal equations are ``X Phi = T`` where ``T`` is the MTTKRP of ``P`` and
``Phi[(s,c),(r,d)] = G[s,r] * prod_{other modes} (F_s^T F_r)[c,d]`` (an RK x RK system). Nothing of
the kernel's size beyond ``M`` itself is ever formed: one ``R x |A| x |B|`` product per half-sweep,
everything else is of the factors' size. Each block update is an exact least-squares solve, so the
error never rises from one sweep to the next.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kcp.decompose.als import side_tensor, update_side

# Largest R*K for which the joint RK x RK solves run; past it they cost more than they are worth.
JOINT_LIMIT = 1024


def residual(matrix: torch.Tensor, a_side: list[torch.Tensor], b_side: list[torch.Tensor]) -> torch.Tensor:
    """``M - sum_r vec(A_r) vec(B_r)^T``."""
    return matrix - side_tensor(a_side).T @ side_tensor(b_side)


def refine(
    matrix: torch.Tensor,
    a_side: list[torch.Tensor],
    b_side: list[torch.Tensor],
    *,
    n_sweeps: int,
    tol: float,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Block-ALS sweeps over the eight factor blocks, in place; returns the relative error before and after each.

    Stops after ``n_sweeps`` or when a sweep lowers the error by less than ``tol`` (relative).
    """
    a_shape = tuple(f.shape[1] for f in a_side)
    b_shape = tuple(f.shape[1] for f in b_side)
    r = a_side[0].shape[0]
    norm = float(matrix.norm()) or 1.0
    history = [float(residual(matrix, a_side, b_side).norm()) / norm]
    for sweep in range(n_sweeps):
        b_full = side_tensor(b_side)
        update_side(a_side, (b_full @ matrix.T).reshape(r, *a_shape), b_full @ b_full.T)
        a_full = side_tensor(a_side)
        update_side(b_side, (a_full @ matrix).reshape(r, *b_shape), a_full @ a_full.T)
        history.append(float((matrix - a_full.T @ side_tensor(b_side)).norm()) / norm)
        if callback is not None:
            callback(sweep + 1, history[-1])
        if history[-2] - history[-1] <= tol * history[-2] or history[-1] < 1e-13:
            break
    return history
