"""Fitting to outputs against fitting the kernel, held out; convergence of the kernel fits; fit times.

    python bench/bench_fit.py            # prints tables, writes bench/results/fit_cpu.json
    python bench/bench_fit.py --quick    # the four points of issue 9 only, fewer convergence rows

Held-out output error: the patch moments of the images that reach a layer are split into a calibration set (the
fit sees only it) and a disjoint evaluation set (the error is measured only on it). digits-cnn: calibration on
the training split, evaluation on the test split (kcp.zoo.digits). CIFAR ResNets: the evaluation set's 72 photo
views (6 photos x 12 crops and flips, view by view), views 1-6 of every photo (the wider crops) for calibration and
views 7-12 (the closer ones) for evaluation: the issue's "half of the images that reach the layer".
Every method runs at KCP's parameter count (the baselines at their largest rank within it), with fit="kernel" and
fit="outputs". KCP rows also carry the KT floor (the output fit of KT at the same KT rank, a superset of KCP there)
and, for the CIFAR layers, the ratio on the app's stricter split (calibration and evaluation photos disjoint).

Goals (issue 9): KCP's held-out ratio outputs/kernel <= 0.75 on the four points of the issue; every baseline lower
than its own kernel fit; default kernel fits within 0.005 of a long converged run; a 64x64x3x3 layer fits to
outputs in < 1 s and a 256x256x3x3 one in < 5 s (one thread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _common import RESULTS, SHARED_WEIGHTS, machine, resnet18_layer3_0_conv2, table, write

from kcp import zoo
from kcp.budget import largest_within
from kcp.decomposition import decompose, kcp
from kcp.decomposition.moments import PatchMoments, patch_moments
from kcp.geometry import ConvGeometry
from kcp.methods import BASELINES
from kcp.zoo.calibration import combine

POINTS = [  # (model, layer, R, K, in the issue's table)
    ("digits-cnn", "conv4", 16, 8, True),
    ("cifar-resnet56", "layer3.5.conv1", 4, 8, True),
    ("cifar-resnet56", "layer3.5.conv1", 16, 8, True),
    ("cifar-resnet56", "layer2.4.conv2", 8, 4, True),
    ("cifar-resnet20", "layer3.2.conv2", 4, 4, False),
    ("digits-cnn", "conv3", 4, 4, False),
]
CIFAR_FILES = {"cifar-resnet20": "resnet20-12fca82f.th", "cifar-resnet56": "resnet56-4bfd9763.th"}
LONG = {  # a long run with a tolerance 10^4 times tighter: the converged reference of each iterative kernel fit
    "kcp": {"refine_sweeps": 1500, "tol": 1e-6},
    "cp": {"n_iter_max": 5000, "tol": 1e-7},
    "tucker2": {"n_iter_max": 500},
}


def _inputs(loaded: zoo.LoadedModel, layer: str, x: torch.Tensor) -> torch.Tensor:
    """What reaches ``layer`` when the network runs on ``x``."""
    conv = zoo.get_conv(loaded, layer)
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for batch in x.split(256):
                loaded.model(batch)
    finally:
        handle.remove()
    return torch.cat(seen)


def layer_split(model: str, layer: str) -> tuple[torch.Tensor, torch.Tensor | None, PatchMoments, PatchMoments, str]:
    """Kernel, bias, calibration and evaluation moments of one layer, and how the images were split."""
    if model == "digits-cnn":
        from kcp.zoo.digits import digits_split

        loaded = zoo.load_model(model)
        split = digits_split()
        cal_x, ev_x, how = _inputs(loaded, layer, split.x_train), _inputs(loaded, layer, split.x_test), \
            f"training split ({len(split.x_train)}) / test split ({len(split.x_test)})"
    else:
        loaded = zoo.load_model(str(SHARED_WEIGHTS / CIFAR_FILES[model]), arch=model)
        n = zoo.max_images(loaded)
        x = zoo.layer_inputs(loaded, layer, n)
        cal_x, ev_x, how = x[: n // 2], x[n // 2:], f"views 1-{n // 2} / views {n // 2 + 1}-{n}"
    conv = zoo.get_conv(loaded, layer)
    geometry = ConvGeometry.from_conv(conv)
    bias = None if conv.bias is None else conv.bias.detach().double()
    return (conv.weight.detach().double(), bias, patch_moments(cal_x, conv.kernel_size, geometry),
            patch_moments(ev_x, conv.kernel_size, geometry), how)


def photo_split(model: str, layer: str, cal: PatchMoments, ev: PatchMoments) -> tuple[PatchMoments, PatchMoments]:
    """Calibration and evaluation moments of a CIFAR layer on the app's split, given the views split of
    :func:`layer_split` (``cal``, ``ev``): the calibration photos' views, as the app fits on them
    (``kcp.zoo.layer_moments``), and the evaluation photos' views, which are ``cal`` and ``ev`` together."""
    loaded = zoo.load_model(str(SHARED_WEIGHTS / CIFAR_FILES[model]), arch=model)
    return zoo.layer_moments(loaded, layer, zoo.max_images(loaded, "calibration")), combine([cal, ev])


