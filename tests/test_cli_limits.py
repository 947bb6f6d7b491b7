"""The CLI estimates before it works: past the hard ceiling it refuses, past the budget it needs --force, and the
largest ranks run with bounded memory; unwritable output paths are refused before any work (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kcp import estimate
from kcp.cli import main

ROOT = Path(__file__).resolve().parents[1]
LAYER = ["--model", "digits-cnn", "--layer", "conv4"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m kcp: error:"), err
    return err[0]


def test_a_huge_latency_batch_is_refused_before_any_work(tmp_path, capsys):
    args = ["sweep", *LAYER, "--kt", "1", "--cp", "1", "--latency", "--batch", "262144", "--out",
            str(tmp_path / "g.csv"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 2
    line = _one_line_error(capsys)
    assert "refused" in line and "latency" in line and "Lower the ranks, the images or the batch" in line
    assert not (tmp_path / "g.csv").exists() and not list((tmp_path / "cache").glob("*/*.pt"))
    assert main([*args, "--force"]) == 2  # --force never lifts the ceiling


def test_past_the_budget_needs_force(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(estimate, "CLI_LIMITS", estimate.Limits(1e-3, 2**40, 1e6, 2**40))
    args = ["decompose", *LAYER, "--kt", "1", "--cp", "1", "--no-refine", "--images", "8", "--json"]
    assert main(args) == 2
    assert "pass --force to run it anyway" in _one_line_error(capsys)
    assert main([*args, "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["kt_rank"] == 1


@pytest.mark.parametrize(("flag", "value"), [("--out", "/proc/no/such/grid.csv"), ("--out", "{tmp}"),
                                             ("--cache-dir", "/proc/version/cache"), ("--save", "/proc/x/layer.pt")])
def test_unwritable_paths_exit_2_with_one_line(tmp_path, capsys, flag, value):
    value = value.format(tmp=tmp_path / "a-folder.csv")
    (tmp_path / "a-folder.csv").mkdir()
    if flag == "--save":
        args = ["decompose", *LAYER, "--kt", "1", "--cp", "1", "--save", value]
    else:
        args = ["sweep", *LAYER, "--kt", "1", "--cp", "1", "--out", str(tmp_path / "g.csv"), flag, value]
        args = args if flag == "--cache-dir" else args[:-4] + [flag, value]
    assert main(args) == 2
    assert flag in _one_line_error(capsys)


@pytest.mark.slow
def test_the_largest_ranks_end_in_a_result_with_bounded_memory(tmp_path):
    # R = 192, K = 24 on conv4: a module with R K^2 = 110,592 middle channels. Unchunked, the network check alone
    # would hold 50 images x 110,592 x 8 x 8 floats per stage (1.4 GB each, three stages alive at once: over 4 GB);
    # chunked, the evaluation stays near CHUNK_BYTES and the process (torch, the model, the factors) under 3 GB
    # (measured 1.5-1.95 GB from run to run).
    # The CLI's own peak (RUSAGE_SELF in the child), not that of every process this test session has started.
    args = ["decompose", *LAYER, "--kt", "192", "--cp", "24", "--images", "50", "--json"]
    code = ("import resource, runpy, sys\n"
            f"sys.argv = ['kcp', *{args!r}]\n"
            "try:\n    runpy.run_module('kcp', run_name='__main__', alter_sys=True)\n"
            "finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["kt_rank"] == 192 and report["params"] > report["dense_params"]
    assert 0 <= report["output_rel_error"] < 1e-3  # at the largest ranks KCP is exact
    peak_mb = int(done.stderr.split("PEAK_KB")[-1].split()[0]) / 1024
    assert peak_mb < 3000, f"peak {peak_mb:.0f} MB"
