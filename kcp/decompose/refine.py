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

# Largest R*K for which the joint RK x RK solves run; past it they cost more than they are worth.
JOINT_LIMIT = 1024


def _khatri_rao(factors: list[torch.Tensor]) -> torch.Tensor:
    """Row-major Khatri-Rao product of (R, n_m, K) factors, per term: (R, prod n_m, K)."""
    out = factors[0]
    for f in factors[1:]:
        out = (out.unsqueeze(2) * f.unsqueeze(1)).reshape(out.shape[0], -1, out.shape[2])
    return out


def side_tensor(factors: list[torch.Tensor]) -> torch.Tensor:
    """The R full tensors of one side, flattened: (R, n0*n1*n2*n3), row-major as in the rearrangement."""
    return _khatri_rao(factors).sum(dim=2)


def _mttkrp(target: torch.Tensor, factors: list[torch.Tensor], mode: int) -> torch.Tensor:
    """``T[r, i, c] = sum target[r, ..i..] * prod_{m != mode} F_m[r, j_m, c]`` for every term r."""
    r, n = target.shape[0], target.shape[mode + 1]
    unfolded = target.movedim(mode + 1, 1).reshape(r, n, -1)
    return torch.bmm(unfolded, _khatri_rao([f for m, f in enumerate(factors) if m != mode]))


def _pair_gram(factor: torch.Tensor) -> torch.Tensor:
    """All cross Grams ``F_s^T F_r`` at once, laid out as an (R*K) x (R*K) matrix [(s, c), (r, d)]."""
    r, n, k = factor.shape
    flat = factor.permute(1, 0, 2).reshape(n, r * k)
    return flat.T @ flat


def _solve_psd(phi: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``phi X = rhs`` for a symmetric PSD ``phi`` (Cholesky with a round-off jitter, else lstsq)."""
    n = phi.shape[0]
    jitter = 1e-13 * float(phi.diagonal().abs().max().clamp_min(1e-300))
    chol, info = torch.linalg.cholesky_ex(phi + jitter * torch.eye(n, dtype=phi.dtype))
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(phi, rhs, driver="gelsd").solution


def _balance(factors: list[torch.Tensor]) -> None:
    """Equalise each component's norm across the free modes (the model is unchanged)."""
    free = [m for m, f in enumerate(factors) if f.shape[1] > 1]
    if len(free) < 2:
        return
    norms = torch.stack([factors[m].norm(dim=1) for m in free])  # (modes, R, K)
    ok = (norms > 0).all(dim=0)
    mean = norms.clamp_min(1e-300).log().mean(dim=0).exp()
    for i, m in enumerate(free):
        scale = torch.where(ok, mean / norms[i].clamp_min(1e-300), torch.ones_like(mean))
        factors[m] = factors[m] * scale.unsqueeze(1)


def _update_side(factors: list[torch.Tensor], target: torch.Tensor, gram: torch.Tensor) -> None:
    """One exact least-squares update of every free factor block of one side, in place."""
    r, _, k = factors[0].shape
    coupling = torch.kron(gram, torch.ones(k, k, dtype=gram.dtype))
    grams = [_pair_gram(f) for f in factors]
    for mode, f in enumerate(factors):
        n = f.shape[1]
        if n == 1:
            continue
        phi = coupling
        for other in range(4):
            if other != mode:
                phi = phi * grams[other]
        rhs = _mttkrp(target, factors, mode).permute(1, 0, 2).reshape(n, r * k)
        x = _solve_psd(phi, rhs.T).T
        factors[mode] = x.reshape(n, r, k).permute(1, 0, 2).contiguous()
        grams[mode] = _pair_gram(factors[mode])
    _balance(factors)


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
        _update_side(a_side, (b_full @ matrix.T).reshape(r, *a_shape), b_full @ b_full.T)
        a_full = side_tensor(a_side)
        _update_side(b_side, (a_full @ matrix).reshape(r, *b_shape), a_full @ a_full.T)
        history.append(float((matrix - a_full.T @ side_tensor(b_side)).norm()) / norm)
        if callback is not None:
            callback(sweep + 1, history[-1])
        if history[-2] - history[-1] <= tol * history[-2] or history[-1] < 1e-13:
            break
    return history
