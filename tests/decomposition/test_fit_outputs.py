"""fit="outputs": the closed-form SVD against an independent optimum, monotone refinement for every method, and the
result saying what was fitted."""

import numpy as np
import pytest
import scipy.linalg
import torch

from kcp.decomposition import decompose
from kcp.decomposition.moments import patch_moments
from kcp.geometry import ConvGeometry
from kcp.methods import METHODS

RANKS = {
    "kcp": {"kt_rank": 2, "cp_rank": 2}, "kt": {"kt_rank": 2}, "cp": {"rank": 5},
    "tucker2": {"in_rank": 3, "out_rank": 3}, "svd": {"rank": 3}, "dense": {},
}


def _layer(out_c=8, in_c=6, seed=0):
    """A kernel and calibration moments of inputs whose channels are correlated (so G is far from the identity)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_c, in_c, 3, 3, generator=g, dtype=torch.float64)
    mix = torch.randn(in_c, in_c, generator=g, dtype=torch.float64)
    x = torch.relu(torch.einsum("dc,nchw->ndhw", mix, torch.randn(12, in_c, 7, 7, generator=g, dtype=torch.float64)))
    return w, patch_moments(x, (3, 3), ConvGeometry.make(padding=1))


def _generalised_eigen_optimum(w: torch.Tensor, gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` W_hat for tr((W - W_hat) G (W - W_hat)^T), independently of the whitening: its row
    space is spanned by the leading generalised eigenvectors of (G W^T W G, G), and W_hat = W G V (V^T G V)^-1 V^T."""
    wm, g = w.reshape(w.shape[0], -1).numpy(), gram.numpy()
    _, vecs = scipy.linalg.eigh(g @ wm.T @ wm @ g, g)
    v = vecs[:, ::-1][:, :rank]
    return torch.from_numpy(wm @ g @ v @ np.linalg.solve(v.T @ g @ v, v.T)).reshape(w.shape)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_svd_output_fit_is_the_exact_optimum(rank):
    w, m = _layer()
    gram = m.regularised(1e-6)
    best = _generalised_eigen_optimum(w, gram, rank)
    fitted = decompose(w, "svd", rank=rank, fit="outputs", calibration=m)
    assert fitted.reconstruct().shape == w.shape
    assert m.error(w, fitted.reconstruct()) == pytest.approx(m.error(w, best), rel=1e-7)
    # ... and strictly better on the outputs than the kernel's own truncated SVD, which is best on the kernel.
    plain = decompose(w, "svd", rank=rank)
    assert m.error(w, fitted.reconstruct()) < m.error(w, plain.reconstruct())
    assert fitted.rel_error > plain.rel_error
    assert fitted.info["objective"][-1] == pytest.approx(m.relative_error(w, fitted.reconstruct()), rel=1e-5)


def test_svd_output_fit_cannot_be_improved_by_perturbing_its_factors():
    w, m = _layer(seed=1)
    fitted = decompose(w, "svd", rank=3, fit="outputs", calibration=m)
    best = m.error(w, fitted.reconstruct())
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        f = {k: v + 1e-4 * v.abs().mean() * torch.randn(v.shape, generator=g, dtype=v.dtype)
             for k, v in fitted.factors.items()}
        first, second = f["first"], f["second"]
        approx = (second @ first.reshape(first.shape[0], -1)).reshape(w.shape)
        assert m.error(w, approx) >= best * (1 - 1e-9)


