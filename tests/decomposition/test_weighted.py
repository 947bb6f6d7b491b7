"""The weighted block ALS of the output fit against the dense objective: the same value, exact block solves (the
dense objective's gradient vanishes on the block just solved), never rising, and the L-BFGS fallback."""

import numpy as np
import pytest
import torch

from kcp.decomposition import kcp, kt
from kcp.decomposition._kcp import A_KEYS, B_KEYS
from kcp.decomposition.als import side_tensor
from kcp.decomposition.moments import PatchMoments, patch_moments
from kcp.decomposition.outputs import OutputObjective
from kcp.decomposition.weighted import WeightedKCP
from kcp.geometry import ConvGeometry
from kcp.kron import unrearrange

CASES = [((3, 5, 2, 3), "split"), ((3, 5, 2, 3), "a-spatial"), ((2, 3, 3, 2), "split")]


def _problem(factors, placement, seed=0):
    """A kernel of the factor shape and calibration moments of channel-correlated ReLU inputs."""
    oa, ob, ia, ib = factors
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(oa * ob, ia * ib, 3, 3, generator=g, dtype=torch.float64)
    mix = torch.randn(ia * ib, ia * ib, generator=g, dtype=torch.float64)
    x = torch.relu(torch.einsum("dc,nchw->ndhw", mix, torch.randn(10, ia * ib, 6, 6, generator=g,
                                                                     dtype=torch.float64)) + 0.5)
    moments = patch_moments(x, (3, 3), ConvGeometry.make(padding=1))
    start = kcp(w, 2, 2, factors=factors, placement=placement)
    objective = OutputObjective(w, moments)
    return w, objective, start, WeightedKCP(objective.gram, objective.weight_gram, objective.energy,
                                            start.factor_shape)


def _dense_value(objective, shape, a_full, b_full):
    """The relative objective straight from the dense kernel: tr(dW G dW^T) / tr(W G W^T)."""
    return objective.value(unrearrange(a_full.T @ b_full, shape))


@pytest.mark.parametrize(("factors", "placement"), CASES)
def test_value_is_the_dense_objective(factors, placement):
    _w, objective, start, wk = _problem(factors, placement)
    a_side, b_side = [start.factors[k] for k in A_KEYS], [start.factors[k] for k in B_KEYS]
    expected = _dense_value(objective, start.factor_shape, side_tensor(a_side), side_tensor(b_side))
    assert wk.value(a_side, b_side) == pytest.approx(expected, rel=1e-10)
    after = wk.sweep(a_side, b_side)
    assert after == pytest.approx(_dense_value(objective, start.factor_shape, side_tensor(a_side),
                                               side_tensor(b_side)), rel=1e-9)
    assert after < expected


def _grad_norm(objective, shape, a_side, b_side, key_index):
    """||d objective / d block|| of B's block ``key_index``, by autograd through the dense reconstruction."""
    b_side = [f.clone().requires_grad_(i == key_index) for i, f in enumerate(b_side)]
    approx = unrearrange(side_tensor(a_side).T @ side_tensor(b_side), shape)
    delta = objective.weight - approx.reshape(objective.out_c, -1)
    value = (delta * (delta @ objective.gram)).sum() / objective.energy
    value.backward()
    return float(b_side[key_index].grad.norm())


@pytest.mark.parametrize(("factors", "placement"), CASES)
def test_every_block_update_is_an_exact_solve(factors, placement):
    _w, objective, start, wk = _problem(factors, placement, seed=1)
    a_side, b_side = [start.factors[k] for k in A_KEYS], [start.factors[k] for k in B_KEYS]
    last = max(i for i, f in enumerate(b_side) if f.shape[1] > 1)  # the block solved last in a sweep
    before = _grad_norm(objective, start.factor_shape, a_side, b_side, last)
    wk.sweep(a_side, b_side)
    # The block just solved sits at the minimum over that block (balancing rescales it, which keeps that).
    assert _grad_norm(objective, start.factor_shape, a_side, b_side, last) < 1e-8 * max(before, 1.0)


def test_kt_sweep_solves_each_side_exactly():
    w, objective, start, wk = _problem((3, 5, 2, 3), "split", seed=2)
    shape = start.factor_shape
    a, b = side_tensor([start.factors[k] for k in A_KEYS]), side_tensor([start.factors[k] for k in B_KEYS])
    a, b, value = wk.kt_sweep(a, b)
    assert value == pytest.approx(_dense_value(objective, shape, a, b), rel=1e-9)
    b = b.clone().requires_grad_(True)
    delta = objective.weight - unrearrange(a.T @ b, shape).reshape(objective.out_c, -1)
    ((delta * (delta @ objective.gram)).sum() / objective.energy).backward()
    assert float(b.grad.norm()) < 1e-9


