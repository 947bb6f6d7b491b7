"""2nd-order KCP: ``W ~ sum_r A_r (x) B_r`` with every A_r and B_r a rank-K CP tensor.

Two-stage start (KT by rearrangement + truncated SVD, then CP of each factor), then joint block-ALS
refinement (:mod:`kcp.decomposition.refine`). Factors are stored per side and mode as (R, n, K) tensors
under ``a_out, a_in, a_h, a_w, b_out, b_in, b_h, b_w``; modes of size one hold ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kcp import methods
from kcp.decomposition._kt import kt_terms
from kcp.decomposition.als import cp_batch, side_tensor
from kcp.decomposition.moments import PatchMoments
from kcp.decomposition.numerics import randn, relative_error, rng_for
from kcp.decomposition.outputs import check_fit, finish
from kcp.decomposition.polish import (
    LM_AFTER,
    RESTART_ABOVE,
    RESTART_BELOW,
    RESTARTS,
    polish_kcp,
    polishable,
    restartable,
)
from kcp.decomposition.refine import JOINT_LIMIT, refine, residual
from kcp.decomposition.result import Decomposition
from kcp.decomposition.stopping import convergence
from kcp.decomposition.validate import check_kernel, check_positive, check_rank, check_tol
from kcp.kron import FactorShape, make_factor_shape, max_cp_rank, max_kt_rank, rearrange, unrearrange

# Defaults of the joint refinement: a bound on the sweeps large enough for ALS to cross slow stretches, and a
# tolerance on the improvement over a window of sweeps (kcp.decomposition.stopping) that ends it far earlier on most
# kernels.
REFINE_SWEEPS = 1000
REFINE_TOL = 5e-4
# How far apart a warm-started and a cold fit of the same point may report errors (kernel and output): the app,
# the CLI and the sweeps show one number per point whichever way it was reached.
AGREEMENT_TOL = 0.005

A_KEYS = ("a_out", "a_in", "a_h", "a_w")
B_KEYS = ("b_out", "b_in", "b_h", "b_w")
FACTOR_KEYS = A_KEYS + B_KEYS


def _two_stage(matrix: torch.Tensor, shape: FactorShape, r: int, k: int, rng) -> tuple[list, list]:
    a, b = kt_terms(matrix, r)
    return cp_batch(a.reshape(r, *shape.a_shape), k, rng), cp_batch(b.reshape(r, *shape.b_shape), k, rng)


def _warm_start(matrix, shape, r, k, init: Decomposition, rng) -> tuple[list, list]:
    """Embed a smaller KCP result: its terms and columns kept, tiny new columns, and new terms taken from
    the leading KT terms of the residual, scaled by an exact line search (so the start is no worse)."""
    r0, k0 = init.ranks["kt_rank"], init.ranks["cp_rank"]
    sides = []
    for keys in (A_KEYS, B_KEYS):
        side = []
        for key in keys:
            old = init.factors[key].detach().to("cpu", torch.float64)
            n = old.shape[1]
            scale = 1e-6 * float(old.abs().mean()) if n > 1 else 0.0
            new = scale * randn(rng, r, n, k) if n > 1 else torch.ones(r, 1, k, dtype=torch.float64)
            new[:r0, :, :k0] = old
            side.append(new)
        sides.append(side)
    a_side, b_side = sides
    if r > r0:
        res = residual(matrix, [f[:r0] for f in a_side], [f[:r0] for f in b_side])
        extra_a, extra_b = _two_stage(res, shape, r - r0, k, rng)
        added = side_tensor(extra_a).T @ side_tensor(extra_b)
        alpha = float((res * added).sum() / (added * added).sum().clamp_min(1e-300))
        extra_a[0] = extra_a[0] * alpha
        for m in range(4):
            a_side[m][r0:] = extra_a[m]
            b_side[m][r0:] = extra_b[m]
    return a_side, b_side


@methods.implements("kcp", "decompose")
def kcp(
    weight: torch.Tensor,
    kt_rank: int,
    cp_rank: int,
    *,
    factors: tuple[int, int, int, int] | None = None,
    placement: str = "split",
    refine_sweeps: int = REFINE_SWEEPS,
    tol: float = REFINE_TOL,
    random_state: int | np.random.Generator | None = 0,
    init: Decomposition | None = None,
    callback: Callable[[int, float], None] | None = None,
    fit: str = "kernel",
    calibration: PatchMoments | None = None,
) -> Decomposition:
    """KCP decomposition of a conv kernel at KT rank ``kt_rank`` and CP rank ``cp_rank``.

    ``factors=(O_A, O_B, I_A, I_B)`` fixes the factor shape (default: balanced divisor pairs);
    ``placement`` is ``split`` (A takes k_h, B takes k_w) or ``a-spatial`` (A takes the whole
    kernel window). ``refine_sweeps=0`` keeps the two-stage result; otherwise up to that many
    block-ALS sweeps run until a window of sweeps together lowers the error by less than ``tol``
    (relative; :mod:`kcp.decomposition.stopping`). ``init`` is a KCP result of the same kernel and factor shape at
    ranks no larger than these (a warm start; kernel fits only, output fits always start cold).
    ``callback(sweep, rel_error)`` is called after every sweep of the kernel fit (and ``callback(iteration,
    objective)`` after every iteration of the output fit, and with the last iteration again during its
    output-fitted start; it may raise to cancel). ``fit="outputs"`` then
    refines the factors on the output error over ``calibration`` (:func:`kcp.decomposition.outputs.refine_outputs`);
    ``rel_error`` stays the kernel error. Deterministic for a given ``random_state``.
    """
    w = check_kernel(weight)
    shape = make_factor_shape(w.shape, factors, placement)
    where = f"for factor shape {shape}, {placement}"
    kt_rank = check_rank("kt_rank", kt_rank, max_kt_rank(shape), f"the largest meaningful KT rank {where}")
    cp_rank = check_rank("cp_rank", cp_rank, max_cp_rank(shape), f"the largest meaningful CP rank of a factor {where}")
    if not (isinstance(refine_sweeps, int) and not isinstance(refine_sweeps, bool) and refine_sweeps == 0):
        refine_sweeps = check_positive("refine_sweeps", refine_sweeps)
    tol = check_tol("tol", tol)
    moments = check_fit(fit, calibration, tuple(w.shape))
    rng = rng_for(random_state)
    matrix = rearrange(w, shape)

    warm = init is not None and _embeddable(init, w.shape, shape, kt_rank, cp_rank)
    # An output fit is cut off by its iteration bound before it has fully converged, so where it ends depends on
    # where it starts: it starts cold, so that a point reports one number however it was reached.
    warm = warm and moments is None
    if warm:
        a_side, b_side = _warm_start(matrix, shape, kt_rank, cp_rank, init, rng)
    else:
        a_side, b_side = _two_stage(matrix, shape, kt_rank, cp_rank, rng)

    info: dict = {"seed": random_state if isinstance(random_state, int) else -1, "warm_start": warm}
    if refine_sweeps and kt_rank * cp_rank <= JOINT_LIMIT:
        history, polished = _refine(matrix, a_side, b_side, refine_sweeps, tol, callback)
        if restartable(matrix, a_side, b_side) and RESTART_ABOVE < history[-1] < RESTART_BELOW:
            # Tiny problems, whose whole fit costs milliseconds, left near but not at an exact fit: a few restarts
            # from random factors, keeping the best, get out of the local minima that the start leads ALS and the
            # LM finish into on some planted tensors (kcp.decomposition.polish).
            info["restarts"] = 0
            while history[-1] > RESTART_ABOVE and info["restarts"] < RESTARTS:
                info["restarts"] += 1
                sides = [[randn(rng, kt_rank, n, cp_rank) if n > 1 else torch.ones(kt_rank, 1, cp_rank,
                                                                                     dtype=torch.float64)
                          for n in dims] for dims in (shape.a_shape, shape.b_shape)]
                other, other_polished = _refine(matrix, *sides, refine_sweeps, tol, None)
                if other[-1] < history[-1]:
                    (a_side, b_side), history, polished = sides, other, other_polished
        if polished is not None:
            info["polish_iterations"] = polished
        info.update(sweeps=len(history) - 1, **convergence(history, tol))
    else:
        history = [float(residual(matrix, a_side, b_side).norm() / (matrix.norm() or 1.0))]
        info.update(sweeps=0, converged=False, final_change=0.0)
        if refine_sweeps:
            info["refine_skipped"] = (
                f"R*K = {kt_rank * cp_rank} is above {JOINT_LIMIT}: the joint RK x RK solves would cost more than "
                f"the refinement gains at such ranks, so the two-stage result is kept"
            )
    result = Decomposition(
        method="kcp",
        kernel_shape=tuple(w.shape),
        ranks={"kt_rank": kt_rank, "cp_rank": cp_rank},
        factors=dict(zip(FACTOR_KEYS, a_side + b_side)),
        factor_shape=shape,
        history=history,
        info=info,
    )
    result.rel_error = relative_error(result.reconstruct(), w)
    result = finish(result, w, moments, callback)
    return result.to(weight.device, weight.dtype)


def _refine(matrix: torch.Tensor, a_side: list[torch.Tensor], b_side: list[torch.Tensor], refine_sweeps: int,
            tol: float, callback: Callable[[int, float], None] | None) -> tuple[list[float], int | None]:
    """Small kernels: ALS for a while, then a Levenberg-Marquardt finish (kcp.decomposition.polish) for what is left
    of the same sweep budget, which crosses the swamps where ALS stalls. In place; returns the relative errors (the
    start's, then one per step) and the number of LM iterations (None where the finish does not run)."""
    finish_lm = polishable(matrix, a_side, b_side)
    history = refine(matrix, a_side, b_side, n_sweeps=min(refine_sweeps, LM_AFTER) if finish_lm else refine_sweeps,
                     tol=tol, callback=callback)
    als_sweeps = len(history) - 1
    if not (finish_lm and refine_sweeps > als_sweeps):
        return history, None
    polish_kcp(matrix, a_side, b_side, history, max_iter=refine_sweeps - als_sweeps, tol=tol, callback=callback)
    return history, len(history) - 1 - als_sweeps


def _embeddable(init: Decomposition, kernel_shape, shape: FactorShape, r: int, k: int) -> bool:
    if init.method != "kcp" or tuple(init.kernel_shape) != tuple(kernel_shape) or init.factor_shape != shape:
        raise ValueError(
            "init must be a KCP result of the same kernel and factor shape "
            f"(got {init.method} with factor shape {init.factor_shape}, want kcp with {shape})"
        )
    return init.ranks["kt_rank"] <= r and init.ranks["cp_rank"] <= k


@methods.implements("kcp", "reconstruct")
def _reconstruct(result: Decomposition) -> torch.Tensor:
    f = result.factors
    a = side_tensor([f[key] for key in A_KEYS])
    b = side_tensor([f[key] for key in B_KEYS])
    return unrearrange(a.T @ b, result.factor_shape)
