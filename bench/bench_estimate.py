"""How far ``kcp.estimate``'s predictions are from what the work takes on this machine: its calibration.

    python bench/bench_estimate.py [--out bench/results/estimate_calibration_cpu.json]

One torch thread (as a worker runs). For KCP kernel fits at several layer sizes and ranks: the two-stage start,
the time per refinement sweep and the sweeps the defaults run; for every method, the extra time of the output fit;
for every method's module, a forward pass over a batch of images (what evaluation runs). Each row has the
prediction next to the measurement and their ratio. The estimate is meant to lean pessimistic (its budgets ask
before long work, never after), but within a small factor: a ratio under 1 means the app would not ask where it
should, a large one that it asks for work that takes a second.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from functools import partial

import torch
from _common import RESULTS, machine, table, write

from kcp import estimate as est
from kcp import methods
from kcp.budget import largest_within
from kcp.decomposition import decompose
from kcp.decomposition.moments import patch_moments
from kcp.geometry import ConvGeometry
from kcp.kron import make_factor_shape
from kcp.methods import BASELINES
from kcp.modules import to_module

GEO = ConvGeometry.make(padding=1)
# (C_out = C_in, input size) of the layers: a CIFAR ResNet's, digits-cnn's, ImageNet ResNets' stages.
LAYERS = ((32, 16), (64, 8), (128, 28), (256, 14), (512, 7))
RANKS = ((1, 1), (2, 4), (4, 8), (16, 8), (64, 4), (32, 16))


def _median(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decomposition_rows(layers=LAYERS, ranks=RANKS) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for c, _hw in layers:
        w = torch.randn(c, c, 3, 3, generator=gen, dtype=torch.float64)
        for r, k in ranks:
            fs = make_factor_shape(w.shape, None, "split")
            try:
                decompose(w, "kcp", kt_rank=r, cp_rank=k, refine_sweeps=0)
            except ValueError:  # ranks past this layer's largest
                continue
            two_stage = _median(partial(decompose, w, "kcp", kt_rank=r, cp_rank=k, refine_sweeps=0))
            start = time.perf_counter()
            result = decompose(w, "kcp", kt_rank=r, cp_rank=k)
            total = time.perf_counter() - start
            sweeps = int(result.info.get("sweeps", 0))
            predicted = est.decompose_seconds("kcp", tuple(w.shape), {"kt_rank": r, "cp_rank": k})
            rows.append({"what": "kcp kernel fit", "shape": f"{c}x{c}x3x3", "ranks": f"R={r} K={k}",
                         "weights": w.numel(), "R": r, "K": k,
                         "two_stage_s": two_stage, "sweeps": sweeps,
                         "per_sweep_s": (total - two_stage) / sweeps if sweeps else None, "measured_s": total,
                         "predicted_s": predicted, "ratio": predicted / total, "factor_shape": str(fs)})
            print(f"  kcp {c} R={r} K={k}: {total:.3f} s (predicted {predicted:.3f} s)", flush=True)
    return rows


def output_fit_rows(layers=((64, 8), (256, 14)), ranks=((2, 4), (4, 8), (16, 8))) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(1)
    for c, hw in layers:
        w = torch.randn(c, c, 3, 3, generator=gen, dtype=torch.float64) / (3 * c) ** 0.5
        x = torch.relu(torch.randn(32, c, hw, hw, generator=gen, dtype=torch.float64))
        moments = patch_moments(x, (3, 3), GEO)
        for r, k in ranks:
            fs = make_factor_shape(w.shape, None, "split")
            budget = decompose(w, "kcp", kt_rank=r, cp_rank=k, refine_sweeps=0).params()
            plan = [("kcp", {"kt_rank": r, "cp_rank": k})]
            plan += [(m, rk) for m in BASELINES
                     if (rk := largest_within(m, tuple(w.shape), budget, factor_shape=fs)) is not None]
            for method, rk in plan:
                kernel = _median(partial(decompose, w, method, **rk), 1)
                outputs = _median(partial(decompose, w, method, **rk, fit="outputs", calibration=moments), 1)
                predicted = est.decompose_seconds(method, tuple(w.shape), rk, fit="outputs")
                predicted_kernel = est.decompose_seconds(method, tuple(w.shape), rk)
                rows.append({"what": f"{method} output fit", "shape": f"{c}x{c}x3x3", "method": method,
                             "kernel_shape": list(w.shape), "predicted_extra_s": est.output_fit_seconds(tuple(w.shape)),
                             "ranks": ",".join(f"{v}" for v in rk.values()), "kernel_fit_s": kernel,
                             "measured_s": outputs, "predicted_s": predicted, "ratio": predicted / outputs,
                             "kernel_ratio": predicted_kernel / kernel})
                print(f"  {method} {c} {rk}: kernel {kernel:.3f} s, outputs {outputs:.3f} s (predicted "
                      f"{predicted_kernel:.3f} / {predicted:.3f} s)", flush=True)
    return rows


def run_rows(layers=LAYERS, ranks=((2, 4), (16, 8), (64, 8)), images: int = 32) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(2)
    for c, hw in layers:
        w = torch.randn(c, c, 3, 3, generator=gen)
        x = torch.randn(images, c, hw, hw, generator=gen)
        points = [("dense", {})]
        for r, k in ranks:
            fs = make_factor_shape(w.shape, None, "split")
            try:
                budget = decompose(w, "kcp", kt_rank=r, cp_rank=k, refine_sweeps=0).params()
            except ValueError:
                continue
            points.append(("kcp", {"kt_rank": r, "cp_rank": k}))
            points += [(m, rk) for m in BASELINES
                       if (rk := largest_within(m, tuple(w.shape), budget, factor_shape=fs)) is not None]
        for method, rk in points:
            if method == "dense":
                module = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
                fs = None
            else:
                result = decompose(w, method, **rk, refine_sweeps=0) if method == "kcp" else decompose(w, method, **rk)
                module, fs = to_module(result, geometry=GEO), result.factor_shape
            with torch.no_grad():
                module(x[:2])
                measured = _median(partial(module, x))
            stages = est.costs.stages(method, (c, c, 3, 3), rk, (hw, hw), GEO, fs)
            predicted = est.run_seconds(stages, images)
            rows.append({"what": f"{method} forward", "shape": f"{c}x{c}x3x3 @{hw}x{hw}",
                         "ranks": ",".join(f"{v}" for v in rk.values()), "images": images, "measured_s": measured,
                         "predicted_s": predicted, "ratio": predicted / measured,
                         "macs_per_s": sum(s.macs for s in stages) * images / measured,
                         "stages": [{"op": s.op, "macs": s.macs, "elements": math.prod(s.out_shape)} for s in stages]})
            print(f"  {method} {c}@{hw} {rk}: {measured:.4f} s (predicted {predicted:.4f} s)", flush=True)
    return rows


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(" ")[0].split("x"))


def _stages(row: dict) -> list:
    """The stages of a forward row's module (its method, ranks and layer, as ``run_rows`` built it)."""
    kernel_shape = _shape(row["shape"])
    hw = _shape(row["shape"].split("@")[1])
    method = row["what"].split(" ")[0]
    ranks = dict(zip(methods.get(method).ranks, (int(v) for v in row["ranks"].split(",") if v)))
    fs = make_factor_shape(kernel_shape, None, "split") if methods.get(method).kronecker else None
    return est.costs.stages(method, kernel_shape, ranks, hw, GEO, fs)


