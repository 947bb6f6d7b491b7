"""Rank-grid sweeps of one layer: KCP over KT x CP ranks, the baselines at matching budgets, every metric.

Neighbouring KCP points can warm-start each other (``warm_start=True``: along the CP ranks, then down the
KT ranks; off by default, so that a grid point shows the value that a single decomposition of it gives), every
decomposition and every row of metrics is cached on disk as soon as it is done, and a sweep can be
cancelled between (or inside) points: a rerun picks up where it stopped. ``SweepConfig.fit`` picks what every
method is fitted to (the kernel, or the layer's outputs on the calibration images); the cache keeps the two
fits (and different calibration data) apart.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kcp.budget import BUDGET_KINDS, largest_within
from kcp.cache import ResultCache, cache_key
from kcp.costs import METHODS as ALL_METHODS
from kcp.decompose import Decomposition
from kcp.evaluate import evaluate
from kcp.fit import DEFAULT_FIT, check_fit, decompose_point, point_options
from kcp.kron import FactorShape, make_factor_shape, max_cp_rank, max_kt_rank
from kcp.latency import LatencySettings, measure
from kcp.target import LayerTarget

BASELINES = ("kt", "cp", "tucker2", "svd")
COLUMNS = (
    "model", "layer", "method", "fit", "calibration_images", "kt_rank", "cp_rank", "rank", "in_rank", "out_rank",
    "factors", "placement",
    "params", "dense_params", "compression", "macs", "dense_macs", "rel_error", "output_rel_error",
    "top1_agreement", "top1_changed", "eval_images", "accuracy", "dense_accuracy", "latency_ms", "dense_latency_ms",
    "device", "seconds", "sweeps", "converged", "warm_start", "matched_to",
)


class SweepCancelled(Exception):
    """Raised inside a decomposition when the caller asked the sweep to stop."""


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and what to measure. ``match`` is 'params' or 'macs' (the baselines' budget); ``fit`` is
    'kernel' or 'outputs' (every method, fitted on the target's calibration images). ``refine_sweeps``, ``tol`` and
    ``seed`` left as None take the library's defaults, as the CLI and the dashboard do, so that a point has one
    value everywhere."""

    kt_ranks: tuple[int, ...]
    cp_ranks: tuple[int, ...]
    methods: tuple[str, ...] = ("kcp", *BASELINES)
    factors: tuple[int, int, int, int] | None = None
    placement: str = "split"
    refine_sweeps: int | None = None
    tol: float | None = None
    seed: int | None = None
    match: str = "params"
    fit: str = DEFAULT_FIT
    # Off by default: a warm-started KCP fit can land on another local optimum than the cold fit that the CLI
    # and the dashboard's Explore make of the same point, and a point must show one value everywhere.
    warm_start: bool = False
    output_error: bool = True
    fidelity: bool = True
    latency: LatencySettings | None = None
    channel_path: str = "layered"

    def check(self, shape: FactorShape) -> None:
        """Refuse ranks past the layer's largest meaningful ones, unknown methods and budgets."""
        unknown = [m for m in self.methods if m not in ALL_METHODS or m == "dense"]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}: choose from {', '.join(('kcp', *BASELINES))}")
        check_fit(self.fit)
        if self.match not in BUDGET_KINDS:
            raise ValueError(f"match must be one of {', '.join(BUDGET_KINDS)}, got {self.match!r}")
        if not self.kt_ranks or not self.cp_ranks:
            raise ValueError("give at least one KT rank and one CP rank")
        limits = (("KT", self.kt_ranks, max_kt_rank(shape)), ("CP", self.cp_ranks, max_cp_rank(shape)))
        for label, values, top in limits:
            bad = [v for v in values if not isinstance(v, int) or not 1 <= v <= top]
            if bad:
                raise ValueError(f"{label} ranks {bad} are outside 1..{top}, the largest meaningful {label} rank "
                                 f"for factor shape {shape} ({self.placement})")


