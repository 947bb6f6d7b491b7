"""KCPConv2d's forward as Triton kernels that move each activation through memory about once.

Two variants (see ``bench/gpu_notes.md`` for the reasoning and the predicted numbers):

- ``"fused"``: L1 as one GEMM writing ``z`` (N, H, W, R K^2), then one Triton kernel for L2 + L3 + L4 + bias.
  Traffic: read x, write and read the thin ``z`` (taps hit cache), write y. MACs about the layered chain's.
- ``"fused_all"``: one Triton kernel for the whole chain; each of the k_h k_w taps multiplies the shifted input
  tile by ``W1`` scaled by that tap (an implicit GEMM), so only x is read and y written, at k_h k_w times L1's
  MACs.

Triton runs on CUDA tensors, or on CPU tensors under its interpreter (``TRITON_INTERPRET=1`` set before Triton
is imported), which the tests use. The kernels have no backward: they run when autograd is not recording.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from dataclasses import dataclass

import torch
from torch import nn

from kcp.kernels import prepare

FUSED_VARIANTS = ("fused", "fused_all")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_WIDTH = 4096
MAX_INNER_WIDTH = 128  # widest middle tile a program keeps whole
_INT32 = 2**31 - 1
_GRID_YZ = 65535
_TARGET_PROGRAMS = 256  # about two waves on a 132-SM H100/H200: smaller tiles below that


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes of one launch: output pixels, middle channels, output channels, input channels (``fused_all``).

    ``o_inner``: one program computes the whole middle width once (needs ``block_m >= R*K^2``) and loops over
    the output channels in blocks of ``block_o``; otherwise the grid spans the output-channel blocks and each
    program loops over middle-channel blocks.
    """

    block_p: int = 64
    block_m: int = 64
    block_o: int = 64
    block_i: int = 64
    num_warps: int = 4
    o_inner: bool = True
    num_stages: int = 2

    def __post_init__(self) -> None:
        blocks = (self.block_p, self.block_m, self.block_o, self.block_i)
        if any(b < 16 or b & (b - 1) for b in blocks):
            raise ValueError(f"block sizes must be powers of two >= 16 (tl.dot's minimum), got {blocks}")

    def __str__(self) -> str:
        inner = "/inner" if self.o_inner else ""
        return (f"P{self.block_p}/M{self.block_m}/O{self.block_o}/I{self.block_i}/w{self.num_warps}"
                f"/s{self.num_stages}{inner}")


def _pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    p = max(lo, 1 << max(0, (int(n) - 1).bit_length()))
    return p if hi is None else min(p, hi)


