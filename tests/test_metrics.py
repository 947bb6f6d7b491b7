"""Output error and counted MACs against independent references; layer files round-trip."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kcp.decomposition import kcp
from kcp.export import FORMAT, load_layer, save_layer
from kcp.geometry import ConvGeometry
from kcp.metrics import counted_macs, output_error
from kcp.modules import from_conv


def test_output_error_against_a_hand_computed_value():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    scaled = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        scaled.weight.copy_(conv.weight * 1.1)
    x = torch.randn(5, 8, 6, 6)
    assert output_error(conv, scaled, x, batch=2) == pytest.approx(0.1, rel=1e-5)
    assert output_error(conv, conv, x) == 0.0
    with pytest.raises(ValueError, match=r"non-empty \(N, C, H, W\)"):
        output_error(conv, conv, torch.randn(8, 6, 6))


def test_counted_macs_of_a_dense_conv():
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    assert counted_macs(conv, (16, 10, 10)) == 24 * 16 * 9 * 5 * 5


def test_layer_file_round_trip(tmp_path):
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 16, 3, stride=2, padding="valid", padding_mode="zeros")
    result = kcp(conv.weight.detach(), 2, 3)
    save_layer(tmp_path / "l.pt", result, ConvGeometry.from_conv(conv), conv.bias, {"layer": "x", "bad": [1]})
    module, meta = load_layer(tmp_path / "l.pt")
    x = torch.randn(1, 16, 9, 9)
    torch.testing.assert_close(module(x), F.conv2d(x, result.reconstruct(), conv.bias, 2), rtol=1e-5, atol=1e-5)
    assert meta == {"layer": "x"}
    assert torch.load(tmp_path / "l.pt", weights_only=True)["format"] == FORMAT
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a decomposed-layer file"):
        load_layer(tmp_path / "other.pt")


def test_module_and_from_conv_agree_on_costs():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    module = from_conv(conv, "kcp", kt_rank=2, cp_rank=4)
    result = module.decomposition()
    assert counted_macs(module, (16, 7, 7)) == result.macs((7, 7), ConvGeometry.from_conv(conv))
