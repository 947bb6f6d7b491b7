"""``python -m kcp``: list a model's conv layers, decompose one, sweep a rank grid, or compress the whole network.

Bad arguments and bad input exit with code 2 and one line on stderr that says what is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from kcp import estimate as est
from kcp import zoo
from kcp.cache import ResultCache, default_dir
from kcp.decomposition import REFINE_SWEEPS
from kcp.engines import ENGINES, Engine, check_engine, make_engine
from kcp.evaluate import evaluate, module_for
from kcp.export import save_layer
from kcp.fit import DEFAULT_FIT, FITS, decompose_point, point_options
from kcp.kron import make_factor_shape
from kcp.latency import DTYPES, LatencySettings
from kcp.methods import DECOMPOSITIONS
from kcp.metrics import counted_macs
from kcp.network import command as network_command
from kcp.sweep import SweepConfig, sweep_network
from kcp.target import LayerTarget


class UsageError(Exception):
    """A bad argument: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _factors(text: str) -> tuple[int, int, int, int]:
    values = _ints(text)
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--factors takes four sizes OA,OB,IA,IB, got {text!r}")
    return values  # type: ignore[return-value]


def _methods(text: str) -> tuple[str, ...]:
    known = DECOMPOSITIONS
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in known]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}: choose from {','.join(known)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m kcp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help=f"a zoo name ({', '.join(zoo.MODELS)}) or a checkpoint path")
        p.add_argument("--arch", help="architecture of a checkpoint (a zoo name); detected from its keys if omitted")

    def layer_args(p: argparse.ArgumentParser) -> None:
        model_args(p)
        p.add_argument("--layer", required=True, help="conv layer name (see `python -m kcp layers`); for sweep also "
                                                  "a comma-separated list, or 'all' (every conv KCP applies to)")
        p.add_argument("--factors", type=_factors, help="factor shape OA,OB,IA,IB (default: balanced pairs)")
        p.add_argument("--placement", choices=("split", "a-spatial"), default="split")
        p.add_argument("--sweeps", type=int, default=REFINE_SWEEPS,
                       help=f"most refinement sweeps (default {REFINE_SWEEPS}; the fit stops once it converges)")
        p.add_argument("--seed", type=int, help="random seed (default: the library's)")
        p.add_argument("--images", type=_positive, help="evaluation images for output error and fidelity "
                                                        "(default per model)")
        p.add_argument("--fit", choices=FITS, default=DEFAULT_FIT,
                       help="fit the kernel itself, or the layer's outputs on the calibration images")
        p.add_argument("--calibration", type=_positive, metavar="N",
                       help="calibration images for --fit outputs (default per model; never evaluation images)")
        p.add_argument("--force", action="store_true",
                       help="run even when the estimate is past the usual time or memory budget (never past the "
                            "hard ceiling)")

    layers = sub.add_parser("layers", help="list a model's conv layers")
    model_args(layers)
    layers.add_argument("--json", action="store_true", help="print JSON instead of a table")

    dec = sub.add_parser("decompose", help="KCP-decompose one layer and print its metrics")
    layer_args(dec)
    dec.add_argument("--kt", type=int, required=True, help="KT rank R")
    dec.add_argument("--cp", type=int, required=True, help="CP rank K")
    dec.add_argument("--no-refine", action="store_true", help="keep the two-stage result")
    dec.add_argument("--save", help="write the decomposed layer to this .pt file")
    dec.add_argument("--json", action="store_true", help="print JSON instead of text")

    sw = sub.add_parser("sweep", help="sweep a KT x CP rank grid against the baselines")
    layer_args(sw)
    sw.add_argument("--kt", type=_ints, required=True, help="KT ranks, e.g. 1,2,4")
    sw.add_argument("--cp", type=_ints, required=True, help="CP ranks, e.g. 1,2,4,8")
    sw.add_argument("--methods", type=_methods, default=DECOMPOSITIONS)
    sw.add_argument("--match", choices=("params", "macs"), default="params", help="baselines' budget")
    sw.add_argument("--latency", action="store_true", help="measure latency (dense timed alongside)")
    sw.add_argument("--device", default="cpu", help="cpu or cuda (for latency)")
    sw.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    sw.add_argument("--batch", type=int, default=1)
    sw.add_argument("--channels-last", action="store_true")
    sw.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replay instead of eager calls")
    sw.add_argument("--no-fidelity", action="store_true", help="skip the network-level top-1 agreement")
    sw.add_argument("--warm-start", action="store_true",
                    help="warm-start each KCP point from its neighbour (faster; values may then differ slightly "
                         "from `decompose` of the same point)")
    sw.add_argument("--cache-dir", help="result cache folder (default $KCP_CACHE_DIR or ~/.cache/kcp-rank-explorer)")
    sw.add_argument("--no-cache", action="store_true")
    sw.add_argument("--out", required=True, help="output .csv or .json")
    sw.add_argument("--engine", choices=ENGINES, default="local",
                    help="where points run: a local process pool (default) or a Ray cluster")
    sw.add_argument("--workers", type=int, help="local worker processes, or CPUs of a local Ray instance "
                                                "(default: cores // threads)")
    sw.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    sw.add_argument("--ray-address", help="an existing Ray cluster, e.g. ray://head:10001 (default: a local instance)")

    net = sub.add_parser("network", help="compress the whole network under one budget (or a uniform rank grid)")
    model_args(net)
    network_command.add_arguments(net, _ints, _methods)
    return parser