def _timed(weight, method, **kw):
    start = time.perf_counter()
    result = decompose(weight, method, **kw)
    return result, time.perf_counter() - start


def held_out(points, long: bool = True, methods=("kcp", *BASELINES)) -> tuple[list[dict], list[dict]]:
    """Held-out output error of every method under both fits, and the default-vs-long convergence gap."""
    rows, gaps = [], []
    for model, layer, r, k, in_issue in points:
        try:
            w, bias, cal, ev, how = layer_split(model, layer)
        except (zoo.ZooError, FileNotFoundError) as exc:
            print(f"(skipping {model} {layer}: {exc})")
            continue
        ref = kcp(w, r, k)
        budget = ref.params()
        plan = [("kcp", {"kt_rank": r, "cp_rank": k})]
        for method in BASELINES:
            if method not in methods:
                continue
            ranks = largest_within(method, tuple(w.shape), budget, factor_shape=ref.factor_shape)
            if ranks is not None:
                plan.append((method, ranks))
        for method, ranks in plan:
            kernel_fit, t_kernel = _timed(w, method, **ranks)
            output_fit, t_outputs = _timed(w, method, **ranks, fit="outputs", calibration=cal)
            ev_kernel = ev.relative_error(w, kernel_fit.reconstruct(), bias)
            ev_outputs = ev.relative_error(w, output_fit.reconstruct(), bias)
            obj = output_fit.info.get("objective", [])
            bound = {}
            if method == "kcp":
                # Every KCP at KT rank r is a KT at rank r (its factors merely constrained to CP rank K), so the KT
                # output fit's calibration error is a floor under KCP's (up to KT's own optimisation, whose optimum
                # random starts reproduce): a ratio target that needs less than it is out of KCP's reach.
                kt_fit = decompose(w, "kt", kt_rank=r, factors=ref.factor_shape.channels,
                                   placement=ref.factor_shape.placement, fit="outputs", calibration=cal)
                bound = {"kt_floor_cal": cal.relative_error(w, kt_fit.reconstruct()),
                         "kt_floor_heldout": ev.relative_error(w, kt_fit.reconstruct(), bias)}
                if model != "digits-cnn":
                    # The app's own split, stricter: calibration and evaluation photos disjoint (kcp.zoo.images).
                    photo_cal, photo_ev = photo_split(model, layer, cal, ev)
                    photo_fit = decompose(w, method, **ranks, fit="outputs", calibration=photo_cal)
                    bound["ratio_photo_split"] = (photo_ev.relative_error(w, photo_fit.reconstruct(), bias)
                                                  / photo_ev.relative_error(w, kernel_fit.reconstruct(), bias))
            rows.append({
                "model": model, "layer": layer, "R": r, "K": k, "in_issue": in_issue, "method": method,
                "ranks": ",".join(f"{v}" for v in ranks.values()), "params": kernel_fit.params(),
                "heldout_kernel_fit": ev_kernel, "heldout_output_fit": ev_outputs, "ratio": ev_outputs / ev_kernel,
                "cal_kernel_fit": cal.relative_error(w, kernel_fit.reconstruct()),
                "cal_output_fit": cal.relative_error(w, output_fit.reconstruct()),
                "kernel_err_kernel_fit": kernel_fit.rel_error, "kernel_err_output_fit": output_fit.rel_error,
                "iterations": output_fit.info.get("iterations", 0), "converged": output_fit.info.get("converged"),
                "solver": output_fit.info.get("output_solver", "closed form"),
                "objective_first_last": [obj[0], obj[-1]] if obj else None,
                "t_kernel_s": t_kernel, "t_outputs_s": t_outputs, "split": how, **bound,
            })
            print(f"  {model} {layer} R={r} K={k} {method} {rows[-1]['ranks']}: held-out {ev_kernel:.3f} -> "
                  f"{ev_outputs:.3f} ({t_kernel:.2f} s, {t_outputs:.2f} s)", flush=True)
            if long and in_issue:
                # KT and SVD are closed-form optima (Van Loan-Pitsianis, Eckart-Young): their "long run" is the same
                # computation, so their gap is zero by construction; the iterative fits get a 10^4 times tighter one.
                long_fit, t_long = _timed(w, method, **ranks, **LONG.get(method, {}))
                gaps.append({"model": model, "layer": layer, "R": r, "K": k, "method": method,
                             "ranks": rows[-1]["ranks"], "default": kernel_fit.rel_error, "long": long_fit.rel_error,
                             "gap": kernel_fit.rel_error - long_fit.rel_error, "t_default_s": t_kernel,
                             "t_long_s": t_long, "steps_default": _steps(kernel_fit), "steps_long": _steps(long_fit),
                             "kind": "iterative" if method in LONG else "closed form"})
    return rows, gaps


