"""Cached calls into kcp: the dashboard's only way to load models, decompose, evaluate and time.

``st.cache_resource`` holds what all sessions share and nobody changes (loaded models, layer targets with
their real activations); ``st.cache_data`` holds results (decompositions, metric rows, spectra), which it
pickles, so no session can change another's. Heavy arguments are passed with a leading underscore (not hashed)
next to a small key that identifies them. The heavy work itself runs in worker processes
(:mod:`dashboard.components.workers`, jobs from :mod:`kcp.jobs`); latency is measured afresh on every request,
the dense layer paired with the factorised one, and never cached.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from dashboard.components import workers
from kcp import jobs, zoo
from kcp.decomposition import REFINE_SWEEPS, Decomposition, KTSpectrum
from kcp.export import layer_state
from kcp.fit import DEFAULT_FIT, point_options
from kcp.latency import LatencySettings, PairedTiming
from kcp.methods import METHODS
from kcp.sweep import SweepConfig, SweepResult
from kcp.target import LayerTarget
from kcp.zoo.registry import ASSETS

UPLOAD_DIR = Path(tempfile.gettempdir()) / "kcp-rank-explorer-uploads"
# What a worker process needs to load a model again: (name, weights hash) -> (source, arch).
_SOURCES: dict[tuple[str, str], tuple[str, str | None]] = {}


@dataclass(frozen=True)
class TargetKey:
    """What identifies a layer target: the model's name and weights hash, the layer, the number of evaluation
    images and of calibration images (None: the model's defaults)."""

    model: str
    weights_id: str
    layer: str
    n_images: int | None
    n_calibration: int | None = None


@dataclass(frozen=True)
class Point:
    """One decomposition request: a method, its ranks (sorted items), the options that change the result, and
    what it is fitted to."""

    method: str
    ranks: tuple[tuple[str, int], ...]
    factors: tuple[int, int, int, int] | None = None
    placement: str = "split"
    refine_sweeps: int = REFINE_SWEEPS
    fit: str = DEFAULT_FIT

    @classmethod
    def make(cls, method: str, ranks: dict[str, int], factors=None, placement: str = "split",
             refine_sweeps: int = REFINE_SWEEPS, fit: str = DEFAULT_FIT) -> Point:
        options = METHODS[method].options
        return cls(method, tuple(sorted(ranks.items())), tuple(factors) if "factors" in options and factors else None,
                   placement if "placement" in options else "split",
                   refine_sweeps if "refine_sweeps" in options else 0, fit)

    def options(self) -> dict:
        """Keyword arguments of ``kcp.decompose`` besides the ranks and the fit (kcp.fit.point_options)."""
        return point_options(self.method, factors=self.factors, placement=self.placement,
                             refine_sweeps=self.refine_sweeps)


def _weights_stamp(source: str) -> tuple:
    """Changes when the zoo model's weights file appears, disappears or is replaced (a new load is due)."""
    spec = zoo.get_spec(source)
    path = (ASSETS if spec.url is None else zoo.checkpoints_dir()) / spec.file_name
    try:
        st_ = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), st_.st_size, st_.st_mtime_ns)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load(source: str, arch: str | None, stamp: tuple) -> tuple[zoo.LoadedModel | None, zoo.ZooError | None]:
    # A refusal is remembered too (until the weights file changes), so that a rerun does not probe the
    # network again for seconds just to fail the same way.
    try:
        return zoo.load_model(source, arch=arch), None
    except zoo.ZooError as exc:
        return None, exc


def load_model(source: str, arch: str | None = None) -> zoo.LoadedModel:
    """A zoo model by name or a checkpoint by path; raises ``zoo.ZooError`` with the user-ready reason."""
    stamp = _weights_stamp(source) if source in zoo.MODELS else (source,)
    loaded, error = _load(source, arch, stamp)
    if error is not None:
        raise error
    _SOURCES[loaded.key] = (str(source), arch)
    return loaded


def save_upload(name: str, data: bytes) -> Path:
    """Write uploaded bytes to a temporary file named by their hash (same bytes, same path, same cache entry)."""
    folder = UPLOAD_DIR / hashlib.sha256(data).hexdigest()[:16]
    path = folder / (Path(name).name or "checkpoint.pt")
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def layers(loaded: zoo.LoadedModel) -> list[zoo.ConvLayerInfo]:
    """The model's conv layers (kcp memoises the listing per model)."""
    return zoo.conv_layers(loaded)


