"""Correctness checks of the fast paths against ``F.conv2d`` with the reconstructed kernel.

One list of small cases (strides, paddings, dilations, odd sizes, kernel shapes, placements, bias, dtypes,
layouts) that the CPU tests run under Triton's interpreter and the device script runs on the GPU::

    TRITON_INTERPRET=1 python -m kcp.kernels.checks            # CPU, interpreter
    python -m kcp.kernels.checks --device cuda                  # GPU

Modules are built from random factors (no decomposition, no TensorLy).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from kcp.decomposition import Decomposition
from kcp.geometry import ConvGeometry
from kcp.kernels import FAST_PATHS, BlockConfig, fused_forward, run_path
from kcp.kron import make_factor_shape
from kcp.modules import KCPConv2d, to_module

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest |y - ref| / max|ref| against a float64 reference: fp32 is near exact; half types round x, the
# weights, the middle tensor and y.
TOLERANCE = {"fp32": 1e-4, "bf16": 4e-2, "fp16": 8e-3}
TF32_TOLERANCE = 5e-3


def random_kcp(kernel_shape: tuple[int, int, int, int], kt_rank: int, cp_rank: int, *, placement: str = "split",
               factors: tuple[int, int, int, int] | None = None, geometry: ConvGeometry | None = None,
               bias: bool = True, seed: int = 0, execution: str = "layered") -> KCPConv2d:
    """A KCPConv2d with random factors of the right shapes, scaled so that outputs are of order one."""
    gen = torch.Generator().manual_seed(seed)
    fs = make_factor_shape(kernel_shape, factors, placement)
    sizes = {"a_out": fs.out_a, "a_in": fs.in_a, "a_h": fs.ka_h, "a_w": fs.ka_w,
             "b_out": fs.out_b, "b_in": fs.in_b, "b_h": fs.kb_h, "b_w": fs.kb_w}
    scale = (kt_rank * cp_rank**2 * math.prod(kernel_shape[1:])) ** (-1 / 8)
    f = {key: scale * torch.randn(kt_rank, n, cp_rank, generator=gen) for key, n in sizes.items()}
    result = Decomposition("kcp", tuple(kernel_shape), {"kt_rank": kt_rank, "cp_rank": cp_rank}, f, fs)
    b = torch.randn(kernel_shape[0], generator=gen) if bias else None
    return to_module(result, geometry=geometry or ConvGeometry(), bias=b, execution=execution)


@dataclass(frozen=True)
class Case:
    """One layer and input to check: kernel (O, I, k_h, k_w), ranks (R, K), geometry, input (N, H, W)."""

    name: str
    kernel: tuple[int, int, int, int]
    ranks: tuple[int, int]
    input: tuple[int, int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | str = 1
    dilation: int | tuple[int, int] = 1
    placement: str = "split"
    factors: tuple[int, int, int, int] | None = None
    bias: bool = True
    dtype: str = "fp32"
    channels_last: bool = False


CASES = (
    Case("3x3 p1", (12, 8, 3, 3), (2, 3), (2, 7, 9)),
    Case("3x3 p1 bf16 cl", (12, 8, 3, 3), (2, 3), (2, 7, 9), dtype="bf16", channels_last=True),
    Case("3x3 s2 p1 nobias cl", (12, 8, 3, 3), (2, 3), (2, 9, 7), stride=2, bias=False, channels_last=True),
    Case("3x3 s2 p0 a-spatial bf16", (12, 8, 3, 3), (1, 4), (2, 9, 8), stride=2, padding=0, placement="a-spatial",
         dtype="bf16"),
    Case("3x3 same d2 cl", (16, 8, 3, 3), (2, 3), (1, 9, 7), padding="same", dilation=2, channels_last=True),
    Case("3x3 same d(2,1) a-spatial bf16 nobias", (16, 8, 3, 3), (1, 3), (2, 7, 9), padding="same", dilation=(2, 1),
         placement="a-spatial", bias=False, dtype="bf16"),
    Case("3x3 p0 d2", (12, 8, 3, 3), (2, 2), (2, 9, 9), padding=0, dilation=2),
    Case("1x3 p(0,1) cl", (12, 8, 1, 3), (2, 3), (2, 5, 7), padding=(0, 1), channels_last=True),
    Case("3x1 p(1,0)", (12, 8, 3, 1), (2, 3), (2, 7, 5), padding=(1, 0)),
    Case("5x5 p2 a-spatial cl", (12, 8, 5, 5), (1, 3), (2, 7, 9), padding=2, placement="a-spatial",
         channels_last=True),
    Case("5x5 same bf16 cl", (12, 8, 5, 5), (2, 3), (1, 9, 7), padding="same", dtype="bf16", channels_last=True),
    Case("1x1 s2", (12, 8, 1, 1), (2, 3), (2, 7, 9), stride=2, padding=0),
    Case("3x3 p1 width 72 cl", (12, 8, 3, 3), (2, 6), (1, 6, 5), channels_last=True),
    Case("3x3 p1 I80 O96 cl", (96, 80, 3, 3), (1, 4), (1, 5, 6), channels_last=True),
    Case("3x3 p1 fp16", (12, 8, 3, 3), (2, 3), (2, 7, 9), dtype="fp16"),
    Case("3x3 s(2,1) p(1,2) d(1,2) cl", (12, 8, 3, 3), (2, 3), (2, 9, 9), stride=(2, 1), padding=(1, 2),
         dilation=(1, 2), channels_last=True),
    Case("3x3 width 4 bf16 odd", (12, 8, 3, 3), (1, 2), (3, 11, 5), dtype="bf16"),
    Case("3x3 RGB stem I=3", (8, 3, 3, 3), (1, 3), (2, 7, 9), factors=(2, 4, 1, 3)),
)


# Tile shapes forced onto some cases so that both loop structures (o_inner or not), several middle-, output- and
# input-channel blocks and their masks all run on small inputs, where the default tiles would not pick them.
FORCED = (
    ("3x3 p1 I80 O96 cl", "fused", BlockConfig(16, 16, 64, 64, 4, True)),
    ("5x5 same bf16 cl", "fused", BlockConfig(16, 32, 16, 16, 4, True)),
    ("3x3 s2 p1 nobias cl", "fused", BlockConfig(16, 16, 16, 16, 4, False)),
    ("3x3 same d2 cl", "fused_all", BlockConfig(16, 16, 16, 16, 4, False)),
    ("3x3 p1 I80 O96 cl", "fused_all", BlockConfig(32, 16, 32, 32, 4, False)),
    ("3x3 s(2,1) p(1,2) d(1,2) cl", "fused_all", BlockConfig(32, 32, 16, 16, 4, True)),
)


def build(case: Case, device: str | torch.device = "cpu") -> tuple[KCPConv2d, torch.Tensor]:
    """The case's module (in the case's dtype) and input, on ``device``."""
    geometry = ConvGeometry.make(case.stride, case.padding, case.dilation)
    module = random_kcp(case.kernel, *case.ranks, placement=case.placement, factors=case.factors,
                        geometry=geometry, bias=case.bias, seed=zlib.crc32(case.name.encode()) % 1000)
    dtype = DTYPES[case.dtype]
    x = torch.randn(case.input[0], case.kernel[1], *case.input[1:], generator=torch.Generator().manual_seed(1))
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    return module.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype).contiguous(memory_format=layout)


def reference(module: KCPConv2d, x: torch.Tensor) -> torch.Tensor:
    """``F.conv2d`` with the module's reconstructed kernel, in float64 (on the CPU)."""
    g = module.geometry
    weight = module.decomposition().to("cpu", torch.float64).reconstruct()
    bias = None if module.bias is None else module.bias.detach().cpu().double()
    return F.conv2d(x.detach().cpu().double(), weight, bias, g.stride, g.padding, g.dilation)