def _calibration(in_c: int, seed: int) -> PatchMoments:
    """Patch moments of 8 random ReLU inputs (in_c x 5 x 5) of a padded 3x3 conv."""
    x = torch.relu(torch.randn(8, in_c, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return patch_moments(x, (3, 3), ConvGeometry.make(padding=1))


def _assert_refines(fitted, kernel_fit, w: torch.Tensor, x: PatchMoments) -> None:
    """The output fit's recorded objective never rises, starts at the kernel fit's value, ends at the result's and
    gains at least 1 %."""
    values = np.array(fitted.info["objective"])
    assert (np.diff(values) <= 1e-12).all(), np.diff(values).max()
    assert values[0] == pytest.approx(x.relative_error(w, kernel_fit.reconstruct()), rel=1e-5)
    assert values[-1] == pytest.approx(x.relative_error(w, fitted.reconstruct()), rel=1e-5)
    assert values[-1] < 0.99 * values[0]


@pytest.mark.parametrize(("factors", "placement"), CASES)
@pytest.mark.parametrize("method", ["kcp", "kt"])
def test_output_fit_by_als_never_rises_and_beats_the_kernel_fit(method, factors, placement, monkeypatch):
    import kcp.decomposition.outputs as outputs

    monkeypatch.setattr(outputs, "ALS_SWEEPS", 150)  # the ALS path alone, to its window rule
    w, objective, _start, _wk = _problem(factors, placement, seed=3)
    x = _calibration(w.shape[1], seed=4)
    ranks = (2, 2) if method == "kcp" else (2,)
    fn = kcp if method == "kcp" else kt
    kernel_fit = fn(w, *ranks, factors=factors, placement=placement)
    fitted = fn(w, *ranks, factors=factors, placement=placement, fit="outputs", calibration=x)
    assert fitted.info["output_solver"] == "als"
    _assert_refines(fitted, kernel_fit, w, x)


def test_kcp_als_that_has_not_converged_is_finished_by_the_preconditioned_lbfgs(monkeypatch):
    import kcp.decomposition.outputs as outputs

    w, _objective, _start, _wk = _problem((3, 5, 2, 3), "split", seed=5)
    x = _calibration(6, seed=6)
    monkeypatch.setattr(outputs, "ALS_SWEEPS", 2)
    hybrid = kcp(w, 2, 2, factors=(3, 5, 2, 3), fit="outputs", calibration=x)
    assert hybrid.info["output_solver"] == "als, then lbfgs-blocks"
    values = np.array(hybrid.info["objective"])
    assert (np.diff(values) <= 1e-12).all()
    assert values[-1] == pytest.approx(x.relative_error(w, hybrid.reconstruct()), rel=1e-5)
    # Two ALS sweeps alone end higher than the finish.
    monkeypatch.setattr(outputs, "PRECONDITIONED_MAX_ITER", 0)
    als_only = kcp(w, 2, 2, factors=(3, 5, 2, 3), fit="outputs", calibration=x)
    assert values[-1] < als_only.info["objective"][-1]


def test_large_systems_fall_back_to_lbfgs(monkeypatch):
    import kcp.decomposition.outputs as outputs
    import kcp.decomposition.weighted as weighted

    monkeypatch.setattr(outputs, "ALS_SWEEPS", 150)  # the ALS path alone, to its window rule

    w, objective, _start, _wk = _problem((3, 5, 2, 3), "split", seed=5)
    x = _calibration(6, seed=6)
    als = kcp(w, 2, 2, factors=(3, 5, 2, 3), fit="outputs", calibration=x)
    monkeypatch.setattr(weighted, "SYSTEM_LIMIT", 4)
    fallback = kcp(w, 2, 2, factors=(3, 5, 2, 3), fit="outputs", calibration=x)
    assert (als.info["output_solver"], fallback.info["output_solver"]) == ("als", "lbfgs")
    values = np.array(fallback.info["objective"])
    assert (np.diff(values) <= 1e-12).all()
    assert values[-1] < values[0]


def test_the_lm_jacobian_is_autograds():
    from kcp.decomposition import polish

    g = torch.Generator().manual_seed(7)
    a_side = [torch.randn(2, n, 3, generator=g, dtype=torch.float64) for n in (3, 2, 3, 1)]
    b_side = [torch.randn(2, n, 3, generator=g, dtype=torch.float64) for n in (2, 4, 1, 3)]
    matrix = torch.randn(18, 24, generator=g, dtype=torch.float64)
    seen = {}

    def spy(residual, jacobian, x, history, **_kw):
        seen["ours"], seen["autograd"] = jacobian(x), torch.func.jacfwd(residual)(x)
        return x

    original = polish.levenberg_marquardt
    polish.levenberg_marquardt = spy
    try:
        polish.polish_kcp(matrix, a_side, b_side, [1.0], max_iter=1, tol=0)
    finally:
        polish.levenberg_marquardt = original
    torch.testing.assert_close(seen["ours"], seen["autograd"], rtol=0, atol=1e-12)
    assert seen["ours"].shape == (18 * 24, 2 * 3 * (3 + 2 + 3 + 2 + 4 + 3))


def _sides(start):
    return [start.factors[k].clone() for k in A_KEYS], [start.factors[k].clone() for k in B_KEYS]


@pytest.mark.parametrize(("factors", "placement"), CASES)
def test_the_analytic_gradient_is_autograds(factors, placement):
    from kcp.decomposition.weighted import kcp_value_and_grad

    _w, objective, start, _wk = _problem(factors, placement, seed=8)
    a_side, b_side = _sides(start)
    value, grads = kcp_value_and_grad(objective, start.factor_shape, a_side, b_side)
    leaves = [f.requires_grad_(True) for f in a_side + b_side]
    approx = unrearrange(side_tensor(leaves[:4]).T @ side_tensor(leaves[4:]), start.factor_shape)
    delta = objective.weight - approx.reshape(objective.out_c, -1)
    reference = (delta * (delta @ objective.gram)).sum() / objective.energy
    reference.backward()
    assert value == pytest.approx(float(reference), rel=1e-12)
    for leaf, grad in zip(leaves, grads):
        if leaf.shape[1] == 1:
            assert grad is None
        else:
            torch.testing.assert_close(grad, leaf.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("factors", "placement"), CASES)
def test_the_preconditioner_inverts_the_per_term_hessian_blocks(factors, placement):
    """Against autograd's Hessian of the dense objective: each free factor's block, restricted to one term, is
    what the preconditioner inverts (the objective is quadratic in one factor, so the Hessian is exact)."""
    _w, objective, start, wk = _problem(factors, placement, seed=9)
    a_side, b_side = _sides(start)
    shape = start.factor_shape
    apply = wk.preconditioner(a_side, b_side)
    stacks = a_side + b_side
    free = [i for i, f in enumerate(stacks) if f.shape[1] > 1]
    sizes = [stacks[i].numel() for i in free]
    g = torch.Generator().manual_seed(10)
    for slot, i in enumerate(free):
        def f_of(block, i=i):
            parts = list(stacks)
            parts[i] = block
            approx = unrearrange(side_tensor(parts[:4]).T @ side_tensor(parts[4:]), shape)
            delta = objective.weight - approx.reshape(objective.out_c, -1)
            return (delta * (delta @ objective.gram)).sum() / objective.energy

        r, n, k = stacks[i].shape
        hessian = torch.autograd.functional.hessian(f_of, stacks[i]).reshape(r, n * k, r, n * k)
        for term in range(r):
            v = torch.zeros(sum(sizes), dtype=torch.float64)
            block = torch.randn(n * k, generator=g, dtype=torch.float64)
            offset = sum(sizes[:slot]) + term * n * k
            v[offset:offset + n * k] = block
            got = apply(v)[offset:offset + n * k]
            # (up to the eigenvalue floor of 1e-8 of the largest, times the condition number)
            torch.testing.assert_close(hessian[term, :, term] @ got, block, rtol=1e-4, atol=1e-4)


def test_large_kcp_systems_use_the_preconditioned_lbfgs(monkeypatch):
    import kcp.decomposition.weighted as weighted

    w, objective, _start, _wk = _problem((3, 5, 2, 3), "split", seed=11)
    x = _calibration(6, seed=12)
    kernel_fit = kcp(w, 2, 2, factors=(3, 5, 2, 3))
    # KT's blocks (2 x 9 unknowns) stay within the limit, KCP's (5 x 2 x 2) do not.
    monkeypatch.setattr(weighted, "SYSTEM_LIMIT", 19)
    fitted = kcp(w, 2, 2, factors=(3, 5, 2, 3), fit="outputs", calibration=x)
    assert fitted.info["output_solver"] == "lbfgs-blocks"
    _assert_refines(fitted, kernel_fit, w, x)


def test_a_preconditioned_lbfgs_step_is_a_newton_step_on_a_quadratic():
    """With the exact inverse Hessian as preconditioner, the first step (length 1) lands on the minimiser."""
    from kcp.decomposition.outputs import lbfgs

    g = torch.Generator().manual_seed(13)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    hessian = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    optimum = torch.linalg.solve(hessian, b)

    def evaluate(x):
        return float(0.5 * x @ hessian @ x - b @ x) + 10.0, hessian @ x - b

    inverse = torch.linalg.inv(hessian)
    values, x = lbfgs(evaluate, torch.zeros(6, dtype=torch.float64), max_iter=1, tol=0, window=10,
                      precondition=lambda _x: (lambda v: inverse @ v))
    torch.testing.assert_close(x, optimum, rtol=1e-9, atol=1e-12)
    assert values[1] < values[0]


def test_the_preconditioner_stays_bounded_on_a_dead_term():
    """A term whose output factor is zero has all-zero blocks: their inverse is floored, not round-off's reciprocal."""
    _w, _objective, start, wk = _problem((3, 5, 2, 3), "split", seed=15)
    a_side, b_side = _sides(start)
    a_side[0][1] = 0.0
    apply = wk.preconditioner(a_side, b_side)
    v = torch.ones(sum(f.numel() for f in a_side + b_side if f.shape[1] > 1), dtype=torch.float64)
    out = apply(v)
    live = wk.preconditioner(*_sides(start))(v)
    assert bool(torch.isfinite(out).all())
    assert float(out.abs().max()) <= 1e9 * float(live.abs().max())