@functools.lru_cache(maxsize=256)
def default_config(variant: str, n: int, out_hw: tuple[int, int], width: int, in_c: int, out_c: int,
                   fp32: bool = False) -> BlockConfig:
    """Tiles for a launch (a few shapes only, so that one process compiles few kernels).

    Middle width up to ``MAX_INNER_WIDTH`` (64 in fp32): 64-pixel tiles that compute it once and loop over
    the output channels, with small accumulators so that several programs share an SM and hide memory
    latency. Wider: the grid also spans output-channel blocks. Fewer than about two waves of such programs
    (a launch-bound layer): 16-pixel tiles, and for ``fused`` the output channels spread over the grid too
    (its middle tile is cheap to recompute; ``fused_all``'s is not). ``fused_all``'s K loop is a GEMM's: one
    more pipeline stage.
    fp32 operands (three TF32 products each) take more registers: smaller blocks, so that nothing spills.
    """
    pixels = out_hw[0] * out_hw[1]
    everything = variant == "fused_all"
    mp, bi = _pow2(width), _pow2(in_c, hi=32 if fp32 and everything else 64)
    inner = mp <= (64 if fp32 else MAX_INNER_WIDTH)
    bp = _pow2(pixels, hi=64)
    stages = 3 if everything else 2
    if inner and n * -(-pixels // bp) >= _TARGET_PROGRAMS:
        return BlockConfig(bp, mp, 64, bi, 4, True, stages)
    bo = _pow2(out_c, hi=(64 if everything else 128) if fp32 else 256)
    if not inner and n * -(-pixels // bp) * -(-out_c // bo) >= _TARGET_PROGRAMS:
        warps = 8 if bp * bo >= 64 * 256 or (fp32 and everything) else 4
        return BlockConfig(bp, 64, bo, bi, warps, False, stages)
    if everything and inner:
        return BlockConfig(16, mp, 64, bi, 4, True, stages)
    return BlockConfig(16, min(mp, 64), 64, bi, 4, False, stages)


# Other tiles worth timing on a GPU for a middle width of 64 (the bench's sweep on the target layer); each
# fits an H100's shared memory and registers without spilling (tests/kernels/test_compile.py checks it).
SWEEP_CONFIGS = {
    "fused": (BlockConfig(128, 64, 64, 64, 8), BlockConfig(64, 64, 128, 64, 4), BlockConfig(32, 64, 64, 64, 4),
              BlockConfig(64, 64, 256, 64, 8, o_inner=False)),
    "fused_all": (BlockConfig(128, 64, 64, 64, 8, num_stages=3), BlockConfig(128, 64, 128, 64, 8, num_stages=3),
                  BlockConfig(64, 64, 64, 32, 4, num_stages=4)),
}


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_state(x: torch.Tensor) -> str:
    """Empty when Triton can run on ``x``'s device, else why not."""
    if not _has_triton():
        return "Triton is not installed"
    if x.device.type == "cuda":
        return ""
    interpret_env = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "yes", "on", "y")
    if x.device.type == "cpu" and interpret_env:
        from kcp.kernels import _triton

        if _triton.interpreted():
            return ""
        return "Triton was imported before TRITON_INTERPRET=1 was set, so its kernels are compiled for a GPU"
    return (f"Triton runs on CUDA tensors (or on the CPU under its interpreter, TRITON_INTERPRET=1 set before "
            f"Triton is imported); this input is on {x.device.type}")


def fused_supported(module: nn.Module, x: torch.Tensor, variant: str = "fused") -> tuple[bool, str]:
    """Whether a fused Triton variant can run ``module`` on ``x``, and why not when it cannot."""
    if variant not in FUSED_VARIANTS:
        return False, f"unknown fused variant {variant!r}: use one of {', '.join(FUSED_VARIANTS)}"
    if not all(hasattr(module, a) for a in ("in_weight", "out_weight", "spatial_filters", "width")):
        return False, f"the fused kernels run KCPConv2d modules, got {type(module).__name__}"
    why = _triton_state(x)
    if why:
        return False, why
    if x.dtype not in DTYPES:
        return False, f"dtype {x.dtype} is not supported (fp32, bf16 or fp16)"
    if x.dim() != 4 or x.shape[1] != module.in_channels:
        return False, f"expected an (N, {module.in_channels}, H, W) input, got {tuple(x.shape)}"
    if module.geometry.padding_mode != "zeros":
        return False, (f"padding_mode={module.geometry.padding_mode!r}: the fused kernels pad with zeros only "
                       f"(use execution 'merged', 'full', 'dense' or 'layered')")
    if prepare.needs_grad(module, x):
        return False, ("autograd is recording and the Triton kernels have no backward: run under "
                       "torch.inference_mode() / torch.no_grad(), or freeze the parameters")
    if module.width > MAX_WIDTH:
        return False, f"middle width R*K^2 = {module.width} is above the fused kernels' limit of {MAX_WIDTH}"
    try:
        ho, wo = module.geometry.out_hw(tuple(x.shape[2:]), module.kernel_size)
    except ValueError as exc:
        return False, str(exc)
    n, _, h, w = x.shape
    sizes = {"input": x.numel(), "output": n * module.out_channels * ho * wo, "middle": n * h * w * module.width}
    too_big = [k for k, v in sizes.items() if v > _INT32]
    if too_big:
        return False, f"{', '.join(too_big)} tensor over 2^31 elements (the kernels index with int32): split the batch"
    cfg = default_config(variant, n, (ho, wo), module.width, module.in_channels, module.out_channels)
    if n > _GRID_YZ or -(-ho * wo // cfg.block_p) > _GRID_YZ:
        return False, f"batch {n} or {ho}x{wo} output pixels exceed the launch grid ({_GRID_YZ} per axis)"
    return True, "ok"


def fp32_dot_precision() -> str:
    """Triton's precision for fp32 dots, after ``torch.get_float32_matmul_precision()``.

    'highest' asks for fp32 accuracy: three TF32 products (``tf32x3``) give it on the tensor cores, where a
    plain FMA dot ("ieee") runs several times slower and takes ten times longer to compile.
    """
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _new_output(x: torch.Tensor, n: int, out_c: int, ho: int, wo: int, channels_last: bool):
    """Output in the input's memory format, with the (image, pixel, channel) strides the kernels store with."""
    if channels_last:
        y = torch.empty(n, ho, wo, out_c, device=x.device, dtype=x.dtype).permute(0, 3, 1, 2)
        return y, (ho * wo * out_c, out_c, 1)
    return torch.empty(n, out_c, ho, wo, device=x.device, dtype=x.dtype), (out_c * ho * wo, 1, ho * wo)


def fused_forward(module: nn.Module, x: torch.Tensor, variant: str = "fused",
                  config: BlockConfig | None = None) -> torch.Tensor:
    """Run KCPConv2d ``module`` on ``x`` with a fused Triton variant; ValueError (with the reason) if unsupported.

    The output has the input's dtype and memory format (channels_last in, channels_last out).
    """
    ok, why = fused_supported(module, x, variant)
    if not ok:
        raise ValueError(f"the '{variant}' path cannot run here: {why}")
    from kcp.kernels import _triton

    n, c, h, w = x.shape
    ho, wo = module.geometry.out_hw((h, w), module.kernel_size)
    top, _, left, _ = module.pads()
    kh, kw = module.kernel_size
    m, out_c = module.width, module.out_channels
    channels_last = _channels_last(x)
    if not channels_last:
        x = x.contiguous()
    dtype, dev = x.dtype, x.device
    cfg = config or default_config(variant, n, (ho, wo), m, c, out_c, dtype == torch.float32)
    if cfg.o_inner and cfg.block_m < m:
        raise ValueError(f"{cfg}: o_inner needs block_m >= the middle width {m}")
    wts = prepare.weights(module, variant, dtype, dev)
    w_out, bias = wts["w_out"], wts["bias"]
    y, (sy_n, sy_q, sy_c) = _new_output(x, n, out_c, ho, wo, channels_last)
    geometry = (*module.geometry.stride, top, left, *module.geometry.dilation)
    common = dict(KH=kh, KW=kw, BLOCK_P=cfg.block_p, BLOCK_M=cfg.block_m, BLOCK_O=cfg.block_o, O_INNER=cfg.o_inner,
                  HAS_BIAS=bias is not None, DOT_F32=dtype == torch.float32 or _triton.interpreted(),
                  PREC=fp32_dot_precision(), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    grid = (1 if cfg.o_inner else -(-out_c // cfg.block_o), -(-ho * wo // cfg.block_p), n)
    bias_arg = y if bias is None else bias  # never read when HAS_BIAS is False
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        if variant == "fused":
            w_in, taps = wts["w_in"], wts["taps"]
            # z as (N, H, W, M) whatever x's layout: the kernel reads it channel-contiguous.
            if channels_last:
                z = torch.mm(x.permute(0, 2, 3, 1).reshape(n * h * w, c), w_in)
            else:
                z = torch.matmul(x.reshape(n, c, h * w).transpose(1, 2), w_in)
            _triton.spatial_out_kernel[grid](z, taps, w_out, bias_arg, y, h, w, ho, wo, m, out_c, *geometry,
                                             sy_n, sy_q, sy_c, **common)
        else:
            w_taps = wts["w_taps"]
            # Channel-contiguous tiles feed the tensor cores; an NCHW input pays one layout pass here.
            xc = x if channels_last else x.contiguous(memory_format=torch.channels_last)
            _triton.all_stages_kernel[grid](xc, w_taps, w_out, bias_arg, y, c, h, w, ho, wo, m, out_c, *geometry,
                                            *xc.stride(), sy_n, sy_q, sy_c, BLOCK_I=cfg.block_i, **common)
    return y

