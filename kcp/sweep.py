"""Rank-grid sweeps of one layer (or of many): KCP over KT x CP ranks, the baselines at matching budgets, every metric.

Neighbouring KCP points can warm-start each other (``warm_start=True``: along the CP ranks, then down the
KT ranks; off by default, so that a grid point shows the value that a single decomposition of it gives), every
decomposition and every row of metrics is cached on disk as soon as it is done, and a sweep can be
cancelled between (or inside) points: a rerun picks up where it stopped. ``SweepConfig.fit`` picks what every
method is fitted to (the kernel, or the layer's outputs on the calibration images); the cache keeps the two
fits (and different calibration data) apart.

Each point is one task of a graph (a KCP point waits for the point it warm-starts from) that an engine
(``kcp.engines``: this process, a local process pool, a Ray cluster) runs; the driver alone reads and writes
the cache, so every engine gives the same rows from the same cache. Engines that run tasks side by side time
latency afterwards, one point at a time (on the driver, or as one-GPU tasks on Ray), never next to a busy task.
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
from kcp.decomposition import REFINE_SWEEPS, Decomposition
from kcp.decomposition.outputs import check_fit_name
from kcp.engines import Cancelled, Engine, Node, make_engine, run_graph
from kcp.evaluate import evaluate
from kcp.fit import DEFAULT_FIT, decompose_point, point_options
from kcp.kron import FactorShape, make_factor_shape, max_cp_rank, max_kt_rank
from kcp.latency import LatencySettings, Timing, measure
from kcp.methods import BASELINES, DECOMPOSITIONS
from kcp.schema import COLUMNS, TIMING_COLUMNS
from kcp.target import LayerTarget


class SweepCancelled(Cancelled):
    """Raised inside a decomposition when the caller asked the sweep to stop."""


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and what to measure. ``match`` is 'params' or 'macs' (the baselines' budget); ``fit`` is
    'kernel' or 'outputs' (every method, fitted on the target's calibration images). ``refine_sweeps``, ``tol`` and
    ``seed`` left as None take the library's defaults, as the CLI and the dashboard do, so that a point has one
    value everywhere."""

    kt_ranks: tuple[int, ...]
    cp_ranks: tuple[int, ...]
    methods: tuple[str, ...] = DECOMPOSITIONS
    factors: tuple[int, int, int, int] | None = None
    placement: str = "split"
    refine_sweeps: int = REFINE_SWEEPS
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
    execution: str = "layered"

    def check(self, shape: FactorShape) -> None:
        """Refuse ranks past the layer's largest meaningful ones, unknown methods and budgets."""
        check_fit_name(self.fit)
        unknown = [m for m in self.methods if m not in DECOMPOSITIONS]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}: choose from {', '.join(DECOMPOSITIONS)}")
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
            "execution": config.execution,
            "in_hw": target.in_hw,
        }
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

    def _options(self, method: str) -> dict[str, Any]:
        c = self.config
        return point_options(method, factors=self.shape.channels, placement=c.placement,
                             refine_sweeps=c.refine_sweeps, tol=c.tol, seed=c.seed)

    def decomposition_key(self, method: str, ranks: dict[str, int], init_key: str | None) -> str:
        fit_key = self.fit_key if method != "dense" else {}
        return cache_key(kind="decomposition", method=method, ranks=ranks, options=self._options(method),
                         init=init_key, **fit_key, **self.base)

    def metrics_key(self, decomposition_key: str) -> str:
        return cache_key(kind="metrics", decomposition=decomposition_key, **self.metric_options)

    def decomposition(self, method: str, ranks: dict[str, int], init: tuple[str, Decomposition] | None):
        """The decomposition (from the cache when it is there), its key and its compute time."""
        options = self._options(method)
        key = self.decomposition_key(method, ranks, init[0] if init else None)
        hit = self._cached(key)
        if hit is not None:
            return key, Decomposition.from_state(hit["state"]), hit["seconds"]
        start = time.perf_counter()
        fit = self.config.fit if method != "dense" else DEFAULT_FIT
        result = decompose_point(self.target, method, ranks, fit=fit, options=options,
                                 init=init[1] if init else None, callback=self._stop_hook)
        seconds = time.perf_counter() - start
        self._store(key, {"state": result.state(), "seconds": seconds})
        return key, result, seconds

    def row(self, key: str, result: Decomposition, seconds: float, matched_to: str = "") -> dict[str, Any]:
        """Every metric of one decomposition (from the cache when it is there)."""
        mkey = self.metrics_key(key)
        hit = self._cached(mkey)
        if hit is not None:
            return {**hit["row"], "matched_to": matched_to}
        c = self.config
        row = evaluate(self.target, result, output_error=c.output_error, fidelity=c.fidelity, latency=c.latency,
                       execution=c.execution, seconds=seconds)
        self._store(mkey, {"row": row})
        return {**row, "matched_to": matched_to}


