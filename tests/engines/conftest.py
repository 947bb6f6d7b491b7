"""Fixtures for the engine tests: a small real layer, a reference sweep, and one local process pool per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import CONFIG, make_target, untimed

from kcp.cache import ResultCache
from kcp.engines import make_engine
from kcp.sweep import sweep


@pytest.fixture
def one_thread():
    """Workers run one torch thread each; the in-process reference does the same, so floats match exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
