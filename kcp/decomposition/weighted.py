"""Exact block updates of a KCP model under the output objective: weighted block ALS.

In the rearranged form the model is ``M_hat = sum_r vec(A_r) vec(B_r)^T`` and the objective is
``tr((W - W_hat) G (W - W_hat)^T)``. ``G`` acts on the input-patch index ``(i, h, w)``, which splits into A's part
``alpha = (i_A, h_A, w_A)`` and B's part ``beta = (i_B, h_B, w_B)``; the output index is not weighted. So with the B
side fixed the objective is a quadratic in the A side with the metric

    F[r, alpha, s, alpha'] = sum_{beta, beta'} G[(alpha beta), (alpha' beta')] sum_{o_B} B_r[o_B, beta] B_s[o_B, beta']

(one (DA^2 x DB^2) @ (DB^2 x R^2) product, never anything of size (O*D)^2), and linear term ``B_full T^T`` with
``T`` the rearranged ``W G``: the kernel refinement's normal equations (:mod:`kcp.decomposition.refine`) with the
R x R Gram replaced by this metric. Each factor block of the side (output mode, then the input modes) is then an
exact linear least-squares solve of size (n_m R K), so the objective never rises from one block to the next.
"""

from __future__ import annotations

import math

import torch

from kcp.decomposition.als import balance, khatri_rao, mttkrp, side_tensor, solve_psd
from kcp.decomposition.stopping import window_change
from kcp.kron import FactorShape, rearrange, unrearrange

# Largest linear system (unknowns) that a block update solves; past it a sweep costs more than L-BFGS iterations
# gain (measured: 64x64x3x3 at R=16 K=8, 1024 unknowns, ran ~0.1 s a sweep against ~20 ms an L-BFGS iteration).
SYSTEM_LIMIT = 768