def rel_max_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute error over the largest reference magnitude."""
    ref = ref.detach().cpu().double()
    return float((y.detach().cpu().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def check(case: Case, path: str, device: str | torch.device = "cpu", config: BlockConfig | None = None) -> dict:
    """Run one case along ``path`` (with forced tiles, if given) and compare it with the float64 reference.

    An error is recorded, not raised.
    """
    module, x = build(case, device)
    tol = TOLERANCE[case.dtype]
    if case.dtype == "fp32" and x.is_cuda and path in ("merged", "full") and torch.backends.cudnn.allow_tf32:
        tol = TF32_TOLERANCE  # cuDNN runs fp32 convs in TF32 by default
    out = {"case": case.name, "path": path, "device": str(device), "dtype": case.dtype, "tol": tol,
           "config": "" if config is None else str(config)}
    try:
        with torch.inference_mode():
            y = run_path(module, x, path) if config is None else fused_forward(module, x, path, config)
        ref = reference(module, x)
        out.update(shape_ok=tuple(y.shape) == tuple(ref.shape), dtype_ok=y.dtype == x.dtype,
                   layout_ok=(not case.channels_last) or y.is_contiguous(memory_format=torch.channels_last))
        out["err"] = rel_max_err(y, ref) if out["shape_ok"] else float("nan")
        out["ok"] = bool(out["shape_ok"] and out["dtype_ok"] and out["layout_ok"] and out["err"] <= out["tol"])
    except Exception as exc:  # recorded so that one failure does not hide the others
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    return out


def run_checks(paths: tuple[str, ...] = FAST_PATHS, device: str | torch.device = "cpu",
               cases: tuple[Case, ...] = CASES) -> list[dict]:
    """Every case along every path, then the forced tiles of the paths asked for."""
    by_name = {c.name: c for c in cases}
    plain = [check(case, path, device) for case in cases for path in paths]
    return plain + [check(by_name[name], path, device, cfg) for name, path, cfg in FORCED
                    if path in paths and name in by_name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paths", default=",".join(FAST_PATHS), help="comma-separated fast paths")
    args = parser.parse_args(argv)
    results = run_checks(tuple(args.paths.split(",")), args.device)
    json.dump({"cases": [asdict(c) for c in CASES], "results": results}, sys.stdout, indent=1)
    print()
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