@pytest.mark.parametrize("method", ["kcp", "kt", "cp", "tucker2"])
def test_output_refinement_is_monotone_and_never_worse_than_the_kernel_fit(method):
    w, m = _layer(seed=3)
    kernel_fit = decompose(w, method, **RANKS[method])
    fitted = decompose(w, method, **RANKS[method], fit="outputs", calibration=m)
    objective = np.array(fitted.info["objective"])
    assert len(objective) == fitted.info["iterations"] + 1 >= 2
    assert (np.diff(objective) <= 1e-12).all(), np.diff(objective).max()
    # It starts from the kernel fit and measures what the moments measure (the ridge is 1e-6 of the mean diagonal).
    assert objective[0] == pytest.approx(m.relative_error(w, kernel_fit.reconstruct()), rel=1e-5)
    assert objective[-1] == pytest.approx(m.relative_error(w, fitted.reconstruct()), rel=1e-5)
    assert m.relative_error(w, fitted.reconstruct()) < 0.98 * m.relative_error(w, kernel_fit.reconstruct())
    # rel_error stays the kernel error, and fitting the outputs costs kernel error.
    assert fitted.rel_error == pytest.approx(float((fitted.reconstruct() - w).norm() / w.norm()), rel=1e-9)
    assert fitted.rel_error >= kernel_fit.rel_error - 1e-9
    assert fitted.params() == kernel_fit.params()


@pytest.mark.parametrize("method", sorted(RANKS))
def test_the_result_says_what_was_fitted(method):
    w, m = _layer(seed=4)
    assert decompose(w, method, **RANKS[method]).info["fit"] == "kernel"
    fitted = decompose(w.float(), method, **RANKS[method], fit="outputs", calibration=m)
    assert fitted.reconstruct().dtype == torch.float32
    if method == "dense":  # exact under either objective
        assert fitted.info["fit"] == "kernel" and fitted.rel_error == 0
        return
    assert fitted.info["fit"] == "outputs"
    assert fitted.info["calibration_patches"] == m.count == 12 * 7 * 7
    assert fitted.info["calibration_inputs"] == 12
    assert all(isinstance(v, float) for v in fitted.info["objective"])
    if method != "svd":
        assert isinstance(fitted.info["converged"], bool) and isinstance(fitted.info["final_change"], float)
    restored = type(fitted).from_state(fitted.state())
    assert restored.info["objective"] == fitted.info["objective"]


def test_the_output_fit_is_deterministic():
    w, m = _layer(seed=5)
    a = decompose(w, "kcp", **RANKS["kcp"], fit="outputs", calibration=m)
    b = decompose(w, "kcp", **RANKS["kcp"], fit="outputs", calibration=m)
    assert a.info["objective"] == b.info["objective"]
    torch.testing.assert_close(a.reconstruct(), b.reconstruct(), rtol=0, atol=0)


def test_callback_sees_the_kernel_sweeps_then_the_output_fit_and_can_cancel_anywhere():
    w, m = _layer(seed=6)
    seen = []
    fitted = decompose(w, "kcp", **RANKS["kcp"], fit="outputs", calibration=m,
                       callback=lambda i, v: seen.append((i, v)))
    sweeps, objective = fitted.info["sweeps"], fitted.info["objective"]
    output = seen[sweeps:]
    # The output-fitted start's sweeps record no step; they report step 0 again (the kernel fit's objective)...
    beats = [v for i, v in output if i == 0]
    assert beats and beats == pytest.approx([objective[0]] * len(beats), rel=1e-12)
    # ...and every recorded step follows, in order, with its objective.
    steps = [(i, v) for i, v in output if i > 0]
    assert [i for i, _ in steps] == list(range(1, len(objective)))
    assert [v for _, v in steps] == pytest.approx(objective[1:], rel=1e-12)

    class Stop(Exception):
        pass

    for where in ("in the output-fitted start", "in the refinement"):
        calls = []

        def stop(step, value, where=where, calls=calls):
            calls.append(step)
            if len(calls) > sweeps and (step == 0 if where == "in the output-fitted start" else step > 1):
                raise Stop

        with pytest.raises(Stop):
            decompose(w, "kcp", **RANKS["kcp"], fit="outputs", calibration=m, callback=stop)
        assert calls[-1] == (0 if where == "in the output-fitted start" else 2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fit": "output"}, "unknown fit 'output': use one of 'kernel', 'outputs'"),
    ({"fit": None}, "unknown fit"),
    ({"fit": "outputs"}, r"fit='outputs' needs calibration=PatchMoments .* got NoneType"),
    ({"fit": "outputs", "calibration": torch.zeros(3, 3)}, "got Tensor"),
])
@pytest.mark.parametrize("method", sorted(set(RANKS) - {"dense"}))
def test_bad_fit_arguments(method, kwargs, message):
    with pytest.raises(ValueError, match=message):
        decompose(torch.randn(8, 6, 3, 3), method, **RANKS[method], **kwargs)


