"""Swapping a layer without touching the shared network, and network-level fidelity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kcp.kron import make_factor_shape, max_kt_rank
from kcp.modules import from_conv
from kcp.zoo import ZooError, baseline_logits, load_model, network_fidelity, sample_images, with_layer


def full_rank_kt(conv: nn.Conv2d) -> nn.Module:
    return from_conv(conv, "kt", kt_rank=max_kt_rank(make_factor_shape(tuple(conv.weight.shape))))


def test_with_layer_leaves_the_original_alone(digits):
    model = digits.model
    original = model.conv3
    x, _ = sample_images(digits, 8)
    with torch.no_grad():
        before = model(x)
    zero = copy.deepcopy(original)
    nn.init.zeros_(zero.weight)
    swapped = with_layer(model, "conv3", zero)
    assert model.conv3 is original and swapped.conv3 is zero
    assert swapped.conv2 is model.conv2 and swapped.fc.weight is model.fc.weight  # nothing else copied
    with torch.no_grad():
        assert not torch.allclose(swapped(x), before)
        assert torch.equal(model(x), before)


def test_with_layer_copies_only_the_path(resnet18):
    model = resnet18.model
    swapped = with_layer(model, "layer3.0.conv2", nn.Identity())
    assert swapped.layer3 is not model.layer3 and swapped.layer3[0] is not model.layer3[0]
    assert isinstance(model.layer3[0].conv2, nn.Conv2d) and isinstance(swapped.layer3[0].conv2, nn.Identity)
    assert swapped.layer3[1] is model.layer3[1] and swapped.layer2 is model.layer2
    assert swapped.layer3[0].bn2 is model.layer3[0].bn2
    swapped.layer3[0].register_forward_hook(lambda *_: None)
    assert not model.layer3[0]._forward_hooks  # the copy has its own hook table
    for bad in ("layer3.9.conv2", "layer3.0.conv9", ""):
        with pytest.raises(ZooError, match="not a submodule"):
            with_layer(model, bad, nn.Identity())


@pytest.mark.slow
def test_full_rank_kt_leaves_the_digits_network_unchanged(digits):
    fid = network_fidelity(digits, "conv3", full_rank_kt(digits.convs["conv3"]))
    assert fid.n_images == 450 and fid.top1_agreement == 1.0
    assert fid.accuracy == fid.baseline_accuracy >= 0.95
    assert fid.logit_rel_error < 1e-4


@pytest.mark.slow
def test_full_rank_kt_leaves_resnet18_unchanged(resnet18):
    layer = "layer3.0.conv2"
    module = full_rank_kt(resnet18.convs[layer])
    x, _ = sample_images(resnet18, 2)
    with torch.no_grad():
        out = with_layer(resnet18.model, layer, module)(x)
    assert torch.allclose(out, baseline_logits(resnet18, 2), rtol=1e-4, atol=1e-4)
    fid = network_fidelity(resnet18, layer, module, n=2)
    assert fid.top1_agreement == 1.0 and fid.accuracy is None and fid.n_images == 2


@pytest.mark.slow
def test_full_rank_kt_on_the_real_cifar_resnet(cifar_home):
    loaded = load_model("cifar-resnet20", download=False)
    fid = network_fidelity(loaded, "layer3.1.conv1", full_rank_kt(loaded.convs["layer3.1.conv1"]))
    assert fid.top1_agreement == 1.0 and fid.logit_rel_error < 1e-4 and fid.n_images == 64


def test_a_destroyed_layer_shows_up_in_the_figures(digits):
    zero = copy.deepcopy(digits.convs["conv2"])
    nn.init.zeros_(zero.weight)
    fid = network_fidelity(digits, "conv2", zero, n=200)
    assert fid.n_images == 200 and fid.top1_agreement < 0.5
    assert fid.accuracy < 0.5 < fid.baseline_accuracy
    with pytest.raises(ZooError, match="no conv layer"):
        network_fidelity(digits, "fc", zero)
