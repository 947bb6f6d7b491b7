"""Fixtures for the zoo: a temporary TORCH_HOME seeded with files the tests write or link, never the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from kcp.zoo import LoadedModel, load_model

RESNET18_FILE = tvm.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]




def checkpoints(home: Path) -> Path:
    return home / "hub" / "checkpoints"


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ResNet-18 state dict saved under the file name torchvision expects."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / RESNET18_FILE
    torch.save(tvm.resnet18().state_dict(), path)
    return path


@pytest.fixture
def resnet18(torch_home: Path, resnet18_file: Path) -> LoadedModel:
    """ResNet-18 loaded through the real hub-cache code from the seeded TORCH_HOME (download off)."""
    (checkpoints(torch_home) / RESNET18_FILE).symlink_to(resnet18_file)
    return load_model("resnet18", download=False)


@pytest.fixture
def cifar_home(torch_home: Path, shared_weights: Path) -> Path:
    """TORCH_HOME holding links to the real CIFAR ResNet files from ../shared/weights."""
    for name in ("resnet20-12fca82f.th", "resnet56-4bfd9763.th"):
        (checkpoints(torch_home) / name).symlink_to(shared_weights / name)
    return torch_home


@pytest.fixture(scope="session")
def digits() -> LoadedModel:
    return load_model("digits-cnn")


@pytest.fixture
def closed_url():
    """A URL on this machine that refuses connections at once: 'unreachable' without touching the network."""

    def make(file_name: str) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}/models/{file_name}"

    return make