def test_calibration_of_another_layer_is_refused():
    _, m = _layer(in_c=6)
    with pytest.raises(ValueError, match="calibration patches are for C_in=6"):
        decompose(torch.randn(8, 4, 3, 3), "svd", rank=2, fit="outputs", calibration=m)


def test_dense_accepts_the_fit_keywords():
    w, m = _layer()
    assert decompose(w, "dense", fit="outputs", calibration=m).rel_error == 0
    with pytest.raises(ValueError, match="unknown fit"):
        decompose(w, "dense", fit="weights")


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("fit", ["kernel", "outputs"])
def test_an_all_zero_kernel_gives_zero_factors(method, fit):
    w, m = _layer()
    zero = torch.zeros_like(w)
    kw = {"fit": fit, "calibration": m} if fit == "outputs" else {}
    result = decompose(zero, method, **RANKS[method], **kw)
    assert result.rel_error == 0.0
    assert float(result.reconstruct().abs().max()) == 0.0
    assert all(bool(torch.isfinite(f).all()) for f in result.factors.values())


@pytest.mark.parametrize(("method", "formula"), [("cp", "or,ir,hr,wr->oihw"), ("tucker2", "pqhw,op,iq->oihw")])
def test_low_rank_methods_factor_as_a_matrix_product(method, formula):
    """CP and Tucker-2 kernels are rank-r C_out x D matrices: ``left @ right`` is the textbook reconstruction."""
    w, _m = _layer(seed=7)
    result = decompose(w, method, **RANKS[method])
    f = result.factors
    expected = (torch.einsum(formula, f["out"], f["in"], f["h"], f["w"]) if method == "cp"
                else torch.einsum(formula, f["core"], f["out"], f["in"]))
    left, right = METHODS[method].factored(result)
    assert left.shape[1] == right.shape[0] < w.shape[0]
    torch.testing.assert_close((left @ right).reshape(w.shape), expected, rtol=1e-12, atol=1e-12)


def test_the_low_rank_objective_and_gradients_are_the_dense_ones():
    from kcp.decomposition.outputs import OutputObjective

    w, m = _layer(seed=8)
    objective = OutputObjective(w, m)
    g = torch.Generator().manual_seed(9)
    left = torch.randn(w.shape[0], 3, generator=g, dtype=torch.float64, requires_grad=True)
    right = torch.randn(3, w[0].numel(), generator=g, dtype=torch.float64, requires_grad=True)
    value, grad_left, grad_right = objective.low_rank_value_and_grad(left.detach(), right.detach())
    delta = objective.weight - left @ right
    dense = (delta * (delta @ objective.gram)).sum() / objective.energy
    dense.backward()
    assert value == pytest.approx(float(dense), rel=1e-12)
    torch.testing.assert_close(grad_left, left.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_right, right.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("r", "k"), [(1, 2), (2, 2), (2, 3)])
def test_kt_at_the_same_kt_rank_is_a_floor_under_kcp_s_output_fit(seed, r, k):
    """Every KCP at KT rank r is a KT at rank r whose factors are CP-constrained: KT's output fit (the weighted
    rank-r problem, solved by its own ALS) reaches a calibration error at most KCP's."""
    w, m = _layer(seed=seed)
    kcp_fit = decompose(w, "kcp", kt_rank=r, cp_rank=k, fit="outputs", calibration=m)
    kt_fit = decompose(w, "kt", kt_rank=r, factors=kcp_fit.factor_shape.channels, fit="outputs", calibration=m)
    assert m.relative_error(w, kt_fit.reconstruct()) <= m.relative_error(w, kcp_fit.reconstruct()) + 1e-9

