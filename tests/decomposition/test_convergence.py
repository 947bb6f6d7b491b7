"""Converged kernel fits by default: planted KCP tensors recovered, CP at its converged optimum, the stopping rule
reported, warm and cold fits agreeing, and tolerances and ranks validated."""

import math

import numpy as np
import pytest
import torch

from kcp.decomposition import AGREEMENT_TOL, cp, decompose, kcp, kt, svd, tucker2
from kcp.decomposition.moments import patch_moments
from kcp.decomposition.polish import RESTART_LIMIT
from kcp.decomposition.stopping import WINDOW, convergence, window_change
from kcp.geometry import ConvGeometry


def planted(factors, placement, r, k, seed):
    """An exact KCP tensor: sum_r A_r (x) B_r with every A_r, B_r a random rank-``k`` CP tensor, 3x3 window."""
    oa, ob, ia, ib = factors
    g = torch.Generator().manual_seed(seed)
    a_shape, b_shape = ((oa, ia, 3, 3), (ob, ib, 1, 1)) if placement == "a-spatial" else ((oa, ia, 3, 1),
                                                                                        (ob, ib, 1, 3))
    w = 0
    for _ in range(r):
        a, b = (torch.einsum("ic,jc,hc,wc->ijhw", *[torch.randn(n, k, generator=g, dtype=torch.float64) for n in s])
                for s in (a_shape, b_shape))
        # The Kronecker product written out (index j * b + l in every mode): torch.kron refuses some of these shapes.
        w = w + torch.einsum("abcd,efgh->aebfcgdh", a, b).reshape([x * y for x, y in zip(a.shape, b.shape)])
    return w


PLANTED_GRID = [(factors, placement, r, k, seed)
                for factors in ((5, 6, 6, 7), (4, 3, 5, 3), (3, 5, 3, 5), (2, 3, 5, 2))
                for placement in ("split", "a-spatial") for r, k in ((2, 2), (2, 3), (3, 2)) for seed in (0, 1)]


def _check_recovered(factors, placement, r, k, seed):
    w = planted(factors, placement, r, k, seed)
    result = kcp(w, r, k, factors=factors, placement=placement)
    assert result.rel_error < 1e-6, (result.rel_error, result.info)
    assert result.info["converged"]


@pytest.mark.parametrize(("factors", "placement", "r", "k", "seed"), [
    # The case: 30x42x3x3, a-spatial, R=2 K=4, factor shape 5,6,6,7 (left at 28 % by the old rule).
    ((5, 6, 6, 7), "a-spatial", 2, 4, 0),
    ((5, 6, 6, 7), "a-spatial", 2, 4, 2),
    ((4, 3, 5, 3), "a-spatial", 2, 3, 1),
    ((3, 5, 3, 5), "split", 2, 2, 1),
    # Split placements where ALS alone stalls (at 6e-3 and 2e-5 after 1000 sweeps): the LM finish recovers them.
    ((3, 5, 3, 5), "split", 3, 2, 1),
    ((2, 3, 5, 2), "split", 3, 2, 1),
])
def test_defaults_recover_planted_kcp_tensors(factors, placement, r, k, seed):
    _check_recovered(factors, placement, r, k, seed)


@pytest.mark.slow
@pytest.mark.parametrize(("factors", "placement", "r", "k", "seed"), PLANTED_GRID)
def test_defaults_recover_every_planted_tensor_of_the_grid(factors, placement, r, k, seed):
    """Every odd factor shape, both placements, three rank pairs, two seeds: no instance left out."""
    _check_recovered(factors, placement, r, k, seed)


@pytest.mark.parametrize(("r", "k", "seed", "final"), [
    (2, 3, 0, 0.16),
    pytest.param(2, 3, 1, 0.010, marks=pytest.mark.slow),  # the fast lane keeps one case; the full suite all three
    pytest.param(3, 2, 0, 0.017, marks=pytest.mark.slow),
])
def test_restarts_get_tiny_planted_tensors_out_of_local_minima(monkeypatch, r, k, seed, final):
    """Factor shape 2,3,5,2 a-spatial (B a 3x2 matrix, over-parameterised at K=3): from the ALS start, ALS then the LM
    finish end at a local minimum or a stall; the restarts from random factors find the exact fit."""
    import kcp.decomposition._kcp as method_module

    w = planted((2, 3, 5, 2), "a-spatial", r, k, seed)
    monkeypatch.setattr(method_module, "RESTARTS", 0)
    stuck = kcp(w, r, k, factors=(2, 3, 5, 2), placement="a-spatial")
    assert stuck.rel_error == pytest.approx(final, rel=0.1) and stuck.info["restarts"] == 0
    monkeypatch.undo()
    found = kcp(w, r, k, factors=(2, 3, 5, 2), placement="a-spatial")
    assert found.rel_error < 1e-10 and 1 <= found.info["restarts"] <= method_module.RESTARTS
    assert found.info["converged"] and found.history[-1] == pytest.approx(found.rel_error, rel=1e-6, abs=1e-15)


