"""``python -m kcp network``: plan a whole network under one budget (or run the uniform KT x CP grid), apply it,
fine-tune it, and write the report; optionally save the network and export it to ONNX."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from kcp import zoo
from kcp.cache import ResultCache
from kcp.engines import ENGINES, Engine, check_engine, make_engine
from kcp.export import save_network
from kcp.fit import DEFAULT_FIT, FITS
from kcp.latency import LatencySettings
from kcp.network.data import network_data
from kcp.network.finetune import FinetuneConfig
from kcp.network.onnx_export import check_onnx, export_onnx
from kcp.network.plan import Budget, PlanConfig
from kcp.network.run import SCALARS, RunSettings, Session


def add_arguments(p: argparse.ArgumentParser, ints, methods) -> None:
    """The ``network`` subcommand's options (``ints`` and ``methods`` are the CLI's list parsers)."""
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--compression", type=float, help="conv-parameter compression X (all convs counted)")
    budget.add_argument("--macs", type=float, help="conv MACs as a fraction F of the dense network's")
    budget.add_argument("--latency", type=float, help="latency as a fraction F of the dense network's (measured)")
    budget.add_argument("--kt", type=ints, help="uniform grid: KT ranks, e.g. 1,2,4,8 (with --cp)")
    p.add_argument("--cp", type=ints, help="uniform grid: CP ranks, e.g. 1,2,4,8 (with --kt)")
    p.add_argument("--methods", type=methods, default=PlanConfig().methods, help="methods a plan may choose")
    p.add_argument("--fit", choices=FITS, default=DEFAULT_FIT, help="what the decompositions fit")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps (default 0: zero-shot only)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--batch", type=int, default=128, help="fine-tuning batch size (default 128)")
    p.add_argument("--data", help="labelled images: a folder of class subfolders, or 'cifar10' "
                                  "(default: the model's own; digits: its train/test split)")
    p.add_argument("--distill", action="store_true", help="fine-tune on the dense network's logits, no labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-images", type=int, default=PlanConfig().calibration_images,
                   help="training images whose activations rank the candidates")
    p.add_argument("--device", default="cpu", help="cpu or cuda (for latency)")
    p.add_argument("--save", help="write the compressed network to this .pt file")
    p.add_argument("--onnx", help="export the compressed network to this .onnx file (checked in onnxruntime)")
    p.add_argument("--cache-dir", help="result cache folder (default $KCP_CACHE_DIR or ~/.cache/kcp-rank-explorer)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--engine", choices=ENGINES, help="where the per-layer sweeps and the uniform grid's points "
                                                     "run: a local process pool (two points at once on two cores) "
                                                     "or a Ray cluster (default: this process)")
    p.add_argument("--workers", type=int, help="local worker processes, or CPUs of a local Ray instance")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--ray-address", help="an existing Ray cluster, e.g. ray://head:10001 (with --engine ray)")
    p.add_argument("--out", required=True, help="output .json or .csv")


def _check(args) -> None:
    if not args.out.endswith((".csv", ".json")):
        raise ValueError(f"--out must end in .csv or .json, got {args.out!r}")
    if (args.kt is None) != (args.cp is None):
        raise ValueError("--kt and --cp go together: give both lists for the uniform grid, or neither")
    if args.kt is not None and (args.save or args.onnx) and len(args.kt) * len(args.cp) > 1:
        raise ValueError("--save and --onnx take one network: give one --kt and one --cp value, or a budget")
    if args.finetune_steps < 0 or args.batch < 1 or args.lr <= 0 or args.calibration_images < 1:
        raise ValueError("--finetune-steps must be >= 0, --batch and --calibration-images >= 1, --lr > 0")
    for kind in ("compression", "macs", "latency"):
        if getattr(args, kind) is not None:
            Budget(kind, getattr(args, kind))
    for flag, path in (("--save", args.save), ("--onnx", args.onnx)):
        if path and not Path(path).resolve().parent.is_dir():
            raise ValueError(f"{flag} {path}: its folder does not exist")


def _steps_bar(label: str):
    start = time.perf_counter()

    def show(done: int, total: int, point: dict | None) -> None:
        acc = "" if point is None else "  " + ", ".join(
            f"{k} {point[k]:.3f}" for k in ("accuracy", "top1_agreement") if point.get(k) is not None)
        if point is not None or done == total:
            sys.stderr.write(f"\r{label} step {done}/{total} {time.perf_counter() - start:6.1f}s{acc:<44}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return show


def run(args) -> int:
    """The command: bad arguments raise ValueError (the CLI reports them on one line, exit 2)."""
    _check(args)
    check_engine(args.engine, workers=args.workers, threads=args.threads, address=args.ray_address)
    with make_engine(args.engine, workers=args.workers, threads=args.threads, address=args.ray_address) as engine:
        return _run(args, engine)


def _run(args, engine: Engine) -> int:
    loaded = zoo.load_model(args.model, arch=args.arch)
    if args.save and loaded.arch is None:
        raise ValueError("--save needs a zoo architecture: give --arch for a checkpoint")
    data = network_data(loaded, args.data)
    if args.finetune_steps and not args.distill and not data.labelled:
        raise ValueError(f"{data.name} has no labels: add --distill (learn the dense network's logits) or give "
                         f"labelled images with --data DIR")
    settings = RunSettings(
        plan=PlanConfig(methods=args.methods, fit=args.fit, seed=args.seed,
                        calibration_images=args.calibration_images),
        finetune=FinetuneConfig(steps=args.finetune_steps, lr=args.lr, batch=args.batch, seed=args.seed,
                                distill=args.distill),
        latency=LatencySettings(device=args.device, runs=20),
    )
    session = Session(loaded, data, settings, cache=None if args.no_cache else ResultCache(args.cache_dir),
                      engine=engine)
    started = time.perf_counter()
    if args.kt is not None and not (args.save or args.onnx):
        reports, cancelled = session.grid(args.kt, args.cp, progress=_grid_bar(len(args.kt) * len(args.cp)))
        out: dict[str, Any] = {"model": loaded.name, "kt_ranks": list(args.kt), "cp_ranks": list(args.cp),
                               "seconds": round(time.perf_counter() - started, 3), "cancelled": cancelled,
                               "rows": reports}
        rows = reports
    else:
        if args.kt is not None:
            plan = session.planner.uniform(args.kt[0], args.cp[0])
        else:
            kind, value = next((k, v) for k, v in (("compression", args.compression), ("macs", args.macs),
                                                   ("latency", args.latency)) if v is not None)
            plan = session.planner.plan(Budget(kind, value), progress=_layers_bar())
        done = session.run(plan, progress=_steps_bar("fine-tune") if args.finetune_steps else None)
        out = done.report
        if args.save:
            save_network(args.save, done.net, loaded.arch, {"model": loaded.name, "compression": plan.compression})
            out["saved"] = args.save
        if args.onnx:
            exporter = export_onnx(done.net, args.onnx, loaded.input_size)
            out["onnx"] = {**check_onnx(args.onnx, done.net, data.eval_x[:64]), "exporter": exporter}
        out["seconds"] = round(time.perf_counter() - started, 3)
        rows = [out]
    _write(args.out, out, rows)
    print(f"{len(rows)} row(s) in {time.perf_counter() - started:.1f} s -> {args.out}", file=sys.stderr)
    return 0


def _grid_bar(total: int):
    start = time.perf_counter()

    def show(done: int, _total: int, report: dict) -> None:
        acc = report.get("accuracy_finetuned") or report.get("accuracy_zero_shot")
        shown = "" if acc is None else f" accuracy {acc:.3f}"
        sys.stderr.write(f"\rgrid {done}/{total} {time.perf_counter() - start:6.1f}s  R={report['kt_rank']} "
                         f"K={report['cp_rank']} {report['compression']:.1f}x{shown}   ")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _layers_bar():
    def show(done: int, total: int, name: str) -> None:
        sys.stderr.write(f"\rsweeping layers {done}/{total} {name:<28}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _write(path: str, out: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if path.endswith(".json"):
        Path(path).write_text(json.dumps(out, indent=1, default=str))
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SCALARS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
