"""One prepared GPU benchmark of KCPConv2d's paths against cuDNN's dense conv, CP and Tucker-2.

Builds every variant from random factors (no TensorLy), checks each output against ``F.conv2d`` with the
reconstructed kernel on the GPU, times it with CUDA events, and writes one JSON (plus a markdown table)::

    python bench/gpu_kcp.py --out $OUT/gpu_kcp.json            # the device run (budgeted, ~6 min)
    python bench/gpu_kcp.py --out $OUT/gpu_kcp.json --quick    # the target row and the DESIGN 4 rows only
    TRITON_INTERPRET=1 python bench/gpu_kcp.py --dry-run --out /tmp/dry.json   # CPU: build + check, no timing

Work runs in priority order (the target row first) and stops starting new work once ``--budget-s`` is spent;
what was left is listed in the JSON. The JSON is rewritten after every configuration, so a killed run keeps
what it measured. A variant that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kcp import costs  # noqa: E402
from kcp.decomposition import Decomposition  # noqa: E402
from kcp.geometry import ConvGeometry  # noqa: E402
from kcp.kernels import FAST_PATHS, SWEEP_CONFIGS, fused_forward  # noqa: E402
from kcp.kernels.checks import random_kcp, run_checks  # noqa: E402
from kcp.latency import cuda_samples, percentiles  # noqa: E402
from kcp.modules import to_module  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOL = {"fp32": 5e-3, "bf16": 4e-2}  # fp32 allows cuDNN's TF32 (its default) in the 1x1 and merged convs
# Peak HBM bandwidth by card name (first substring that matches), for the memory floor.
PEAK_BW = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
           ("A100-SXM4-80GB", 2.04e12), ("A100", 1.56e12))
KCP_PATHS = ("layered", "dense", *FAST_PATHS)


@dataclass(frozen=True)
class Layer:
    """A 3x3, stride-1, padding-1 conv: O x I at hw x hw."""

    name: str
    out_c: int
    in_c: int
    hw: int
    k: int = 3

    @property
    def kernel(self) -> tuple[int, int, int, int]:
        return (self.out_c, self.in_c, self.k, self.k)


LAYERS = (Layer("256x256x3x3@56", 256, 256, 56), Layer("512x512x3x3@28", 512, 512, 28),
          Layer("256x256x3x3@14", 256, 256, 14), Layer("64x64x3x3@8", 64, 64, 8))
DRY_LAYERS = (Layer("16x16x3x3@8", 16, 16, 8), Layer("32x32x3x3@5", 32, 32, 5))
# DESIGN 4's rows (layer index, batch): measured first, after the target.
ANCHORS = ((0, 128), (1, 128), (2, 128), (3, 32))


@dataclass(frozen=True)
class Config:
    layer: Layer
    batch: int
    dtype: str
    channels_last: bool
    target: bool = False  # the issue's target row: also the wide ranks and the tile sweep

    @property
    def name(self) -> str:
        return f"{self.layer.name} B={self.batch} {self.dtype} {'cl' if self.channels_last else 'nchw'}"


def plan(quick: bool, dry: bool) -> list[Config | str]:
    """Work in priority order: the target, the DESIGN 4 rows, the GPU correctness cases, then the rest."""
    if dry:
        small, odd = DRY_LAYERS
        return [Config(small, 2, "bf16", True, target=True), Config(small, 2, "fp32", False),
                Config(odd, 1, "fp32", True), Config(odd, 1, "bf16", False)]
    order: list[Config | str] = [Config(LAYERS[0], 128, "bf16", True, target=True)]
    for layer_i, batch in ANCHORS[1:]:
        order.append(Config(LAYERS[layer_i], batch, "bf16", True))
    for layer_i, batch in ANCHORS:
        order.append(Config(LAYERS[layer_i], batch, "fp32", False))
    order.append("checks")
    if quick:
        return order
    for cl in (True, False):
        for dt in ("bf16", "fp32"):
            for layer in LAYERS:
                for batch in (1, 32, 128):
                    cfg = Config(layer, batch, dt, cl)
                    if cfg.name not in {c.name for c in order if isinstance(c, Config)}:
                        order.append(cfg)
    return order


# ---------------------------------------------------------------- modules


def _randn(*shape: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen)


def cp_module(layer: Layer, rank: int, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    o, i, k = layer.out_c, layer.in_c, layer.k
    s = (rank * i * k * k) ** (-0.25)
    f = {"out": _randn(o, rank, scale=s, gen=gen), "in": _randn(i, rank, scale=s, gen=gen),
         "h": _randn(k, rank, scale=s, gen=gen), "w": _randn(k, rank, scale=s, gen=gen)}
    result = Decomposition("cp", layer.kernel, {"rank": rank}, f)
    return to_module(result, geometry=ConvGeometry.make(1, 1), bias=torch.randn(o, generator=gen))


def tucker2_module(layer: Layer, rank: int, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    o, i, k = layer.out_c, layer.in_c, layer.k
    s = (rank * i * k * k) ** (-1 / 6)
    f = {"in": _randn(i, rank, scale=s, gen=gen), "core": _randn(rank, rank, k, k, scale=s, gen=gen),
         "out": _randn(o, rank, scale=s, gen=gen)}
    result = Decomposition("tucker2", layer.kernel, {"in_rank": rank, "out_rank": rank}, f)
    return to_module(result, geometry=ConvGeometry.make(1, 1), bias=torch.randn(o, generator=gen))


def dense_module(layer: Layer, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(layer.in_c, layer.out_c, layer.k, padding=layer.k // 2, bias=True)


def kernel_of(module: nn.Module) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return module.weight.detach().float()
    return module.decomposition().to(dtype=torch.float32).reconstruct()


def path_macs(module: nn.Module, path: str, hw: int) -> int:
    """MACs per image of a KCP path (the fast paths' counts are not in kcp.costs)."""
    m, i, o = module.width, module.in_channels, module.out_channels
    taps = module.kernel_size[0] * module.kernel_size[1]
    if path in costs.EXECUTIONS:
        return module.decomposition().macs((hw, hw), module.geometry, path)
    if path == "fused":  # L1 once per input pixel, the separable taps, L4
        return hw * hw * (i * m + taps * m + m * o)
    if path == "full":
        return hw * hw * o * i * taps
    return hw * hw * (taps * i * m + m * o)  # merged, fused_all: an implicit k x k conv to the middle width


# ---------------------------------------------------------------- timing


def time_cuda(fn: Callable[[], object], warmup: int, runs: int, graph: bool) -> dict:
    """Median and spread of ``fn()`` in ms (kcp.latency's CUDA-event timing, optionally replaying a CUDA graph)."""
    median, p10, p90 = percentiles(cuda_samples(fn, warmup, runs, graph))
    return {"median_ms": median, "p10_ms": p10, "p90_ms": p90, "runs": runs}


def peak_bandwidth(name: str) -> tuple[float | None, str | None]:
    for key, bw in PEAK_BW:
        if key in name:
            return bw, key
    return None, None


# ---------------------------------------------------------------- one configuration


@dataclass
class Variant:
    name: str
    method: str
    run: Callable[[], torch.Tensor]
    module: nn.Module | None = None
    ranks: str = ""
    macs: int | None = None
    graph: bool = False
    config: str = ""


def _variants(cfg: Config, x: torch.Tensor, dev: str, dtype: torch.dtype) -> list[Variant]:
    layer = cfg.layer
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    prep = lambda m: m.to(device=dev, dtype=dtype, memory_format=layout).eval()
    hw, n = layer.hw, cfg.batch
    out: list[Variant] = []
    dense = prep(dense_module(layer))
    out.append(Variant("dense", "dense", lambda: dense(x), dense, macs=n * math.prod(layer.kernel) * hw * hw))
    rank = max(layer.in_c // 8, 1)
    cp = prep(cp_module(layer, rank))
    out.append(Variant("cp", "cp", lambda: cp(x), cp, f"R={rank}", n * cp.decomposition().macs((hw, hw))))
    tk = prep(tucker2_module(layer, rank))
    out.append(Variant("tucker2", "tucker2", lambda: tk(x), tk, f"r={rank}", n * tk.decomposition().macs((hw, hw))))
    ranks = [(1, 8)] + ([(8, 8)] if cfg.target else [])
    for r, k in ranks:
        out += _kcp_variants(cfg, x, prep, r, k, graphs=layer.hw <= 14 and cfg.dtype == "bf16" and cfg.channels_last
                             and (r, k) == (1, 8))
    if any(v.graph for v in out):
        out.append(Variant("dense +graph", "dense", lambda: dense(x), dense, macs=out[0].macs, graph=True))
    return out


def _kcp_variants(cfg: Config, x: torch.Tensor, prep, r: int, k: int, graphs: bool) -> list[Variant]:
    """Every path of one KCP module (and 'auto' on a twin), the tile sweep on the target, graph replays if asked."""
    layer, n, hw = cfg.layer, cfg.batch, cfg.layer.hw
    kcp = prep(random_kcp(layer.kernel, r, k, geometry=ConvGeometry.make(1, 1)))
    auto = prep(random_kcp(layer.kernel, r, k, geometry=ConvGeometry.make(1, 1), execution="auto"))
    tag = f"R={r} K={k}"
    macs = lambda path: n * path_macs(kcp, path, hw)
    out = [Variant(f"kcp {p}", "kcp", lambda p=p: kcp._run(x, p), kcp, tag, macs(p)) for p in KCP_PATHS]
    out.append(Variant("kcp auto", "kcp", lambda: auto(x), auto, tag))
    if cfg.target and (r, k) == (1, 8):  # does another tile shape beat the default?
        out += [Variant(f"kcp {v} {bc}", "kcp", lambda v=v, bc=bc: fused_forward(kcp, x, v, bc), kcp, tag, macs(v),
                        config=str(bc)) for v, configs in SWEEP_CONFIGS.items() for bc in configs]
    if graphs:
        out += [Variant(f"kcp {p} +graph", "kcp", lambda p=p: kcp._run(x, p), kcp, tag, macs(p), graph=True)
                for p in ("layered", "fused", "fused_all")]
    return out


def _row_base(cfg: Config, variant: Variant) -> dict:
    mod = variant.module
    params = sum(p.numel() for p in mod.parameters()) if mod is not None else 0
    dense_params = math.prod(cfg.layer.kernel) + cfg.layer.out_c
    return {"layer": cfg.layer.name, "target": cfg.target, "batch": cfg.batch, "dtype": cfg.dtype,
            "layout": "channels_last" if cfg.channels_last else "nchw", "variant": variant.name,
            "method": variant.method, "ranks": variant.ranks, "params": params,
            "compression": dense_params / params if params else None, "macs": variant.macs,
            "cuda_graph": variant.graph, "config": variant.config}


def run_config(cfg: Config, dev: str, warmup: int, runs: int, floor_bw: float | None) -> list[dict]:
    """Every variant of one configuration: checked against the reference, then timed (unless on the CPU)."""
    dtype = DTYPES[cfg.dtype]
    layer = cfg.layer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch, layer.in_c, layer.hw, layer.hw, generator=gen).to(dev, dtype)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rows: list[dict] = []
    variants = _variants(cfg, x, dev, dtype)
    out_bytes = cfg.batch * layer.out_c * layer.hw * layer.hw * x.element_size()
    io_bytes = x.numel() * x.element_size() + out_bytes
    timed = dev != "cpu"
    copy = time_cuda(lambda: x.clone(memory_format=torch.preserve_format), warmup, runs, False) if timed else None
    emp_bw = 2 * x.numel() * x.element_size() / (copy["median_ms"] * 1e-3) if copy else None
    floor = {"io_bytes": io_bytes,
             "floor_ms": io_bytes / floor_bw * 1e3 if floor_bw else None,
             "floor_copy_ms": io_bytes / emp_bw * 1e3 if emp_bw else None,
             "copy_ms": copy["median_ms"] if copy else None}
    refs: dict[int, torch.Tensor] = {}
    dense_ms = None
    for v in variants:
        row = {**_row_base(cfg, v), **floor}
        try:
            with torch.inference_mode():
                y = v.run()
                key = id(v.module)
                if key not in refs:
                    refs[key] = _reference(v.module, x)
                err = float((y.float() - refs[key]).abs().max() / refs[key].abs().max().clamp_min(1e-30))
                row.update(err=err, ok=bool(err <= TOL[cfg.dtype] and y.shape == refs[key].shape))
                if v.name == "kcp auto":
                    row["choice"] = v.module.last_choice
                if timed:
                    row.update(time_cuda(v.run, warmup, runs, v.graph))
        except Exception as exc:  # one failing variant must not stop the run
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:500]}",
                       trace=traceback.format_exc(limit=3)[-1500:])
        if row.get("median_ms") is not None:
            if v.name == "dense":
                dense_ms = row["median_ms"]
            row["speedup_vs_dense"] = dense_ms / row["median_ms"] if dense_ms else None
            row["x_floor"] = row["median_ms"] / floor["floor_ms"] if floor["floor_ms"] else None
        rows.append(row)
    return rows


