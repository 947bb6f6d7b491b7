"""The conv listing (checked against a hand count for ResNet-18) and the real activations reaching a layer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision import models as tvm

from kcp.zoo import ZooError, conv_layers, layer_inputs, load_model, rest_macs, sample_images
from kcp.zoo.hooks import thread_hooks
from kcp.zoo.images import SPLIT_PHOTOS, load_photos

# ResNet-18 by hand: (name, C_out, C_in, k, stride, input side, output side) at 224 px.
RESNET18 = [
    ("conv1", 64, 3, 7, 2, 224, 112),
    *[(f"layer1.{b}.conv{c}", 64, 64, 3, 1, 56, 56) for b in (0, 1) for c in (1, 2)],
    ("layer2.0.conv1", 128, 64, 3, 2, 56, 28),
    ("layer2.0.conv2", 128, 128, 3, 1, 28, 28),
    ("layer2.0.downsample.0", 128, 64, 1, 2, 56, 28),
    ("layer2.1.conv1", 128, 128, 3, 1, 28, 28),
    ("layer2.1.conv2", 128, 128, 3, 1, 28, 28),
    ("layer3.0.conv1", 256, 128, 3, 2, 28, 14),
    ("layer3.0.conv2", 256, 256, 3, 1, 14, 14),
    ("layer3.0.downsample.0", 256, 128, 1, 2, 28, 14),
    ("layer3.1.conv1", 256, 256, 3, 1, 14, 14),
    ("layer3.1.conv2", 256, 256, 3, 1, 14, 14),
    ("layer4.0.conv1", 512, 256, 3, 2, 14, 7),
    ("layer4.0.conv2", 512, 512, 3, 1, 7, 7),
    ("layer4.0.downsample.0", 512, 256, 1, 2, 14, 7),
    ("layer4.1.conv1", 512, 512, 3, 1, 7, 7),
    ("layer4.1.conv2", 512, 512, 3, 1, 7, 7),
]


def test_resnet18_listing_matches_a_hand_count(resnet18):
    layers = conv_layers(resnet18)
    assert [info.name for info in layers] == [row[0] for row in RESNET18]
    for info, (name, out_c, in_c, k, stride, side_in, side_out) in zip(layers, RESNET18):
        assert info.weight_shape == (out_c, in_c, k, k), name
        assert info.stride == (stride, stride) and info.padding == (k // 2, k // 2), name
        assert info.dilation == (1, 1) and info.groups == 1 and not info.bias, name
        assert (info.in_hw, info.out_hw) == ((side_in, side_in), (side_out, side_out)), name
        assert info.params == out_c * in_c * k * k, name
        assert info.macs == out_c * in_c * k * k * side_out * side_out, name
        assert info.kcp_ok == (name != "conv1"), name
    by_name = {info.name: info for info in layers}
    assert by_name["layer3.0.conv2"].macs == 115_605_504
    assert by_name["conv1"].macs == 118_013_952
    assert "C_in=3" in by_name["conv1"].kcp_reason
    assert sum(info.params for info in layers) == 11_166_912
    assert sum(info.macs for info in layers) == 1_813_561_344


def test_listed_macs_match_a_counted_figure(resnet18):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        resnet18.model(torch.zeros(1, 3, 224, 224))
    conv_flops = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert conv_flops == 2 * sum(info.macs for info in conv_layers(resnet18))


def test_the_rest_of_the_network_counts_every_conv_but_the_layer(resnet18):
    """What the fidelity estimate charges besides the layer: the counted convolution FLOPs of the whole network,
    less the layer's own hand count."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        resnet18.model(torch.zeros(1, 3, 224, 224))
    whole = counter.get_flop_counts()["Global"][torch.ops.aten.convolution] // 2
    layer3_1_conv1 = 256 * 256 * 9 * 14 * 14
    assert rest_macs(resnet18, "layer3.1.conv1") == whole - layer3_1_conv1


