"""Decomposition speed, peak memory, and KCP against KT-only and CP at equal parameters on real kernels.

    python bench/bench_decompose.py            # prints tables, writes bench/results/decompose_cpu.json

Goals (issue: kcp core): 256x256x3x3 at R=2, K=8 under 0.5 s and 512x512x3x3 at R=4, K=16 under 3 s with
the default refinement on this 2-core CPU; peak memory under 1 GB at any rank of a 512x512x3x3 kernel.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time

import torch
from _common import REPO, cifar_state, machine, resnet18_layer3_0_conv2, table, write

from kcp.budget import largest_within
from kcp.decomposition import cp, kcp, kt

SPEED_CASES = [  # (label, shape, R, K, goal in s)
    ("256x256x3x3 R=2 K=8", (256, 256, 3, 3), 2, 8, 0.5),
    ("512x512x3x3 R=4 K=16", (512, 512, 3, 3), 4, 16, 3.0),
]
MEMORY_CASES = [  # KCP ranks at the extremes of a 512x512x3x3 kernel (split: max R 768, max K 96)
    (1, 96), (16, 96), (64, 16), (768, 1), (96, 8),
]


def speed() -> list[dict]:
    rows = []
    w256, source = resnet18_layer3_0_conv2()
    gen = torch.Generator().manual_seed(0)
    w512 = torch.randn(512, 512, 3, 3, generator=gen) * (2 / (512 * 9)) ** 0.5
    for label, shape, r, k, goal in SPEED_CASES:
        w = w256 if shape[0] == 256 else w512
        kcp(w, r, k)  # warm-up: first calls pay for imports and allocator growth
        times, result = [], None
        for _ in range(5):
            start = time.perf_counter()
            result = kcp(w, r, k)
            times.append(time.perf_counter() - start)
        rows.append({"case": label, "kernel": source if shape[0] == 256 else "random (He init)",
                     "median_s": statistics.median(times), "min_s": min(times), "goal_s": goal,
                     "ok": statistics.median(times) < goal, "sweeps": result.info["sweeps"],
                     "rel_error": result.rel_error, "two_stage_error": result.history[0]})
    return rows


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    sys.path.insert(0, {repo!r})
    from kcp.decomposition import kcp
    from tests.peak_memory import PeakMemory
    w = torch.randn(512, 512, 3, 3, generator=torch.Generator().manual_seed(0))
    kcp(w[:32, :32], 1, 2)
    with PeakMemory() as peak:
        t = time.perf_counter()
        res = kcp(w, {r}, {k})
    print(json.dumps({{"peak_mb": peak.mb, "seconds": time.perf_counter() - t, "sweeps": res.info["sweeps"],
                      "note": res.info.get("refine_skipped", "")}}))
""")


def memory() -> list[dict]:
    rows = []
    for r, k in MEMORY_CASES:
        code = MEMORY_SCRIPT.format(repo=str(REPO), r=r, k=k)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append({"case": f"512x512x3x3 R={r} K={k}", **json.loads(out.stdout.strip().splitlines()[-1])})
        rows[-1]["ok"] = rows[-1]["peak_mb"] < 1024
    return rows


def equal_params() -> list[dict]:
    """KCP against KT-only and CP at the largest rank within KCP's parameter count, on real CIFAR kernels."""
    rows = []
    for file, layers in (("resnet20-12fca82f.th", ("layer2.2.conv1", "layer3.2.conv2")),
                         ("resnet56-4bfd9763.th", ("layer2.4.conv2", "layer3.5.conv1"))):
        state = cifar_state(file)
        if state is None:
            print(f"(skipping real kernels: {file} not found beside the checkout)")
            continue
        for layer in layers:
            w = state[f"{layer}.weight"]
            for r, k in ((1, 4), (4, 4), (4, 8), (16, 8)):
                res = kcp(w, r, k)
                budget = res.params()
                kt_ranks = largest_within("kt", tuple(w.shape), budget, factor_shape=res.factor_shape)
                cp_rank = largest_within("cp", tuple(w.shape), budget)["rank"]
                rows.append({"model": file.split("-")[0], "layer": layer, "R": r, "K": k, "params": budget,
                             "compression": res.compression(), "kcp": res.rel_error,
                             "kt_only": kt(w, **kt_ranks).rel_error if kt_ranks else None,
                             "kt_rank": kt_ranks["kt_rank"] if kt_ranks else None,
                             "cp": cp(w, cp_rank).rel_error, "cp_rank": cp_rank})
    return rows


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    print("== speed (default refinement) ==")
    speed_rows = speed()
    table(speed_rows, ["case", "median_s", "min_s", "goal_s", "ok", "sweeps", "rel_error", "kernel"])
    print("\n== peak memory (fresh process per case) ==")
    memory_rows = memory()
    table(memory_rows, ["case", "peak_mb", "seconds", "sweeps", "ok", "note"])
    print("\n== KCP vs KT-only vs CP at equal parameters (relative kernel error) ==")
    compare_rows = equal_params()
    table(compare_rows, ["model", "layer", "R", "K", "params", "compression", "kcp", "kt_only", "kt_rank", "cp",
                         "cp_rank"])
    write("decompose_cpu.json", {"machine": machine(), "speed": speed_rows, "memory": memory_rows,
                                 "equal_params": compare_rows})


if __name__ == "__main__":
    main()