@st.cache_resource(show_spinner=False, max_entries=8)
def _target(key: TargetKey, _loaded: zoo.LoadedModel) -> LayerTarget:
    return LayerTarget.from_zoo(_loaded, key.layer, n_images=key.n_images, fidelity=True,
                                calibration=key.n_calibration)


def target(loaded: zoo.LoadedModel, layer: str, n_images: int | None,
           n_calibration: int | None = None, fit: str = DEFAULT_FIT) -> tuple[TargetKey, LayerTarget]:
    """The layer with its real activations, network fidelity check and calibration (shared by every session)."""
    key = TargetKey(loaded.name, loaded.weights_id, layer, n_images, n_calibration)
    # The workers build the same layer meanwhile (and every new worker does before its first job), with the
    # calibration moments where points are fitted to the outputs.
    workers.pool().warm(jobs.warm, spec(key), fit == "outputs")
    return key, _target(key, loaded)


def spec(key: TargetKey, fidelity: bool = True) -> jobs.TargetSpec:
    """What a worker needs to rebuild the layer of ``key``."""
    source, arch = _SOURCES[(key.model, key.weights_id)]
    return jobs.TargetSpec(source, arch, key.layer, key.n_images, fidelity, key.n_calibration)


@st.cache_data(show_spinner=False, max_entries=512)
def decomposition(key: TargetKey, point: Point, _target: LayerTarget) -> Decomposition:
    """The layer's decomposition at ``point`` (cached per layer and point; run in a worker), as the CLI and the
    sweep make it."""
    return workers.run(jobs.decomposition, spec(key), point.method, dict(point.ranks), point.options(), point.fit,
                       slot="decomposition", key=(key, point))


@st.cache_data(show_spinner=False, max_entries=512)
def evaluated(key: TargetKey, point: Point, fidelity: bool, _target: LayerTarget,
              _slot: str = "metrics") -> tuple[Decomposition, dict]:
    """The decomposition at ``point`` and ``kcp.evaluate.evaluate``'s row for it (costs, kernel and output error,
    network fidelity), from one job in this session's ``_slot`` (not part of the cache key)."""
    return workers.run(jobs.point, spec(key), point.method, dict(point.ranks), point.options(), fidelity,
                       point.fit, slot=_slot, key=(key, point, fidelity))


def metrics(key: TargetKey, point: Point, fidelity: bool, _target: LayerTarget, slot: str = "metrics") -> dict:
    """``kcp.evaluate.evaluate``'s row for ``point`` (cached with its decomposition by :func:`evaluated`)."""
    return evaluated(key, point, fidelity, _target, slot)[1]


def latency(key: TargetKey, point: Point, settings: LatencySettings, _target: LayerTarget,
            result: Decomposition | None = None) -> PairedTiming:
    """The dense layer and the factorised one at ``point`` (its decomposition ``result`` when the caller has it),
    timed together in one paired measurement (fresh on every call: a figure from another moment, session or server
    is never shown)."""
    return workers.run(jobs.latency, spec(key), point.method, dict(point.ranks), point.options(), settings,
                       point.fit, result, slot="latency", key=(key, point, settings))


@st.cache_data(show_spinner=False, max_entries=64)
def spectrum(key: TargetKey, factors: tuple[int, int, int, int] | None, placement: str,
             _target: LayerTarget) -> KTSpectrum:
    """The layer's KT spectrum for a factor shape and placement."""
    return workers.run(jobs.spectrum, spec(key), factors, placement, slot="spectrum", key=(key, factors, placement))


def grid(key: TargetKey, config: SweepConfig, progress) -> SweepResult:
    """A rank-grid sweep of the layer in a worker (points cached on disk); ``progress((done, total, row))``."""
    return workers.run(jobs.grid, spec(key, config.fidelity), config, slot="grid", key=(key, config),
                       progress=progress)


def layer_file(result: Decomposition, t: LayerTarget, meta: dict) -> bytes:
    """The decomposed layer as a ``.pt`` file (``kcp.export.load_layer`` rebuilds the module from it)."""
    buffer = io.BytesIO()
    torch.save(layer_state(result, t.geometry, t.conv.bias, meta), buffer)
    return buffer.getvalue()


def sweep_file(rows: list[dict], config: dict, cancelled: bool, seconds: float, suffix: str) -> bytes:
    """Grid rows as a ``.csv`` or ``.json`` file, written by ``SweepResult.write`` (the CLI's format)."""
    with tempfile.TemporaryDirectory() as folder:
        result = SweepResult(rows, cancelled=cancelled, seconds=seconds, config=config)
        return result.write(Path(folder) / f"grid{suffix}").read_bytes()
