"""Explore with "Fit to: outputs on real images": the live update per slider move on the small layer.

    python bench/bench_fit_app.py [--out bench/results/fit_app_cpu.json]

The app in ``streamlit.testing.v1.AppTest`` (the server side of a rerun, no browser) on the offline digits CNN's
``conv4`` (64x64x3x3 at 8x8), fitted to its outputs on 512 calibration images: the KT and CP sliders move through
the same 10 never-computed positions as ``bench_dashboard.py``; every move decomposes the point fitted to the
outputs, and the side-by-side table fits it to the kernel too (so a move costs both fits, whichever fit is
chosen). Latency is off, so the figure is the two fits and the evaluation.

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
    times, inside = slider_moves(at)
    return {"switch_s": round(switched, 2), "rerun_s": [round(x, 3) for x in times],
            "median_rerun_s": round(statistics.median(times), 3), "page_s": inside,
            "median_page_s": round(statistics.median(inside), 3),
            "last_cards": {m.label: m.value for m in at.metric}}


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
    report: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                                "torch_threads": torch.get_num_threads()},
                    "layer": "digits-cnn conv4 64x64x3x3 @8x8", "moves": [f"{w}={v}" for w, v in MOVES],
                    "live": {"outputs": moves("outputs")}, "points": points()}
    report["machine"]["loadavg_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (1 thread); load average before/after "
          f"{m['loadavg_before_after']}")
    print(f"{'Fit to':<10} {'median rerun':>13} {'median page':>12}  per move (s)")
    for fit, r in report["live"].items():
        print(f"{fit:<10} {r['median_rerun_s']:>12.3f}s {r['median_page_s']:>11.3f}s  "
              + " ".join(f"{x:.2f}" for x in r["rerun_s"]))
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