@dataclass
class SweepResult:
    """Rows (one per KCP grid point, one per distinct baseline configuration, one for the dense layer)."""

    rows: list[dict[str, Any]]
    cancelled: bool = False
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> Path:
        """Write the rows as ``.csv`` or ``.json`` (with the config), chosen by the file's suffix."""
        path = Path(path)
        if path.suffix == ".csv":
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)
        elif path.suffix == ".json":
            path.write_text(json.dumps({"config": self.config, "cancelled": self.cancelled, "seconds": self.seconds,
                                        "rows": self.rows}, indent=1, default=str))
        else:
            raise ValueError(f"output file must end in .csv or .json, got {path.name!r}")
        return path


def _activation_id(inputs: torch.Tensor | None) -> str | None:
    if inputs is None:
        return None
    return hashlib.sha256(inputs.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class _Runner:
    """Holds one sweep's target, config, cache and counters."""

    def __init__(self, target: LayerTarget, config: SweepConfig, cache: ResultCache | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.target, self.config, self.cache = target, config, cache
        self.should_stop = should_stop or (lambda: False)
        self.shape = make_factor_shape(target.kernel_shape, config.factors, config.placement)
        self.base = {"weights": target.weights_id, "model": target.model, "layer": target.name}
        self.metric_options = {
            "activations": _activation_id(target.inputs) if config.output_error else None,
            "fidelity": config.fidelity and target.fidelity is not None,
            "latency": None if config.latency is None else asdict(config.latency),
            "channel_path": config.channel_path,
            "in_hw": target.in_hw,
        }
        self.dense_latency: float | None = None
        # What an output fit learned from: part of every decomposition's cache key (None for kernel fits).
        self.fit_key = {"fit": config.fit,
                        "calibration": target.calibration_id() if config.fit == "outputs" else None}

    def _cached(self, key: str) -> dict | None:
        return self.cache.get(key) if self.cache is not None else None

    def _store(self, key: str, value: dict) -> None:
        if self.cache is not None:
            self.cache.put(key, value)

    def _stop_hook(self, _sweep: int, _err: float) -> None:
        if self.should_stop():
            raise SweepCancelled

    def decomposition(self, method: str, ranks: dict[str, int], init: tuple[str, Decomposition] | None):
        """The decomposition (from the cache when it is there), its key and its compute time."""
        c = self.config
        options = point_options(method, factors=self.shape.channels, placement=c.placement,
                                refine_sweeps=c.refine_sweeps, tol=c.tol, seed=c.seed)
        fit_key = self.fit_key if method != "dense" else {}
        key = cache_key(kind="decomposition", method=method, ranks=ranks, options=options,
                        init=init[0] if init else None, **fit_key, **self.base)
        hit = self._cached(key)
        if hit is not None:
            return key, Decomposition.from_state(hit["state"]), hit["seconds"]
        start = time.perf_counter()
        fit = c.fit if method != "dense" else DEFAULT_FIT
        result = decompose_point(self.target, method, ranks, fit=fit, options=options,
                                 init=init[1] if init else None, callback=self._stop_hook)
        seconds = time.perf_counter() - start
        self._store(key, {"state": result.state(), "seconds": seconds})
        return key, result, seconds

    def row(self, key: str, result: Decomposition, seconds: float, matched_to: str = "") -> dict[str, Any]:
        """Every metric of one decomposition (from the cache when it is there)."""
        mkey = cache_key(kind="metrics", decomposition=key, **self.metric_options)
        hit = self._cached(mkey)
        if hit is not None:
            return {**hit["row"], "matched_to": matched_to}
        c = self.config
        row = evaluate(self.target, result, output_error=c.output_error, fidelity=c.fidelity, latency=c.latency,
                       dense_latency_ms=self.dense_latency, channel_path=c.channel_path, seconds=seconds)
        self._store(mkey, {"row": row})
        return {**row, "matched_to": matched_to}


def sweep(
    target: LayerTarget,
    config: SweepConfig,
    *,
    cache: ResultCache | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepResult:
    """Run the sweep; ``progress(done, total, row)`` after every point, ``should_stop()`` polled to cancel."""
    started = time.perf_counter()
    runner = _Runner(target, config, cache, should_stop)
    config.check(runner.shape)
    kt_ranks, cp_ranks = sorted(set(config.kt_ranks)), sorted(set(config.cp_ranks))
    baselines = _baseline_plan(runner, kt_ranks, cp_ranks)
    total = 1 + (len(kt_ranks) * len(cp_ranks) if "kcp" in config.methods else 0) + len(baselines)
    rows: list[dict[str, Any]] = []
    result = SweepResult(rows, config=_describe(config, runner.shape, target))

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress is not None:
            progress(len(rows), total, row)

    try:
        done(_dense_row(runner))
        if "kcp" in config.methods:
            _kcp_grid(runner, kt_ranks, cp_ranks, done)
        for (method, ranks_items), matched in baselines.items():
            if runner.should_stop():
                raise SweepCancelled
            key, res, secs = runner.decomposition(method, dict(ranks_items), None)
            done(runner.row(key, res, secs, "; ".join(matched)))
    except SweepCancelled:
        result.cancelled = True
    result.seconds = time.perf_counter() - started
    return result


def _dense_row(runner: _Runner) -> dict[str, Any]:
    t, c = runner.target, runner.config
    timing = None if c.latency is None else measure(t.conv, (t.kernel_shape[1], *t.in_hw), c.latency)
    if timing is not None:
        runner.dense_latency = timing.median_ms
    key, res, secs = runner.decomposition("dense", {}, None)
    row = {**runner.row(key, res, secs), "fit": c.fit}  # the dense layer is the same under either fit
    if timing is not None:  # the dense layer's own figure is always fresh, never a cached one
        row.update(latency_ms=timing.median_ms, dense_latency_ms=timing.median_ms, device=timing.device_name)
    return row


def _kcp_grid(runner: _Runner, kt_ranks: Sequence[int], cp_ranks: Sequence[int], done) -> None:
    """Row by row of KT rank: each point warm-starts from its left neighbour, a row's first from the one above."""
    above: tuple[str, Decomposition] | None = None
    for r in kt_ranks:
        left: tuple[str, Decomposition] | None = None
        for k in cp_ranks:
            if runner.should_stop():
                raise SweepCancelled
            init = (left or above) if runner.config.warm_start else None
            key, res, secs = runner.decomposition("kcp", {"kt_rank": r, "cp_rank": k}, init)
            done(runner.row(key, res, secs))
            left = (key, res)
            if k == cp_ranks[0]:
                above = (key, res)


def _baseline_plan(runner: _Runner, kt_ranks, cp_ranks) -> dict[tuple, list[str]]:
    """Each baseline's ranks for every KCP point's budget, merged: {(method, ranks): [KCP points matched]}."""
    t, c = runner.target, runner.config
    plan: dict[tuple, list[str]] = {}
    for r in kt_ranks:
        for k in cp_ranks:
            probe = Decomposition("kcp", t.kernel_shape, {"kt_rank": r, "cp_rank": k}, {}, runner.shape)
            budget = probe.params() if c.match == "params" else probe.macs(t.in_hw, t.geometry, c.channel_path)
            for method in (m for m in c.methods if m in BASELINES):
                ranks = largest_within(method, t.kernel_shape, budget, kind=c.match, factor_shape=runner.shape,
                                       in_hw=t.in_hw, geometry=t.geometry)
                if ranks is not None:
                    plan.setdefault((method, tuple(sorted(ranks.items()))), []).append(f"R={r} K={k}")
    return plan


def _describe(config: SweepConfig, shape: FactorShape, target: LayerTarget) -> dict[str, Any]:
    described = asdict(replace(config, factors=shape.channels))
    described.update(model=target.model, layer=target.name, kernel_shape=list(target.kernel_shape),
                     in_hw=list(target.in_hw), in_hw_assumed=target.in_hw_assumed)
    return described
