"""The table of models the zoo offers: architecture, where the weights come from, and how inputs are prepared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torchvision import models as tvm

from kcp.zoo import cifar_resnet
from kcp.zoo.digits import INPUT_SIZE as DIGITS_INPUT_SIZE
from kcp.zoo.digits import DigitsCNN
from kcp.zoo.errors import ZooError

# Package data: the offline digits model ships inside kcp, so `pip install .` carries it.
ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = "digits-cnn"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, crop ``crop`` x ``crop``, scale to [0, 1], normalise."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry. ``url`` is None for weights that ship in ``kcp/assets/`` (``file_name`` is then local)."""

    name: str
    title: str
    family: str  # "digits", "cifar" or "imagenet": decides the sample images
    input_size: tuple[int, int, int]
    num_classes: int
    build: Callable[[], nn.Module]
    file_name: str
    file_mb: float
    url: str | None
    weights_label: str
    categories: tuple[str, ...]
    default_images: int  # evaluation images used by default
    default_calibration: int | None = None  # calibration images used by default (None: all of them)
    preprocess: Preprocess | None = None
    reported_top1: float | None = None
    notes: str = ""


def _torchvision(name: str, title: str, weights: tvm.WeightsEnum, notes: str) -> ModelSpec:
    t = weights.transforms()
    crop = t.crop_size[0]
    return ModelSpec(
        name=name,
        title=title,
        family="imagenet",
        input_size=(3, crop, crop),
        num_classes=len(weights.meta["categories"]),
        build=lambda: tvm.get_model(name, weights=None),
        file_name=weights.url.rsplit("/", 1)[-1],
        file_mb=float(weights.meta["_file_size"]),
        url=weights.url,
        weights_label=f"torchvision {weights}",
        categories=tuple(weights.meta["categories"]),
        default_images=16,
        default_calibration=8,  # every 224 px forward pass is slow on a CPU; the patch moments need few images
        preprocess=Preprocess(t.resize_size[0], crop, tuple(t.mean), tuple(t.std), t.interpolation.value),
        reported_top1=weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100,
        notes=notes,
    )


def _cifar(depth: int, file_name: str, size_bytes: int, top1: float) -> ModelSpec:
    return ModelSpec(
        name=f"cifar-resnet{depth}",
        title=f"CIFAR-10 ResNet-{depth}",
        family="cifar",
        input_size=(3, 32, 32),
        num_classes=10,
        build=getattr(cifar_resnet, f"resnet{depth}"),
        file_name=file_name,
        file_mb=size_bytes / 2**20,
        url=CIFAR_URL + file_name,
        weights_label="akamaster/pytorch_resnet_cifar10 (BSD-2-Clause)",
        categories=CIFAR10_CLASSES,
        default_images=64,
        preprocess=Preprocess(32, 32, IMAGENET_MEAN, IMAGENET_STD),
        reported_top1=top1,
        notes="plain 3x3 convs of 16/32/64 channels, option-A shortcuts",
    )


# Weights are pinned to one enum member (not ``.DEFAULT``) so that figures do not move when torchvision
# changes its default.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="digits-cnn",
            title="Digits CNN (offline, trained here)",
            family="digits",
            input_size=DIGITS_INPUT_SIZE,
            num_classes=10,
            build=DigitsCNN,
            file_name="digits_cnn.pt",
            file_mb=0.26,
            url=None,
            weights_label="trained by python -m kcp.zoo.train_digits",
            categories=tuple(str(i) for i in range(10)),
            default_images=450,
            default_calibration=512,  # of the 1347 training images: one forward batch, 32,768 patches at conv4
            notes="scikit-learn digits, 8x8 upsampled to 16x16; 3x3 convs 1-32-32-64-64",
        ),
        _cifar(20, "resnet20-12fca82f.th", 1_099_231, 0.9178),
        _cifar(56, "resnet56-4bfd9763.th", 3_471_733, 0.9362),
        _torchvision("resnet18", "ResNet-18", tvm.ResNet18_Weights.IMAGENET1K_V1, "plain 3x3 basic blocks"),
        _torchvision("resnet50", "ResNet-50", tvm.ResNet50_Weights.IMAGENET1K_V2, "bottleneck blocks (1x1-3x3-1x1)"),
        _torchvision("vgg16_bn", "VGG-16 (BN)", tvm.VGG16_BN_Weights.IMAGENET1K_V1, "plain 3x3 stacks up to 512x512"),
        _torchvision(
            "mobilenet_v2", "MobileNetV2", tvm.MobileNet_V2_Weights.IMAGENET1K_V2, "depthwise 3x3 + pointwise 1x1"
        ),
        _torchvision(
            "efficientnet_b0",
            "EfficientNet-B0",
            tvm.EfficientNet_B0_Weights.IMAGENET1K_V1,
            "depthwise 3x3/5x5, pointwise 1x1, squeeze-excitation 1x1",
        ),
        _torchvision(
            "convnext_tiny",
            "ConvNeXt-T",
            tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
            "depthwise 7x7 (pointwise layers are Linear); dense 4x4 stem and 2x2 downsampling convs",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The zoo entry called ``name``, or a ZooError that lists the names there are."""
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(
            f"unknown model {name!r}: choose one of {', '.join(MODELS)}, or give a checkpoint path"
        ) from None
