"""Fitting a decomposition to what the layer does: the output objective over calibration inputs.

With the calibration patches' second moment ``G`` (:mod:`kcp.decomposition.moments`), the squared output error of
a kernel estimate is ``tr((W - W_hat) G (W - W_hat)^T)``. SVD has a closed-form optimum (whitening, in
:mod:`kcp.decomposition._svd`). KT and KCP are refined by exact weighted block ALS (:mod:`kcp.decomposition.weighted`)
where its linear systems are small; KCP first moves to the better of its kernel fit and a start fitted to the outputs
at the Kronecker level, and runs at most ``ALS_SWEEPS`` sweeps before the preconditioned L-BFGS below finishes what
the window rule has not. CP, Tucker-2 (and KCP at ranks whose systems are too large) start from their kernel fit and
refine with L-BFGS over all factors (an Armijo backtracking line search accepts only steps that lower the
objective). Either way the recorded objective never rises. For L-BFGS the gradient with respect to ``W_hat`` is
``-2 (W - W_hat) G`` in closed form: one C_out x D x D product per evaluation, or r x D x D where ``W_hat`` is a
rank-r matrix product (CP, Tucker-2: the method's ``factored`` slot), then the chain rule to the factors (autograd,
or in closed form for KCP, whose L-BFGS is also preconditioned by the per-term blocks of its ALS systems).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from kcp import methods
from kcp.decomposition.moments import PatchMoments
from kcp.decomposition.numerics import relative_error
from kcp.decomposition.result import Decomposition
from kcp.decomposition.stopping import convergence, window_change

if TYPE_CHECKING:
    from kcp.decomposition.weighted import WeightedKCP

FITS = ("kernel", "outputs")
# Ridge added to G relative to tr(G)/D: keeps the whitening and the fit well posed where the calibration
# patches do not span every direction (few images, wide layers); small enough not to move the objective.
RIDGE = 1e-6
# L-BFGS bounds: at most OUTPUT_MAX_ITER iterations, stopping once the objective has improved by less than
# OUTPUT_TOL (relative) over the last OUTPUT_WINDOW iterations (a window, so that a slow stretch is not
# mistaken for convergence).
OUTPUT_MAX_ITER = 150
OUTPUT_TOL = 1e-3
OUTPUT_WINDOW = 10
# Work bound: iterations times C_out * D * D multiply-adds per evaluation stay under this, so a 256x256x3x3
# layer gets fewer (but enough) iterations than a 64x64x3x3 one.
OUTPUT_WORK = 5e10
# KCP at ranks whose block-ALS systems are too large: L-BFGS preconditioned by the per-term blocks of those systems
# (kcp.decomposition.weighted), rebuilt every PRECONDITIONER_REFRESH iterations, needs far fewer iterations than plain
# L-BFGS (measured: 64x64x3x3 at R=16 K=8 reaches in 60 what plain L-BFGS reaches in 150), so its bound is lower;
# its output-fitted start takes fewer KT sweeps and CP iterations than the ALS path's (measured: no loss at 60).
PRECONDITIONED_MAX_ITER = 60
# KCP's block-ALS sweeps before the preconditioned L-BFGS takes over where the window rule has not stopped them:
# ALS makes its gain in the first sweeps and then crawls (measured on digits conv4 and CIFAR ResNet-56 layers,
# R=2..8, K=4..8: 30 sweeps then L-BFGS end within 0.001 of the held-out ratio of up to 150 sweeps, in a third to
# two thirds of the time where ALS crawls); on a 256x256x3x3 layer an ALS sweep is cheaper than a preconditioned
# iteration, and 30 sweeps let R=2 K=8 converge by ALS alone (20 cost it 1.5 s more).
ALS_SWEEPS = 30
PRECONDITIONER_REFRESH = 30
PRECONDITIONED_KT_SWEEPS = 5
PRECONDITIONED_CP_ITER = 15


def check_fit_name(fit: object) -> str:
    """``fit`` itself, when it is one of :data:`FITS`."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}: use one of {', '.join(repr(f) for f in FITS)} (the kernel itself, or "
                         "the layer's outputs on calibration images)")
    return fit


