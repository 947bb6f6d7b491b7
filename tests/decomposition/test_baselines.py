"""The baselines behind the same interface: exact where they must be, optimal where theory says so."""

import pytest
import torch

from kcp.decomposition import Decomposition, cp, decompose, dense, svd, tucker2
from kcp.methods import METHODS


def kernel(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_svd_matches_eckart_young():
    w = kernel(24, 8, 3, 3)
    s = torch.linalg.svdvals(w.reshape(24, -1))
    for r in (1, 5, 24):
        tail = float(s[r:].square().sum().sqrt() / s.square().sum().sqrt())
        assert svd(w, r).rel_error == pytest.approx(tail, rel=1e-9, abs=1e-12)


def test_full_rank_baselines_are_exact():
    w = kernel(6, 5, 3, 3)
    assert tucker2(w, 5, 6).rel_error < 1e-12
    assert svd(w, 6).rel_error < 1e-12
    assert dense(w).rel_error == 0.0


def test_cp_recovers_a_planted_cp_kernel():
    g = torch.Generator().manual_seed(3)
    f = [torch.randn(n, 4, generator=g, dtype=torch.float64) for n in (10, 12, 3, 3)]
    w = torch.einsum("or,ir,hr,wr->oihw", *f)
    assert cp(w, 4, n_iter_max=500, tol=1e-12).rel_error < 1e-6


def test_tucker2_recovers_a_planted_tucker_kernel():
    g = torch.Generator().manual_seed(4)
    core = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    u_out = torch.randn(10, 3, generator=g, dtype=torch.float64)
    u_in = torch.randn(8, 2, generator=g, dtype=torch.float64)
    w = torch.einsum("pqhw,op,iq->oihw", core, u_out, u_in)
    assert tucker2(w, 2, 3).rel_error < 1e-10


@pytest.mark.parametrize(("method", "ranks"), [
    ("dense", {}), ("kcp", {"kt_rank": 2, "cp_rank": 3}), ("kt", {"kt_rank": 3}), ("cp", {"rank": 6}),
    ("tucker2", {"in_rank": 4, "out_rank": 5}), ("svd", {"rank": 4}),
])
def test_one_result_type_for_every_method(method, ranks):
    w = kernel(16, 12, 3, 3).float()
    r = decompose(w, method, **ranks)
    assert isinstance(r, Decomposition) and r.method == method and r.ranks == ranks
    assert r.reconstruct().shape == w.shape and r.reconstruct().dtype == torch.float32
    assert r.rel_error == pytest.approx(float((r.reconstruct() - w).norm() / w.norm()), rel=1e-4, abs=1e-6)
    assert r.params() <= r.dense_params() or method == "kcp"
    assert r.macs((8, 8)) > 0
    again = decompose(w, r.method, **r.ranks)
    assert again.rel_error == pytest.approx(r.rel_error, rel=1e-9)
    restored = Decomposition.from_state(r.state())
    torch.testing.assert_close(restored.reconstruct(), r.reconstruct())


def test_methods_are_listed():
    assert set(METHODS) == {"dense", "kcp", "kt", "cp", "tucker2", "svd"}
    with pytest.raises(ValueError, match="unknown method 'hosvd'"):
        decompose(kernel(4, 4, 3, 3), "hosvd")
