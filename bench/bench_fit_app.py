"""Explore with "Fit to: outputs on real images": the live update per slider move on the small layer.

    python bench/bench_fit_app.py [--out bench/results/fit_app_cpu.json]

The app in ``streamlit.testing.v1.AppTest`` (the server side of a rerun, no browser) on the offline digits CNN's
``conv4`` (64x64x3x3 at 8x8), fitted to its outputs on 512 calibration images: the KT and CP sliders move through
the same 10 never-computed positions as ``bench_dashboard.py``; every move decomposes the point fitted to the
outputs, and the side-by-side table then fits it to the kernel too. Latency is off. A move is done when the new
point's cards are drawn (``cards_s``); the rerun (``rerun_s``) goes on until the table's other row is in. Then the
same points' own work as a worker does it, in this process: the output fit, and the metrics of the cards (kernel
and output error, network top-1), to show how much of a move is the fit itself.

Then the figures the app, the CLI and the CSV show for a few points, fitted both ways (through
``kcp.fit.decompose_point``, as they all do): kernel error, output error on the evaluation images, top-1
agreement and how many evaluation images changed class. One torch thread. Prints tables and writes the figures,
with the machine and its load, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_dashboard import APP, MOVES, cpu_name, slider_moves  # noqa: E402

SHARED = REPO.parent / "shared" / "weights"
# (model or checkpoint, layer, KT rank, CP rank): the digits point of the issue, and a CIFAR one from its table.
POINTS = (("digits-cnn", "conv4", 2, 4), (str(SHARED / "resnet56-4bfd9763.th"), "layer3.5.conv1", 4, 8))


def moves(fit: str) -> dict:
    """Median rerun time over MOVES with the sidebar's fit set to ``fit`` (caches cold for every point)."""
    from streamlit.testing.v1 import AppTest

    from dashboard.components.sidebar import widget_key

    at = AppTest.from_file(str(APP), default_timeout=600)
    at.run()
    at.toggle(key=widget_key("lat_on")).set_value(False).run()
    t = time.perf_counter()
    at.radio(key=widget_key("fit")).set_value(fit).run()
    switched = time.perf_counter() - t
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    times, inside, drawn = slider_moves(at)
    return {"switch_s": round(switched, 2), "cards_s": drawn, "median_cards_s": round(statistics.median(drawn), 3),
            "rerun_s": [round(x, 3) for x in times],
            "median_rerun_s": round(statistics.median(times), 3), "page_s": inside,
            "median_page_s": round(statistics.median(inside), 3),
            "last_cards": {m.label: m.value for m in at.metric}}


def work() -> list[dict]:
    """Seconds of the output fit and of the cards' metrics for each point the moves visit, as a worker runs them."""
    from kcp.evaluate import evaluate
    from kcp.fit import decompose_point
    from kcp.jobs import TargetSpec, target

    t = target(TargetSpec("digits-cnn", None, "conv4"))
    t.moments()
    t.fidelity(t.conv)  # what a worker warms up before its first point (kcp.jobs.warm)
    ranks = {"kt_rank": 2, "cp_rank": 4}
    out = []
    for which, value in MOVES:
        ranks = {**ranks, "kt_rank" if which == "kt" else "cp_rank": value}
        started = time.perf_counter()
        result = decompose_point(t, "kcp", ranks, fit="outputs")
        fitted = time.perf_counter()
        evaluate(t, result)
        out.append({**ranks, "fit_s": round(fitted - started, 3), "metrics_s": round(time.perf_counter() - fitted, 3)})
    return out


def points() -> list[dict]:
    """Each point of POINTS fitted to the kernel and to the outputs, with every figure the app shows."""
    from kcp import zoo
    from kcp.evaluate import evaluate
    from kcp.fit import decompose_point
    from kcp.target import LayerTarget

    out = []
    for source, layer, r, k in POINTS:
        if not Path(source).is_file() and source not in zoo.MODELS:
            print(f"skipped {source}: weights not here")
            continue
        loaded = zoo.load_model(source)
        target = LayerTarget.from_zoo(loaded, layer)
        target.moments()
        for fit in ("kernel", "outputs"):
            t = time.perf_counter()
            result = decompose_point(target, "kcp", {"kt_rank": r, "cp_rank": k}, fit=fit)
            seconds = time.perf_counter() - t
            row = evaluate(target, result, seconds=seconds)
            out.append({"model": loaded.name, "layer": layer, "kt_rank": r, "cp_rank": k, "fit": fit,
                        **{c: row[c] for c in ("params", "rel_error", "output_rel_error", "top1_agreement",
                                               "top1_changed", "eval_images", "accuracy", "calibration_images",
                                               "seconds")},
                        "images": target.images, "calibration": target.calibration_images})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "fit_app_cpu.json"))
    args = parser.parse_args()
    os.environ["KCP_CACHE_DIR"] = tempfile.mkdtemp(prefix="kcp-bench-fit-")
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    from _common import day

    report: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                                "torch_threads": torch.get_num_threads(), **day()},
                    "layer": "digits-cnn conv4 64x64x3x3 @8x8", "moves": [f"{w}={v}" for w, v in MOVES],
                    "live": {"outputs": moves("outputs")}, "work": work(), "points": points()}
    report["machine"]["loadavg_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (1 thread); load average before/after "
          f"{m['loadavg_before_after']}")
    print(f"{'Fit to':<10} {'median cards':>13} {'median rerun':>13} {'median page':>12}  cards per move (s)")
    for fit, r in report["live"].items():
        print(f"{fit:<10} {r['median_cards_s']:>12.3f}s {r['median_rerun_s']:>12.3f}s {r['median_page_s']:>11.3f}s  "
              + " ".join(f"{x:.2f}" for x in r["cards_s"]))
    w = report["work"]
    print(f"the same points in one process: output fit median {statistics.median(p['fit_s'] for p in w):.3f} s, "
          f"metrics median {statistics.median(p['metrics_s'] for p in w):.3f} s; per point (fit + metrics): "
          + " ".join(f"R={p['kt_rank']} K={p['cp_rank']} {p['fit_s']:.2f}+{p['metrics_s']:.2f}" for p in w))
    print(f"{'model':<14} {'layer':<15} {'R':>2} {'K':>2} {'fit':<8} {'kernel err':>10} {'output err':>10} "
          f"{'top-1':>7} {'changed':>9} {'fit s':>6}")
    for p in report["points"]:
        print(f"{p['model'][:14]:<14} {p['layer']:<15} {p['kt_rank']:>2} {p['cp_rank']:>2} {p['fit']:<8} "
              f"{p['rel_error']:>10.4f} {p['output_rel_error']:>10.4f} {p['top1_agreement']:>7.3f} "
              f"{p['top1_changed']:>4}/{p['eval_images']:<4} {p['seconds']:>6.2f}")
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
