"""Fixtures for the engine tests: a small real layer, a reference sweep, and one local process pool per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_faults import LoggedFidelity
from torch import nn

from kcp.cache import ResultCache
from kcp.engines import make_engine
from kcp.sweep import SweepConfig, sweep
from kcp.target import LayerTarget

# Every column except the timings must agree across engines.
TIMED = ("seconds", "latency_ms", "dense_latency_ms", "device")
CONFIG = SweepConfig(kt_ranks=(1, 2), cp_ranks=(1, 2))


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]


@pytest.fixture
def one_thread():
    """Workers run one torch thread each; the in-process reference does the same, so floats match exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_target(log: Path, **faults) -> LayerTarget:
    """A 16x16 3x3 conv with activations, whose fidelity check logs (and maybe crashes) in the workers."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(16, generator=gen))
    inputs = torch.randn(4, 16, 8, 8, generator=gen)
    target = LayerTarget.from_conv(conv, (8, 8), name="toy", inputs=inputs)
    target.fidelity = LoggedFidelity(conv, inputs, log, **faults)
    return target


@pytest.fixture
def reference(tmp_path: Path, one_thread) -> list[dict]:
    """The sweep's rows from this process (no engine), without timings."""
    target = make_target(tmp_path / "reference.log")
    rows = sweep(target, CONFIG, cache=ResultCache(tmp_path / "reference-cache")).rows
    assert len(rows) >= 8 and not any(r["error"] for r in rows)
    return untimed(rows)


@pytest.fixture(scope="session")
def local2():
    """A local engine with two worker processes (spawning them costs seconds, so they are shared)."""
    with make_engine("local", workers=2) as engine:
        yield engine
