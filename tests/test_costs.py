"""Analytic parameters and MACs against closed forms, the modules' own counts and FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kcp import costs
from kcp.decomposition import decompose
from kcp.geometry import ConvGeometry
from kcp.kron import make_factor_shape
from kcp.modules import to_module

K256 = (256, 256, 3, 3)


def test_design_worked_figures_256x256_at_14():
    """DESIGN.md section 2: the 256 -> 256, 3x3 layer at 14x14."""
    g = ConvGeometry.make(padding=1)
    fs = make_factor_shape(K256)
    assert costs.params("dense", K256, {}) == 589_824
    assert costs.macs("dense", K256, {}, (14, 14), g) == 115_605_504
    assert costs.params("cp", K256, {"rank": 128}) == 66_304
    assert costs.params("tucker2", K256, {"in_rank": 64, "out_rank": 64}) == 69_632
    assert costs.params("svd", K256, {"rank": 24}) == 61_440
    assert costs.params("kcp", K256, {"kt_rank": 8, "cp_rank": 8}, fs) == 4_480
    kcp_macs = costs.macs("kcp", K256, {"kt_rank": 8, "cp_rank": 8}, (14, 14), g, fs)
    assert kcp_macs == 14 * 14 * 8 * 8 * (256 + 8 * 16) + 8 * 64 * 3 * 14 * 14 * 2 + 14 * 14 * 8 * 8 * (256 + 8 * 16)
    assert 9e6 < kcp_macs < 11e6  # "about 10 M MACs"


def test_cp_formula_from_the_table():
    r, i, o, h, w = 40, 32, 48, 10, 12
    g = ConvGeometry.make(padding=1)
    assert costs.macs("cp", (o, i, 3, 3), {"rank": r}, (h, w), g) == r * (i * h * w + 3 * h * w + 3 * h * w + o * h * w)
    assert costs.macs("svd", (o, i, 3, 3), {"rank": r}, (h, w), g) == r * (i * 9 + o) * h * w


CASES = [
    ("kcp", {"kt_rank": 2, "cp_rank": 3}, {}),
    ("kcp", {"kt_rank": 2, "cp_rank": 3, "placement": "a-spatial"}, {}),
    ("kcp", {"kt_rank": 3, "cp_rank": 2, "factors": (4, 6, 4, 4)}, {}),
    ("kcp", {"kt_rank": 2, "cp_rank": 3}, {"execution": "dense"}),
    ("kt", {"kt_rank": 3}, {}),
    ("kt", {"kt_rank": 3, "placement": "a-spatial"}, {}),
    ("cp", {"rank": 7}, {}),
    ("tucker2", {"in_rank": 5, "out_rank": 5}, {}),
    ("svd", {"rank": 5}, {}),
    ("dense", {}, {}),
]


@pytest.mark.parametrize(("method", "ranks", "options"), CASES)
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), [
    ((3, 3), 1, 1, 1), ((3, 3), 2, 0, 1), ((5, 3), 1, "same", 2), ((1, 1), 2, 0, 1),
])
def test_counted_flops_and_parameters_match_the_formulas(method, ranks, options, kernel, stride, padding, dilation):
    w = torch.randn(24, 16, *kernel, generator=torch.Generator().manual_seed(0))
    result = decompose(w, method, **ranks)
    geometry = ConvGeometry.make(stride, padding, dilation)
    module = to_module(result, geometry=geometry, bias=torch.zeros(24), **options)
    x = torch.randn(1, 16, 13, 11)
    with FlopCounterMode(display=False) as counter:
        module(x)
    path = options.get("execution", "layered")
    assert counter.get_total_flops() == 2 * result.macs((13, 11), geometry, path)
    assert sum(p.numel() for p in module.parameters()) == result.params(bias=True)
    stages = result.stages((13, 11), geometry, bias=True, execution=path)
    assert stages[-1].out_shape == (24, *module(x).shape[2:])
    assert sum(s.params for s in stages) == result.params(bias=True)


def test_stage_shapes_chain():
    fs = make_factor_shape(K256)
    stages = costs.stages("kcp", K256, {"kt_rank": 2, "cp_rank": 8}, (56, 56), ConvGeometry.make(2, 1), fs)
    assert [s.name for s in stages] == ["L1 channels in", "dw 3x1", "dw 1x3", "L4 channels out"]
    assert stages[0].out_shape == (128, 56, 56) and stages[1].out_shape == (128, 28, 56)
    assert stages[2].out_shape == (128, 28, 28) and stages[3].out_shape == (256, 28, 28)
    for a, b in zip(stages, stages[1:]):
        assert a.out_shape == b.in_shape