def point_decomposition(target: LayerTarget, config: SweepConfig, method: str, ranks: dict[str, int], *,
                        cache: ResultCache | None = None) -> Decomposition:
    """One point's decomposition as a sweep under ``config`` makes it cold (no warm start): read from ``cache``
    where that sweep stored it, else computed and stored. A whole-network plan takes its layers' candidates so."""
    return _Runner(target, config, cache, None).decomposition(method, ranks, None)[1]


def sweep(
    target: LayerTarget,
    config: SweepConfig,
    *,
    cache: ResultCache | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    engine: Engine | str | None = None,
) -> SweepResult:
    """Run the sweep; ``progress(done, total, row)`` after every point, ``should_stop()`` polled to cancel.

    ``engine``: None runs every point in this process; 'local' or 'ray' (or an engine from
    ``kcp.engines.make_engine``, which the caller closes) runs them in parallel, with the same rows.
    """
    return sweep_network([target], config, cache=cache, progress=progress, should_stop=should_stop, engine=engine)


def sweep_network(
    targets: Sequence[LayerTarget],
    config: SweepConfig,
    *,
    cache: ResultCache | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    engine: Engine | str | None = None,
) -> SweepResult:
    """The same sweep over several layers (of one network) at once, all their points in one task graph.

    Rows come layer by layer in the order of ``targets``, each layer's as :func:`sweep` gives them.
    """
    started = time.perf_counter()
    if not targets:
        raise ValueError("give at least one layer to sweep")
    own = engine is None or isinstance(engine, str)
    runner_engine = make_engine(engine) if own else engine
    try:
        layers = [_Layer(t, config, cache, runner_engine, should_stop, several=len(targets) > 1) for t in targets]
        run = _Run(layers, runner_engine, cache, progress, should_stop)
        cancelled = run.points()
        if not cancelled and config.latency is not None and not runner_engine.in_process:
            cancelled = run.timings()
    finally:
        if own:
            runner_engine.close()
    rows = [row for layer in layers for row in layer.ordered_rows()]
    if len(layers) == 1:
        described = _describe(config, layers[0].runner.shape, targets[0])
    else:
        described = asdict(replace(config, factors=None))
        described["layers"] = [_describe(config, layer.runner.shape, layer.target) for layer in layers]
    return SweepResult(rows, cancelled=cancelled, seconds=time.perf_counter() - started, config=described)


@dataclass(frozen=True)
class _Point:
    """One row of a layer's sweep; ``after`` is the index of the point it warm-starts from."""

    method: str
    ranks: tuple[tuple[str, int], ...] = ()
    matched_to: str = ""
    after: int | None = None


class _Entries:
    """The cache as a task sees it: the entries the driver sent along, and the ones the task made."""

    def __init__(self, entries: dict[str, dict]) -> None:
        self.entries, self.writes = dict(entries), {}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = self.writes[key] = value


def _dense_timing(target: LayerTarget, latency: LatencySettings) -> Timing:
    return measure(target.conv, (target.kernel_shape[1], *target.in_hw), latency)


