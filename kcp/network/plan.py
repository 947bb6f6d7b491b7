"""A whole-network plan: for every conv a method and ranks (or kept dense), under one budget.

Candidates come from one cached per-layer sweep each (:func:`kcp.sweep.sweep`: KCP over a KT x CP grid, the
baselines at matching budgets, and the dense layer). The allocation is a Lagrangian (knapsack) rule: each
layer's candidates are reduced to the lower convex hull of (cost, error); every layer starts at its cheapest
hull point, and the step that buys the most error reduction per unit of cost is taken while it fits the budget.
On convex hulls this greedy order gives exactly the solutions of ``min sum_l err_l + lambda * cost_l`` for a
falling multiplier ``lambda``, so every plan it stops at is optimal for the budget it spends, and by
construction it never spends more than the budget.

The error of a layer is its squared relative output error on calibration activations (training images,
never evaluation images); summing them treats the layers' output perturbations as independent noise of that
energy. Without activations the squared relative kernel error stands in.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kcp import zoo
from kcp.cache import ResultCache
from kcp.decomposition import REFINE_SWEEPS, Decomposition
from kcp.decomposition.moments import patch_moments
from kcp.decomposition.outputs import check_fit_name
from kcp.engines import Engine
from kcp.fit import DEFAULT_FIT
from kcp.geometry import ConvGeometry
from kcp.kron import make_factor_shape, max_cp_rank, max_kt_rank
from kcp.latency import LatencySettings, measure
from kcp.methods import DECOMPOSITIONS
from kcp.network.data import NetworkData
from kcp.sweep import SweepConfig, point_decomposition, sweep
from kcp.target import LayerTarget, fixed_moments
from kcp.zoo.activations import batch_size
from kcp.zoo.hooks import thread_hooks

BUDGET_KINDS = ("compression", "macs", "latency")
GRID = (1, 2, 4, 8)
CALIBRATION_IMAGES = 256
# Cheap per-layer timings for the latency budget (the applied network is timed properly afterwards).
LAYER_LATENCY = LatencySettings(runs=10, warmup=2, min_run_time=0.05)
_COST = {"compression": "params", "macs": "macs", "latency": "latency_ms"}
# Which of a sweep row's rank columns are the method's ranks (the keywords of its decomposition function).
RANK_KEYS = {"dense": (), "kcp": ("kt_rank", "cp_rank"), "kt": ("kt_rank",), "cp": ("rank",), "svd": ("rank",),
             "tucker2": ("in_rank", "out_rank")}


class PlanCancelled(Exception):
    """The caller asked to stop while the per-layer sweeps ran (finished sweeps stay cached)."""


@dataclass(frozen=True)
class Budget:
    """``compression``: dense conv params / plan conv params >= value; ``macs``: conv MACs <= value x dense;
    ``latency``: modelled latency <= value x dense (per-layer timings plus the rest of the dense network)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}, got {self.kind!r}")
        if self.kind == "compression" and not self.value >= 1:
            raise ValueError(f"a compression budget must be at least 1 (1 = dense), got {self.value}")
        if self.kind != "compression" and not 0 < self.value <= 1:
            raise ValueError(f"a {self.kind} budget is a fraction of the dense network's, in (0, 1], got {self.value}")


@dataclass(frozen=True)
class PlanConfig:
    """What the per-layer sweeps try: methods, the KT x CP grid (clamped per layer), fit and decomposition options."""

    methods: tuple[str, ...] = DECOMPOSITIONS
    kt_ranks: tuple[int, ...] = GRID
    cp_ranks: tuple[int, ...] = GRID
    fit: str = DEFAULT_FIT
    refine_sweeps: int = REFINE_SWEEPS
    seed: int = 0
    calibration_images: int = CALIBRATION_IMAGES

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in DECOMPOSITIONS]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}: choose from {', '.join(DECOMPOSITIONS)}")
        check_fit_name(self.fit)


@dataclass
class LayerPlan:
    """One conv of the plan. ``decomposition`` is None for a layer kept dense."""

    name: str
    method: str
    ranks: dict[str, int]
    params: int
    dense_params: int
    macs: int
    dense_macs: int
    rel_error: float | None = 0.0
    output_rel_error: float | None = 0.0
    latency_ms: float | None = None
    dense_latency_ms: float | None = None
    note: str = ""
    decomposition: Decomposition | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "decomposition"}