def check_fit(fit: object, calibration: object, kernel_shape: tuple[int, ...]) -> PatchMoments | None:
    """The calibration moments for ``fit="outputs"`` (None for ``"kernel"``), or a ValueError saying what to pass."""
    if check_fit_name(fit) == "kernel":
        return None
    if not isinstance(calibration, PatchMoments):
        raise ValueError(
            "fit='outputs' needs calibration=PatchMoments of the layer's inputs "
            f"(kcp.decomposition.moments.patch_moments), got {type(calibration).__name__}"
        )
    calibration.check_kernel(kernel_shape)
    return calibration


class OutputObjective:
    """``tr((W - W_hat) G (W - W_hat)^T) / tr(W G W^T)`` with the ridge-regularised ``G``: the squared relative
    calibration output error (no bias: it cancels in the difference)."""

    def __init__(self, weight: torch.Tensor, calibration: PatchMoments, ridge: float = RIDGE):
        self.out_c = weight.shape[0]
        self.gram = calibration.regularised(ridge)
        self.weight = weight.reshape(self.out_c, -1).to(torch.float64)
        self.weight_gram = self.weight @ self.gram
        self.energy = float((self.weight_gram * self.weight).sum()) or 1.0

    def value(self, approx: torch.Tensor) -> float:
        delta = self.weight - approx.reshape(self.out_c, -1)
        return float((delta * (delta @ self.gram)).sum().clamp_min(0.0)) / self.energy

    def low_rank_value_and_grad(self, left: torch.Tensor, right: torch.Tensor) -> tuple[float, torch.Tensor,
                                                                                      torch.Tensor]:
        """The objective of ``W_hat = left @ right`` (O x r, r x D) and its gradients with respect to ``left`` and
        ``right``: ``W_hat G`` as ``left (right G)``, r D^2 multiply-adds where the dense product costs O D^2."""
        approx = left @ right
        residual = self.weight_gram - left @ (right @ self.gram)  # (W - W_hat) G
        value = float(((self.weight - approx) * residual).sum().clamp_min(0.0)) / self.energy
        grad = -2.0 / self.energy * residual
        return value, grad @ right.T, left.T @ grad

    def value_and_grad(self, approx: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The objective and its gradient with respect to ``approx`` (same shape as ``approx``)."""
        flat = approx.reshape(self.out_c, -1)
        residual = self.weight_gram - flat @ self.gram  # (W - W_hat) G
        delta = self.weight - flat
        value = float((delta * residual).sum().clamp_min(0.0)) / self.energy
        return value, (-2.0 / self.energy * residual).reshape(approx.shape)


def free_keys(result: Decomposition) -> list[str]:
    """The factors that the refinement moves: all but KCP's size-one modes (which hold ones by convention)."""
    return [k for k, v in result.factors.items() if not (result.method == "kcp" and v.shape[1] == 1)]


def refine_outputs(
    result: Decomposition,
    weight: torch.Tensor,
    calibration: PatchMoments,
    *,
    max_iter: int | None = None,
    tol: float = OUTPUT_TOL,
    window: int = OUTPUT_WINDOW,
    callback: Callable[[int, float], None] | None = None,
) -> Decomposition:
    """``result`` (a float64 CPU kernel fit of ``weight``) refined on the output objective: weighted block ALS for KT
    and KCP where the systems are small (:func:`_weighted`), else L-BFGS; ``max_iter`` bounds the L-BFGS iterations
    (the ALS sweeps run up to ``max(max_iter, OUTPUT_MAX_ITER)``), ``tol`` and ``window`` are the window rule of both.
    ``callback(iteration, sqrt(objective))`` follows every step (and repeats the last one during KCP's output-fitted
    start); it may raise to cancel.

    Returns a new result whose ``info`` says what was fitted (``fit``, ``calibration_patches``,
    ``calibration_inputs``), the relative calibration output error (with the ridge-regularised G) of the kernel fit
    and after every step (``objective``, never rising; for KCP the second value may be the output-fitted start),
    ``iterations``, ``converged``, ``final_change`` (relative improvement over the last window) and
    ``output_solver`` (``"als"``, ``"lbfgs"``, ``"lbfgs-blocks"`` or ``"als, then lbfgs-blocks"``). ``rel_error``
    is left to the caller (it stays the kernel error).
    """
    w = weight.reshape(result.kernel_shape).to(torch.float64)
    objective = OutputObjective(w, calibration)
    factored = methods.get(result.method).factored
    if max_iter is None:
        out_c, dim = w.shape[0], objective.gram.shape[0]
        # One evaluation: O D^2 multiply-adds through the dense W_hat, r (D^2 + 2 O D) through a rank-r one.
        work = out_c * dim ** 2 if factored is None else _low_rank_work(factored(result), out_c, dim)
        max_iter = output_iterations(work, window)
    keys = free_keys(result)
    shapes = [result.factors[k].shape for k in keys]
    sizes = [math.prod(sh) for sh in shapes]

    def unpack(flat: torch.Tensor) -> Decomposition:
        parts = {k: p.reshape(sh) for k, p, sh in zip(keys, flat.split(sizes), shapes)}
        return replace(result, factors={**result.factors, **parts})

    def evaluate(flat: torch.Tensor) -> tuple[float, torch.Tensor]:
        flat = flat.detach().requires_grad_(True)
        if factored is not None:
            left, right = factored(unpack(flat))
            value, grad_left, grad_right = objective.low_rank_value_and_grad(left.detach(), right.detach())
            torch.autograd.backward([left, right], [grad_left, grad_right])
            return value, flat.grad
        approx = unpack(flat).reconstruct()
        value, grad = objective.value_and_grad(approx.detach())
        approx.backward(grad)
        return value, flat.grad

    start = result.to(dtype=torch.float64)
    history = [objective.value(start.reconstruct())]
    solver, wk = "lbfgs", None
    if result.method in ("kt", "kcp"):
        start, solver, wk = _weighted(start, objective, history, max_iter=max_iter, tol=tol, window=window,
                                      callback=callback)
    if solver != "als":
        precondition, step = None, evaluate
        if solver.endswith("lbfgs-blocks"):
            from kcp.decomposition._kcp import A_KEYS, B_KEYS
            from kcp.decomposition.weighted import kcp_value_and_grad

            max_iter = min(max_iter, PRECONDITIONED_MAX_ITER)

            def sides(flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
                f = unpack(flat).factors
                return [f[k] for k in A_KEYS], [f[k] for k in B_KEYS]

            def precondition(flat: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
                return wk.preconditioner(*sides(flat))

            def step(flat: torch.Tensor) -> tuple[float, torch.Tensor]:  # evaluate in closed form: no autograd
                value, grads = kcp_value_and_grad(objective, result.factor_shape, *sides(flat))
                return value, torch.cat([g.reshape(-1) for g in grads if g is not None])

        x = torch.cat([start.factors[k].detach().reshape(-1) for k in keys])
        values, x = lbfgs(step, x, max_iter=max_iter, tol=tol, window=window, callback=callback,
                          offset=len(history) - 1, precondition=precondition, refresh=PRECONDITIONER_REFRESH)
        history += values[1:]
        start = unpack(x)
    best = start
    info = dict(result.info)
    for key in ("iterations", "converged", "final_change"):  # the kernel fit's, kept apart from the output fit's own
        if key in info:
            info[f"kernel_{key}"] = info.pop(key)
    info.update({
        "fit": "outputs", "calibration_patches": int(calibration.count),
        "calibration_inputs": int(calibration.n_inputs),
        "objective": [math.sqrt(v) for v in history], "iterations": len(history) - 1,
        **convergence(history, tol, window), "kernel_fit_error": result.rel_error, "output_solver": solver,
    })
    return replace(best, factors={k: v.detach() for k, v in best.factors.items()}, info=info)


def output_iterations(work: float, window: int = OUTPUT_WINDOW) -> int:
    """The L-BFGS iteration bound of an output fit whose every evaluation costs ``work`` multiply-adds:
    ``OUTPUT_WORK / work``, within ``[2 * window, OUTPUT_MAX_ITER]`` (two windows, so that the window rule can act)."""
    return max(2 * window, min(OUTPUT_MAX_ITER, int(OUTPUT_WORK / work)))


def _low_rank_work(factors: tuple[torch.Tensor, torch.Tensor], out_c: int, dim: int) -> int:
    rank = factors[0].shape[1]
    return rank * (dim ** 2 + 2 * out_c * dim)


def _weighted(start: Decomposition, objective: OutputObjective, history: list[float], *, max_iter: int, tol: float,
              window: int, callback: Callable[[int, float], None] | None
              ) -> tuple[Decomposition, str, WeightedKCP | None]:
    """KT and KCP refined by exact weighted block ALS (:mod:`kcp.decomposition.weighted`) where its systems are
    small enough; KCP first moves to a start fitted to the outputs at the Kronecker level (the KT terms refined on the
    outputs, then a CP of each) where that start's value is lower. Appends to ``history``; returns the result, the
    output solver (``"als"`` where ALS finished; otherwise what is to finish it: ``"lbfgs"`` where not even the KT
    systems are small enough, ``"lbfgs-blocks"`` where KCP's are not, ``"als, then lbfgs-blocks"`` where KCP's
    ``ALS_SWEEPS`` sweeps did not converge) and the :class:`~kcp.decomposition.weighted.WeightedKCP` (None with
    ``"lbfgs"``). ``callback`` also hears from the start's sweeps (repeating the last iteration), so that it can
    cancel there too."""
    from kcp.decomposition._kcp import A_KEYS, B_KEYS  # the method module imports this one
    from kcp.decomposition.als import cp_batch, side_tensor
    from kcp.decomposition.numerics import rng_for
    from kcp.decomposition.weighted import WeightedKCP, fit_kcp, fit_kt

    shape, r = start.factor_shape, start.ranks["kt_rank"]
    if not WeightedKCP.feasible(shape, r):
        return start, "lbfgs", None
    wk = WeightedKCP(objective.gram, objective.weight_gram, objective.energy, shape)
    kw = {"max_sweeps": max(max_iter, OUTPUT_MAX_ITER), "tol": tol, "window": window}
    if start.method == "kt":
        a, b = fit_kt(wk, start.factors["a"].reshape(r, -1), start.factors["b"].reshape(r, -1), **kw,
                      history=history, callback=callback)
        return (replace(start, factors={"a": a.reshape(r, *shape.a_shape), "b": b.reshape(r, *shape.b_shape)}), "als",
                wk)
    k = start.ranks["cp_rank"]
    a_side, b_side = [start.factors[key] for key in A_KEYS], [start.factors[key] for key in B_KEYS]
    # A start needs no converged KT fit: 2 windows of sweeps hold nearly all of its gain (and fewer do where the
    # preconditioned L-BFGS finishes, whose iterations cost less than these sweeps).
    als = WeightedKCP.feasible(shape, r, k)
    beat = None if callback is None else (lambda _sweep, _value: callback(len(history) - 1, math.sqrt(history[-1])))
    a, b = fit_kt(wk, side_tensor(a_side), side_tensor(b_side),
                  **{**kw, "max_sweeps": 2 * window if als else PRECONDITIONED_KT_SWEEPS}, history=[history[-1]],
                  callback=beat)
    rng = rng_for(start.info.get("seed", 0) if isinstance(start.info.get("seed"), int) else 0)
    cp_iter = 30 if als else PRECONDITIONED_CP_ITER
    a_new, b_new = (cp_batch(a.reshape(r, *shape.a_shape), k, rng, n_iter_max=cp_iter),
                    cp_batch(b.reshape(r, *shape.b_shape), k, rng, n_iter_max=cp_iter))
    value = wk.value(a_new, b_new)
    if value < history[-1]:
        a_side, b_side = a_new, b_new
        history.append(value)
        if callback is not None:
            callback(len(history) - 1, math.sqrt(value))
    solver = "lbfgs-blocks"
    if als:
        before = len(history)
        fit_kcp(wk, a_side, b_side, **{**kw, "max_sweeps": ALS_SWEEPS}, history=history, callback=callback)
        solver = "als" if len(history) - before < ALS_SWEEPS else "als, then lbfgs-blocks"
    return replace(start, factors={**start.factors, **dict(zip(A_KEYS + B_KEYS, a_side + b_side))}), solver, wk


def lbfgs(
    evaluate: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
    x: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    window: int,
    callback: Callable[[int, float], None] | None = None,
    memory: int = 20,
    offset: int = 0,
    precondition: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    refresh: int = 20,
) -> tuple[list[float], torch.Tensor]:
    """Minimise ``evaluate(x) -> (f, grad)`` from ``x`` by L-BFGS with a backtracking (Armijo) line search.

    Every accepted step lowers ``f``, so the returned values (the start, then one per iteration) never rise.
    Stops after ``max_iter`` iterations, or once ``f`` fell by less than ``tol`` (relative) over the last
    ``window`` iterations, or when no step along the search direction lowers it. Returns ``(values, x_best)``;
    ``callback(offset + iteration, sqrt(f))`` follows every iteration. ``precondition(x)``, where given, returns a
    positive definite map (an approximate inverse Hessian at ``x``) that replaces the scaled identity the curvature
    pairs start from; it is rebuilt every ``refresh`` iterations (the pairs are then dropped: they belong to the
    old one).
    """
    value, grad = evaluate(x)
    values = [value]
    steps: list[tuple[torch.Tensor, torch.Tensor, float, float]] = []
    converged = value == 0.0 or not bool(grad.any())
    inverse = None
    for it in range(max_iter):
        if converged:
            break
        if precondition is not None and it % refresh == 0:
            inverse = precondition(x)
            steps.clear()
        direction = _two_loop(grad, steps, inverse)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (round-off in the curvature pairs): restart from the gradient
            steps.clear()
            direction = -grad if inverse is None else -inverse(grad)
            slope = float(grad @ direction)
        # A preconditioned direction is a (block) Newton step, whose natural length is 1.
        t = 1.0 if steps or inverse is not None else min(1.0, 1.0 / float(grad.abs().sum()))
        while True:
            candidate = x + t * direction
            new_value, new_grad = evaluate(candidate)
            if math.isfinite(new_value) and new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-20:
                new_value = math.inf
                break
        if not new_value < value:
            converged = True  # no step along the direction lowers f: a stationary point to round-off
            break
        s, y = candidate - x, new_grad - grad
        curvature = float(s @ y)
        if curvature > 1e-12 * float(y @ y):
            # The scaling of the next direction: s^T y / y^T H0 y, H0 the preconditioner or the identity.
            gamma = curvature / float(y @ (y if inverse is None else inverse(y)))
            steps.append((s, y, 1.0 / curvature, gamma))
            if len(steps) > memory:
                steps.pop(0)
        x, value, grad = candidate, new_value, new_grad
        values.append(value)
        if callback is not None:
            callback(offset + it + 1, math.sqrt(value))
        converged = value == 0.0 or window_change(values, window) <= tol
    return values, x


def _two_loop(grad: torch.Tensor, steps: list[tuple[torch.Tensor, torch.Tensor, float, float]],
              inverse: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The L-BFGS search direction ``-H grad`` from the stored curvature pairs ``(s, y, 1 / s^T y, gamma)``,
    starting from ``gamma * inverse`` (or ``gamma * I``) with the latest pair's ``gamma``."""
    q = grad.clone()
    alphas = []
    for s, y, rho, _ in reversed(steps):
        a = rho * float(s @ q)
        q -= a * y
        alphas.append(a)
    if inverse is not None:
        q = inverse(q)
    if steps:
        q *= steps[-1][3]
    for (s, y, rho, _), a in zip(steps, reversed(alphas)):
        q += (a - rho * float(y @ q)) * s
    return -q


def finish(result: Decomposition, weight: torch.Tensor, calibration: PatchMoments | None,
           callback: Callable[[int, float], None] | None = None) -> Decomposition:
    """A kernel fit as it is (``info["fit"] = "kernel"``), or refined on the outputs when ``calibration`` is given;
    either way with ``rel_error`` the kernel error."""
    if calibration is None:
        result.info.setdefault("fit", "kernel")
        return result
    refined = refine_outputs(result, weight, calibration, callback=callback)
    refined.rel_error = relative_kernel_error(refined, weight)
    return refined


def finish_direct(result: Decomposition, weight: torch.Tensor, calibration: PatchMoments | None,
                  like: torch.Tensor) -> Decomposition:
    """A kernel fit computed in one go (KT, CP, Tucker-2): its kernel error recorded as its whole history, then
    :func:`finish`, returned on ``like``'s device and dtype."""
    result.rel_error = relative_kernel_error(result, weight)
    result.history = [result.rel_error]
    return finish(result, weight, calibration).to(like.device, like.dtype)


def relative_kernel_error(result: Decomposition, weight: torch.Tensor) -> float:
    return relative_error(result.reconstruct(), weight)


def whitened_svd(weight: torch.Tensor, calibration: PatchMoments, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact output-optimal rank-``rank`` factors ``(left, right)``, ``W_hat = left @ right`` (O x r, r x D).

    With ``G = L L^T``: ``||(W - W_hat) L||`` is minimised by the truncated SVD of ``W L``, mapped back by ``L^-1``.
    """
    chol = torch.linalg.cholesky(calibration.regularised(RIDGE))
    w = weight.reshape(weight.shape[0], -1).to(torch.float64)
    u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
    root = s[:rank].sqrt()
    # right = diag(root) V^T L^-1, i.e. L^T right^T = V diag(root): one triangular solve.
    right = torch.linalg.solve_triangular(chol.T, vh[:rank].T * root, upper=True).T
    return u[:, :rank] * root, right
