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
from kcp.engines import Engine
from kcp.latency import LatencySettings
from kcp.network.apply import apply_plan, network_costs, predictions, scores
from kcp.network.data import NetworkData
from kcp.network.finetune import FinetuneConfig, FinetuneResult, finetune
from kcp.network.plan import LAYER_LATENCY, Budget, Plan, PlanConfig, Planner

# The CSV's columns: the report's scalars, one row per plan (or uniform-grid point).
SCALARS = (
    "model", "kt_rank", "cp_rank", "budget_kind", "budget_value", "compression", "params", "dense_params",
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
        net = apply_plan(self.loaded, plan)
        zero = scores(predictions(net, self.data.eval_x), self.data.eval_y, self.reference)
        costs = network_costs(net, self.loaded.input_size, self.settings.latency)
        tuned = None
        if tune and self.settings.finetune.steps > 0:
            tuned = finetune(net, self.data, reference_eval=self.reference, teacher=self.loaded.model,
                             config=self.settings.finetune, progress=progress, should_stop=should_stop)
        dc = self.dense_costs
        budget = plan.budget
        report = {
            "model": self.loaded.name, "kt_rank": None if plan.uniform is None else plan.uniform[0],
            "cp_rank": None if plan.uniform is None else plan.uniform[1],
            "budget_kind": None if budget is None else budget.kind, "budget_value": None if budget is None else
            budget.value, "compression": plan.compression, "params": plan.params, "dense_params": plan.dense_params,
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
        return NetworkRun(plan, net, report, tuned)

    def budget_run(self, budget: Budget, **kwargs) -> NetworkRun:
        """Plan under ``budget`` and run it."""
        return self.run(self.planner.plan(budget, should_stop=kwargs.get("should_stop")), **kwargs)

    def grid(self, kt_ranks: Sequence[int], cp_ranks: Sequence[int], *,
             progress: Callable[[int, int, dict[str, Any]], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[list[dict[str, Any]], bool]:
        """The uniform grid: one report per (KT rank, CP rank), each cached once complete. Returns the reports
        and whether it was cancelled (the finished points stay cached)."""
        points = [(r, k) for r in kt_ranks for k in cp_ranks]
        reports: list[dict[str, Any]] = []
        for r, k in points:
            if should_stop is not None and should_stop():
                return reports, True
            key = self._point_key(r, k)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is None:
                started, cpu = time.perf_counter(), time.process_time()
                done = self.run(self.planner.uniform(r, k, should_stop=should_stop), should_stop=should_stop)
                if done.finetune is not None and done.finetune.cancelled:
                    return reports, True
                hit = {"report": {**done.report, "seconds": round(time.perf_counter() - started, 3),
                                  "cpu_seconds": round(time.process_time() - cpu, 3)}}
                if self.cache is not None:
                    self.cache.put(key, hit)
            reports.append(hit["report"])
            if progress is not None:
                progress(len(reports), len(points), hit["report"])
        return reports, False

    def _point_key(self, kt_rank: int, cp_rank: int) -> str:
        s = self.settings
        return cache_key(kind="network-point", model=self.loaded.name, weights=self.loaded.weights_id,
                         kt_rank=kt_rank, cp_rank=cp_rank, data=self.data.name, plan=dataclasses.asdict(s.plan),
                         finetune=dataclasses.asdict(s.finetune),
                         latency=None if s.latency is None else dataclasses.asdict(s.latency),
                         torch=torch.__version__)
