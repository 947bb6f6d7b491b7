"""The Network page's heavy calls into ``kcp.network`` (plans, runs, fine-tuning, files), in one place so that
they can move to worker processes; ``st.cache_resource`` keeps one :class:`Session` per model and options."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import streamlit as st

from kcp import zoo
from kcp.cache import ResultCache
from kcp.export import save_network
from kcp.latency import LatencySettings
from kcp.network.data import network_data
from kcp.network.finetune import FinetuneConfig
from kcp.network.onnx_export import check_onnx, export_onnx
from kcp.network.plan import Budget, PlanConfig
from kcp.network.run import NetworkRun, RunSettings, Session


@st.cache_resource(show_spinner=False, max_entries=4)
def _session(model: str, weights_id: str, methods: tuple[str, ...], fit: str, steps: int, lr: float, distill: bool,
             _loaded: zoo.LoadedModel) -> Session:
    settings = RunSettings(plan=PlanConfig(methods=methods, fit=fit),
                           finetune=FinetuneConfig(steps=steps, lr=lr, distill=distill),
                           latency=LatencySettings(runs=10, min_run_time=0.1))
    return Session(_loaded, network_data(_loaded), settings, cache=ResultCache())


def session(loaded: zoo.LoadedModel, methods: tuple[str, ...], fit: str, steps: int, lr: float,
            distill: bool) -> Session:
    """The model's data, dense figures and per-layer sweeps, their decompositions fitted to ``fit`` (shared by every
    browser session)."""
    return _session(loaded.name, loaded.weights_id, methods, fit, steps, lr, distill, loaded)


def plan_and_apply(s: Session, kind: str, value: float, progress=None, should_stop=None) -> NetworkRun:
    """The plan under one budget, applied and measured (zero-shot; no fine-tuning)."""
    plan = s.planner.plan(Budget(kind, value), progress=progress, should_stop=should_stop)
    return s.run(plan, tune=False)


def finetune(s: Session, plan, progress=None, should_stop=None) -> NetworkRun:
    """Apply ``plan`` again and fine-tune it with the session's settings."""
    return s.run(plan, progress=progress, should_stop=should_stop)


def grid(s: Session, kt_ranks, cp_ranks, progress=None, should_stop=None):
    """The uniform grid's reports (each point cached on disk once finished) and whether it was cancelled."""
    return s.grid(kt_ranks, cp_ranks, progress=progress, should_stop=should_stop)


def network_file(run: NetworkRun, loaded: zoo.LoadedModel) -> bytes:
    """The compressed network as a ``.pt`` file (``kcp.export.load_network`` rebuilds it)."""
    buffer = io.BytesIO()
    save_network(buffer, run.net, loaded.arch, {"model": loaded.name, "compression": run.plan.compression})
    return buffer.getvalue()


def onnx_file(run: NetworkRun, loaded: zoo.LoadedModel, data_x) -> tuple[bytes, dict]:
    """The network as ONNX and its onnxruntime check on real held-out images."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "network.onnx"
        export_onnx(run.net, path, loaded.input_size)
        check = check_onnx(path, run.net, data_x[:32], runs=10)
        return path.read_bytes(), check