@dataclass
class Plan:
    """Every conv of a network (registration order) with its method and ranks, and how it was chosen."""

    model: str
    weights_id: str
    layers: list[LayerPlan]
    budget: Budget | None = None
    uniform: tuple[int, int] | None = None
    rest_latency_ms: float | None = None

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def dense_params(self) -> int:
        return sum(layer.dense_params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def dense_macs(self) -> int:
        return sum(layer.dense_macs for layer in self.layers)

    @property
    def compression(self) -> float:
        """Dense conv parameters over the plan's, all convs counted (those kept dense included)."""
        return self.dense_params / max(self.params, 1)

    def modelled_latency_ms(self) -> float | None:
        if self.rest_latency_ms is None or any(layer.latency_ms is None for layer in self.layers):
            return None
        return self.rest_latency_ms + sum(layer.latency_ms for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "budget": None if self.budget is None else dataclasses.asdict(self.budget),
            "kt_rank": None if self.uniform is None else self.uniform[0],
            "cp_rank": None if self.uniform is None else self.uniform[1],
            "compression": self.compression, "params": self.params, "dense_params": self.dense_params,
            "macs": self.macs, "dense_macs": self.dense_macs, "modelled_latency_ms": self.modelled_latency_ms(),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def calibration_inputs(loaded: zoo.LoadedModel, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The inputs reaching each of ``layers`` from ``images`` (one pass over the network, first call per layer)."""
    convs = {name: zoo.get_conv(loaded, name) for name in layers}
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    seen: set[str] = set()

    def grab(name: str, inputs: tuple[torch.Tensor, ...]) -> None:
        if name not in seen:  # a layer run twice in one pass keeps its first input, as layer_inputs does
            seen.add(name)
            captured[name].append(inputs[0].detach().clone())

    with thread_hooks(convs, pre=grab), torch.no_grad():
        for batch in images.split(batch_size(loaded)):
            seen.clear()
            loaded.model(batch)
    return {name: torch.cat(parts) for name, parts in captured.items() if parts}


class Planner:
    """The per-layer sweeps of one model on one calibration set, and plans made from them."""

    def __init__(self, loaded: zoo.LoadedModel, data: NetworkData, config: PlanConfig | None = None, *,
                 cache: ResultCache | None = None, latency: LatencySettings | None = None,
                 engine: Engine | None = None) -> None:
        if loaded.model is None:
            raise ValueError(f"{loaded.name} is a bare state dict: a network plan needs the network")
        self.loaded, self.config, self.cache, self.latency = loaded, config or PlanConfig(), cache, latency
        self.engine = engine  # where the per-layer sweeps run (None: this process)
        self.infos = zoo.conv_layers(loaded)
        self.eligible = [i.name for i in self.infos if i.kcp_ok and i.in_hw is not None]
        images = data.calibration(self.config.calibration_images)
        self.inputs = calibration_inputs(loaded, images, self.eligible)
        self._targets: dict[str, LayerTarget] = {}
        self._rows: dict[tuple, list[dict[str, Any]]] = {}
        self._dense_latency: dict[str, float] = {}

    def target(self, name: str) -> LayerTarget:
        if name not in self._targets:
            info = next(i for i in self.infos if i.name == name)
            conv, x = zoo.get_conv(self.loaded, name), self.inputs.get(name)
            # An output fit learns from the same calibration images whose output error ranks the candidates:
            # neither ever sees the evaluation images the plan is judged on.
            moments = None if x is None or self.config.fit != "outputs" else fixed_moments(
                patch_moments(x, conv.kernel_size, ConvGeometry.from_conv(conv)))
            self._targets[name] = LayerTarget(self.loaded.name, name, conv, tuple(info.in_hw), self.loaded.weights_id,
                                              x, calibration=moments)
        return self._targets[name]

    def sweep_config(self, name: str, kt_ranks, cp_ranks, methods) -> SweepConfig:
        """The layer's sweep: ranks clamped to its largest meaningful ones; cold starts so that the plan can take
        any point's decomposition straight from the cache."""
        shape = make_factor_shape(self.target(name).kernel_shape)
        kts = tuple(sorted({min(r, max_kt_rank(shape)) for r in kt_ranks}))
        cps = tuple(sorted({min(k, max_cp_rank(shape)) for k in cp_ranks}))
        c = self.config
        return SweepConfig(kt_ranks=kts, cp_ranks=cps, methods=tuple(methods), refine_sweeps=c.refine_sweeps,
                           seed=c.seed, warm_start=False, output_error=True, fidelity=False, latency=self.latency,
                           fit=c.fit)

    def rows(self, name: str, kt_ranks=None, cp_ranks=None, methods=None, *,
             should_stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """The sweep rows of one layer (from the cache when they are there)."""
        c = self.config
        config = self.sweep_config(name, kt_ranks or c.kt_ranks, cp_ranks or c.cp_ranks, methods or c.methods)
        key = (name, config.kt_ranks, config.cp_ranks, config.methods)
        if key not in self._rows:
            result = sweep(self.target(name), config, cache=self.cache, should_stop=should_stop, engine=self.engine)
            if result.cancelled:
                raise PlanCancelled(f"stopped during the sweep of {name}")
            self._rows[key] = result.rows
        return self._rows[key]

    def decomposition(self, name: str, method: str, ranks: dict[str, int],
                      config: SweepConfig | None = None) -> Decomposition:
        """A candidate's decomposition: a cache hit after the sweep (``config``, default the plan's) that listed it."""
        c = self.config
        config = config or self.sweep_config(name, c.kt_ranks, c.cp_ranks, c.methods)
        return point_decomposition(self.target(name), config, method, ranks, cache=self.cache)

    def dense_layer(self, info: zoo.ConvLayerInfo, note: str) -> LayerPlan:
        macs = info.macs if info.macs is not None else 0
        params = info.weight_shape[0] * info.weight_shape[1] * info.weight_shape[2] * info.weight_shape[3]
        latency = self._layer_latency(info) if self.latency is not None else None
        return LayerPlan(info.name, "dense", {}, params, params, macs, macs, 0.0, 0.0, latency, latency, note)

    def _layer_latency(self, info: zoo.ConvLayerInfo) -> float:
        if info.name not in self._dense_latency:
            conv = zoo.get_conv(self.loaded, info.name)
            shape = (info.weight_shape[1], *(info.in_hw or info.weight_shape[2:]))
            self._dense_latency[info.name] = measure(conv, shape, self.latency).median_ms
        return self._dense_latency[info.name]

    def _layer(self, name: str, row: dict[str, Any], note: str = "", config: SweepConfig | None = None) -> LayerPlan:
        ranks = {k: row[k] for k in RANK_KEYS[row["method"]]}
        dense_latency = self._dense_latency.get(name)
        layer = LayerPlan(name, row["method"], ranks, row["params"], row["dense_params"], row["macs"],
                          row["dense_macs"], row["rel_error"], row["output_rel_error"], row["latency_ms"],
                          row["dense_latency_ms"] if dense_latency is None else dense_latency, note)
        if row["method"] != "dense":
            layer.decomposition = self.decomposition(name, row["method"], ranks, config)
        return layer

    def _rest_latency(self) -> float | None:
        """Dense network latency less its convs' own: what no plan changes."""
        if self.latency is None:
            return None
        input_size = self.loaded.input_size
        total = measure(self.loaded.model, input_size, self.latency).median_ms
        return max(0.0, total - sum(self._layer_latency(i) for i in self.infos if i.in_hw is not None))

    def _skipped(self) -> list[zoo.ConvLayerInfo]:
        return [i for i in self.infos if i.name not in self.eligible]

    def _note(self, info: zoo.ConvLayerInfo) -> str:
        return "kept dense: " + (info.kcp_reason if not info.kcp_ok else "the forward pass never reaches it")

    def plan(self, budget: Budget, *, progress: Callable[[int, int, str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Plan:
        """The allocation under ``budget`` (see the module's docstring); a ValueError if it cannot be met."""
        candidates: dict[str, list[dict[str, Any]]] = {}
        for done, name in enumerate(self.eligible):
            if progress is not None:
                progress(done, len(self.eligible), name)
            candidates[name] = self.rows(name, should_stop=should_stop)
            if self.latency is not None:
                for row in candidates[name]:
                    if row["method"] == "dense":
                        self._dense_latency[name] = row["latency_ms"]
        if progress is not None:
            progress(len(self.eligible), len(self.eligible), "")
        fixed = [self.dense_layer(i, self._note(i)) for i in self._skipped()]
        rest = self._rest_latency() if budget.kind == "latency" else None
        cost_key = _COST[budget.kind]
        fixed_cost = sum(getattr(layer, cost_key) for layer in fixed) + (rest or 0.0)
        dense_total = sum(getattr(layer, "dense_" + cost_key) for layer in fixed) + (rest or 0.0)
        dense_total += sum(next(r for r in rows if r["method"] == "dense")[cost_key] for rows in candidates.values())
        limit = dense_total / budget.value if budget.kind == "compression" else dense_total * budget.value
        chosen = allocate({n: rows for n, rows in candidates.items()}, limit - fixed_cost, cost_key)
        by_name = {layer.name: layer for layer in fixed}
        by_name.update({name: self._layer(name, row) for name, row in chosen.items()})
        layers = [by_name[i.name] for i in self.infos]
        return Plan(self.loaded.name, self.loaded.weights_id, layers, budget=budget, rest_latency_ms=rest)

    def uniform(self, kt_rank: int, cp_rank: int, *, should_stop: Callable[[], bool] | None = None) -> Plan:
        """KCP at (``kt_rank``, ``cp_rank``) at every eligible conv, clamped to each layer's largest meaningful
        ranks (with a note); the others kept dense."""
        if kt_rank < 1 or cp_rank < 1:
            raise ValueError(f"KT and CP ranks must be >= 1, got R={kt_rank} K={cp_rank}")
        layers = {i.name: self.dense_layer(i, self._note(i)) for i in self._skipped()}
        for name in self.eligible:
            rows = self.rows(name, (kt_rank,), (cp_rank,), ("kcp",), should_stop=should_stop)
            row = next(r for r in rows if r["method"] == "kcp")
            clamped = (row["kt_rank"], row["cp_rank"]) != (kt_rank, cp_rank)
            note = f"ranks clamped to R={row['kt_rank']} K={row['cp_rank']}, the layer's largest" if clamped else ""
            layers[name] = self._layer(name, row, note, self.sweep_config(name, (kt_rank,), (cp_rank,), ("kcp",)))
        return Plan(self.loaded.name, self.loaded.weights_id, [layers[i.name] for i in self.infos],
                    uniform=(kt_rank, cp_rank))


def _error(row: dict[str, Any]) -> float:
    err = row["output_rel_error"] if row.get("output_rel_error") is not None else row["rel_error"]
    return float(err) ** 2


def hull(rows: list[dict[str, Any]], cost_key: str) -> list[dict[str, Any]]:
    """The lower convex hull of (cost, error) over the rows, cheapest first (dominated points dropped)."""
    points = sorted(rows, key=lambda r: (r[cost_key], _error(r)))
    front: list[dict[str, Any]] = []
    for row in points:  # the Pareto front: strictly falling error as the cost grows
        if not front or _error(row) < _error(front[-1]):
            if front and row[cost_key] == front[-1][cost_key]:
                front.pop()
            front.append(row)
    out: list[dict[str, Any]] = []
    for row in front:  # then the convex part of it (monotone chain)
        while len(out) >= 2:
            (c1, e1), (c2, e2) = ((r[cost_key], _error(r)) for r in out[-2:])
            c3, e3 = row[cost_key], _error(row)
            if (e2 - e1) * (c3 - c1) >= (e3 - e1) * (c2 - c1):  # the middle point lies on or above the chord
                out.pop()
            else:
                break
        out.append(row)
    return out


def allocate(candidates: dict[str, list[dict[str, Any]]], limit: float, cost_key: str) -> dict[str, dict[str, Any]]:
    """One row per layer with total ``cost_key`` <= ``limit`` and (on the convex hulls) least summed error."""
    hulls = {name: hull(rows, cost_key) for name, rows in candidates.items()}
    level = {name: 0 for name in hulls}
    spent = sum(h[0][cost_key] for h in hulls.values())
    if spent > limit + 1e-9:
        raise ValueError(f"the budget cannot be met: even the cheapest candidate of every layer costs {spent:,.4g} "
                         f"{cost_key}, more than the {limit:,.4g} left for them; ask for a looser budget or add "
                         f"smaller ranks")
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        h, i = hulls[name], level[name]
        if i + 1 < len(h):
            gain = _error(h[i]) - _error(h[i + 1])
            extra = h[i + 1][cost_key] - h[i][cost_key]
            heapq.heappush(heap, (-gain / max(extra, 1e-12), name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], level[name]
        extra = h[i + 1][cost_key] - h[i][cost_key]
        if spent + extra <= limit + 1e-9:
            spent += extra
            level[name] = i + 1
            push(name)
        # else: this layer's next step does not fit, and its later steps cost more still: it stays where it is
    return {name: hulls[name][level[name]] for name in hulls}


def plan_network(loaded: zoo.LoadedModel, data: NetworkData, budget: Budget, config: PlanConfig | None = None, *,
                 cache: ResultCache | None = None, latency: LatencySettings | None = None, **kwargs) -> Plan:
    """One call: the per-layer sweeps (cached) and the allocation under ``budget``."""
    if budget.kind == "latency" and latency is None:
        latency = LAYER_LATENCY
    return Planner(loaded, data, config, cache=cache, latency=latency).plan(budget, **kwargs)