def _point_task(target: LayerTarget, config: SweepConfig, point: _Point, init: tuple[str, dict] | None,
                entries: dict[str, dict], should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One point's decomposition and metrics (a task, run by an engine), reading the cache only from ``entries``."""
    runner = _Runner(target, config, _Entries(entries), should_stop)  # type: ignore[arg-type]
    if point.method == "dense":
        key, result, row = _dense_row(runner)
    else:
        warm = None if init is None else (init[0], Decomposition.from_state(init[1]))
        key, result, seconds = runner.decomposition(point.method, dict(point.ranks), warm)
        row = runner.row(key, result, seconds, point.matched_to)
    return {"row": row, "key": key, "state": result.state(), "writes": runner.cache.writes}


def _dense_latency_columns(timing: Timing) -> dict[str, Any]:
    """The dense row's latency columns: its own figure on both sides, no speed-up to speak of."""
    return {"latency_ms": timing.median_ms, "dense_latency_ms": timing.median_ms, "device": timing.device_name,
            "latency_p10_ms": timing.p10_ms, "latency_p90_ms": timing.p90_ms}


def _timing_task(target: LayerTarget, state: dict, latency: LatencySettings, execution: str) -> dict[str, Any]:
    """The latency columns of one decomposition, paired with the dense layer's (a task: it runs where nothing else
    competes for the device)."""
    result = Decomposition.from_state(state)
    if result.method == "dense":
        return _dense_latency_columns(_dense_timing(target, latency))
    row = evaluate(target, result, output_error=False, fidelity=False, latency=latency, execution=execution)
    return {k: v for k, v in row.items() if k in TIMING_COLUMNS}


class _Layer:
    """One layer's plan, its driver-side runner (keys and cache) and its rows as they come in."""

    def __init__(self, target: LayerTarget, config: SweepConfig, cache: ResultCache | None, engine: Engine,
                 should_stop: Callable[[], bool] | None, several: bool) -> None:
        # An engine that runs points side by side leaves latency for afterwards: its tasks do not time.
        task_config = config if engine.in_process else replace(config, latency=None)
        self.target, self.config, self.task_config = target, config, task_config
        self.runner = _Runner(target, task_config, cache, should_stop)
        # Keys of the rows with latency (what an in-process sweep caches), where tasks do not time.
        self.timed = self.runner if task_config is config else _Runner(target, config, None, None)
        try:
            config.check(self.runner.shape)
        except ValueError as exc:
            raise ValueError(f"layer {target.name}: {exc}" if several else str(exc)) from None
        kt_ranks, cp_ranks = sorted(set(config.kt_ranks)), sorted(set(config.cp_ranks))
        self.plan = [_Point("dense")]
        if "kcp" in config.methods:
            self.plan += _kcp_points(kt_ranks, cp_ranks, config.warm_start, start=len(self.plan))
        self.plan += [_Point(m, ranks, "; ".join(matched))
                      for (m, ranks), matched in _baseline_plan(self.runner, kt_ranks, cp_ranks).items()]
        self.shared: Any = None
        self.rows: dict[int, dict[str, Any]] = {}
        self.results: dict[int, tuple[str, dict]] = {}

    def ordered_rows(self) -> list[dict[str, Any]]:
        return [self.rows[i] for i in sorted(self.rows)]

    def error_row(self, point: _Point, message: str) -> dict[str, Any]:
        ranks = dict(point.ranks)
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(ranks, model=self.target.model, layer=self.target.name, method=point.method,
                   matched_to=point.matched_to, error=message)
        row["rank"] = ranks.get("rank", ranks.get("kt_rank", ranks.get("out_rank")))
        return row


def _kcp_points(kt_ranks: Sequence[int], cp_ranks: Sequence[int], warm_start: bool, start: int) -> list[_Point]:
    """Row by row of KT rank: each point warm-starts from its left neighbour, a row's first from the one above."""
    points: list[_Point] = []
    above: int | None = None
    for r in kt_ranks:
        left: int | None = None
        for k in cp_ranks:
            after = (left if left is not None else above) if warm_start else None
            points.append(_Point("kcp", (("kt_rank", r), ("cp_rank", k)), after=after))
            left = start + len(points) - 1
            if k == cp_ranks[0]:
                above = left
    return points


class _Run:
    """The driver: hands points to the engine, writes what comes back to the cache, reports progress."""

    def __init__(self, layers: list[_Layer], engine: Engine, cache: ResultCache | None,
                 progress: Callable[[int, int, dict[str, Any]], None] | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.layers, self.engine, self.cache = layers, engine, cache
        self.progress, self.should_stop = progress, should_stop or (lambda: False)
        self.done = 0
        self.total = sum(len(layer.plan) for layer in layers)

    def _report(self, row: dict[str, Any]) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, row)

    def points(self) -> bool:
        """Every layer's points; True if stopped early."""
        nodes = [Node((li, i), None if p.after is None else (li, p.after))
                 for li, layer in enumerate(self.layers) for i, p in enumerate(layer.plan)]
        return run_graph(self.engine, nodes, self._start, self._finish, self._fail, self.should_stop)

    def _start(self, node: Node, before: tuple[str, dict] | None) -> tuple[str, Any]:
        li, i = node.id
        layer, point = self.layers[li], self.layers[li].plan[node.id[1]]
        runner = layer.runner
        init = before if point.after is not None else None
        key = runner.decomposition_key(point.method, dict(point.ranks), init[0] if init else None)
        mkey = runner.metrics_key(key)
        entries = {k: v for k in (key, mkey) if self.cache is not None and (v := self.cache.get(k)) is not None}
        fresh_timing = point.method == "dense" and layer.task_config.latency is not None
        if len(entries) == 2 and not fresh_timing:
            row = {**entries[mkey]["row"], "matched_to": point.matched_to}
            return "value", {"row": row, "key": key, "state": entries[key]["state"], "writes": {}}
        if layer.shared is None:
            layer.shared = self.engine.share(layer.target)
        kwargs = {"should_stop": self.should_stop} if self.engine.in_process else {}
        args = (layer.shared, layer.task_config, point, init, entries)
        return "task", (_point_task, args, kwargs)

    def _finish(self, node: Node, value: dict[str, Any]) -> tuple[str, dict]:
        li, i = node.id
        layer = self.layers[li]
        if self.cache is not None:
            for key, entry in value["writes"].items():
                self.cache.put(key, entry)
        layer.rows[i], layer.results[i] = {**value["row"], "error": None}, (value["key"], value["state"])
        if layer.plan[i].method == "dense":
            layer.rows[i]["fit"] = layer.config.fit  # the dense layer (one cache entry) is the same under either fit
        self._report(layer.rows[i])
        return value["key"], value["state"]

    def _fail(self, node: Node, message: str) -> None:
        li, i = node.id
        layer = self.layers[li]
        layer.rows[i] = layer.error_row(layer.plan[i], message)
        self._report(layer.rows[i])

    def timings(self) -> bool:
        """Latency of every point, after all of them are done: one at a time on the driver, or, on a GPU,
        as tasks that each request one (where the engine has such tasks). True if stopped early."""
        latency = self.layers[0].config.latency
        on_gpu = latency is not None and latency.device.startswith("cuda") and self.engine.gpu_tasks
        engine = self.engine if on_gpu else Engine()
        nodes = [Node((li, i), None) for li, layer in enumerate(self.layers)
                 for i in sorted(layer.results) if not layer.rows[i].get("error")]
        saved = {(li, i): self._saved_timing(li, i) for li, i in (n.id for n in nodes)}
        self.done, self.total = 0, len(nodes)

        def start(node: Node, _before: None) -> tuple[str, Any]:
            li, i = node.id
            layer = self.layers[li]
            if saved[node.id] is not None:
                return "value", saved[node.id]
            if layer.shared is None or not on_gpu:
                layer.shared = engine.share(layer.target) if on_gpu else layer.target
            args = (layer.shared, layer.results[i][1], latency, layer.config.execution)
            return "task", (_timing_task, args, {"gpu": True} if on_gpu else {})

        def finish(node: Node, columns: dict[str, Any]) -> float | None:
            li, i = node.id
            layer = self.layers[li]
            row = layer.rows[i]
            row.update(columns)
            if self.cache is not None and saved[node.id] is None:
                self.cache.put(self._timed_key(li, i), {"row": {k: v for k, v in row.items() if k != "matched_to"}})
            self._report(row)
            return row["latency_ms"]

        def fail(node: Node, message: str) -> None:
            li, i = node.id
            self.layers[li].rows[i]["error"] = f"latency: {message}"
            self._report(self.layers[li].rows[i])

        return run_graph(engine, nodes, start, finish, fail, self.should_stop)

    def _timed_key(self, li: int, i: int) -> str:
        layer = self.layers[li]
        return layer.timed.metrics_key(layer.results[i][0])

    def _saved_timing(self, li: int, i: int) -> dict[str, Any] | None:
        """A point's latency columns from the cache (a row timed before); the dense layer's are always fresh."""
        if self.cache is None or self.layers[li].plan[i].method == "dense":
            return None
        hit = self.cache.get(self._timed_key(li, i))
        return None if hit is None else {k: v for k, v in hit["row"].items() if k in TIMING_COLUMNS}


def _dense_row(runner: _Runner) -> tuple[str, Decomposition, dict[str, Any]]:
    t, c = runner.target, runner.config
    timing = None if c.latency is None else _dense_timing(t, c.latency)
    key, res, secs = runner.decomposition("dense", {}, None)
    row = runner.row(key, res, secs)
    if timing is not None:  # the dense layer's own figure is always fresh, never a cached one
        row.update(_dense_latency_columns(timing))
    return key, res, row


def _baseline_plan(runner: _Runner, kt_ranks, cp_ranks) -> dict[tuple, list[str]]:
    """Each baseline's ranks for every KCP point's budget, merged: {(method, ranks): [KCP points matched]}."""
    t, c = runner.target, runner.config
    plan: dict[tuple, list[str]] = {}
    for r in kt_ranks:
        for k in cp_ranks:
            probe = Decomposition("kcp", t.kernel_shape, {"kt_rank": r, "cp_rank": k}, {}, runner.shape)
            budget = probe.params() if c.match == "params" else probe.macs(t.in_hw, t.geometry, c.execution)
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
