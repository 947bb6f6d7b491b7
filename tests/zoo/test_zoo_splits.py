"""Calibration and evaluation images never overlap; calibration moments are those of the real activations."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from kcp.metrics import output_error
from kcp.target import LayerTarget
from kcp.zoo import (
    ZooError,
    default_images,
    describe_images,
    layer_batches,
    layer_inputs,
    layer_moments,
    load_model,
    max_images,
    network_fidelity,
    sample_images,
)
from kcp.zoo.digits import digits_split
from kcp.zoo.images import PHOTOS, SPLIT_PHOTOS, load_photos


def rows(x: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in x}


def test_digits_calibrate_on_train_and_evaluate_on_test(digits):
    split = digits_split()
    cal, y_cal = sample_images(digits, max_images(digits, "calibration"), "calibration")
    ev, y_ev = sample_images(digits, None, "evaluation")
    assert torch.equal(cal, split.x_train) and torch.equal(y_cal, split.y_train)
    assert torch.equal(ev, split.x_test) and torch.equal(y_ev, split.y_test)
    assert max_images(digits, "calibration") == len(split.x_train) and default_images(digits, "calibration") == 512
    assert not rows(cal) & rows(ev)  # no image of one set is in the other
    assert "test split" in describe_images(digits) and "450 labelled" in describe_images(digits)
    assert "training split" in describe_images(digits, "calibration", 100)


def test_photo_models_split_the_photos_in_two(resnet18):
    assert not set(SPLIT_PHOTOS["calibration"]) & set(SPLIT_PHOTOS["evaluation"])
    assert sorted(SPLIT_PHOTOS["calibration"] + SPLIT_PHOTOS["evaluation"]) == sorted(PHOTOS)
    cal, _ = sample_images(resnet18, max_images(resnet18, "calibration"), "calibration")
    ev, _ = sample_images(resnet18, max_images(resnet18, "evaluation"), "evaluation")
    assert len(cal) == len(ev) == 24 and not rows(cal) & rows(ev)
    # The first views are the centre crops of each split's own photos, as the weights' transform makes them.
    transform = tvm.ResNet18_Weights.IMAGENET1K_V1.transforms()
    for x, split in ((cal, "calibration"), (ev, "evaluation")):
        photos = load_photos(SPLIT_PHOTOS[split])
        assert all(torch.equal(x[i], transform(p)) for i, p in enumerate(photos))
    assert "scikit-image" in describe_images(resnet18, "evaluation", 16) and "unlabelled" in describe_images(resnet18)
    with pytest.raises(ValueError, match="unknown image split"):
        sample_images(resnet18, 2, "train")


def test_cifar_photo_split(cifar_home):
    loaded = load_model("cifar-resnet20", download=False)
    cal, _ = sample_images(loaded, max_images(loaded, "calibration"), "calibration")
    ev, _ = sample_images(loaded, None, "evaluation")
    assert len(cal) == 72 and len(ev) == default_images(loaded) == 64 and not rows(cal) & rows(ev)


def test_calibration_moments_are_those_of_the_calibration_activations(digits):
    conv = digits.convs["conv3"]
    moments = layer_moments(digits, "conv3", 600)  # two forward batches of the calibration images
    acts = layer_inputs(digits, "conv3", 600, "calibration")
    assert moments.n_inputs == 600 and moments.count == 600 * 8 * 8
    assert [len(b) for b in layer_batches(digits, "conv3", 600, "calibration")] == [512, 88]
    approx = copy.deepcopy(conv)
    torch.manual_seed(0)
    with torch.no_grad():
        approx.weight.add_(0.05 * torch.randn_like(approx.weight))
    # Independent reference: run both convs on the calibration activations.
    ran = output_error(conv, approx, acts)
    assert moments.relative_error(conv.weight.detach(), approx.weight.detach()) == pytest.approx(ran, rel=1e-6)
    # ... and not those of the evaluation images.
    evaluated = output_error(conv, approx, layer_inputs(digits, "conv3"))
    assert abs(ran - evaluated) > 1e-6
    assert layer_moments(digits, "conv3", 600) is moments  # computed once


def test_target_keeps_the_two_sets_apart(digits):
    target = LayerTarget.from_zoo(digits, "conv3", n_images=50, calibration=40)
    assert torch.equal(target.inputs, layer_inputs(digits, "conv3", 50, "evaluation"))
    assert target.moments().n_inputs == 40
    assert target.fit_options("outputs")["calibration"] is target.moments()
    assert target.fit_options("kernel") == {}
    assert target.calibration_id() != LayerTarget.from_zoo(digits, "conv3", calibration=41).calibration_id()
    assert "40 labelled" in target.calibration_images and "50 labelled" in target.images
    with pytest.raises(ZooError, match="1347 calibration images"):
        LayerTarget.from_zoo(digits, "conv3", calibration=5000)
    with pytest.raises(ValueError, match="unknown fit"):
        target.fit_options("weights")


def test_fidelity_counts_the_images_that_decide_it(digits):
    zero = copy.deepcopy(digits.convs["conv2"])
    torch.nn.init.zeros_(zero.weight)
    fid = network_fidelity(digits, "conv2", zero, n=200)
    assert fid.n_changed == round((1 - fid.top1_agreement) * 200) and fid.n_changed > 100


def test_bare_kernels_have_no_calibration(tmp_path: Path):
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.randn(8, 8, 3, 3)}, path)
    loaded = load_model(path)
    target = LayerTarget.from_zoo(loaded, "w")
    with pytest.raises(ValueError, match="no calibration images"):
        target.fit_options("outputs")
    with pytest.raises(ValueError, match="bare state dict"):
        LayerTarget.from_zoo(loaded, "w", calibration=4)
