"""The output objective from patch moments equals the error of actually running the two convs."""

import pytest
import torch
from torch import nn

from kcp.decomposition.moments import patch_moments
from kcp.geometry import ConvGeometry


def _conv(geometry: dict, bias: bool) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(6, 5, (3, 2), bias=bias, **geometry).double()


@pytest.mark.parametrize("geometry", [
    {"padding": 1}, {"stride": 2, "padding": (1, 0)}, {"dilation": (2, 1), "padding": "same"},
    {"padding": 1, "padding_mode": "reflect"}, {"padding": (2, 1), "padding_mode": "circular", "stride": (1, 2)},
])
@pytest.mark.parametrize("bias", [False, True])
def test_moment_error_equals_running_the_convs(geometry, bias):
    conv = _conv(geometry, bias)
    x = torch.randn(7, 6, 9, 8, dtype=torch.float64)
    approx = conv.weight.detach() + 0.1 * torch.randn_like(conv.weight)
    other = nn.Conv2d(6, 5, (3, 2), bias=bias, **geometry).double()
    with torch.no_grad():
        other.weight.copy_(approx)
        if bias:
            other.bias.copy_(conv.bias)
        y, y_hat = conv(x), other(x)
    # Tiny chunks: the accumulation over many chunks must equal one pass.
    m = patch_moments(x, (3, 2), ConvGeometry.from_conv(conv), chunk_entries=50)
    w = conv.weight.detach()
    assert m.count == y.shape[0] * y.shape[2] * y.shape[3]
    assert m.error(w, approx) == pytest.approx(float((y_hat - y).square().sum()), rel=1e-10)
    assert m.energy(w, conv.bias) == pytest.approx(float(y.square().sum()), rel=1e-10)
    expected = float((y_hat - y).norm() / y.norm())
    assert m.relative_error(w, approx, conv.bias) == pytest.approx(expected, rel=1e-10)


def test_gram_is_symmetric_positive_semidefinite_and_ridge_makes_it_definite():
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    m = patch_moments(x, (3, 3), ConvGeometry.make(padding=1))
    assert torch.allclose(m.gram, m.gram.T)
    assert float(torch.linalg.eigvalsh(m.regularised()).min()) > 0


def test_refuses_bad_inputs_and_mismatched_kernels():
    with pytest.raises(ValueError, match="non-empty"):
        patch_moments(torch.zeros(0, 2, 4, 4), (3, 3))
    with pytest.raises(ValueError, match="NaN"):
        patch_moments(torch.full((1, 2, 4, 4), float("nan")), (3, 3))
    m = patch_moments(torch.randn(2, 2, 4, 4), (3, 3))
    with pytest.raises(ValueError, match="C_in=2"):
        m.check_kernel((4, 3, 3, 3))
