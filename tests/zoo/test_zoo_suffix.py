"""The network after one layer (kcp.zoo.suffix) against the whole network with the layer swapped in."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from kcp.zoo import load_model, network_fidelity, sample_images, with_layer
from kcp.zoo.activations import batch_size
from kcp.zoo.fidelity import logits
from kcp.zoo.suffix import network_suffix


def noisy(conv: nn.Conv2d, scale: float = 0.5, seed: int = 0) -> nn.Conv2d:
    """A copy of ``conv`` with noise on its weights: a replacement that changes the network's answers."""
    out = copy.deepcopy(conv)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out.weight.add_(scale * out.weight.std() * torch.randn(out.weight.shape, generator=g))
    return out


def whole_network(loaded, layer: str, module: nn.Module, n: int | None = None) -> torch.Tensor:
    x, _ = sample_images(loaded, n, "evaluation")
    return logits(with_layer(loaded.model, layer, module.eval()), x, batch_size(loaded))


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv4"])
def test_digits_suffix_gives_the_whole_networks_logits(digits, layer):
    module = noisy(digits.convs[layer])
    suffix = network_suffix(digits, layer)
    assert suffix is not None
    assert torch.allclose(suffix.logits(module), whole_network(digits, layer, module), rtol=1e-5, atol=1e-5)


def test_fidelity_is_the_same_through_the_suffix_and_the_whole_network(digits):
    module = noisy(digits.convs["conv3"], scale=1.0)
    fast = network_fidelity(digits, "conv3", module, n=200)
    whole = network_fidelity(digits, "conv3", module, n=200, batch=64)  # under the kept batch: the whole network
    assert 0 < fast.n_changed == whole.n_changed and fast.top1_agreement == whole.top1_agreement < 1
    assert fast.accuracy == whole.accuracy and fast.logit_rel_error == pytest.approx(whole.logit_rel_error, rel=1e-5)


def test_residual_layers_keep_the_skip(cifar_home):
    loaded = load_model("cifar-resnet20", download=False)
    for layer in ("layer2.0.conv1", "layer3.2.conv2"):  # a downsampling block's first conv; a block's last conv
        module = noisy(loaded.convs[layer], seed=1)
        suffix = network_suffix(loaded, layer, 16)
        assert suffix is not None
        ran = {node.target for node in suffix.nodes if node.op == "call_module"}
        assert "conv1" not in ran and "layer1.0.conv1" not in ran and "linear" in ran  # only what follows the layer
        assert torch.allclose(suffix.logits(module), whole_network(loaded, layer, module, 16), rtol=1e-4,
                              atol=1e-4)


class _Twice(nn.Module):
    """Calls its conv twice: no single place to split the network."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv4 = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv4(self.conv4(x.repeat(1, 64, 1, 1)))
        return y.mean(dim=(2, 3))[:, :10]


def test_a_layer_called_twice_runs_the_whole_network(digits):
    loaded = replace(digits, name="digits-twice", model=_Twice(digits.convs["conv4"]).eval())
    assert network_suffix(loaded, "conv4", 20) is None
    same = network_fidelity(loaded, "conv4", copy.deepcopy(digits.convs["conv4"]), n=20)
    assert same.top1_agreement == 1.0 and same.logit_rel_error == 0.0


def test_a_layer_whose_kept_values_are_too_large_runs_the_whole_network(digits, monkeypatch):
    from kcp.zoo import suffix as suffix_module
    from kcp.zoo._memo import Memo

    monkeypatch.setattr(suffix_module, "_suffixes", Memo(size=2))
    monkeypatch.setattr(suffix_module, "KEPT_BYTES", 100 * 32 * 16 * 16 * 4 - 1)  # just under 100 images at conv2
    assert network_suffix(digits, "conv2", 100) is None
    assert network_suffix(digits, "conv2", 99) is not None
    module = noisy(digits.convs["conv2"])
    fid = network_fidelity(digits, "conv2", module, n=100)
    whole = whole_network(digits, "conv2", module, 100)
    base = whole_network(digits, "conv2", digits.convs["conv2"], 100)
    assert fid.n_changed == int((whole.argmax(1) != base.argmax(1)).sum())
