"""Every module's forward equals F.conv2d with the reconstructed kernel and the layer's settings."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kcp.decomposition import decompose
from kcp.geometry import ConvGeometry
from kcp.kron import make_factor_shape, max_kt_rank
from kcp.modules import KCPConv2d, from_conv, to_module

METHODS = [
    ("kcp", {"kt_rank": 2, "cp_rank": 3}),
    ("kcp", {"kt_rank": 2, "cp_rank": 2, "placement": "a-spatial"}),
    ("kt", {"kt_rank": 3}),
    ("kt", {"kt_rank": 2, "placement": "a-spatial"}),
    ("cp", {"rank": 5}),
    ("tucker2", {"in_rank": 3, "out_rank": 3}),
    ("svd", {"rank": 4}),
]
KERNELS = [(3, 3), (1, 1), (5, 5), (3, 5)]
GEOMETRIES = [  # stride, padding, dilation
    (1, 0, 1), (1, 1, 1), (2, 1, 1), (1, "same", 1), (1, "same", 2), (2, 0, 2), (1, "valid", 1),
    ((2, 1), (2, 1), (1, 2)),
]


def reference(x, result, bias, stride, padding, dilation):
    return F.conv2d(x, result.reconstruct(), bias, stride, padding, dilation)


@pytest.mark.parametrize(("method", "ranks"), METHODS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_forward_matches_dense_conv_float64(method, ranks, kernel):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, 8, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(12, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 8, 11, 9, generator=gen, dtype=torch.float64)  # non-square, odd sizes
    result = decompose(w, method, **ranks)
    paths = ("layered", "dense") if method == "kcp" else (None,)
    for (stride, padding, dilation), with_bias, path in itertools.product(GEOMETRIES, (True, False), paths):
        geometry = ConvGeometry.make(stride, padding, dilation)
        options = {"execution": path} if path else {}
        module = to_module(result, geometry=geometry, bias=bias if with_bias else None, **options)
        expected = reference(x, result, bias if with_bias else None, stride, padding, dilation)
        torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("method", "ranks"), METHODS)
def test_from_conv_float32_drop_in(method, ranks):
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=True)
    module = from_conv(conv, method, **ranks)
    x = torch.randn(3, 16, 13, 10)
    expected = F.conv2d(x, module.decomposition().reconstruct(), conv.bias, 2, 1)
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    assert module(x).shape == conv(x).shape


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_carry_over(mode):
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 8, 3, padding=1, padding_mode=mode).double()
    x = torch.randn(1, 8, 7, 6, dtype=torch.float64)
    for method, ranks in METHODS:
        module = from_conv(conv, method, **ranks)
        ref = nn.Conv2d(8, 8, 3, padding=1, padding_mode=mode).double()
        with torch.no_grad():
            ref.weight.copy_(module.decomposition().reconstruct())
            ref.bias.copy_(conv.bias)
        torch.testing.assert_close(module(x), ref(x), rtol=1e-10, atol=1e-10)


def test_full_rank_kt_module_is_the_layer():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 12, 3, padding=1).double()
    full = max_kt_rank(make_factor_shape(conv.weight.shape))  # A 3x2x3x1 (18 entries), B 4x4x1x3 (48): 18
    assert full == 18
    module = from_conv(conv, "kt", kt_rank=full)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(module(x), conv(x), rtol=1e-10, atol=1e-10)


def test_executions_agree_and_bad_path_is_refused():
    torch.manual_seed(4)
    module = from_conv(nn.Conv2d(16, 16, 3, padding=1), "kcp", kt_rank=2, cp_rank=4)
    assert isinstance(module, KCPConv2d)
    x = torch.randn(2, 16, 8, 8)
    layered = module(x)
    module.execution = "dense"
    torch.testing.assert_close(module(x), layered, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="execution must be one of"):
        module.execution = "fast"


def test_grouped_and_non_conv_layers_are_refused():
    with pytest.raises(ValueError, match="groups=4: factorised modules replace dense convs"):
        from_conv(nn.Conv2d(8, 8, 3, groups=4), "kcp", kt_rank=1, cp_rank=1)
    with pytest.raises(ValueError, match="expected an nn.Conv2d, got Linear"):
        from_conv(nn.Linear(4, 4), "svd", rank=1)


def test_modules_train():
    torch.manual_seed(5)
    module = from_conv(nn.Conv2d(8, 8, 3, padding=1), "kcp", kt_rank=1, cp_rank=2)
    module(torch.randn(2, 8, 5, 5)).square().sum().backward()
    assert all(p.grad is not None for p in module.parameters())