class Progress:
    """A one-line progress bar on stderr; with a parallel engine, it names it and counts the points in flight."""

    def __init__(self, width: int = 30, engine: Engine | None = None, layers: bool = False) -> None:
        self.width, self.start, self.engine, self.layers = width, time.perf_counter(), engine, layers
        self.last, self.timing = 0, False

    def __call__(self, done: int, total: int, row: dict[str, Any]) -> None:
        self.timing, self.last = self.timing or done < self.last, done  # a second pass: the latency
        filled = self.width * done // max(total, 1)
        if row["method"] == "kcp":
            what = f"kcp R={row['kt_rank']} K={row['cp_rank']}"
        else:
            what = row["method"] + (f" rank {row['rank']}" if row.get("rank") else "")
        if self.layers:
            what = f"{row['layer']} {what}"
        where = ""
        if self.engine is not None and not self.engine.in_process:
            where = "timing  " if self.timing else f"{self.engine.describe()}, {self.engine.in_flight} in flight  "
        stream = sys.stderr
        stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                     f"{time.perf_counter() - self.start:6.1f}s  {where}{what:<32}")
        if done == total:
            stream.write("\n")
        stream.flush()


def _writable_file(flag: str, path: str) -> None:
    """Refuse, before any work, an output file that cannot be written (probed by opening it for appending)."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder; give a file name")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path!r} cannot be written ({exc.strerror}); choose a path you can write to") \
            from None
    if not existed:
        os.remove(path)


def _writable_folder(flag: str, path: str) -> None:
    """Refuse, before any work, a cache folder that cannot be created or written (probed with a temporary file)."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UsageError(f"{flag} {path!r} cannot be written ({exc.strerror}); choose a folder you can write to") \
            from None


def _check_estimate(args, estimate: est.Estimate, what: str) -> None:
    """Refuse (exit 2) work past the hard ceiling, and past the budget without --force; say the estimate."""
    decision = est.decide(estimate, est.CLI_LIMITS, forced=args.force)
    if decision.action == "refuse":
        raise UsageError(f"{what} refused: {decision.reason}")
    if decision.action == "confirm":
        raise UsageError(f"{what}: {decision.reason}; pass --force to run it anyway")
    print(f"{what}: {decision.reason}", file=sys.stderr)


def _load(args) -> zoo.LoadedModel:
    return zoo.load_model(args.model, arch=args.arch)


