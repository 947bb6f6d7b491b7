"""The Kronecker index convention, factor shapes and the rearrangement."""

import pytest
import torch

from kcp.kron import (
    balanced_split,
    kcp_applicability,
    kron_sum,
    make_factor_shape,
    max_cp_rank,
    max_cp_rank_of,
    max_kt_rank,
    rearrange,
    unrearrange,
)


@pytest.mark.parametrize(("n", "pair"), [(256, (16, 16)), (512, (16, 32)), (96, (8, 12)), (64, (8, 8)), (7, (1, 7))])
def test_balanced_split(n, pair):
    assert balanced_split(n) == pair


def test_channel_index_is_a_times_cb_plus_b():
    a = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    b = torch.randn(4, 5, 1, 1, dtype=torch.float64)
    k = torch.kron(a, b)
    for oa in range(2):
        for ob in range(4):
            for ia in range(3):
                for ib in range(5):
                    assert k[oa * 4 + ob, ia * 5 + ib, 0, 0] == a[oa, ia, 0, 0] * b[ob, ib, 0, 0]


@pytest.mark.parametrize("placement", ["split", "a-spatial"])
def test_rearrangement_maps_kron_sums_to_rank_r_matrices(placement):
    shape = make_factor_shape((12, 8, 3, 3), (3, 4, 2, 4), placement)
    a = torch.randn(2, *shape.a_shape, dtype=torch.float64)
    b = torch.randn(2, *shape.b_shape, dtype=torch.float64)
    w = kron_sum(a, b)
    assert w.shape == (12, 8, 3, 3)
    m = rearrange(w, shape)
    expected = a.reshape(2, -1).T @ b.reshape(2, -1)
    torch.testing.assert_close(m, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(unrearrange(m, shape), w, rtol=0, atol=0)


def test_default_factor_shapes_and_placements():
    split = make_factor_shape((512, 256, 3, 3))
    assert split.channels == (16, 32, 16, 16)
    assert (split.a_shape, split.b_shape) == ((16, 16, 3, 1), (32, 16, 1, 3))
    spatial = make_factor_shape((512, 256, 3, 3), placement="a-spatial")
    assert (spatial.a_shape, spatial.b_shape) == ((16, 16, 3, 3), (32, 16, 1, 1))
    assert spatial.placement == "a-spatial" and split.placement == "split"


def test_largest_ranks():
    shape = make_factor_shape((64, 64, 3, 3))  # A 8x8x3x1 (192 entries), B 8x8x1x3 (192)
    assert max_kt_rank(shape) == 192
    assert max_cp_rank_of((8, 8, 3, 1)) == 24  # min(8*3, 8*3, 8*8)
    assert max_cp_rank(shape) == 24
    # a-spatial: A is 8x8x3x3, whose bound is min(72, 72, 192, 192)
    assert max_cp_rank(make_factor_shape((64, 64, 3, 3), placement="a-spatial")) == 72


def test_trivial_channels_are_explained_not_crashed():
    ok, why = kcp_applicability((64, 3, 7, 7))
    assert not ok and "C_in=3" in why and "trivial" in why
    with pytest.raises(ValueError, match="C_in=3 has only the trivial split"):
        make_factor_shape((64, 3, 7, 7))
    trivial = make_factor_shape((64, 3, 7, 7), (8, 8, 1, 3))
    assert trivial.in_a == 1
    ok, why = kcp_applicability((32, 32, 3, 3), groups=32)
    assert not ok and "groups=32" in why


def test_factor_shape_must_divide_channels():
    with pytest.raises(ValueError, match="does not divide the kernel's channels"):
        make_factor_shape((64, 64, 3, 3), (8, 7, 8, 8))
    with pytest.raises(ValueError, match="unknown placement"):
        make_factor_shape((64, 64, 3, 3), placement="diagonal")
