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

from kcp.decomposition.als import side_tensor, update_side
from kcp.decomposition.stopping import EXACT, WINDOW, window_change

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
    window: int = WINDOW,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Block-ALS sweeps over the eight factor blocks, in place; returns the relative error before and after each.

    Stops after ``n_sweeps``, when the error is zero to round-off, or when the last ``window`` sweeps together
    lowered it by less than ``tol`` (relative): a window, so that a slow stretch of ALS (a "swamp") is not taken
    for convergence. After each sweep an extrapolation along the sweep's step (Bro's line search) is tried and
    kept only where it lowers the error, so the error still never rises.
    """
    a_shape = tuple(f.shape[1] for f in a_side)
    b_shape = tuple(f.shape[1] for f in b_side)
    r = a_side[0].shape[0]
    norm = float(matrix.norm()) or 1.0
    history = [float(residual(matrix, a_side, b_side).norm()) / norm]
    for sweep in range(n_sweeps):
        before = [f.clone() for f in a_side + b_side]
        b_full = side_tensor(b_side)
        update_side(a_side, (b_full @ matrix.T).reshape(r, *a_shape), b_full @ b_full.T)
        a_full = side_tensor(a_side)
        update_side(b_side, (a_full @ matrix).reshape(r, *b_shape), a_full @ a_full.T)
        error = float((matrix - a_full.T @ side_tensor(b_side)).norm()) / norm
        error = _extrapolate(matrix, a_side, b_side, before, (sweep + 1) ** (1 / 3), error, norm)
        history.append(error)
        if callback is not None:
            callback(sweep + 1, error)
        if error < EXACT or window_change(history, window) <= tol:
            break
    return history


def _extrapolate(matrix, a_side, b_side, before, step: float, error: float, norm: float) -> float:
    """Try ``new + step * (new - before)`` for every factor; keep it (in place) if it lowers the error."""
    n = len(a_side)
    now = a_side + b_side
    trial = [f + step * (f - old) for f, old in zip(now, before)]
    trial_error = float(residual(matrix, trial[:n], trial[n:]).norm()) / norm
    if trial_error < error:
        a_side[:], b_side[:] = trial[:n], trial[n:]
        return trial_error
    return error
