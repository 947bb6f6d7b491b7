"""The fast paths of KCPConv2d against F.conv2d with the reconstructed kernel.

The Triton kernels run under Triton's CPU interpreter in one subprocess (TRITON_INTERPRET must be set
before Triton is imported, and this process may have imported it already); the conv-only paths ('merged',
'full') and the module's 'auto' selection run here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kcp.geometry import ConvGeometry
from kcp.kernels import FUSED_VARIANTS, default_config, fused_supported
from kcp.kernels.checks import CASES, FORCED, check, random_kcp, reference, rel_max_err

REPO = Path(__file__).resolve().parents[2]
CONV_PATHS = ("merged", "full")
UNFUSED = ("layered", "dense", *CONV_PATHS)
HAS_TRITON = importlib.util.find_spec("triton") is not None

# Runs every case along both Triton variants, plus the module-level behaviour, under the interpreter.
# The Triton interpreter compiles every kernel first (minutes on this machine).
pytestmark = pytest.mark.slow

_INTERPRETED = """
import json, torch
from kcp.geometry import ConvGeometry
from kcp.kernels import FUSED_VARIANTS
from kcp.kernels.checks import random_kcp, reference, rel_max_err, run_checks

out = {"checks": run_checks(FUSED_VARIANTS)}
m = random_kcp((12, 8, 3, 3), 2, 3, geometry=ConvGeometry.make(2, 1), execution="fused")
x = torch.randn(2, 8, 7, 9)
with torch.inference_mode():
    out["module_fused_err"] = rel_max_err(m(x), reference(m, x))
    m.execution = "auto"
    m(x)
    out["auto_choice"] = m.last_choice
m.execution = "fused"
try:
    m(x)
except ValueError as exc:
    out["grad_error"] = str(exc)
r = random_kcp((12, 8, 3, 3), 1, 2, geometry=ConvGeometry.make(1, 1, padding_mode="reflect"), execution="fused")
try:
    with torch.inference_mode():
        r(x)
except ValueError as exc:
    out["reflect_error"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not HAS_TRITON:
        pytest.skip("Triton is not installed: the fused kernels cannot be checked")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", FUSED_VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_kernel_matches_conv2d(interpreted, case, path):
    result = next(r for r in interpreted["checks"] if r["case"] == case.name and r["path"] == path
                  and not r["config"])
    assert result["ok"], result


@pytest.mark.parametrize("name,path,config", FORCED, ids=[f"{n} {p} {c}" for n, p, c in FORCED])
def test_fused_kernel_tile_shapes(interpreted, name, path, config):
    result = next(r for r in interpreted["checks"] if r["case"] == name and r["config"] == str(config))
    assert result["ok"], result


def test_fused_module_paths_under_interpreter(interpreted):
    assert interpreted["module_fused_err"] < 1e-4
    assert interpreted["auto_choice"].split(":")[0] in UNFUSED
    assert "interpreter is for tests" in interpreted["auto_choice"]
    assert "autograd" in interpreted["grad_error"]
    assert "padding_mode='reflect'" in interpreted["reflect_error"]


@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conv_paths_match_conv2d(case, path):
    result = check(case, path)
    assert result["ok"], result


@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_paths_pad_like_layered(mode, path):
    m = random_kcp((12, 8, 3, 3), 2, 3, geometry=ConvGeometry.make(2, (1, 2), (1, 2), padding_mode=mode))
    x = torch.randn(2, 8, 9, 11)
    ref = m(x)
    m.execution = path
    assert rel_max_err(m(x), ref.double()) < 1e-5


@pytest.mark.parametrize("path", CONV_PATHS)
def test_conv_paths_have_gradients(path):
    m = random_kcp((12, 8, 3, 3), 2, 3, geometry=ConvGeometry.make(1, 1), execution=path)
    x = torch.randn(2, 8, 7, 9, requires_grad=True)
    m(x).square().sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    m.zero_grad()
    m.execution = "layered"
    x2 = x.detach().clone().requires_grad_()
    m(x2).square().sum().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-5), n
    assert torch.allclose(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_auto_picks_an_available_path_and_says_why():
    m = random_kcp((16, 16, 3, 3), 2, 4, geometry=ConvGeometry.make(1, 1), execution="auto")
    x = torch.randn(2, 16, 9, 7)
    with torch.inference_mode():
        y = m(x)
    picked = m.last_choice.split(":")[0]
    assert picked in UNFUSED, m.last_choice
    assert " ms" in m.last_choice and "fused" in m.last_choice
    assert rel_max_err(y, reference(m, x)) < 1e-4
    first = m.last_choice
    with torch.inference_mode():
        m(x)
    assert m.last_choice == first  # remembered, not timed again
    with torch.inference_mode():
        m(x.contiguous(memory_format=torch.channels_last))
    assert len(m._auto_choices) == 2


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreter enabled here")
def test_fused_on_cpu_without_interpreter_says_why():
    m = random_kcp((12, 8, 3, 3), 1, 2, geometry=ConvGeometry.make(1, 1), execution="fused")
    x = torch.randn(1, 8, 5, 5)
    ok, why = fused_supported(m, x)
    assert not ok and "CUDA" in why and "TRITON_INTERPRET" in why
    with torch.inference_mode(), pytest.raises(ValueError, match="'fused' path cannot run here.*CUDA"):
        m(x)


def test_unknown_execution_is_refused():
    m = random_kcp((12, 8, 3, 3), 1, 2)
    with pytest.raises(ValueError, match="auto"):
        m.execution = "fastest"


def test_default_config_shapes():
    big = default_config("fused", 128, (56, 56), 64, 256, 256)
    assert (big.block_p, big.block_m, big.o_inner) == (64, 64, True)
    wide = default_config("fused", 128, (56, 56), 512, 256, 256)
    assert (wide.block_m, wide.block_o, wide.o_inner) == (64, 256, False)
    small = default_config("fused", 1, (14, 14), 64, 256, 256)
    assert (small.block_p, small.block_o, small.o_inner) == (16, 64, False)
    assert default_config("fused_all", 1, (14, 14), 64, 256, 256).o_inner
    assert not default_config("fused", 128, (56, 56), 128, 256, 256, fp32=True).o_inner