def _cmd_layers(args) -> int:
    infos = zoo.conv_layers(_load(args))
    if args.json:
        print(json.dumps([vars(i) if not hasattr(i, "_asdict") else i._asdict() for i in infos], default=list))
        return 0
    print(f"{'layer':<28} {'shape':<18} {'stride':<7} {'pad':<7} {'dil':<6} {'grp':>4} {'in -> out':<15} "
          f"{'params':>10} {'MACs':>14}  KCP")
    for i in infos:
        shape = "x".join(map(str, i.weight_shape))
        hw = "-" if i.in_hw is None else f"{i.in_hw[0]}x{i.in_hw[1]} -> {i.out_hw[0]}x{i.out_hw[1]}"
        macs = "-" if i.macs is None else f"{i.macs:,}"
        kcp_note = "yes" if i.kcp_ok else f"no: {i.kcp_reason}"
        print(f"{i.name:<28} {shape:<18} {_pair(i.stride):<7} {_pair(i.padding):<7} {_pair(i.dilation):<6} "
              f"{i.groups:>4} {hw:<15} {i.params:>10,} {macs:>14}  {kcp_note}")
    return 0


def _pair(value) -> str:
    return value if isinstance(value, str) else "x".join(map(str, value))


# The evaluate() columns that `decompose` prints, in this order (None where the model cannot give one).
_DECOMPOSE_FIELDS = ("model", "layer", "fit", "calibration_images", "factors", "placement", "kt_rank", "cp_rank",
                     "params", "dense_params", "compression", "macs", "dense_macs", "rel_error", "sweeps", "converged",
                     "output_rel_error", "top1_agreement", "top1_changed", "eval_images", "accuracy", "dense_accuracy",
                     "seconds")


def _target(args, loaded: zoo.LoadedModel, fidelity: bool = True, layer: str | None = None) -> LayerTarget:
    if args.calibration is not None and args.fit != "outputs":
        raise UsageError("--calibration only applies with --fit outputs")
    target = LayerTarget.from_zoo(loaded, layer or args.layer, n_images=args.images, fidelity=fidelity,
                                  calibration=args.calibration)
    if args.fit == "outputs" and target.calibration is None:
        raise UsageError(f"--fit outputs needs calibration images, and {loaded.name} has none (a bare state dict): "
                         f"give --arch, or use --fit kernel")
    return target


def _cmd_decompose(args) -> int:
    if args.save:
        _writable_file("--save", args.save)
    loaded = _load(args)
    target = _target(args, loaded)
    shape = make_factor_shape(target.kernel_shape, args.factors, args.placement)
    images = 0 if target.inputs is None else len(target.inputs)
    _check_estimate(args, est.estimate(
        "kcp", target.kernel_shape, {"kt_rank": args.kt, "cp_rank": args.cp}, target.in_hw, geometry=target.geometry,
        factor_shape=shape, refine_sweeps=0 if args.no_refine else args.sweeps, images=images,
        network_macs=zoo.rest_macs(loaded, args.layer) if target.fidelity else 0, fit=args.fit),
        f"R={args.kt} K={args.cp}")
    options = point_options("kcp", factors=args.factors, placement=args.placement,
                            refine_sweeps=0 if args.no_refine else args.sweeps, seed=args.seed)
    if args.fit == "outputs":
        target.moments()  # the calibration pass is set-up, not decomposition time
    start = time.perf_counter()
    result = decompose_point(target, "kcp", {"kt_rank": args.kt, "cp_rank": args.cp}, fit=args.fit,
                             options=options)
    seconds = time.perf_counter() - start
    row = evaluate(target, result, seconds=seconds)
    report: dict[str, Any] = {"kernel": list(target.kernel_shape), **{k: row[k] for k in _DECOMPOSE_FIELDS}}
    report["counted_macs"] = counted_macs(module_for(target, result), (target.kernel_shape[1], *target.in_hw))
    report["error_after_two_stages"] = result.history[0]
    if "refine_skipped" in result.info:
        report["note"] = result.info["refine_skipped"]
    if target.inputs is not None:
        report["n_images"] = len(target.inputs)
        report["images"] = target.images
    if args.fit == "outputs":
        report["calibration"] = target.calibration_images
        report["objective"] = result.info.get("objective")
    if args.save:
        save_layer(args.save, result, target.geometry, target.conv.bias, {"model": loaded.name, "layer": args.layer})
        report["saved"] = args.save
    if args.json:
        print(json.dumps(report, default=str))
    else:
        width = max(map(len, report))
        for key, value in report.items():
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            shown = f"{value:.6g}" if isinstance(value, float) else shown
            print(f"{key:<{width}}  {shown}")
    return 0