def test_depthwise_layers_say_why_kcp_does_not_apply(tmp_path: Path):
    path = tmp_path / "mbv2.pth"
    torch.save(tvm.mobilenet_v2().state_dict(), path)
    layers = {info.name: info for info in conv_layers(load_model(path))}
    dw = layers["features.1.conv.0.0"]
    assert dw.groups == 32 and not dw.kcp_ok and "groups=32" in dw.kcp_reason
    assert dw.params == 32 * 9 and dw.in_hw == (112, 112) and dw.macs == 32 * 9 * 112 * 112
    assert layers["features.2.conv.0.0"].kcp_ok  # pointwise 16 -> 96


def test_bare_state_dict_listing_has_no_sizes(tmp_path: Path):
    path = tmp_path / "bare.pt"
    torch.save(
        {"a.weight": torch.randn(64, 32, 3, 3), "a.bias": torch.randn(64), "b.weight": torch.randn(7, 64, 1, 1)}, path
    )
    a, b = conv_layers(load_model(path))
    assert (a.name, a.bias, a.params, a.in_hw, a.out_hw, a.macs, a.kcp_ok) == (
        "a",
        True,
        64 * 32 * 9 + 64,
        None,
        None,
        None,
        True,
    )
    assert not b.kcp_ok and "C_out=7" in b.kcp_reason


def test_sample_images_are_real_preprocessed_and_deterministic(resnet18, digits):
    x, y = sample_images(resnet18)
    assert x.shape == (16, 3, 224, 224) and y is None
    # The first image is the first photo's centre crop, exactly as the weights' own transform makes it.
    expected = tvm.ResNet18_Weights.IMAGENET1K_V1.transforms()(load_photos()[0])
    assert torch.equal(x[0], expected)
    x[:] = 0  # callers get copies: this must not leak into the next call
    assert torch.equal(sample_images(resnet18, 1)[0][0], expected)
    xd, yd = sample_images(digits)
    assert xd.shape == (450, 1, 8, 8) and yd.shape == (450,) and xd.min() >= 0 and xd.max() <= 1
    assert torch.equal(sample_images(digits, 5)[1], yd[:5])
    with pytest.raises(ZooError, match=f"has {len(SPLIT_PHOTOS['evaluation']) * 4} real evaluation images"):
        sample_images(resnet18, 1000)


def test_cifar_images(cifar_home):
    x, _ = sample_images(load_model("cifar-resnet20", download=False))
    assert x.shape == (64, 3, 32, 32) and x.std() > 0.5


def test_layer_inputs_are_the_real_activations(resnet18):
    m = resnet18.model
    x, _ = sample_images(resnet18, 2)
    with torch.no_grad():
        expected = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    acts = layer_inputs(resnet18, "layer1.0.conv1", 2)
    assert acts.shape == (2, 64, 56, 56) and torch.equal(acts, expected)
    assert layer_inputs(resnet18, "layer3.0.conv2", 2).shape == (2, 256, 14, 14)
    assert torch.equal(layer_inputs(resnet18, "conv1", 2), x)


@pytest.mark.slow
def test_layer_inputs_shapes_on_small_models(digits, cifar_home):
    assert layer_inputs(digits, "conv3").shape == (450, 32, 8, 8)
    assert layer_inputs(digits, "conv1", 10).shape == (10, 1, 16, 16)
    cifar = load_model("cifar-resnet56", download=False)
    assert layer_inputs(cifar, "layer3.5.conv1").shape == (64, 64, 8, 8)
    assert layer_inputs(cifar, "layer2.0.conv1", 8).shape == (8, 16, 32, 32)


def test_unknown_layers_and_bare_state_dicts_are_refused(digits, tmp_path: Path):
    with pytest.raises(ZooError, match="did you mean 'conv3'"):
        layer_inputs(digits, "conv33")
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.randn(8, 8, 3, 3)}, path)
    with pytest.raises(ZooError, match="bare state dict"):
        layer_inputs(load_model(path), "w")


def test_hooks_ignore_other_threads(digits):
    seen: list[str] = []
    x, _ = sample_images(digits, 4)
    with thread_hooks(digits.convs, pre=lambda name, _inputs: seen.append(name)):
        other = threading.Thread(target=lambda: digits.model(x))
        other.start()
        other.join()
        assert seen == []
        with torch.no_grad():
            digits.model(x)
    assert seen == ["conv1", "conv2", "conv3", "conv4"]
