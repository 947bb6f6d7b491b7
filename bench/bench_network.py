"""Whole-network figures: fine-tuning throughput of KCP's executions against the dense network, and (optional)
the uniform grid on digits-cnn and CIFAR ResNet plans at 5x and 10x.

    python bench/bench_network.py                 # throughput: prints a table, writes bench/results/network_cpu.json
    python bench/bench_network.py --grid          # + the uniform 4 x 4 grid, 300 steps per point, two points at
                                                  # a time on a local pool (cached, resumable: use a fresh
                                                  # --cache-dir to time it)
    python bench/bench_network.py --cifar         # + CIFAR ResNet-20/56 plans at 5x and 10x (needs ../shared/weights
                                                  # linked into $TORCH_HOME/hub/checkpoints)

Goals (issue 10): the grid under 10 minutes on this 2-core CPU; KCP trains no slower than its MACs suggest.
Timings on a shared machine are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from _common import SHARED_WEIGHTS, machine, table, write

from kcp import zoo
from kcp.cache import ResultCache
from kcp.engines import make_engine
from kcp.fit import FITS
from kcp.modules import KCPConv2d
from kcp.network.apply import apply_plan
from kcp.network.data import network_data
from kcp.network.finetune import FinetuneConfig, training_execution
from kcp.network.plan import Budget, PlanConfig
from kcp.network.run import RunSettings, Session

PATHS = ("layered", "dense", "merged", "full")
RANKS = ((4, 4), (2, 4), (1, 1), (8, 8))
BATCH, STEPS = 128, 8
GRID = (1, 2, 4, 8)
GRID_COLUMNS = ("kt_rank", "cp_rank", "compression", "accuracy_zero_shot", "accuracy_finetuned", "latency_ms",
                "dense_latency_ms", "seconds", "cpu_seconds")
# A 2 x 2 KCP grid and 10 refinement sweeps keep the per-layer sweeps of the ResNets affordable on a shared CPU.
CIFAR_PLAN = PlanConfig(methods=("kcp", "kt", "svd"), kt_ranks=(1, 2), cp_ranks=(1, 2), refine_sweeps=10)
CIFAR_MODELS = ("cifar-resnet20", "cifar-resnet56")
# Label-free distillation from the dense network's logits on the calibration photos' views (agreement measured
# on the other photos'); steps kept so that four plans fine-tune in minutes on this CPU.
CIFAR_STEPS = 100


def step_ms(net, x, y, steps: int = STEPS) -> float:
    """Median wall time of one Adam step (forward, backward, update) in train mode."""
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def throughput(cache: ResultCache) -> list[dict]:
    """Adam steps per path: the dense network and KCP plans on each execution, and as fine-tuning trains them
    ('train': :func:`training_execution` per module, channels_last)."""
    loaded = zoo.load_model("digits-cnn")
    data = network_data(loaded)
    session = Session(loaded, data, RunSettings(latency=None), cache=cache)
    x, y = data.train_x[:BATCH], data.train_y[:BATCH]
    nets = {("dense", "-"): copy.deepcopy(loaded.model), ("dense", "train"): copy.deepcopy(loaded.model)}
    plans = {}
    for rank in RANKS:
        plans[rank] = plan = session.planner.uniform(*rank)
        for path in (*PATHS, "train"):
            net = nets[(rank, path)] = apply_plan(loaded, plan)
            for module in net.modules():
                if isinstance(module, KCPConv2d):
                    module.execution = training_execution(module) if path == "train" else path
    # One step of each in turn, STEPS rounds: every network sees the same background load.
    steps = {key: stepper(net, x, y, channels_last=key[1] == "train") for key, net in nets.items()}
    times: dict[tuple, list[float]] = {key: [] for key in nets}
    for _ in range(STEPS):
        for key, step in steps.items():
            times[key].append(step())
    dense_ms = _median(times[("dense", "-")])
    rows = []
    for (rank, path), ts in times.items():
        plan = plans.get(rank)
        rows.append({"plan": "dense" if plan is None else f"KCP R={rank[0]} K={rank[1]}", "path": path,
                     "compression": 1.0 if plan is None else plan.compression,
                     "conv_macs_ratio": 1.0 if plan is None else plan.macs / plan.dense_macs,
                     "step_ms": _median(ts), "vs_dense": _median(ts) / dense_ms})
    return rows


def stepper(net, x, y, channels_last: bool = False):
    """One timed Adam step (forward, backward, update) in train mode per call, after two warm-up steps."""
    if channels_last:
        for p in net.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return (time.perf_counter() - start) * 1e3

    step(), step()
    return step


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def grid(cache: ResultCache, workers: int) -> dict:
    """The uniform 4 x 4 grid, 300 steps per point, two points at a time on a local pool (one thread each);
    the wall time counts everything from the session's start (dense latency, plans, workers' start-up)."""
    started, cpu = time.perf_counter(), time.process_time()
    loaded = zoo.load_model("digits-cnn")
    settings = RunSettings(finetune=FinetuneConfig(steps=300))
    with make_engine("local", workers=workers, threads=1) as engine:
        session = Session(loaded, network_data(loaded), settings, cache=cache, engine=engine)
        reports, cancelled = session.grid(GRID, GRID)
    return {"seconds": time.perf_counter() - started, "driver_cpu_seconds": time.process_time() - cpu,
            "workers": workers, "steps": 300, "cancelled": cancelled,
            "rows": [{k: r[k] for k in GRID_COLUMNS if k in r} for r in reports]}


def cifar(cache: ResultCache, models: tuple[str, ...] = CIFAR_MODELS, steps: int = CIFAR_STEPS,
          fits: tuple[str, ...] = FITS) -> list[dict]:
    if not (SHARED_WEIGHTS / "resnet20-12fca82f.th").is_file():
        print(f"skipping CIFAR: no weights at {SHARED_WEIGHTS}")
        return []
    home = os.environ.get("TORCH_HOME")
    if home is None:
        raise SystemExit("set TORCH_HOME to a folder whose hub/checkpoints links the files in ../shared/weights")
    rows = []
    for name, fit in itertools.product(models, fits):
        settings = RunSettings(plan=replace(CIFAR_PLAN, fit=fit), finetune=FinetuneConfig(steps=steps, distill=True))
        loaded = zoo.load_model(name, download=False)
        session = Session(loaded, network_data(loaded), settings, cache=cache)
        for ratio in (5.0, 10.0):
            started = time.perf_counter()
            report = session.budget_run(Budget("compression", ratio)).report
            rows.append({"model": name, "fit": fit, "budget": ratio, **{k: report[k] for k in (
                "compression", "top1_agreement_zero_shot", "top1_agreement_finetuned", "finetune_steps",
                "finetune_seconds", "latency_ms", "dense_latency_ms", "n_eval")},
                "methods": sorted({layer["method"] for layer in report["layers"]}),
                "curve": [(p["step"], p["top1_agreement"]) for p in report["finetune"]["curve"]] if steps else None,
                "seconds": time.perf_counter() - started})
            print(f"{name} {fit} {ratio}x: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--cifar", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="grid points trained at once (--grid)")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--cifar-models", default=",".join(CIFAR_MODELS))
    parser.add_argument("--cifar-steps", type=int, default=CIFAR_STEPS, help="distillation steps per CIFAR plan")
    parser.add_argument("--cifar-fits", default=",".join(FITS), help="what the CIFAR plans' decompositions fit")
    parser.add_argument("--out", default="network_cpu.json")
    parser.add_argument("--cache-dir")
    parser.add_argument("--note", default="shared 2-core machine, other jobs running", help="the run's conditions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = ResultCache(args.cache_dir)
    result: dict = {"machine": machine(), "batch": BATCH, "note": args.note}
    if args.grid:  # first: the timed goal
        result["grid"] = grid(cache, args.workers)
        table(result["grid"]["rows"], list(GRID_COLUMNS))
        print(f"grid: {result['grid']['seconds']:.1f} s wall")
    if not args.no_throughput:
        result["throughput"] = throughput(cache)
        table(result["throughput"], ["plan", "path", "compression", "conv_macs_ratio", "step_ms", "vs_dense"])
    if args.cifar:
        result["cifar"] = cifar(cache, tuple(args.cifar_models.split(",")), args.cifar_steps,
                                tuple(args.cifar_fits.split(",")))
        table(result["cifar"], ["model", "fit", "budget", "compression", "top1_agreement_zero_shot",
                                "top1_agreement_finetuned", "finetune_seconds", "latency_ms", "dense_latency_ms",
                                "seconds"])
    write(args.out, result)


if __name__ == "__main__":
    main()