def _reference(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fp32 ``F.conv2d`` with the module's (reconstructed) kernel, TF32 off."""
    bias = None if module.bias is None else module.bias.detach().float()
    g = ConvGeometry.from_conv(module) if isinstance(module, nn.Conv2d) else module.geometry
    allow = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return F.conv2d(x.float(), kernel_of(module), bias, g.stride, g.padding, g.dilation)
    finally:
        torch.backends.cudnn.allow_tf32 = allow


# ---------------------------------------------------------------- report


def summary(rows: list[dict]) -> dict:
    """The issue's target: bf16, channels_last, 256x256x3x3 @56, B=128."""
    sel = [r for r in rows if r["target"] and r.get("median_ms") and r.get("ok")]
    dense = next((r for r in sel if r["variant"] == "dense"), None)
    kcp = [r for r in sel if r["method"] == "kcp" and not r["cuda_graph"] and (r["compression"] or 0) >= 20]
    if not dense or not kcp:
        return {"measured": False}
    best = min(kcp, key=lambda r: r["median_ms"])
    return {"measured": True, "dense_ms": dense["median_ms"], "best_variant": best["variant"],
            "best_ranks": best["ranks"], "best_ms": best["median_ms"], "compression": best["compression"],
            "speedup_vs_dense": dense["median_ms"] / best["median_ms"], "floor_ms": best["floor_ms"],
            "floor_copy_ms": best["floor_copy_ms"], "x_floor": best["x_floor"],
            "pass_2x_dense": dense["median_ms"] / best["median_ms"] >= 2,
            "pass_3x_floor": best["x_floor"] is not None and best["x_floor"] <= 3}


def table(rows: list[dict]) -> str:
    """Markdown table of every row (median ms, speed-up over dense, multiple of the memory floor, error)."""
    lines = ["| layer | B | dtype | layout | variant | ranks | ms (p10-p90) | vs dense | x floor | max err | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "" if v is None else format(v, f)
    for r in rows:
        ms = "" if r.get("median_ms") is None else f"{r['median_ms']:.3f} ({r['p10_ms']:.3f}-{r['p90_ms']:.3f})"
        note = r.get("error") or r.get("choice") or ("" if r.get("ok", True) else "ERROR ABOVE TOLERANCE")
        lines.append(f"| {r['layer']} | {r['batch']} | {r['dtype']} | {r['layout']} | {r['variant']} | {r['ranks']} "
                     f"| {ms} | {fmt(r.get('speedup_vs_dense'), '.2f')} | {fmt(r.get('x_floor'), '.2f')} "
                     f"| {fmt(r.get('err'), '.1e')} | {note[:140]} |")
    return "\n".join(lines)


def compact(rows: list[dict]) -> str:
    """One line per configuration (the README's table): the baselines, KCP R=1 K=8's paths, the fastest, auto."""
    configs: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["ranks"] in ("", "R=1 K=8") or r["method"] != "kcp":
            configs.setdefault((r["layer"], r["batch"], r["dtype"], r["layout"]), {})[r["variant"]] = r
    cols = ("dense", "cp", "tucker2", "kcp layered", "kcp dense", "kcp merged", "kcp full", "kcp fused",
            "kcp fused_all")
    lines = ["| layer | B | dtype | layout | " + " | ".join(cols) + " | best KCP | vs dense | x floor | auto picked |",
             "|---" * (len(cols) + 8) + "|"]
    ms = lambda r: "fail" if r is None or not r.get("ok") else ("" if r.get("median_ms") is None
                                                                else f"{r['median_ms']:.3f}")
    for (layer, batch, dtype, layout), by in configs.items():
        kcp = [r for r in by.values() if r["method"] == "kcp" and r.get("median_ms") and r.get("ok")
               and not r["cuda_graph"]]
        best = min(kcp, key=lambda r: r["median_ms"], default=None)
        auto = (by.get("kcp auto") or {}).get("choice") or ""
        fmt = lambda v: "" if v is None else f"{v:.2f}"
        lines.append(f"| {layer} | {batch} | {dtype} | {layout} | " + " | ".join(ms(by.get(c)) for c in cols)
                     + f" | {best['variant'] + ' ' + ms(best) if best else ''} "
                     + f"| {fmt(best and best.get('speedup_vs_dense'))} | {fmt(best and best.get('x_floor'))} "
                     + f"| {auto.split(';')[0]} |")
    return "\n".join(lines)


def _write(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)
    head = {k: v for k, v in doc.items() if k not in ("rows", "checks", "summary")}
    checks = f"{sum(c['ok'] for c in doc['checks'])}/{len(doc['checks'])} correctness cases ok"
    path.with_suffix(".md").write_text(
        f"# {doc['device']}\n\n```\n{json.dumps(head, indent=1)}\n{json.dumps(doc['summary'], indent=1)}\n```\n\n"
        f"{checks}; times in ms (median of CUDA-event timings).\n\n{compact(doc['rows'])}\n\n"
        f"## Every row\n\n{table(doc['rows'])}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu_kcp.json")
    parser.add_argument("--quick", action="store_true", help="the target row, DESIGN 4's rows and the checks only")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny layers: build and check, no timing")
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no new work after this many seconds")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: use --dry-run to check the script on the CPU")
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (dry run)"
    bw, bw_key = peak_bandwidth(name)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    doc = {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
           "peak_bw_bytes_per_s": bw, "peak_bw_assumed_for": bw_key, "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "float32_matmul_precision": torch.get_float32_matmul_precision(), "runs": args.runs,
           "warmup": args.warmup, "argv": sys.argv[1:], "rows": [], "checks": [], "skipped": [], "summary": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = plan(args.quick, args.dry_run)
    print(f"{name}: {len(work)} work items, budget {args.budget_s:.0f} s "
          f"(estimate: ~10 s per GPU configuration incl. compiles, ~60 s for the checks)", flush=True)
    for i, item in enumerate(work):
        elapsed = time.perf_counter() - t0
        label = item if isinstance(item, str) else item.name
        if elapsed > args.budget_s:
            doc["skipped"].append(label)
            continue
        if item == "checks":
            doc["checks"] = run_checks(device=dev) if dev == "cuda" else []
            bad = [c for c in doc["checks"] if not c["ok"]]
            print(f"[{elapsed:6.1f}s] checks: {len(doc['checks']) - len(bad)}/{len(doc['checks'])} ok", flush=True)
        else:
            rows = run_config(item, dev, args.warmup, args.runs, bw)
            doc["rows"].extend(rows)
            best = min((r for r in rows if r.get("median_ms") and r["method"] == "kcp"),
                       key=lambda r: r["median_ms"], default=None)
            dense = next((r for r in rows if r["variant"] == "dense"), {})
            failed = sum(1 for r in rows if not r.get("ok"))
            print(f"[{elapsed:6.1f}s] {i + 1}/{len(work)} {label}: dense {dense.get('median_ms') or 0:.3f} ms, "
                  f"best kcp {best['variant'] + ' ' + format(best['median_ms'], '.3f') if best else '-'} ms, "
                  f"{failed} failed", flush=True)
        doc["summary"] = summary(doc["rows"])
        doc["elapsed_s"] = time.perf_counter() - t0
        _write(args.out, doc)
    print(compact(doc["rows"]))
    print(json.dumps(doc["summary"], indent=1))
    if doc["skipped"]:
        print(f"out of budget, skipped: {', '.join(doc['skipped'])}")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
