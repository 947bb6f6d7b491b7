"""A 6 x 8 KCP grid with refinement on resnet18's layer3.0.conv2 (256x256x3x3 at 14x14), timed point by point.

    python bench/bench_sweep.py      # prints a table, writes bench/results/sweep_cpu.json

Goal (issue: sweeps): the whole grid under 60 s on this 2-core CPU, warm starts on, no cache.
"""

from __future__ import annotations

import time

import torch
from _common import machine, resnet18_layer3_0_conv2, table, write
from torch import nn

from kcp.sweep import SweepConfig, sweep
from kcp.target import LayerTarget

KT_RANKS = (1, 2, 4, 8, 16, 32)
CP_RANKS = (1, 2, 3, 4, 6, 8, 12, 16)
GOAL_S = 60.0


def main() -> None:
    weight, source = resnet18_layer3_0_conv2()
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    target = LayerTarget.from_conv(conv, (14, 14), name="resnet18.layer3.0.conv2")
    config = SweepConfig(kt_ranks=KT_RANKS, cp_ranks=CP_RANKS, methods=("kcp",), output_error=False, fidelity=False,
                         warm_start=True)
    start = time.perf_counter()
    result = sweep(target, config, cache=None)
    total = time.perf_counter() - start
    rows = [r for r in result.rows if r["method"] == "kcp"]
    table(rows, ["kt_rank", "cp_rank", "params", "compression", "rel_error", "sweeps", "seconds"])
    print(f"\n{len(rows)} points in {total:.1f} s (goal < {GOAL_S:.0f} s); kernel: {source}")
    write("sweep_cpu.json", {"machine": machine(), "kernel": source, "kt_ranks": KT_RANKS, "cp_ranks": CP_RANKS,
                             "total_s": total, "goal_s": GOAL_S, "ok": total < GOAL_S,
                             "points": [{k: r[k] for k in ("kt_rank", "cp_rank", "params", "compression",
                                                           "rel_error", "sweeps", "seconds")} for r in rows]})


if __name__ == "__main__":
    main()