def _rank(row: dict) -> int:
    return max(int(v) for v in row["ranks"].split(","))


def predict(decomposition: list[dict], outputs: list[dict], runs: list[dict]) -> None:
    """The predictions (and ratios) of the rows with today's constants, in place: a rerun after a recalibration
    needs no new timings."""
    for r in decomposition:
        r["predicted_s"] = est.decompose_seconds("kcp", _shape(r["shape"]), {"kt_rank": r["R"], "cp_rank": r["K"]})
    for r in outputs:
        ranks = dict(zip(methods.get(r["method"]).ranks, (int(v) for v in r["ranks"].split(","))))
        r["predicted_s"] = est.decompose_seconds(r["method"], tuple(r["kernel_shape"]), ranks, fit="outputs")
    for r in runs:
        r["predicted_s"] = est.run_seconds(_stages(r), r["images"])
    for r in decomposition + outputs + runs:
        r["ratio"] = r["predicted_s"] / r["measured_s"]


def suggest(decomposition: list[dict], outputs: list[dict], runs: list[dict], margin: float = 2.0) -> dict:
    """Constants for kcp.estimate fitted to the rows by non-negative least squares on relative error (each row
    weighted by 1 / measured), times ``margin`` (the estimate leans pessimistic: other jobs share the cores)."""
    import numpy as np
    from scipy.optimize import nnls

    def fit(features: list[list[float]], times: list[float]) -> list[float]:
        a, b = np.array(features, dtype=float), np.array(times, dtype=float)
        coef, _ = nnls(a / b[:, None], np.ones_like(b))
        return [float(margin * c) for c in coef]

    kcp_rows = [r for r in decomposition if r["sweeps"]]
    two = fit([[1, r["weights"], r["R"] * (1 + r["K"] / 16)] for r in decomposition],
              [r["two_stage_s"] for r in decomposition])
    sweep = fit([[1, r["weights"], (r["R"] * r["K"]) ** 2, (r["R"] * r["K"]) ** 3] for r in kcp_rows],
                [r["per_sweep_s"] for r in kcp_rows])
    def baseline_fit(rows):
        return fit([[1, math.prod(r["kernel_shape"]), math.prod(r["kernel_shape"]) * _rank(r)] for r in rows],
                   [r["kernel_fit_s"] for r in rows])

    baseline = baseline_fit([r for r in outputs if r["method"] not in ("kcp", "cp")])
    cp = baseline_fit([r for r in outputs if r["method"] == "cp"])
    # Output fits: seconds per unit of their bounded work (floored at 0.1 s: the closed forms' milliseconds would
    # otherwise pull the fit towards nothing).
    iterative = [r for r in outputs if r["method"] != "svd"]
    out = fit([[1, est.output_fit_seconds(tuple(r["kernel_shape"])) - est.OUTPUT_BASE] for r in iterative],
              [max(r["measured_s"] - r["kernel_fit_s"], 0.1) for r in iterative])
    ops = sorted({s["op"] for r in runs for s in r["stages"]})
    run = fit([[*(sum(s["macs"] for s in r["stages"] if s["op"] == op) for op in ops),
                sum(s["elements"] for s in r["stages"]), len(r["stages"])] for r in runs],
              [r["measured_s"] / r["images"] for r in runs])
    return {
        "TWO_STAGE_BASE, TWO_STAGE_PER_WEIGHT, TWO_STAGE_PER_TERM": two,
        "SWEEP_BASE, SWEEP_PER_WEIGHT, SWEEP_RK2, SWEEP_RK3": sweep,
        "BASELINE_BASE, BASELINE_PER_WEIGHT, BASELINE_PER_WEIGHT_RANK": baseline,
        "CP: base, per weight, per weight x rank": cp,
        "OUTPUT_BASE, FIT_MAC_RATE": [out[0], est.FIT_MAC_RATE / out[1] if out[1] else None],
        "MAC_RATES (1 / seconds per MAC)": {op: (1 / c if c else None) for op, c in zip(ops, run)},
        "ELEMENT_RATE, STAGE_SECONDS": [1 / run[-2] if run[-2] else None, run[-1]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="estimate_calibration_cpu.json")
    parser.add_argument("--quick", action="store_true", help="two layer sizes only")
    parser.add_argument("--predict-only", action="store_true",
                        help="no timings: recompute the predictions of the rows in --out (after a recalibration)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    layers = ((64, 8), (256, 14)) if args.quick else LAYERS
    if args.predict_only:
        old = json.loads((RESULTS / args.out).read_text())
        decomposition, outputs, runs = old["decomposition"], old["output_fits"], old["forward"]
        host = old["machine"]
    else:
        print("KCP kernel fits")
        decomposition = decomposition_rows(layers)
        print("output fits")
        outputs = output_fit_rows()
        print("module forward passes")
        runs = run_rows(layers)
        host = {**machine(), "threads": 1, "note": "2-core AMD EPYC, 24 GiB, no GPU"}
    predict(decomposition, outputs, runs)
    for title, rows, cols in (
        ("KCP kernel fits", decomposition, ["shape", "ranks", "two_stage_s", "sweeps", "per_sweep_s", "measured_s",
                                            "predicted_s", "ratio"]),
        ("output fits", outputs, ["what", "shape", "ranks", "kernel_fit_s", "measured_s", "predicted_s", "ratio"]),
        ("forward passes", runs, ["what", "shape", "ranks", "measured_s", "predicted_s", "ratio", "macs_per_s"]),
    ):
        print(f"\n{title}")
        table(rows, cols)
    ratios = [r["ratio"] for r in decomposition + outputs + runs]
    summary = {"rows": len(ratios), "under_1": sum(r < 1 for r in ratios), "median_ratio": statistics.median(ratios),
               "max_ratio": max(ratios), "min_ratio": min(ratios)}
    print(f"\nprediction / measurement: {summary}")
    suggested = suggest(decomposition, outputs, runs)
    print("\nsuggested constants (x2 margin):")
    for name, value in suggested.items():
        print(f"  {name}: {value}")
    write(args.out, {"machine": host, "summary": summary, "suggested": suggested, "decomposition": decomposition,
                     "output_fits": outputs, "forward": runs})


if __name__ == "__main__":
    main()