def _cmd_sweep(args) -> int:
    if not args.out.endswith((".csv", ".json")):
        raise UsageError(f"--out must end in .csv or .json, got {args.out!r}")
    _writable_file("--out", args.out)
    if not args.no_cache:
        _writable_folder("--cache-dir", args.cache_dir or str(default_dir()))
    latency = None
    if args.latency:
        latency = LatencySettings(device=args.device, dtype=args.dtype, batch=args.batch,
                                  channels_last=args.channels_last, cuda_graph=args.cuda_graph)
    check_engine(args.engine, workers=args.workers, threads=args.threads, address=args.ray_address)
    loaded = _load(args)
    targets = [_target(args, loaded, fidelity=not args.no_fidelity, layer=name)
               for name in _sweep_layers(loaded, args.layer)]
    config = SweepConfig(kt_ranks=args.kt, cp_ranks=args.cp, methods=args.methods, factors=args.factors,
                         placement=args.placement, refine_sweeps=args.sweeps, seed=args.seed, match=args.match,
                         warm_start=args.warm_start, fidelity=not args.no_fidelity, latency=latency, fit=args.fit)
    total = None
    for target in targets:
        shape = make_factor_shape(target.kernel_shape, args.factors, args.placement)
        try:
            config.check(shape)
        except ValueError as exc:
            raise ValueError(f"layer {target.name}: {exc}" if len(targets) > 1 else str(exc)) from None
        images = 0 if target.inputs is None else len(target.inputs)
        network = zoo.rest_macs(loaded, target.name) if target.fidelity else 0
        baselines = sum(m != "kcp" for m in args.methods)
        layer_total = est.grid(target.kernel_shape, args.kt, args.cp, target.in_hw, baselines=baselines,
                               latency=latency, geometry=target.geometry, factor_shape=shape,
                               refine_sweeps=args.sweeps, images=images, network_macs=network, fit=args.fit)
        total = layer_total if total is None else total + layer_total
    points = len(args.kt) * len(args.cp) * len(targets)
    _check_estimate(args, total, f"sweep of {points} points")
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    with make_engine(args.engine, workers=args.workers, threads=args.threads, address=args.ray_address) as engine:
        progress = Progress(engine=engine, layers=len(targets) > 1)
        result = sweep_network(targets, config, cache=cache, progress=progress, engine=engine)
    path = result.write(args.out)
    print(f"{len(result.rows)} rows in {result.seconds:.1f} s -> {path}", file=sys.stderr)
    return 0


def _sweep_layers(loaded: zoo.LoadedModel, text: str) -> list[str]:
    """The layers that ``--layer`` names: one, a comma-separated list, or 'all' (every conv KCP applies to)."""
    infos = zoo.conv_layers(loaded)
    if text == "all":
        names = [i.name for i in infos if i.kcp_ok]
        if not names:
            raise UsageError(f"{loaded.name} has no conv layer that KCP applies to (see `python -m kcp layers`)")
        return names
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        zoo.get_conv(loaded, name)  # a clear error for an unknown layer
        refusal = next((i.kcp_reason for i in infos if i.name == name and not i.kcp_ok), None)
        if refusal and len(names) > 1:
            raise UsageError(f"layer {name}: {refusal}")
    return names


def _cmd_network(args) -> int:
    return network_command.run(args)


COMMANDS = {"layers": _cmd_layers, "decompose": _cmd_decompose, "sweep": _cmd_sweep, "network": _cmd_network}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ValueError) as exc:  # ZooError is a ValueError too
        message = " ".join(str(exc).split())
        print(f"python -m kcp: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npython -m kcp: interrupted (finished sweep points are cached)", file=sys.stderr)
        return 130
