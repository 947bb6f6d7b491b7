"""Fixtures for the dashboard's AppTest flows: the app, a private result cache, the library's own answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kcp import zoo
from kcp.target import LayerTarget

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
# The machine is small and shared: a first run imports torch and captures activations.
TIMEOUT = 180


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sweeps write to a fresh on-disk cache, never the user's."""
    folder = tmp_path / "kcp-cache"
    monkeypatch.setenv("KCP_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def app() -> AppTest:
    """The dashboard after its first run (the default model and layer)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    return at


@pytest.fixture(scope="session")
def digits() -> zoo.LoadedModel:
    return zoo.load_model(zoo.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def conv4(digits: zoo.LoadedModel) -> LayerTarget:
    """The default layer as the library sees it (same images as the app's default)."""
    return LayerTarget.from_zoo(digits, "conv4")


@pytest.fixture
def empty_torch_home(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TORCH_HOME with no weights, and a network probe that fails at once (offline, without waiting)."""
    monkeypatch.setattr("kcp.zoo.weights.probe", lambda url, timeout=0: "no network in this test")
    return torch_home
