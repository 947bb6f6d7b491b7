"""The Triton kernels compile for an H100 (sm_90) and fit it: shared memory, no register spills.

Triton's interpreter checks what the kernels compute, not whether they lower: this compiles them ahead of time
with Triton's real compiler and bundled ptxas (no GPU needed) for the launches the device script makes, so a
tile that would not launch is caught before the one GPU run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile

import pytest

from kcp.kernels import SWEEP_CONFIGS, BlockConfig, default_config

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted, not compiled", allow_module_level=True)

import triton  # noqa: E402

# compiles Triton kernels for an H100 target (5-20 s each here)
pytestmark = pytest.mark.slow

SMEM_LIMIT = 227 * 1024  # an H100's opt-in shared memory per block
PTR_F32 = {"taps_ptr", "b_ptr"}


def _compile(kernel, dtype: str, cfg: BlockConfig, *, width: int, out_c: int, in_c: int, channels_last: bool):
    """Compile ``kernel`` as ``fused_forward`` would launch it on a 3x3 layer, for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    constexprs = dict(KH=3, KW=3, BLOCK_P=cfg.block_p, BLOCK_M=cfg.block_m, BLOCK_O=cfg.block_o,
                      O_INNER=cfg.o_inner, HAS_BIAS=True, DOT_F32=dtype == "fp32", PREC="tf32x3")
    if "BLOCK_I" in names:
        constexprs["BLOCK_I"] = cfg.block_i
    # Integers Triton would specialise: equal to 1 (a constant) or divisible by 16, as on the real launch.
    ones = {"sx_c"} | ({"sy_c"} if channels_last else {"sy_q"})
    values = {"M": width, "CO": out_c, "C": in_c}
    div16 = {n for n in names if n.endswith("_ptr")} | {"sy_n", "sx_n", "sx_h", "sx_w", "sy_q", "sy_c"} - ones
    div16 |= {n for n, v in values.items() if v % 16 == 0}
    signature = {}
    for n in names:
        if n in constexprs or n in ones:
            signature[n] = "constexpr"
        elif n.endswith("_ptr"):
            signature[n] = "*fp32" if n in PTR_F32 else f"*{dtype}"
        else:
            signature[n] = "i32"
    constexprs.update({n: 1 for n in ones if n in names})
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div16 if n in names}
    try:
        src, target = ASTSource(kernel, signature, constexprs, attrs), GPUTarget("cuda", 90, 32)
    except TypeError as exc:
        pytest.skip(f"this Triton's ahead-of-time API differs: {exc}")
    return triton.compile(src, target=target, options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


def _stack_bytes(compiled) -> int | None:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.isfile(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"STACK:(\d+)", out)
    return int(found.group(1)) if found else None


def _launches():
    """(variant, dtype, config, width, channels_last): the device script's launches on its layers."""
    target = (128, (56, 56), 256, 256)
    for variant in ("fused", "fused_all"):
        for dtype in ("bf16", "fp32"):
            for width, (n, hw, i, o) in ((64, target), (128, target), (64, (1, (14, 14), 256, 256)), (512, target)):
                yield variant, dtype, default_config(variant, n, hw, width, i, o, dtype == "fp32"), width, True
            yield variant, dtype, default_config(variant, *target[:2], 64, 256, 256, dtype == "fp32"), 64, False
        for cfg in SWEEP_CONFIGS[variant]:
            yield variant, "bf16", cfg, 64, True


@pytest.mark.parametrize("variant,dtype,cfg,width,channels_last",
                         list(dict.fromkeys(_launches())), ids=lambda v: str(v))
def test_kernel_fits_an_h100(variant, dtype, cfg, width, channels_last):
    from kcp.kernels import _triton

    kernel = _triton.spatial_out_kernel if variant == "fused" else _triton.all_stages_kernel
    compiled = _compile(kernel, dtype, cfg, width=width, out_c=256, in_c=256, channels_last=channels_last)
    assert compiled.metadata.shared <= SMEM_LIMIT, f"{compiled.metadata.shared} bytes of shared memory"
    stack = _stack_bytes(compiled)
    assert stack in (None, 0), f"{stack} bytes of register spills"