def _steps(result) -> int:
    """Iterations of the output fit, else sweeps (or iterations) of the kernel fit."""
    if result.info.get("fit") == "outputs":
        return int(result.info.get("iterations", 0))
    return int(result.info.get("sweeps", result.info.get("iterations", 0)))


def _median_time(*args, repeats: int = 3, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decompose(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(threads: tuple[int, ...] = (1,)) -> list[dict]:
    """Fit times: the output fit of a 64x64 and a 256x256 layer, and the default KCP kernel fit, with each number
    of torch threads in ``threads`` (2 uses both cores: only meaningful when the benchmark runs alone)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    w256, source = resnet18_layer3_0_conv2()
    w256 = w256.double()
    # No ImageNet activations offline: inputs are ReLUs of channel-correlated Gaussians (a stand-in, said so).
    mix = torch.randn(256, 256, generator=gen, dtype=torch.float64) / 16
    x256 = torch.relu(torch.einsum("dc,nchw->ndhw", mix, torch.randn(32, 256, 14, 14, generator=gen,
                                                                      dtype=torch.float64)))
    cal256 = patch_moments(x256, (3, 3), ConvGeometry.make(padding=1))
    cases = [("256x256x3x3 KCP R=2 K=8, kernel fit", w256, "kcp", {"kt_rank": 2, "cp_rank": 8}, None, 0.5),
             ("256x256x3x3 KCP R=2 K=8, output fit", w256, "kcp", {"kt_rank": 2, "cp_rank": 8}, cal256, 5.0),
             ("256x256x3x3 CP rank 2 (same params), output fit", w256, "cp", {"rank": 2}, cal256, 5.0)]
    try:
        w64, _bias, cal64, _ev, _how = layer_split("cifar-resnet56", "layer3.5.conv1")
        cases += [("64x64x3x3 KCP R=2 K=4, kernel fit", w64, "kcp", {"kt_rank": 2, "cp_rank": 4}, None, 0.2),
                  ("64x64x3x3 KCP R=4 K=8, output fit", w64, "kcp", {"kt_rank": 4, "cp_rank": 8}, cal64, 1.0),
                  ("64x64x3x3 KCP R=16 K=8, output fit", w64, "kcp", {"kt_rank": 16, "cp_rank": 8}, cal64, 1.0),
                  ("64x64x3x3 SVD rank 10, output fit", w64, "svd", {"rank": 10}, cal64, 1.0)]
    except (zoo.ZooError, FileNotFoundError) as exc:
        print(f"(skipping the 64x64 cases: {exc})")
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for label, w, method, ranks, cal, goal in cases:
            kw = {} if cal is None else {"fit": "outputs", "calibration": cal}
            result = decompose(w, method, **ranks, **kw)  # warm-up (imports, allocator) and the step count
            median = _median_time(w, method, **ranks, **kw)
            rows.append({"case": label, "threads": n_threads, "median_s": median, "goal_s": goal, "ok": median < goal,
                         "steps": _steps(result), "solver": result.info.get("output_solver", ""),
                         "kernel": source if w is w256 else "CIFAR ResNet-56 layer3.5.conv1"})
    torch.set_num_threads(1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the four points of the issue")
    parser.add_argument("--no-long", action="store_true", help="skip the long converged reference runs")
    parser.add_argument("--no-held-out", action="store_true", help="skip the held-out section (and the long runs)")
    parser.add_argument("--no-speed", action="store_true", help="skip the timing section")
    parser.add_argument("--methods", default="kcp,kt,cp,tucker2,svd", help="methods of the held-out section")
    parser.add_argument("--threads", default="1,2", help="torch thread counts of the timing section")
    parser.add_argument("--points", default=None,
                        help="comma-separated indices into POINTS (default: all); rows of other points are kept")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = range(len(POINTS)) if args.points is None else [int(i) for i in args.points.split(",")]
    points = [POINTS[i] for i in chosen if POINTS[i][4] or not args.quick]
    payload: dict = {"machine": machine(), "threads": "held-out and convergence: 1; speed: per row"}
    if not args.no_held_out:
        print("== held-out output error, fit='kernel' vs fit='outputs' (equal parameters) ==")
        rows, gaps = held_out(points, long=not args.no_long, methods=tuple(args.methods.split(",")))
        table(rows, ["model", "layer", "R", "K", "method", "ranks", "params", "heldout_kernel_fit",
                     "heldout_output_fit", "ratio", "ratio_photo_split", "cal_output_fit", "kt_floor_cal",
                     "kernel_err_output_fit", "iterations", "solver", "t_kernel_s", "t_outputs_s"])
        payload["held_out"] = rows
        if not args.no_long:
            print("\n== default kernel fit against a long converged run (relative kernel error) ==")
            table(gaps, ["model", "layer", "method", "ranks", "kind", "default", "long", "gap", "steps_default",
                         "steps_long", "t_default_s", "t_long_s"])
            payload["convergence"] = gaps
    if not args.no_speed:
        print("\n== fit times (median of 3) ==")
        payload["speed"] = speed(tuple(int(t) for t in args.threads.split(",")))
        table(payload["speed"], ["case", "threads", "median_s", "goal_s", "ok", "steps", "solver", "kernel"])
    # Sections skipped in this run keep their rows from the previous one, and so do the rows of points not run
    # (so that the benchmark can run in parts, each short enough for an exclusive slot on a shared machine).
    path = RESULTS / "fit_cpu.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    for section in ("held_out", "convergence"):
        if section in payload:
            ran = {_point_key(row) for row in payload[section]}
            kept = [row for row in previous.get(section, []) if _point_key(row) not in ran]
            payload[section] = kept + payload[section]
    write("fit_cpu.json", {**previous, **payload})


def _point_key(row: dict) -> tuple:
    return (row["model"], row["layer"], row.get("R"), row.get("K"))

if __name__ == "__main__":
    main()