def test_real_kernels_are_not_restarted():
    """A 16x16x3x3 kernel at the smallest ranks is small enough to restart, but its fit ends far from exact."""
    g = torch.Generator().manual_seed(14)
    result = kcp(torch.randn(16, 16, 3, 3, generator=g, dtype=torch.float64), 1, 1)
    free = sum(f.numel() for f in result.factors.values() if f.shape[1] > 1)
    assert 16 * 16 * 9 * free <= RESTART_LIMIT  # restartable by size ...
    assert "restarts" not in result.info and result.rel_error > 0.5  # ... but not restarted


def test_the_window_rule_does_not_stop_on_a_slow_stretch():
    # A plateau: ten sweeps that each gain 1e-6 (relative) are slow, but together they gain 1e-5 > tol = 1e-6.
    history = [1.0] + [1.0 - 1e-6 * i for i in range(1, 12)]
    assert window_change(history) == pytest.approx(1e-5, rel=1e-3)
    assert not convergence(history, tol=1e-6)["converged"]
    assert convergence(history + [history[-1]] * WINDOW, tol=1e-6)["converged"]
    assert convergence([0.3, 1e-14], tol=0)["converged"]  # an exact fit stops at once
    assert window_change([1.0, 0.5]) == math.inf  # too few sweeps to judge


def _real_like(seed=0, shape=(16, 12, 3, 3), rank=6):
    """A low-rank kernel plus noise: CP-ALS on it has a long slow tail."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, rank, generator=g, dtype=torch.float64) for n in shape]
    w = torch.einsum("or,ir,hr,wr->oihw", *parts)
    return w + 0.3 * w.std() * torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "ranks", "long"), [
    ("cp", {"rank": 8}, {"n_iter_max": 20000, "tol": 1e-10}),
    ("kcp", {"kt_rank": 3, "cp_rank": 3}, {"refine_sweeps": 3000, "tol": 1e-8}),
    ("tucker2", {"in_rank": 5, "out_rank": 6}, {"n_iter_max": 2000}),
])
def test_default_kernel_fits_are_converged(method, ranks, long):
    w = _real_like()
    default, reference = decompose(w, method, **ranks), decompose(w, method, **ranks, **long)
    assert default.info["converged"] and isinstance(default.info["final_change"], float)
    assert default.rel_error - reference.rel_error < 2e-3, (default.rel_error, reference.rel_error)


def test_cp_reports_its_iterations_and_stops_long_before_the_bound():
    result = cp(_real_like(seed=1), 6)
    assert 2 <= result.info["iterations"] < 3000
    assert result.info["converged"]


def test_warm_and_cold_fits_report_the_same_errors():
    w = _real_like(seed=2, shape=(12, 12, 3, 3))
    g = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(6, 12, 6, 6, generator=g, dtype=torch.float64))
    m = patch_moments(x, (3, 3), ConvGeometry.make(padding=1))
    for r, k in ((2, 3), (3, 4)):
        small = kcp(w, r - 1, k - 1)
        cold, warm = kcp(w, r, k), kcp(w, r, k, init=small)
        assert warm.info["warm_start"] and not cold.info["warm_start"]
        assert abs(warm.rel_error - cold.rel_error) <= AGREEMENT_TOL
    # Output fits start cold whatever init says: one number per point.
    cold_out = kcp(w, 3, 4, fit="outputs", calibration=m)
    warm_out = kcp(w, 3, 4, fit="outputs", calibration=m, init=kcp(w, 2, 3))
    assert not warm_out.info["warm_start"]
    assert warm_out.info["objective"] == cold_out.info["objective"]


@pytest.mark.parametrize("bad", [-1e-6, float("nan"), float("inf"), True, "1e-5", None])
@pytest.mark.parametrize("method", ["kcp", "cp"])
def test_tolerances_are_validated(method, bad):
    w = torch.randn(8, 8, 3, 3)
    ranks = {"kt_rank": 1, "cp_rank": 2} if method == "kcp" else {"rank": 2}
    with pytest.raises(ValueError, match=r"tol must be a finite number >= 0 \(0 runs to the sweep bound\), got"):
        decompose(w, method, **ranks, tol=bad)


@pytest.mark.parametrize("rank", [np.int64(2), np.int32(2), np.uint8(2), torch.tensor(2),
                                  torch.tensor(2, dtype=torch.int32)])
def test_numpy_and_torch_integers_are_ranks(rank):
    w = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    for result, key in ((kcp(w, rank, rank, refine_sweeps=3), "kt_rank"), (kt(w, rank), "kt_rank"),
                        (cp(w, rank, n_iter_max=5), "rank"), (svd(w, rank), "rank"),
                        (tucker2(w, rank, rank), "in_rank")):
        assert type(result.ranks[key]) is int and result.ranks[key] == 2
    assert kcp(w, rank, rank, refine_sweeps=3).rel_error == kcp(w, 2, 2, refine_sweeps=3).rel_error


@pytest.mark.parametrize("rank", [True, np.bool_(True), 2.0, np.float64(2), torch.tensor(2.0), torch.tensor([2]), "2"])
def test_bools_floats_and_other_things_are_not_ranks(rank):
    w = torch.randn(8, 8, 3, 3)
    for call in (lambda: kcp(w, rank, 2), lambda: cp(w, rank), lambda: svd(w, rank), lambda: tucker2(w, rank, 2)):
        with pytest.raises(ValueError, match="must be an integer, got"):
            call()
