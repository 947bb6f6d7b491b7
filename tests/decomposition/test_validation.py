"""Bad input raises a ValueError that says what is wrong and what is allowed."""

import pytest
import torch

from kcp.decomposition import cp, kcp, kt, svd, tucker2


def test_not_a_4d_kernel():
    with pytest.raises(ValueError, match=r"expected a 4-D conv kernel .* got a 2-D tensor of shape \(8, 8\)"):
        kcp(torch.randn(8, 8), 1, 1)


def test_non_finite_values():
    w = torch.randn(8, 8, 3, 3)
    w[0, 0, 0, 0] = float("nan")
    w[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="2 non-finite values"):
        kt(w, 1)


def test_integer_kernels_are_refused():
    with pytest.raises(ValueError, match="floating-point"):
        kt(torch.ones(8, 8, 3, 3, dtype=torch.int64), 1)


@pytest.mark.parametrize(("call", "message"), [
    (lambda w: kcp(w, 0, 2), r"kt_rank must be between 1 and 48 \(the largest meaningful KT rank for factor shape "
                             r"4x8\|4x8, split\), got 0"),
    (lambda w: kcp(w, 49, 2), "kt_rank must be between 1 and 48"),
    (lambda w: kcp(w, 2, 0), "cp_rank must be between 1 and 24"),
    (lambda w: kcp(w, 2, 25), r"cp_rank must be between 1 and 24 \(the largest meaningful CP rank"),
    (lambda w: kcp(w, 2, 2.5), "cp_rank must be an integer"),
    (lambda w: kt(w, 49), "kt_rank must be between 1 and 48"),
    (lambda w: cp(w, 0), "rank must be between 1 and 288"),
    (lambda w: svd(w, 33), r"rank must be between 1 and 32 \(at most min\(C_out, C_in k_h k_w\)\)"),
    (lambda w: tucker2(w, 33, 4), "in_rank must be between 1 and 32"),
    (lambda w: kcp(w, 2, 2, refine_sweeps=-1), "refine_sweeps must be a positive integer"),
])
def test_ranks_out_of_range(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(32, 32, 3, 3))


def test_factor_shape_that_does_not_divide():
    with pytest.raises(ValueError, match=r"factor shape 4x8\|5x6 does not divide .* C_in = 32"):
        kcp(torch.randn(32, 32, 3, 3), 1, 1, factors=(4, 8, 5, 6))


def test_prime_channels_without_an_explicit_split():
    w = torch.randn(16, 3, 3, 3)
    with pytest.raises(ValueError, match="C_in=3 has only the trivial split 1x3"):
        kcp(w, 1, 1)
    r = kcp(w, 2, 2, factors=(4, 4, 1, 3))
    assert r.rel_error < 1
