"""Is the latency verdict stable on a loaded machine? digits-cnn conv4 at R=2 K=4, in fresh processes.

Each run is a new Python process (nothing shared: no cached dense figure) that reads the layer's weights,
decomposes it and times it paired with the dense conv (``kcp.latency.paired``, one thread, the app's live
settings). Beside it a CPU hog (busy loops in ``--hogs`` processes) loads the machine. Goal: all runs give the
same verdict ("faster" or "slower"), or say "noisy" (too noisy to tell) rather than the wrong side.

    python bench/bench_latency_verdict.py [--runs 10] [--hogs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

from _common import REPO, machine, table, write

# The probe reads conv4 (64 -> 64 channels, 3x3, padding 1, no bias: kcp.zoo.digits.DigitsCNN) straight from the
# packaged weights: the zoo would import torchvision and scikit-learn and capture activations the timing does not
# use, which was most of a run's time on a loaded machine. The decomposition and the timing are the app's.
PROBE = """
import json, time, torch
started = time.perf_counter()
torch.set_num_threads(1)
from torch import nn
from kcp.latency import LatencySettings, paired
from kcp.modules import from_conv
weight = torch.load("kcp/assets/digits_cnn.pt", weights_only=True)["conv4.weight"]
conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
conv.weight.data.copy_(weight)
m = from_conv(conv, "kcp", kt_rank=2, cp_rank=4)
ready = time.perf_counter()
p = paired(conv, m, (64, 8, 8), LatencySettings(runs=10, warmup=2, min_run_time=0.02, threads=1))
print(json.dumps({"dense_ms": p.dense.median_ms, "kcp_ms": p.factorised.median_ms, "speedup": p.speedup,
                  "low": p.speedup_low, "high": p.speedup_high, "rounds": p.rounds, "verdict": p.verdict,
                  "setup_s": ready - started, "timing_s": time.perf_counter() - ready}))
"""


def _hog(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hogs", type=int, default=2, help="busy-loop processes beside the measurement")
    parser.add_argument("--note", default="run alone (exclusive lock), the hogs the only other load",
                        help="the machine's other load, for the JSON")
    args = parser.parse_args()
    load_before = os.getloadavg()
    stop = mp.Event()
    hogs = [mp.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    rows = []
    try:
        for i in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
            row = {"run": i + 1, **json.loads(done.stdout.strip().splitlines()[-1]),
                   "wall_s": time.perf_counter() - started}
            rows.append(row)
            print(row, flush=True)
    finally:
        stop.set()
        for h in hogs:
            h.join()
    verdicts = sorted({r["verdict"] for r in rows})
    decided = [v for v in verdicts if v in ("faster", "slower")]
    print()
    table(rows, ["run", "dense_ms", "kcp_ms", "speedup", "low", "high", "rounds", "verdict", "setup_s", "timing_s",
                 "wall_s"])
    consistent = len(decided) <= 1
    print(f"\nverdicts: {verdicts}; never on both sides of dense: {consistent}")
    write("latency_verdict_cpu.json", {"machine": machine(), "hogs": args.hogs, "runs": rows,
                                       "verdicts": verdicts, "never_both_sides": consistent,
                                       "loadavg_before_after": [*load_before, *os.getloadavg()],
                                       "note": args.note})


if __name__ == "__main__":
    main()
