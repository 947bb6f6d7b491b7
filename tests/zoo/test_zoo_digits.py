"""The offline default model: its recorded accuracy, its shape, and its deterministic training script."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from kcp.zoo import conv_layers, sample_images, train_digits
from kcp.zoo.registry import ASSETS

RECORD = json.loads((ASSETS / "digits_cnn.json").read_text())


def test_recorded_held_out_accuracy(digits):
    x, y = sample_images(digits)
    with torch.no_grad():
        accuracy = (digits.model(x).argmax(1) == y).float().mean().item()
    assert len(y) == RECORD["n_test"] == 450
    assert abs(accuracy - RECORD["test_accuracy"]) < 1e-6
    assert accuracy >= 0.95


def test_assets_are_the_recorded_weights_and_small():
    weights = ASSETS / RECORD["weights_file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == RECORD["sha256"]
    assert weights.stat().st_size < 5 * 2**20
    assert torch.load(weights, weights_only=True).keys()
    assert RECORD["command"].startswith("python -m kcp.zoo.train_digits")


def test_kcp_has_layers_to_bite_on(digits):
    big = [i for i in conv_layers(digits) if i.weight_shape[2:] == (3, 3) and min(i.weight_shape[:2]) >= 32]
    assert len(big) >= 3 and all(i.kcp_ok for i in big)


@pytest.mark.slow
def test_training_is_deterministic(tmp_path: Path):
    threads = torch.get_num_threads()
    first = train_digits.main(["--epochs", "1", "--out", str(tmp_path / "a")])
    second = train_digits.main(["--epochs", "1", "--out", str(tmp_path / "b")])
    assert first["sha256"] == second["sha256"] and first["epochs"] == 1
    assert (tmp_path / "a" / "digits_cnn.json").is_file()
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