class WeightedKCP:
    """The output objective of a KCP model in rearranged form, with the pieces that every sweep reuses."""

    def __init__(self, gram: torch.Tensor, weight_gram: torch.Tensor, energy: float, shape: FactorShape):
        s = shape
        self.shape = shape
        self.a_in = (s.in_a, s.ka_h, s.ka_w)
        self.b_in = (s.in_b, s.kb_h, s.kb_w)
        da, db = math.prod(self.a_in), math.prod(self.b_in)
        # G over (i_A, i_B, h_A, h_B, w_A, w_B) twice, laid out as [(alpha, alpha'), (beta, beta')].
        g = gram.reshape(s.in_a, s.in_b, s.ka_h, s.kb_h, s.ka_w, s.kb_w, s.in_a, s.in_b, s.ka_h, s.kb_h, s.ka_w, s.kb_w)
        self.gab = g.permute(0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11).reshape(da * da, db * db).contiguous()
        self.target = rearrange(weight_gram.reshape(s.kernel_shape), s)  # the rearranged W G: (|A|, |B|)
        self.energy = energy

    @staticmethod
    def feasible(shape: FactorShape, r: int, k: int | None = None) -> bool:
        """Whether every block's system stays within :data:`SYSTEM_LIMIT` unknowns: KCP at ranks ``r, k``, or KT
        (``k=None``, whose blocks are the whole input side of all R terms)."""
        if k is None:
            return r * max(math.prod(shape.a_shape[1:]), math.prod(shape.b_shape[1:])) <= SYSTEM_LIMIT
        return max(shape.a_shape + shape.b_shape) * r * k <= SYSTEM_LIMIT

    def _metric(self, other: torch.Tensor, other_is_b: bool, n_out: int) -> torch.Tensor:
        """``F[r, x, s, x']`` for the side opposite ``other`` (R, |other side|), as (R, D_side, R, D_side)."""
        r = other.shape[0]
        d_other = other.shape[1] // n_out
        flat = other.reshape(r, n_out, d_other).permute(1, 0, 2).reshape(n_out, r * d_other)
        cross = (flat.T @ flat).reshape(r, d_other, r, d_other).permute(0, 2, 1, 3).reshape(r * r, -1)
        # (D_side^2, R^2); as row-major products, which BLAS runs ~30x faster than a transposed G times a thin matrix.
        metric = (cross @ self.gab.T if other_is_b else cross @ self.gab).T
        d_side = math.isqrt(metric.shape[0])
        return metric.reshape(d_side, d_side, r, r).permute(2, 0, 3, 1)

    def _own_metric(self, other: torch.Tensor, other_is_b: bool, n_out: int) -> torch.Tensor:
        """The diagonal blocks ``F[r, x, r, x']`` of :meth:`_metric`, as (R, D_side, D_side): R times cheaper."""
        r = other.shape[0]
        flat = other.reshape(r, n_out, -1)
        cross = torch.bmm(flat.transpose(1, 2), flat).reshape(r, -1)
        metric = cross @ self.gab.T if other_is_b else cross @ self.gab
        d_side = math.isqrt(metric.shape[1])
        return metric.reshape(r, d_side, d_side)

    def preconditioner(self, a_side: list[torch.Tensor], b_side: list[torch.Tensor]):
        """The inverse of a block-diagonal part of the relative objective's Hessian: one block per term and free
        factor (the per-term diagonal blocks of the normal matrices that block ALS solves), as a map from a gradient
        over the free factors (flattened in the order ``a_side + b_side``) to a positive definite multiple of it.
        L-BFGS starts each search from it instead of a scaled identity (:func:`kcp.decomposition.outputs.lbfgs`): it
        carries the curvature of the calibration moments at the cost of (n K)^2-sized blocks, where the exact block
        solves would cost (R n K)^2-sized ones."""
        s = self.shape
        blocks = []
        for factors, other, other_is_b, n_other, in_dims in ((a_side, side_tensor(b_side), True, s.out_b, self.a_in),
                                                            (b_side, side_tensor(a_side), False, s.out_a, self.b_in)):
            metric = self._own_metric(other, other_is_b, n_other)
            blocks += [(f.shape, inv, m == 0) for m, (f, inv) in enumerate(zip(factors, _term_normals(
                factors, metric, in_dims))) if f.shape[1] > 1]
        sizes = [math.prod(shape) for shape, _, _ in blocks]
        scale = self.energy / 2  # the relative objective's Hessian blocks are 2 N / energy

        def apply(grad: torch.Tensor) -> torch.Tensor:
            parts = []
            for (shape, inv, is_out), g in zip(blocks, grad.split(sizes)):
                r, n, k = shape
                if is_out:  # one K x K block per term, the same for every output index
                    parts.append(torch.bmm(g.reshape(r, n, k), inv).reshape(-1))
                else:
                    parts.append(torch.bmm(inv, g.reshape(r, n * k, 1)).reshape(-1))
            return scale * torch.cat(parts)

        return apply

    def value(self, a_side: list[torch.Tensor], b_side: list[torch.Tensor]) -> float:
        """The relative objective ``tr(dW G dW^T) / tr(W G W^T)`` of the model."""
        a_full, b_full = side_tensor(a_side), side_tensor(b_side)
        metric = self._metric(b_full, True, self.shape.out_b)
        return self._value(a_full.reshape(a_full.shape[0], self.shape.out_a, -1), metric,
                           (b_full @ self.target.T).reshape(a_full.shape[0], self.shape.out_a, -1))

    def _value(self, a: torch.Tensor, metric: torch.Tensor, rhs: torch.Tensor) -> float:
        r, n_out, d = a.shape
        flat = a.permute(0, 2, 1).reshape(r * d, n_out)
        quad = (flat * (metric.reshape(r * d, r * d) @ flat)).sum()
        return max(0.0, float(self.energy - 2 * (a * rhs).sum() + quad)) / self.energy

    def kt_sweep(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One sweep of KT terms ``a`` (R, |A|), ``b`` (R, |B|): each side an exact solve over all R terms at once.
        Returns the new sides and the relative objective."""
        s = self.shape
        a = self._kt_side(self._metric(b, True, s.out_b), (b @ self.target.T).reshape(len(b), s.out_a, -1))
        metric = self._metric(a, False, s.out_a)
        rhs = (a @ self.target).reshape(len(a), s.out_b, -1)
        b = self._kt_side(metric, rhs)
        return a, b, self._value(b.reshape(rhs.shape), metric, rhs)

    @staticmethod
    def _kt_side(metric: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        r, n_out, d = rhs.shape
        x = solve_psd(metric.reshape(r * d, r * d), rhs.permute(0, 2, 1).reshape(r * d, n_out))
        return x.reshape(r, d, n_out).permute(0, 2, 1).reshape(r, -1)

    def sweep(self, a_side: list[torch.Tensor], b_side: list[torch.Tensor]) -> float:
        """One sweep (every block of A, then of B), in place; returns the relative objective after it."""
        s = self.shape
        r = a_side[0].shape[0]
        b_full = side_tensor(b_side)
        metric = self._metric(b_full, True, s.out_b)
        _update_side(a_side, metric, (b_full @ self.target.T).reshape(r, s.out_a, -1), self.a_in)
        a_full = side_tensor(a_side)
        metric = self._metric(a_full, False, s.out_a)
        rhs = (a_full @ self.target).reshape(r, s.out_b, -1)
        _update_side(b_side, metric, rhs, self.b_in)
        b = side_tensor(b_side).reshape(r, s.out_b, -1)
        return self._value(b, metric, rhs)


def _update_side(factors: list[torch.Tensor], metric: torch.Tensor, rhs: torch.Tensor, in_dims: tuple) -> None:
    """Exact least-squares updates of one side's blocks (output mode, then each input mode), in place.

    ``factors`` are the side's (R, n, K) stacks (out, in, h, w); the side's objective is
    ``sum_o x_o^T metric x_o - 2 <x, rhs>`` with ``x[r, o, alpha] = sum_c out[r, o, c] in_vec[r, alpha, c]``.
    """
    r, n_out, k = factors[0].shape
    ins = factors[1:]
    vec = khatri_rao(ins)  # (R, D_side, K)
    if n_out > 1:
        half = torch.einsum("rxsy,syd->rxsd", metric, vec)
        normal = torch.einsum("rxc,rxsd->rcsd", vec, half).reshape(r * k, r * k)
        right = torch.einsum("rxc,rox->rco", vec, rhs).reshape(r * k, n_out)
        factors[0] = solve_psd(normal, right).reshape(r, k, n_out).transpose(1, 2).contiguous()
    out = factors[0]
    out_gram = torch.einsum("roc,sod->rcsd", out, out)
    for m in range(3):
        n = ins[m].shape[1]
        if n == 1:
            continue
        others = [ins[j] for j in range(3) if j != m]
        rest = khatri_rao(others)  # (R, S, K), S the other input modes in their order
        met = metric.reshape(r, *in_dims, r, *in_dims).movedim(1 + m, 1).movedim(5 + m, 5)
        met = met.reshape(r, n, -1, r, n, rest.shape[1])
        tmp = torch.einsum("ritsju,sud->ritsjd", met, rest)
        normal = torch.einsum("rtc,ritsjd->ricsjd", rest, tmp) * out_gram.reshape(r, 1, k, r, 1, k)
        tgt = rhs.reshape(r, n_out, *in_dims).movedim(2 + m, 2).reshape(r, n_out, n, -1)
        right = torch.einsum("rtc,rcit->ric", rest, torch.einsum("roc,roit->rcit", out, tgt))
        size = r * n * k
        ins[m] = solve_psd(normal.reshape(size, size), right.reshape(size, 1)).reshape(r, n, k)
    factors[1:] = ins
    balance(factors)


def _term_normals(factors: list[torch.Tensor], metric: torch.Tensor, in_dims: tuple) -> list[torch.Tensor]:
    """Inverses of the per-term diagonal blocks of the normal matrices that :func:`_update_side` solves, for every
    factor of a side (the output mode's (R, K, K), each input mode's (R, n K, n K)); ``metric`` holds the metric's
    diagonal blocks (R, D_side, D_side). Eigenvalues are floored (:func:`_floored_inverse`), so the result is
    positive definite where a block is singular (tiny or zero columns)."""
    r, n_out, k = factors[0].shape
    ins = factors[1:]
    vec = khatri_rao(ins)  # (R, D_side, K)
    normals = [torch.bmm(vec.transpose(1, 2), torch.bmm(metric, vec))]
    out = factors[0]
    out_gram = torch.bmm(out.transpose(1, 2), out)  # (R, K, K)
    for m in range(3):
        n = ins[m].shape[1]
        rest = khatri_rao([ins[j] for j in range(3) if j != m])  # (R, S, K)
        met = metric.reshape(r, *in_dims, *in_dims).movedim(1 + m, 1).movedim(4 + m, 4)
        met = met.reshape(r, n, rest.shape[1], n, rest.shape[1])
        normal = torch.einsum("rtc,ritju,rud->ricjd", rest, met, rest) * out_gram.reshape(r, 1, k, 1, k)
        normals.append(normal.reshape(r, n * k, n * k))
    return [_floored_inverse(normal) for normal in normals]


def _floored_inverse(normal: torch.Tensor, floor: float = 1e-8) -> torch.Tensor:
    """Inverses of a batch of PSD blocks with their eigenvalues floored at ``floor`` times the batch's largest
    diagonal entry: a block of a dead term (zero factors) gets a bounded inverse, not round-off's reciprocal."""
    scale = float(normal.diagonal(dim1=-2, dim2=-1).amax()) or 1.0
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype)
    chol, info = torch.linalg.cholesky_ex(normal + floor * scale * eye)
    if not bool(info.any()):
        return torch.cholesky_inverse(chol)
    values, vectors = torch.linalg.eigh(normal)
    return (vectors / values.clamp_min(floor * scale).unsqueeze(-2)) @ vectors.transpose(-2, -1)


