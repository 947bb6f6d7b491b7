"""Every refusal: offline weights, broken cache files, and user checkpoints the zoo will not load."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from kcp.zoo import MODELS, CheckpointError, WeightsUnavailable, ZooError, load_model
from kcp.zoo import weights as zoo_weights


@pytest.mark.parametrize(("name", "size"), [("resnet50", "97.8 MB"), ("cifar-resnet20", "1.0 MB")])
def test_offline_without_a_cached_file_says_what_to_fetch(torch_home, closed_url, monkeypatch, name, size):
    spec = MODELS[name]
    monkeypatch.setitem(MODELS, name, dataclasses.replace(spec, url=closed_url(spec.file_name)))
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as err:
        load_model(name)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert spec.file_name in message and size in message
    assert str(torch_home / "hub" / "checkpoints") in message and MODELS[name].url in message
    assert not (torch_home / "hub" / "checkpoints" / spec.file_name).exists()


def test_download_off_does_not_probe(torch_home, monkeypatch):
    monkeypatch.setattr(zoo_weights, "probe", lambda *a, **k: pytest.fail("probed with download=False"))
    with pytest.raises(WeightsUnavailable, match="switched off") as err:
        load_model("vgg16_bn", download=False)
    assert "vgg16_bn-6c64b313.pth (527.9 MB)" in str(err.value)


def test_a_silent_host_cannot_stall_the_probe(monkeypatch):
    monkeypatch.setattr(zoo_weights, "_open", lambda url, timeout: time.sleep(30))
    start = time.monotonic()
    reason = zoo_weights.probe("https://example.invalid/x.pth", timeout=0.3)
    assert time.monotonic() - start < 2 and "no answer within 0.3 s" in reason


def test_unusable_cached_files_are_named(torch_home, resnet18_file, digits):
    cached = torch_home / "hub" / "checkpoints" / resnet18_file.name
    cached.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ZooError, match="could not be read|not a plain state dict") as err:
        load_model("resnet18", download=False)
    assert str(cached) in str(err.value) and "delete it" in str(err.value)
    torch.save(digits.model.state_dict(), cached)
    with pytest.raises(ZooError, match="does not hold ResNet-18 weights"):
        load_model("resnet18", download=False)


def test_unknown_names(digits):
    with pytest.raises(ZooError, match="unknown model 'resnet-18': choose one of digits-cnn"):
        load_model("resnet-18")
    with pytest.raises(ZooError, match="arch="):
        load_model("digits-cnn", arch="resnet18")


def save(tmp_path: Path, obj: object, name: str = "ckpt.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_checkpoint_refusals(tmp_path: Path):
    conv = {"c.weight": torch.randn(8, 8, 3, 3)}
    cases = [
        (tmp_path / "nowhere.pt", {}, "no checkpoint at"),
        (tmp_path, {}, "is not a file"),
        (save(tmp_path, conv), {"max_bytes": 1000}, r"ckpt.pt is .* bytes, over the 1,000 bytes limit"),
        (save(tmp_path, nn.Linear(2, 2), "module.pt"), {}, r"needs pickled code to load \(torch.nn.modules.linear"),
        (save(tmp_path, [torch.zeros(1)], "list.pt"), {}, "holds a list, not a dict of tensors"),
        (save(tmp_path, {}, "empty.pt"), {}, "holds an empty dict"),
        (save(tmp_path, {"c.weight": torch.zeros(1), "step": 3}, "mixed.pt"), {}, r"'step' \(int\)"),
        (save(tmp_path, {"fc.weight": torch.randn(3, 4)}, "dense.pt"), {}, "no 4-D tensors"),
        (save(tmp_path, conv, "named.pt"), {"arch": "resnet99"}, "unknown model 'resnet99'"),
    ]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not torch" * 50)
    cases.append((garbage, {}, "not a PyTorch checkpoint"))
    for path, kwargs, pattern in cases:
        with pytest.raises(ZooError, match=pattern):
            load_model(path, **kwargs)
    with pytest.raises(CheckpointError, match="pickled code is refused"):
        load_model(tmp_path / "module.pt")


def test_checkpoint_that_does_not_match_the_named_architecture(tmp_path: Path, digits):
    state = dict(digits.model.state_dict())
    del state["bn2.running_var"]
    state["conv3.weight"] = torch.randn(64, 16, 3, 3)
    state["extra.weight"] = torch.randn(3)
    path = save(tmp_path, state)
    with pytest.raises(CheckpointError) as err:
        load_model(path, arch="digits-cnn")
    message = str(err.value)
    assert "does not match the digits-cnn architecture" in message
    assert "missing keys: bn2.running_var" in message and "unexpected keys: extra.weight" in message
    assert "conv3.weight is (64, 16, 3, 3), expected (64, 32, 3, 3)" in message
    # Without arch=, a state dict that matches nothing is taken as bare conv kernels.
    assert load_model(path).model is None
