"""python -m kcp network: bad arguments exit 2 with one line; the JSON and CSV carry the documented fields."""

from __future__ import annotations

import csv
import json

import pytest

from kcp.cli import main

BASE = ["network", "--model", "digits-cnn"]


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "r.json"], "one of the arguments --compression --macs --latency --kt is required"),
    (["--compression", "10", "--macs", "0.5", "--out", "r.json"], "not allowed with"),
    (["--kt", "1,2", "--out", "r.json"], "--kt and --cp go together"),
    (["--compression", "10", "--out", "r.txt"], "--out must end in .csv or .json"),
    (["--compression", "0.5", "--out", "r.json"], "compression budget must be at least 1"),
    (["--macs", "2", "--out", "r.json"], "fraction of the dense network's"),
    (["--kt", "1,2", "--cp", "1", "--save", "n.pt", "--out", "r.json"], "--save and --onnx take one network"),
    (["--compression", "10", "--methods", "kcp,foo", "--out", "r.json"], "unknown methods"),
    (["--compression", "10", "--finetune-steps", "-1", "--out", "r.json"], "--finetune-steps must be >= 0"),
    (["--compression", "10", "--data", "/no/such/folder", "--out", "r.json"], "no such folder"),
    (["--compression", "10", "--ray-address", "ray://head:10001", "--out", "r.json"], "a Ray address needs engine"),
    (["--compression", "10", "--engine", "local", "--workers", "0", "--out", "r.json"], "workers must be at least 1"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*BASE, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m kcp: error:") and message in err


def test_an_unknown_model_exits_2(capsys, tmp_path):
    assert main(["network", "--model", "nosuch", "--compression", "4", "--out", str(tmp_path / "r.json")]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err


@pytest.mark.slow
def test_json_has_the_documented_keys(tmp_path):
    out = tmp_path / "r.json"
    args = [*BASE, "--compression", "8", "--methods", "kt,svd", "--finetune-steps", "2", "--batch", "16",
            "--calibration-images", "64", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    for key in ("model", "compression", "params", "dense_params", "macs", "dense_macs", "accuracy_dense",
                "accuracy_zero_shot", "accuracy_finetuned", "top1_agreement_zero_shot", "top1_agreement_finetuned",
                "latency_ms", "dense_latency_ms", "device", "layers", "finetune"):
        assert key in report, key
    assert report["fit"] == "kernel"  # the default, said in the report
    assert report["compression"] >= 8 and report["params"] * 8 <= report["dense_params"]
    assert [layer["name"] for layer in report["layers"]] == ["conv1", "conv2", "conv3", "conv4"]
    for layer in report["layers"]:
        assert {"name", "method", "ranks", "params", "dense_params", "output_rel_error"} <= set(layer)
    assert report["finetune"]["steps"] == 2 and {"seconds", "curve"} <= set(report["finetune"])
    assert report["accuracy_dense"] > 0.98 and report["latency_ms"] > 0


@pytest.mark.slow
def test_uniform_grid_csv_has_one_row_per_combination(tmp_path):
    out = tmp_path / "grid.csv"
    args = [*BASE, "--kt", "1,2", "--cp", "1", "--calibration-images", "64", "--cache-dir", str(tmp_path / "c"),
            "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["kt_rank"], r["cp_rank"]) for r in rows] == [("1", "1"), ("2", "1")]
    assert {"compression", "accuracy_zero_shot", "latency_ms", "params"} <= set(rows[0])
    assert [r["fit"] for r in rows] == ["kernel", "kernel"]
    assert float(rows[0]["compression"]) > float(rows[1]["compression"])


@pytest.mark.slow
def test_a_plan_is_the_same_when_its_layer_sweeps_run_on_the_local_engine(tmp_path):
    """The per-layer sweeps of a plan on a process pool choose the same methods and ranks as in this process."""
    plans = []
    for engine in ([], ["--engine", "local", "--workers", "2"]):
        out = tmp_path / f"plan{len(plans)}.json"
        args = [*BASE, "--compression", "8", "--methods", "kcp,svd", "--calibration-images", "64",
                "--cache-dir", str(tmp_path / f"cache{len(plans)}"), *engine, "--out", str(out)]
        assert main(args) == 0
        report = json.loads(out.read_text())
        plans.append([(layer["name"], layer["method"], layer["ranks"], layer["params"]) for layer in report["layers"]])
    assert plans[0] == plans[1]