def kcp_value_and_grad(objective, shape: FactorShape, a_side: list[torch.Tensor],
                       b_side: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """The output objective (``objective.value_and_grad`` of the dense kernel) of a KCP model and its gradient with
    respect to every free factor of ``a_side + b_side`` (None for modes of size one), by the chain rule in
    rearranged form (what autograd through the reconstruction computes, in a few products)."""
    a_full, b_full = side_tensor(a_side), side_tensor(b_side)
    value, grad = objective.value_and_grad(unrearrange(a_full.T @ b_full, shape))
    grad_m = rearrange(grad, shape)  # d f / d M, (|A|, |B|)
    grads = []
    for side, full in ((a_side, b_full @ grad_m.T), (b_side, a_full @ grad_m)):
        target = full.reshape(len(full), *(f.shape[1] for f in side))
        grads += [mttkrp(target, side, m) if f.shape[1] > 1 else None for m, f in enumerate(side)]
    return value, grads


def _monotone_sweeps(step, value: float, *, max_sweeps: int, tol: float, window: int, history: list[float],
                     callback) -> None:
    """Run ``step() -> (value, undo)`` until the window rule or ``max_sweeps``; a sweep that raises the value
    (round-off in a near-singular solve) is undone and ends the run, so ``history`` never rises."""
    for _ in range(max_sweeps):
        new, undo = step()
        if not new <= value:
            undo()
            break
        value = new
        history.append(value)
        if callback is not None:
            callback(len(history) - 1, math.sqrt(value))
        if value == 0.0 or window_change(history, window) <= tol:
            break


def fit_kt(wk: WeightedKCP, a: torch.Tensor, b: torch.Tensor, *, max_sweeps: int, tol: float, window: int,
           history: list[float], callback=None) -> tuple[torch.Tensor, torch.Tensor]:
    """KT terms refined by exact sweeps (:meth:`WeightedKCP.kt_sweep`); values are appended to ``history``."""
    state = [a, b]

    def step():
        old = list(state)
        state[0], state[1], value = wk.kt_sweep(*state)
        return value, lambda: state.__setitem__(slice(None), old)

    _monotone_sweeps(step, history[-1], max_sweeps=max_sweeps, tol=tol, window=window, history=history,
                     callback=callback)
    return state[0], state[1]


def fit_kcp(wk: WeightedKCP, a_side: list[torch.Tensor], b_side: list[torch.Tensor], *, max_sweeps: int,
            tol: float, window: int, history: list[float], callback=None) -> None:
    """KCP factor stacks refined in place by weighted block-ALS sweeps; values are appended to ``history``."""

    def step():
        old = [list(a_side), list(b_side)]
        value = wk.sweep(a_side, b_side)

        def undo():
            a_side[:], b_side[:] = old

        return value, undo

    _monotone_sweeps(step, history[-1], max_sweeps=max_sweeps, tol=tol, window=window, history=history,
                     callback=callback)
