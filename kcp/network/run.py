"""One whole-network run: plan, apply, measure, fine-tune, and the report row (the CLI's JSON, the dashboard's).

A uniform-grid point's report is cached on disk once it is complete, so an interrupted grid resumes where it
stopped; budget plans reuse the cached per-layer sweeps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kcp import zoo
from kcp.cache import ResultCache, cache_key
from kcp.engines import Cancelled, Engine, Node, run_graph
from kcp.latency import LatencySettings
from kcp.network.apply import NetworkCosts, apply_plan, network_costs, predictions, scores
from kcp.network.data import NetworkData
from kcp.network.finetune import FinetuneConfig, FinetuneResult, finetune
from kcp.network.plan import LAYER_LATENCY, Budget, Plan, PlanCancelled, PlanConfig, Planner

# The CSV's columns: the report's scalars, one row per plan (or uniform-grid point).
SCALARS = (
    "model", "kt_rank", "cp_rank", "budget_kind", "budget_value", "fit", "compression", "params", "dense_params",
    "total_params", "dense_total_params", "conv_macs", "dense_conv_macs", "macs", "dense_macs", "accuracy_dense",
    "accuracy_zero_shot", "accuracy_finetuned", "top1_agreement_zero_shot", "top1_agreement_finetuned",
    "latency_ms", "dense_latency_ms", "device", "finetune_steps", "finetune_seconds", "data", "seed",
)
LAYER_KEYS = ("name", "method", "ranks", "params", "dense_params", "macs", "dense_macs", "rel_error",
              "output_rel_error", "note")


@dataclass(frozen=True)
class RunSettings:
    """Everything besides the budget that shapes a run's figures (and so its cache key)."""

    plan: PlanConfig = field(default_factory=PlanConfig)
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(steps=0))
    latency: LatencySettings | None = field(default_factory=lambda: LatencySettings(runs=20))


@dataclass
class NetworkRun:
    """A finished run: the plan, the compressed (and fine-tuned) network and the report."""

    plan: Plan
    net: nn.Module
    report: dict[str, Any]
    finetune: FinetuneResult | None = None


