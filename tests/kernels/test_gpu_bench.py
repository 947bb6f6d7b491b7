"""The device script's dry run: every variant is built and checked on the CPU at tiny sizes, and the JSON is whole."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.slow
def test_gpu_bench_dry_run(tmp_path):
    out = tmp_path / "gpu_kcp.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if HAS_TRITON:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_kcp.py"), "--dry-run", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert out.with_suffix(".md").is_file()
    assert doc["device"] == "cpu (dry run)" and not doc["skipped"]
    variants = {r["variant"] for r in doc["rows"]}
    for name in ("dense", "cp", "tucker2", "kcp layered", "kcp dense", "kcp merged", "kcp full", "kcp fused",
                 "kcp fused_all", "kcp auto", "kcp fused +graph"):
        assert name in variants
    assert any(r["ranks"] == "R=8 K=8" for r in doc["rows"])
    for row in doc["rows"]:
        if "fused" in row["variant"] and not HAS_TRITON:
            assert "Triton is not installed" in row["error"]
        else:
            assert row["ok"], row
            assert row.get("median_ms") is None  # no timing on the CPU
    auto = [r for r in doc["rows"] if r["variant"] == "kcp auto"]
    assert all(r["choice"].split(":")[0] in ("layered", "dense", "merged", "full") for r in auto)


def test_gpu_bench_report_on_timed_rows(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_kcp", REPO / "bench" / "gpu_kcp.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_kcp", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    base = {"layer": "256x256x3x3@56", "target": True, "batch": 128, "dtype": "bf16", "layout": "channels_last",
            "cuda_graph": False, "config": "", "ok": True, "err": 1e-3, "p10_ms": 0.1, "p90_ms": 1.0,
            "floor_ms": 0.1, "floor_copy_ms": 0.12}
    rows = [{**base, "variant": "dense", "method": "dense", "ranks": "", "compression": 1.0, "median_ms": 0.6},
            {**base, "variant": "kcp fused", "method": "kcp", "ranks": "R=1 K=8", "compression": 700.0,
             "median_ms": 0.2, "speedup_vs_dense": 3.0, "x_floor": 2.0},
            {**base, "variant": "kcp auto", "method": "kcp", "ranks": "R=1 K=8", "compression": 700.0,
             "median_ms": 0.21, "choice": "fused: 0.2 ms vs merged 0.3 ms"},
            {**base, "variant": "kcp fused_all", "method": "kcp", "ranks": "R=1 K=8", "compression": 700.0,
             "ok": False, "error": "CompilationError: boom"}]
    s = bench.summary(rows)
    assert s["best_variant"] == "kcp fused" and s["pass_2x_dense"] and s["pass_3x_floor"]
    compact = bench.compact(rows)
    assert "| 0.600 |" in compact and "kcp fused 0.200" in compact and "| fail |" in compact
    assert "fused: 0.2 ms" in compact
    assert "CompilationError" in bench.table(rows)
