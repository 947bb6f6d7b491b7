"""Zoo sources: the table, torchvision weights through the hub cache, the real CIFAR ResNets, user checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from kcp.zoo import DEFAULT_MODEL, MODELS, baseline_logits, load_model, weights_available
from kcp.zoo.images import SPLIT_PHOTOS
from kcp.zoo.loaded import signature


def test_table_has_the_promised_models():
    for name in ("digits-cnn", "cifar-resnet20", "cifar-resnet56", "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2"):
        assert name in MODELS
    assert DEFAULT_MODEL == "digits-cnn" and MODELS[DEFAULT_MODEL].url is None
    assert {"efficientnet_b0", "convnext_tiny"} <= set(MODELS)
    assert MODELS["resnet18"].file_name == tvm.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    assert MODELS["resnet50"].file_mb == pytest.approx(tvm.ResNet50_Weights.IMAGENET1K_V2.meta["_file_size"])


def test_plain_bottleneck_and_depthwise_layers_are_all_represented():
    def convs(name: str) -> list[tuple[int, ...]]:
        with torch.device("meta"):
            model = MODELS[name].build()
        return [(m.kernel_size, m.groups, m.in_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]

    assert ((3, 3), 1, 512) in convs("vgg16_bn")
    assert ((1, 1), 1, 2048) in convs("resnet50")  # bottleneck expansion
    assert any(groups == c_in > 1 for _, groups, c_in in convs("mobilenet_v2"))


def test_resnet18_loads_from_the_seeded_torch_home(resnet18, resnet18_file: Path, torch_home: Path):
    saved = torch.load(resnet18_file, weights_only=True)
    assert resnet18.model.state_dict()["layer3.0.conv2.weight"].equal(saved["layer3.0.conv2.weight"])
    assert not resnet18.model.training
    assert resnet18.input_size == (3, 224, 224) and resnet18.num_classes == 1000
    assert str(torch_home) in resnet18.source
    assert resnet18.weights_id == hashlib.sha256(resnet18_file.read_bytes()).hexdigest()[:12]
    assert len(resnet18.convs) == 20 and resnet18.categories[0] == "tench"
    assert weights_available("resnet18") and weights_available("digits-cnn") and not weights_available("resnet50")


@pytest.mark.parametrize(("name", "params"), [("cifar-resnet20", 269_722), ("cifar-resnet56", 853_018)])
def test_real_cifar_resnets_load_strictly_and_see_a_cat(cifar_home, name: str, params: int):
    loaded = load_model(name, download=False)
    assert sum(p.numel() for p in loaded.model.parameters()) == params
    # The file names carry the sha256 prefix of the real files.
    assert loaded.weights_id[:8] == MODELS[name].file_name.split("-")[1][:8]
    # Architecture, weights and preprocessing all have to be right for the cat photo's centre crop to be a cat.
    cat = SPLIT_PHOTOS["evaluation"].index("chelsea.png")
    assert loaded.categories[baseline_logits(loaded, cat + 1)[cat].argmax()] == "cat"


def test_real_cifar_file_as_a_user_checkpoint(cifar_home, shared_weights: Path):
    """The original file nests the state dict under 'state_dict' with DataParallel's 'module.' prefix."""
    user = load_model(shared_weights / "resnet20-12fca82f.th")
    zoo = load_model("cifar-resnet20", download=False)
    assert user.arch == "cifar-resnet20" and "detected" in user.source
    assert user.weights_id == zoo.weights_id
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(user.model(x), zoo.model(x))


def test_checkpoint_for_a_torchvision_architecture(tmp_path: Path):
    torch.manual_seed(0)
    net = tvm.mobilenet_v2().eval()
    path = tmp_path / "mine.pt"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    loaded = load_model(path)
    assert loaded.arch == "mobilenet_v2" and loaded.name == "mine.pt"
    named = load_model(str(path), arch="mobilenet_v2")
    assert "as named" in named.source
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), net(x), atol=1e-5)


def test_half_precision_checkpoint_runs_in_float32(tmp_path: Path, digits):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in digits.model.state_dict().items()}, path)
    loaded = load_model(path, arch="digits-cnn")
    assert loaded.convs["conv2"].weight.dtype == torch.float32


def test_bare_state_dict_becomes_conv_layers(tmp_path: Path):
    path = tmp_path / "kernels.pt"
    state = {
        "encoder.conv.weight": torch.randn(64, 32, 3, 3),
        "encoder.conv.bias": torch.randn(64),
        "dw": torch.randn(32, 1, 5, 5),
        "head.weight": torch.randn(10, 64),
    }
    torch.save(state, path)
    loaded = load_model(path)
    assert loaded.model is None and loaded.arch is None and loaded.input_size is None
    assert list(loaded.convs) == ["encoder.conv", "dw"]
    conv = loaded.convs["encoder.conv"]
    assert (conv.in_channels, conv.out_channels, conv.padding, conv.stride) == (32, 64, (1, 1), (1, 1))
    assert conv.weight.equal(state["encoder.conv.weight"]) and conv.bias.equal(state["encoder.conv.bias"])
    assert loaded.convs["dw"].bias is None and loaded.convs["dw"].padding == (2, 2)


def test_signatures_need_no_memory():
    sig = signature(MODELS["vgg16_bn"])
    assert sig["features.0.weight"] == (64, 3, 3, 3) and sig["classifier.6.weight"] == (1000, 4096)