class Session:
    """One model on one data set: the dense network's figures (measured once) and the planner's sweeps."""

    def __init__(self, loaded: zoo.LoadedModel, data: NetworkData, settings: RunSettings | None = None, *,
                 cache: ResultCache | None = None, engine: Engine | None = None) -> None:
        self.loaded, self.data, self.cache, self.engine = loaded, data, cache, engine
        self.settings = settings or RunSettings()
        self.reference = predictions(loaded.model, data.eval_x)
        self.dense = scores(self.reference, data.eval_y, self.reference)
        self.dense_costs = network_costs(loaded.model, loaded.input_size, self.settings.latency)
        self._planner: Planner | None = None

    @property
    def planner(self) -> Planner:
        if self._planner is None:
            latency = LAYER_LATENCY if self.settings.latency is not None else None
            self._planner = Planner(self.loaded, self.data, self.settings.plan, cache=self.cache, latency=latency,
                                    engine=self.engine)
        return self._planner

    def run(self, plan: Plan, *, tune: bool = True, progress: Callable[[int, int, dict | None], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> NetworkRun:
        """Apply ``plan``, measure it, fine-tune it if ``tune`` and the settings ask for steps, and report."""
        config = self.settings.finetune if tune else dataclasses.replace(self.settings.finetune, steps=0)
        trained = train_plan(self.loaded, self.data, plan, config, self.reference, progress=progress,
                             should_stop=should_stop)
        costs = network_costs(trained.net, self.loaded.input_size, self.settings.latency)
        return NetworkRun(plan, trained.net, self._report(plan, trained.zero, costs, trained.tuned), trained.tuned)

    def _report(self, plan: Plan, zero: dict[str, Any], costs: NetworkCosts,
                tuned: FinetuneResult | None) -> dict[str, Any]:
        dc = self.dense_costs
        budget = plan.budget
        return {
            "model": self.loaded.name, "kt_rank": None if plan.uniform is None else plan.uniform[0],
            "cp_rank": None if plan.uniform is None else plan.uniform[1],
            "budget_kind": None if budget is None else budget.kind, "budget_value": None if budget is None else
            budget.value, "fit": self.settings.plan.fit, "compression": plan.compression, "params": plan.params,
            "dense_params": plan.dense_params,
            "total_params": costs.params, "dense_total_params": dc.params, "conv_macs": plan.macs,
            "dense_conv_macs": plan.dense_macs, "macs": costs.macs, "dense_macs": dc.macs,
            "modelled_latency_ms": plan.modelled_latency_ms(),
            "accuracy_dense": self.dense["accuracy"], "accuracy_zero_shot": zero["accuracy"],
            "accuracy_finetuned": None if tuned is None else tuned.final["accuracy"],
            "top1_agreement_zero_shot": zero["top1_agreement"],
            "top1_agreement_finetuned": None if tuned is None else tuned.final["top1_agreement"],
            "latency_ms": costs.latency_ms, "dense_latency_ms": dc.latency_ms, "device": costs.device,
            "finetune_steps": None if tuned is None else tuned.steps,
            "finetune_seconds": None if tuned is None else round(tuned.seconds, 3),
            "data": self.data.name, "n_eval": len(self.data.eval_x), "seed": self.settings.finetune.seed,
            "layers": [{k: v for k, v in layer.to_dict().items() if k in LAYER_KEYS} for layer in plan.layers],
            "finetune": None if tuned is None else {**tuned.to_dict(), "lr": self.settings.finetune.lr,
                                                    "batch": self.settings.finetune.batch,
                                                    "distill": self.settings.finetune.distill},
        }

    def budget_run(self, budget: Budget, **kwargs) -> NetworkRun:
        """Plan under ``budget`` and run it."""
        return self.run(self.planner.plan(budget, should_stop=kwargs.get("should_stop")), **kwargs)

    def grid(self, kt_ranks: Sequence[int], cp_ranks: Sequence[int], *,
             progress: Callable[[int, int, dict[str, Any]], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[list[dict[str, Any]], bool]:
        """The uniform grid: one report per (KT rank, CP rank), each cached once complete. Returns the reports
        (in grid order) and whether it was cancelled (the finished points stay cached).

        The driver plans each point (the per-layer sweeps, cached) and the session's engine fine-tunes it: on a
        local pool of two one-thread workers two points train at once. Latency is timed here afterwards, one
        network at a time, never beside a training worker; a point trained but not yet timed is cached as such
        and only timed on a rerun."""
        points = [(r, k) for r in kt_ranks for k in cp_ranks]
        engine = self.engine or Engine()
        stop = should_stop or (lambda: False)
        done: dict[tuple[int, int], dict[str, Any]] = {}
        plans: dict[tuple[int, int], Plan] = {}
        failed: list[str] = []
        pending: list[tuple[int, int]] = []
        shared: list[Any] = []

        def start(node: Node, _before: None) -> tuple[str, Any]:
            hit = self.cache.get(self._point_key(*node.id)) if self.cache is not None else None
            if hit is not None and not (hit.get("untimed") and self.settings.latency is not None):
                return "value", hit["report"]
            plans[node.id] = plan = self.planner.uniform(*node.id, should_stop=should_stop)
            if hit is not None:
                return "value", hit["report"]
            if not shared:
                shared.extend((engine.share(self.loaded), engine.share(self.data)))
            inline = {"should_stop": should_stop} if engine.in_process else {}
            return "task", (grid_point, (*shared, plan, self.settings.finetune, self.reference), inline)

        def finish(node: Node, value: dict[str, Any] | GridPoint) -> None:
            if isinstance(value, GridPoint):
                if value.tuned is not None and value.tuned.cancelled:
                    raise Cancelled
                report = {**self._report(plans[node.id], value.zero, value.costs, value.tuned),
                          "seconds": value.seconds, "cpu_seconds": value.cpu_seconds}
            else:
                report = value
            if self.settings.latency is None or engine.in_process or node.id not in plans:
                done[node.id] = report if node.id not in plans else self._timed(report, plans[node.id])
            else:
                done[node.id] = report
                pending.append(node.id)
                if self.cache is not None:
                    self.cache.put(self._point_key(*node.id), {"report": report, "untimed": True})
            if progress is not None:
                progress(len(done), len(points), done[node.id])

        def fail(node: Node, message: str) -> None:
            failed.append(f"R={node.id[0]} K={node.id[1]}: {message}")

        try:
            cancelled = run_graph(engine, [Node(p) for p in points], start, finish, fail, should_stop=stop)
        except PlanCancelled:
            cancelled = True
        for point in pending:  # trained side by side: timed now, one network at a time
            done[point] = self._timed(done[point], plans[point])
        if failed:
            raise RuntimeError(f"{len(failed)} grid point(s) failed: {'; '.join(failed)}")
        return [done[p] for p in points if p in done], cancelled

    def _timed(self, report: dict[str, Any], plan: Plan) -> dict[str, Any]:
        """``report`` with its network's measured latency (where the settings ask for it), cached as complete."""
        if self.settings.latency is not None:
            costs = network_costs(apply_plan(self.loaded, plan), self.loaded.input_size, self.settings.latency)
            report = {**report, "latency_ms": costs.latency_ms, "device": costs.device}
        if self.cache is not None:
            self.cache.put(self._point_key(*plan.uniform), {"report": report})
        return report

    def _point_key(self, kt_rank: int, cp_rank: int) -> str:
        s = self.settings
        return cache_key(kind="network-point", model=self.loaded.name, weights=self.loaded.weights_id,
                         kt_rank=kt_rank, cp_rank=cp_rank, data=self.data.name, plan=dataclasses.asdict(s.plan),
                         finetune=dataclasses.asdict(s.finetune),
                         latency=None if s.latency is None else dataclasses.asdict(s.latency),
                         torch=torch.__version__)


@dataclass
class Trained:
    """A plan applied to a copy of the network, its zero-shot scores and its fine-tuning (None: not tuned)."""

    net: nn.Module
    zero: dict[str, Any]
    tuned: FinetuneResult | None


def train_plan(loaded: zoo.LoadedModel, data: NetworkData, plan: Plan, config: FinetuneConfig,
               reference: torch.Tensor, *, progress: Callable[[int, int, dict | None], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Trained:
    """Apply ``plan``, score it zero-shot on the held-out images and fine-tune it (when ``config.steps`` > 0)."""
    net = apply_plan(loaded, plan)
    zero = scores(predictions(net, data.eval_x), data.eval_y, reference)
    tuned = None
    if config.steps > 0:
        tuned = finetune(net, data, reference_eval=reference, teacher=loaded.model, config=config,
                         progress=progress, should_stop=should_stop)
    return Trained(net, zero, tuned)


@dataclass
class GridPoint:
    """What a grid point's task sends back: scores, fine-tuning, untimed costs and its own wall and CPU time."""

    zero: dict[str, Any]
    tuned: FinetuneResult | None
    costs: NetworkCosts
    seconds: float
    cpu_seconds: float


def grid_point(loaded: zoo.LoadedModel, data: NetworkData, plan: Plan, config: FinetuneConfig,
               reference: torch.Tensor, should_stop: Callable[[], bool] | None = None) -> GridPoint:
    """One grid point's task (runs on an engine's worker): train the plan; latency is left to the driver."""
    started, cpu = time.perf_counter(), time.process_time()
    trained = train_plan(loaded, data, plan, config, reference, should_stop=should_stop)
    return GridPoint(trained.zero, trained.tuned, network_costs(trained.net, loaded.input_size),
                     round(time.perf_counter() - started, 3), round(time.process_time() - cpu, 3))
