"""Shared fixtures: the real pretrained weights beside the checkout, when they are there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = Path(os.environ.get("KCP_SHARED_WEIGHTS", REPO.parent / "shared" / "weights"))


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME for one test; the hub folder follows it (both restored afterwards)."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    # Forget any torch.hub.set_dir() from elsewhere so that get_dir() resolves through TORCH_HOME.
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """Folder with the real CIFAR ResNet checkpoints; skips the test where it is absent."""
    if not (SHARED_WEIGHTS / "resnet20-12fca82f.th").is_file():
        pytest.skip(f"real pretrained weights not found at {SHARED_WEIGHTS} (a fresh clone has no ../shared)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def resnet56_state(shared_weights: Path) -> dict[str, torch.Tensor]:
    """State dict of the real CIFAR ResNet-56 (keys without the DataParallel prefix)."""
    ckpt = torch.load(shared_weights / "resnet56-4bfd9763.th", map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
