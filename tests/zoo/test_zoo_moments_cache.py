"""Calibration moments kept on disk: another process reads them instead of running the network again."""

from __future__ import annotations

import pytest
import torch

from kcp.cache import ResultCache
from kcp.zoo import calibration
from kcp.zoo._memo import Memo


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty on-disk cache and an empty in-process memo (as in a newly started process)."""
    monkeypatch.setenv("KCP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibration, "_moments", Memo(size=16))
    return tmp_path


def test_moments_come_back_from_disk_unchanged(digits, fresh, monkeypatch):
    computed = calibration.layer_moments(digits, "conv2", 40)
    assert len(ResultCache(fresh)) == 1
    monkeypatch.setattr(calibration, "_moments", Memo(size=16))  # a new process: only the disk remembers

    def no_network(*_args, **_kwargs):
        raise AssertionError("the network ran although the moments were on disk")

    monkeypatch.setattr(calibration, "layer_batches", no_network)
    read = calibration.layer_moments(digits, "conv2", 40)
    assert torch.equal(read.gram, computed.gram) and torch.equal(read.total, computed.total)
    assert (read.count, read.n_inputs, read.in_channels, read.kernel_hw) == (
        computed.count, computed.n_inputs, computed.in_channels, computed.kernel_hw) == (40 * 16 * 16, 40, 32, (3, 3))


def test_other_images_or_layers_are_other_entries(digits, fresh):
    a = calibration.layer_moments(digits, "conv2", 20)
    b = calibration.layer_moments(digits, "conv2", 30)
    c = calibration.layer_moments(digits, "conv3", 20)
    assert len(ResultCache(fresh)) == 3
    assert (a.count, b.count, c.n_inputs, c.in_channels) == (20 * 256, 30 * 256, 20, 32)
