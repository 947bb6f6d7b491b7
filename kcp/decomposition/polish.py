"""A Levenberg-Marquardt finish for small kernel fits: what ALS cannot cross in bounded time.

Block ALS crawls through "swamps" (near-degenerate CP components): a planted exact KCP tensor of odd shape can sit
at 1e-3 .. 1e-5 relative error after a thousand sweeps. A damped Gauss-Newton step over all factors at once
crosses them in tens of iterations (Tomasi and Bro, 2006), but needs the Jacobian of the reconstruction
(kernel entries x free parameters), so it runs only where that is small (:data:`LM_LIMIT`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kcp.decomposition.als import khatri_rao, side_tensor
from kcp.decomposition.stopping import EXACT, WINDOW, window_change

# Largest Jacobian (kernel entries x free parameters) that the finish forms: 2e6 float64 numbers, 16 MB.
LM_LIMIT = 2_000_000
# ALS sweeps before the finish takes over, where it runs.
LM_AFTER = 100
# Restarts from random factors (kcp.decomposition._kcp), keeping the best fit, where the Jacobian is at most
# RESTART_LIMIT entries (a whole fit then costs milliseconds: planted 6x10x3x3 tensors, CIFAR ResNets' 16x16x3x3
# layers at the smallest ranks; not digits-cnn's 32x32x3x3 ones, whose smallest is 276k) and the fit ended between
# RESTART_ABOVE (an exact fit ends near 1e-15) and RESTART_BELOW (relative errors). That is where the ALS start leads
# some planted tensors into local minima (at 0.010 .. 0.16) that about half of random starts avoid; real kernels end
# far above it (0.78 .. 0.96 on the 16x16x3x3 layers, where restarts found nothing lower and cost 3-5 times the fit).
RESTART_LIMIT = 200_000
RESTART_ABOVE = 1e-10
RESTART_BELOW = 0.3
RESTARTS = 6


def levenberg_marquardt(
    residual: Callable[[torch.Tensor], torch.Tensor],
    jacobian: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    history: list[float],
    *,
    norm: float,
    max_iter: int,
    tol: float,
    window: int = WINDOW,
    callback: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Minimise ``||residual(x)||`` from ``x`` by Levenberg-Marquardt (Marquardt's diagonal scaling);
    ``jacobian(x)`` is d residual / d x (residual entries x parameters).

    Every accepted step lowers the residual; its relative value (over ``norm``) is appended to ``history`` (which
    holds the fit's errors so far, so the window rule of :mod:`kcp.decomposition.stopping` spans both solvers) and
    passed to ``callback(len(history) - 1, value)``. Stops at ``max_iter`` iterations, an exact fit, the window rule,
    or when no damping gives a lower residual (the window rule is judged only once ``window`` iterations of its own
    have run: the first steps out of a swamp may gain little). Returns the best ``x``.
    """
    res = residual(x)
    cost = float(res @ res)
    damping = 1e-3
    for it in range(max_iter):
        if math.sqrt(cost) / norm < EXACT:
            break
        jac = jacobian(x)
        grad, hess = jac.T @ res, jac.T @ jac
        diag = torch.diag(hess.diagonal().clamp_min(1e-12 * float(hess.diagonal().max()) + 1e-300))
        while damping < 1e12:
            step = torch.linalg.solve(hess + damping * diag, -grad)
            new_res = residual(x + step)
            new_cost = float(new_res @ new_res)
            if new_cost < cost:
                x, res, cost = x + step, new_res, new_cost
                damping = max(damping / 3, 1e-12)
                break
            damping *= 4
        else:
            break  # no damping lowers the residual: a stationary point to round-off
        history.append(math.sqrt(cost) / norm)
        if callback is not None:
            callback(len(history) - 1, history[-1])
        if it + 1 >= window and window_change(history, window) <= tol:
            break
    return x


def polishable(matrix: torch.Tensor, a_side: list[torch.Tensor], b_side: list[torch.Tensor]) -> bool:
    """Whether the Jacobian of a KCP model (rearranged ``matrix``, factor stacks) stays within :data:`LM_LIMIT`."""
    return matrix.numel() * sum(f.numel() for f in a_side + b_side if f.shape[1] > 1) <= LM_LIMIT


def restartable(matrix: torch.Tensor, a_side: list[torch.Tensor], b_side: list[torch.Tensor]) -> bool:
    """Whether a KCP fit is small enough for restarts (:data:`RESTART_LIMIT`)."""
    return matrix.numel() * sum(f.numel() for f in a_side + b_side if f.shape[1] > 1) <= RESTART_LIMIT


def polish_kcp(matrix: torch.Tensor, a_side: list[torch.Tensor], b_side: list[torch.Tensor], history: list[float],
               *, max_iter: int, tol: float, callback: Callable[[int, float], None] | None = None) -> None:
    """KCP factor stacks (modes of size one hold ones and stay) finished by :func:`levenberg_marquardt`, in place."""
    stacks, n = a_side + b_side, len(a_side)
    free = [i for i, f in enumerate(stacks) if f.shape[1] > 1]
    sizes = [stacks[i].numel() for i in free]

    def unpack(x: torch.Tensor) -> list[torch.Tensor]:
        parts = list(stacks)
        for i, part in zip(free, x.split(sizes)):
            parts[i] = part.reshape(stacks[i].shape)
        return parts

    def residual(x: torch.Tensor) -> torch.Tensor:
        parts = unpack(x)
        return (side_tensor(parts[:n]).T @ side_tensor(parts[n:]) - matrix).reshape(-1)

    def jacobian(x: torch.Tensor) -> torch.Tensor:
        parts = unpack(x)
        full = (side_tensor(parts[:n]), side_tensor(parts[n:]))
        blocks = []
        for i in free:
            side, m = divmod(i, n)
            d_side = _side_derivative(parts[side * n:(side + 1) * n], m)  # (R, n_m, K, |side|)
            other = full[1 - side]
            pattern = "rica,rb->abric" if side == 0 else "rica,rb->baric"
            blocks.append(torch.einsum(pattern, d_side, other).reshape(matrix.numel(), -1))
        return torch.cat(blocks, dim=1)

    x = torch.cat([stacks[i].reshape(-1) for i in free])
    x = levenberg_marquardt(residual, jacobian, x, history, norm=float(matrix.norm()) or 1.0, max_iter=max_iter,
                            tol=tol, callback=callback)
    parts = unpack(x)
    a_side[:], b_side[:] = parts[:n], parts[n:]


def _side_derivative(factors: list[torch.Tensor], mode: int) -> torch.Tensor:
    """``d side_tensor[r, j] / d factors[mode][r, i, c]`` as (R, n_mode, K, |side|): one where ``j``'s index in
    ``mode`` is ``i``, times the product of the other modes' entries of component ``c``."""
    f = factors[mode]
    r, n, k = f.shape
    others = [g for j, g in enumerate(factors) if j != mode]
    rest = khatri_rao(others)  # (R, S, K), the other modes in order
    eye = torch.eye(n, dtype=f.dtype)
    d = torch.einsum("ij,rsc->ricjs", eye, rest).reshape(r, n, k, n, *(g.shape[1] for g in others))
    return d.movedim(3, 3 + mode).reshape(r, n, k, -1)
