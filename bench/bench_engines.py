"""A whole-network sweep of CIFAR ResNet-20 (every 3x3 conv KCP applies to) on each engine, and Ray's task overhead.

    TORCH_HOME=... python bench/bench_engines.py [--kt 1,2,3,4] [--cp 1,2,4,8]
    # prints a table, writes bench/results/engines_cpu.json

The weights come from ../shared/weights through a temporary TORCH_HOME of links (as the zoo tests do), never
a download. Every run starts from an empty cache; engine start-up (spawning workers, starting Ray) is timed
apart from the sweep. The machine is shared: the load average before and after each run is recorded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import SHARED_WEIGHTS, machine, table, write

from kcp import zoo
from kcp.cache import ResultCache
from kcp.engines import Engine, Node, make_engine, run_graph
from kcp.schema import TIMING_COLUMNS
from kcp.sweep import SweepConfig, sweep_network
from kcp.target import LayerTarget

WEIGHTS = "resnet20-12fca82f.th"
TIMED = ("seconds", *TIMING_COLUMNS)


def _noop(x: int) -> int:
    return x


def task_overhead(engine: Engine, n: int = 200) -> dict[str, float]:
    """Wall time per empty task: one at a time (a round trip) and ``n`` at once (throughput)."""
    run_graph(engine, [Node(-1)], lambda node, _: ("task", (_noop, (0,), {})), lambda node, v: v, print)  # warm
    start = time.perf_counter()
    for i in range(20):
        run_graph(engine, [Node(i)], lambda node, _: ("task", (_noop, (node.id,), {})), lambda node, v: v, print)
    round_trip = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    run_graph(engine, [Node(i) for i in range(n)], lambda node, _: ("task", (_noop, (node.id,), {})),
              lambda node, v: v, print)
    return {"round_trip_ms": round_trip * 1e3, "per_task_ms": (time.perf_counter() - start) / n * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kt", default="1,2,3,4")
    parser.add_argument("--cp", default="1,2,4,8")
    parser.add_argument("--engines", default="local1,local2,ray2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    home = Path(tempfile.mkdtemp(prefix="kcp-bench-torch-"))
    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / WEIGHTS).symlink_to(SHARED_WEIGHTS / WEIGHTS)
    os.environ["TORCH_HOME"] = str(home)
    loaded = zoo.load_model("cifar-resnet20", download=False)
    names = [i.name for i in zoo.conv_layers(loaded) if i.kcp_ok]
    targets = [LayerTarget.from_zoo(loaded, name) for name in names]
    config = SweepConfig(kt_ranks=tuple(map(int, args.kt.split(","))), cp_ranks=tuple(map(int, args.cp.split(","))))
    runs, reference = [], None
    for label in args.engines.split(","):
        kind = {"inline": None, "local1": "local", "local2": "local", "ray2": "ray"}[label]
        workers = {"local1": 1, "local2": 2, "ray2": 2}.get(label)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        engine = make_engine(kind, workers=workers)
        overhead = {} if kind is None else task_overhead(engine)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        result = sweep_network(targets, config, cache=ResultCache(tempfile.mkdtemp(prefix="kcp-bench-cache-")),
                               engine=engine)
        wall = time.perf_counter() - start
        engine.close()
        rows = [{k: v for k, v in r.items() if k not in TIMED} for r in result.rows]
        reference = reference or rows
        runs.append({"engine": label, "workers": workers or 1, "points": len(rows), "startup_s": startup,
                     "sweep_s": wall, "points_per_s": len(rows) / wall, "same_rows": rows == reference,
                     "errors": sum(1 for r in rows if r["error"]), "load_before": load_before,
                     "load_after": os.getloadavg()[0], **overhead})
        print(f"{label}: {wall:.1f} s", flush=True)
        base = next((r["sweep_s"] for r in runs if r["engine"] == "local1"), runs[0]["sweep_s"])
        for r in runs:
            r["speedup_vs_local1"] = base / r["sweep_s"]
        # Written after every run, so that the runs done so far survive an interrupted benchmark.
        write("engines_cpu.json", {"machine": machine(), "model": "cifar-resnet20", "layers": names,
                                   "kt_ranks": config.kt_ranks, "cp_ranks": config.cp_ranks,
                                   "metrics": "kernel error, output error and top-1 agreement on 64 images; no latency",
                                   "threads_per_worker": 1, "runs": runs})
    print()
    table(runs, ["engine", "workers", "points", "startup_s", "sweep_s", "points_per_s", "speedup_vs_local1",
                 "round_trip_ms", "per_task_ms", "same_rows", "errors", "load_before", "load_after"])


if __name__ == "__main__":
    main()
