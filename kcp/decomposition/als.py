"""Alternating least squares over stacks of 4-mode CP tensors: the engine of KCP's CP step and refinement.

A "side" is R rank-K CP tensors stored as four (R, n_m, K) factor stacks (modes of size one hold
ones). ``update_side`` solves every free factor block exactly, either for R independent tensors
(batched K x K systems: the CP step of the two-stage start) or for R terms coupled through a Gram
matrix G (one RK x RK system: the joint refinement).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kcp.decomposition.numerics import cp_init, randn


def khatri_rao(factors: list[torch.Tensor]) -> torch.Tensor:
    """Row-major Khatri-Rao product of (R, n_m, K) stacks, per term: (R, prod n_m, K)."""
    out = factors[0]
    for f in factors[1:]:
        out = (out.unsqueeze(2) * f.unsqueeze(1)).reshape(out.shape[0], -1, out.shape[2])
    return out


def side_tensor(factors: list[torch.Tensor]) -> torch.Tensor:
    """The R full tensors of one side, flattened: (R, n0*n1*n2*n3), row-major as in the rearrangement."""
    # The last mode goes in by a matrix product, so the full Khatri-Rao product (R x size x K) is never formed.
    full = torch.bmm(khatri_rao(factors[:-1]), factors[-1].transpose(1, 2))
    return full.reshape(full.shape[0], -1)


def mttkrp(target: torch.Tensor, factors: list[torch.Tensor], mode: int) -> torch.Tensor:
    """``T[r, i, c] = sum target[r, ..i..] * prod_{m != mode} F_m[r, j_m, c]`` for every term r."""
    r, n = target.shape[0], target.shape[mode + 1]
    unfolded = target.movedim(mode + 1, 1).reshape(r, n, -1)
    return torch.bmm(unfolded, khatri_rao([f for m, f in enumerate(factors) if m != mode]))


def _pair_gram(factor: torch.Tensor) -> torch.Tensor:
    """All cross Grams ``F_s^T F_r`` at once, laid out as an (R*K) x (R*K) matrix [(s, c), (r, d)]."""
    r, n, k = factor.shape
    flat = factor.permute(1, 0, 2).reshape(n, r * k)
    return flat.T @ flat


def _own_gram(factor: torch.Tensor) -> torch.Tensor:
    """Each term's own Gram ``F_r^T F_r``: (R, K, K)."""
    return torch.bmm(factor.transpose(1, 2), factor)


def solve_psd(phi: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``phi X = rhs`` for symmetric PSD ``phi`` (batched), by Cholesky with a round-off jitter, else lstsq."""
    n = phi.shape[-1]
    scale = phi.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    jittered = phi + 1e-13 * scale.unsqueeze(-1) * torch.eye(n, dtype=phi.dtype)
    chol, info = torch.linalg.cholesky_ex(jittered)
    if not bool(info.any()):
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(phi, rhs, driver="gelsd").solution


def balance(factors: list[torch.Tensor]) -> None:
    """Equalise each component's norm across the free modes, in place (the tensors are unchanged)."""
    free = [m for m, f in enumerate(factors) if f.shape[1] > 1]
    if len(free) < 2:
        return
    norms = torch.stack([factors[m].norm(dim=1) for m in free])  # (modes, R, K)
    ok = (norms > 0).all(dim=0)
    mean = norms.clamp_min(1e-300).log().mean(dim=0).exp()
    for i, m in enumerate(free):
        scale = torch.where(ok, mean / norms[i].clamp_min(1e-300), torch.ones_like(mean))
        factors[m] = factors[m] * scale.unsqueeze(1)


def update_side(factors: list[torch.Tensor], target: torch.Tensor, gram: torch.Tensor | None) -> None:
    """One exact least-squares update of every free factor block of one side, in place.

    ``gram=None``: the R tensors are fitted to ``target[r]`` independently. Otherwise the side is one
    term of ``sum_r vec(A_r) vec(B_r)^T`` with ``gram = B^T B`` (R x R) and ``target[r] = M vec(B_r)``.
    """
    r, _, k = factors[0].shape
    if gram is None:
        grams = [_own_gram(f) for f in factors]
    else:
        coupling = torch.kron(gram, torch.ones(k, k, dtype=gram.dtype))
        grams = [_pair_gram(f) for f in factors]
    for mode, f in enumerate(factors):
        n = f.shape[1]
        if n == 1:
            continue
        phi = torch.ones_like(grams[0]) if gram is None else coupling
        for other in range(4):
            if other != mode:
                phi = phi * grams[other]
        rhs = mttkrp(target, factors, mode)  # (R, n, K)
        if gram is None:
            factors[mode] = solve_psd(phi, rhs.transpose(1, 2)).transpose(1, 2).contiguous()
            grams[mode] = _own_gram(factors[mode])
        else:
            x = solve_psd(phi, rhs.permute(1, 0, 2).reshape(n, r * k).T).T
            factors[mode] = x.reshape(n, r, k).permute(1, 0, 2).contiguous()
            grams[mode] = _pair_gram(factors[mode])
    balance(factors)


def cp_batch(tensors: torch.Tensor, rank: int, rng: np.random.Generator, *, n_iter_max: int = 30,
             tol: float = 1e-6) -> list[torch.Tensor]:
    """Rank-``rank`` CP of each of R same-shape 4-mode tensors (R, n0..n3): four (R, n_m, rank) stacks.

    Up to two non-trivial modes make matrices, whose truncated SVD is optimal (extra columns past the
    matrix rank are tiny random vectors, so a later refinement can still use them); more run batched
    ALS from the leading singular vectors of each unfolding. Size-1 modes hold ones.
    """
    r, dims = tensors.shape[0], tuple(tensors.shape[1:])
    free = [m for m, d in enumerate(dims) if d > 1]
    out = [torch.ones(r, 1, rank, dtype=tensors.dtype) for _ in dims]
    norm = float(tensors.norm()) / math.sqrt(max(tensors.numel(), 1)) + 1e-30
    if len(free) == 0:  # scalars: ``rank`` equal parts summing to each
        out[0] = (tensors.reshape(r, 1, 1) / rank).expand(r, 1, rank).clone()
        return out
    if len(free) == 1:  # vectors: one component holds each, the rest start tiny
        m = free[0]
        out[m] = torch.cat([tensors.reshape(r, dims[m], 1), 1e-6 * norm * randn(rng, r, dims[m], rank - 1)], 2)
        return out
    if len(free) == 2:
        u, s, vh = torch.linalg.svd(tensors.reshape(r, dims[free[0]], dims[free[1]]), full_matrices=False)
        keep = min(rank, s.shape[-1])
        root = s[:, :keep].sqrt().unsqueeze(1)
        for m, side in zip(free, (u[:, :, :keep] * root, vh[:, :keep].transpose(1, 2) * root)):
            out[m] = torch.cat([side, 1e-6 * norm * randn(rng, r, dims[m], rank - keep)], 2)
        return out
    for m, start in zip(free, cp_init(tensors.reshape(r, *(dims[m] for m in free)), rank, rng)):
        out[m] = start
    total = float(tensors.norm()) or 1.0
    previous = None
    for _ in range(n_iter_max):
        update_side(out, tensors, None)
        err = float((tensors.reshape(r, -1) - side_tensor(out)).norm()) / total
        if previous is not None and previous - err <= tol * max(previous, 1e-30):
            break
        previous = err
    return out
