"""KT step: exact at full rank, error equal to the singular-value tail, spectrum consistent."""

import pytest
import torch

from kcp.decomposition import kt, kt_spectrum
from kcp.kron import make_factor_shape, max_kt_rank, rearrange


@pytest.mark.parametrize(("shape", "factors", "placement"), [
    ((16, 12, 3, 3), None, "split"),
    ((16, 12, 3, 3), (2, 8, 4, 3), "a-spatial"),
    ((20, 8, 5, 3), None, "split"),
    ((8, 6, 1, 1), None, "split"),
])
def test_full_kt_rank_reproduces_the_kernel(shape, factors, placement):
    w = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full = max_kt_rank(make_factor_shape(shape, factors, placement))
    result = kt(w, full, factors=factors, placement=placement)
    torch.testing.assert_close(result.reconstruct(), w, rtol=0, atol=1e-12 * float(w.abs().max()))
    assert result.rel_error < 1e-13


def test_kt_error_is_the_singular_value_tail():
    w = torch.randn(32, 16, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    shape = make_factor_shape(w.shape)
    s = torch.linalg.svdvals(rearrange(w, shape))  # independent of the code under test's eigh path
    spectrum = kt_spectrum(w)
    torch.testing.assert_close(spectrum.singular_values, s)
    for r in (1, 3, 10, 40):
        tail = float(s[r:].square().sum().sqrt() / w.norm())
        assert kt(w, r).rel_error == pytest.approx(tail, rel=1e-9, abs=1e-12)
        assert float(spectrum.rel_errors[r]) == pytest.approx(tail, rel=1e-9, abs=1e-12)
    assert float(spectrum.rel_errors[0]) == pytest.approx(1.0)
    assert float(spectrum.energy[-1]) == pytest.approx(1.0)


def test_kt_factors_are_kronecker_terms():
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    r = kt(w, 4)
    a, b = r.factors["a"], r.factors["b"]
    assert a.shape == (4, 4, 2, 3, 1) and b.shape == (4, 4, 4, 1, 3)
    by_kron = sum(torch.kron(a[i], b[i]) for i in range(4))
    torch.testing.assert_close(r.reconstruct(), by_kron, rtol=0, atol=1e-12)


def test_kt_keeps_dtype_and_device():
    w = torch.randn(16, 16, 3, 3)
    r = kt(w, 2)
    assert r.factors["a"].dtype == torch.float32 and r.factors["a"].device == w.device
