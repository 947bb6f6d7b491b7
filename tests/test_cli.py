"""python -m kcp: layers, decompose, sweep; bad arguments exit 2 with one line."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from kcp.cli import main
from kcp.decomposition import kcp
from kcp.export import load_layer
from kcp.zoo import get_conv, load_model


def test_layers_table_and_json(capsys):
    assert main(["layers", "--model", "digits-cnn"]) == 0
    out = capsys.readouterr().out
    assert "conv4" in out and "64x64x3x3" in out and "no: C_in=1" in out
    assert main(["layers", "--model", "digits-cnn", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in layers] == ["conv1", "conv2", "conv3", "conv4"]
    assert layers[3]["macs"] == 64 * 64 * 9 * 8 * 8


def test_decompose_prints_the_library_figures_and_saves(tmp_path, capsys):
    out_file = tmp_path / "layer.pt"
    args = ["decompose", "--model", "digits-cnn", "--layer", "conv4", "--kt", "2", "--cp", "4", "--json",
            "--save", str(out_file)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    conv = get_conv(load_model("digits-cnn"), "conv4")
    expected = kcp(conv.weight.detach(), 2, 4)
    assert report["rel_error"] == pytest.approx(expected.rel_error, rel=1e-6)
    assert report["params"] == expected.params() and report["macs"] == report["counted_macs"]
    assert 0 <= report["top1_agreement"] <= 1 and report["accuracy"] is not None
    module, meta = load_layer(out_file)
    x = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(module(x), torch.nn.functional.conv2d(x, expected.reconstruct(), conv.bias, 1, 1),
                               rtol=1e-4, atol=1e-4)
    assert meta == {"model": "digits-cnn", "layer": "conv4"}


@pytest.mark.slow  # its worker process starts and imports torch (about 8 s); the fast lane keeps the library sweep
def test_sweep_writes_csv_with_the_columns(tmp_path, capsys):
    out = tmp_path / "grid.csv"
    args = ["sweep", "--model", "digits-cnn", "--layer", "conv3", "--kt", "1,2", "--cp", "1,2",
            "--methods", "kcp,cp", "--images", "32", "--workers", "1",  # one worker process to start, not one a core
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "6/6" in err and "6 rows in" in err  # the progress bar reached the end: dense, 4 KCP points, 1 CP
    rows = list(csv.DictReader(out.open()))
    assert {r["method"] for r in rows} == {"dense", "kcp", "cp"}
    for column in ("method", "kt_rank", "cp_rank", "rank", "factors", "placement", "params", "dense_params",
                   "compression", "macs", "dense_macs", "rel_error", "output_rel_error", "top1_agreement",
                   "latency_ms", "dense_latency_ms", "device"):
        assert column in rows[0]


@pytest.mark.parametrize(("args", "message"), [
    (["decompose", "--model", "digits-cnn", "--layer", "conv9", "--kt", "1", "--cp", "1"], "no conv layer 'conv9'"),
    (["decompose", "--model", "digits-cnn", "--layer", "conv4", "--kt", "0", "--cp", "1"], "kt_rank must be between"),
    (["decompose", "--model", "digits-cnn", "--layer", "conv1", "--kt", "1", "--cp", "1"], "C_in=1 has only"),
    (["sweep", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1,x", "--cp", "1", "--out", "a.csv"],
     "expected comma-separated integers"),
    (["sweep", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--out", "a.txt"],
     "must end in .csv or .json"),
    (["sweep", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--methods", "kcp,foo",
      "--out", "a.csv"], "unknown methods"),
    (["layers", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["layers"], "the following arguments are required: --model"),
    (["sweep", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--latency", "--cuda-graph",
      "--out", "a.csv"], "CUDA-graph replay needs device 'cuda'"),
    (["frobnicate"], "invalid choice"),
    (["decompose", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--fit", "weights"],
     "argument --fit: invalid choice: 'weights'"),
    (["decompose", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--fit", "outputs",
      "--calibration", "0"], "--calibration: expected a positive integer, got 0"),
    (["decompose", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--fit", "outputs",
      "--calibration", "5000"], "digits-cnn has 1347 calibration images: ask for between 1 and 1347, not 5000"),
    (["sweep", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--calibration", "8",
      "--out", "a.csv"], "--calibration only applies with --fit outputs"),
    (["sweep", "--model", "digits-cnn", "--layer", "conv4", "--kt", "1", "--cp", "1", "--images", "-3",
      "--out", "a.csv"], "--images: expected a positive integer, got -3"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("python -m kcp: error:")


def test_bare_kernels_cannot_be_fitted_to_outputs(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.randn(8, 8, 3, 3)}, path)
    assert main(["decompose", "--model", str(path), "--layer", "w", "--kt", "1", "--cp", "1", "--fit", "outputs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fit outputs needs calibration images" in err


def test_decompose_fitted_to_outputs_says_on_what(capsys):
    args = ["decompose", "--model", "digits-cnn", "--layer", "conv3", "--kt", "1", "--cp", "2", "--fit", "outputs",
            "--calibration", "64", "--images", "100", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fit"] == "outputs" and report["calibration_images"] == 64
    assert report["calibration"] == "64 labelled calibration images (the scikit-learn digits training split)"
    assert report["images"] == "100 labelled evaluation images (the scikit-learn digits held-out test split)"
    assert report["n_images"] == report["eval_images"] == 100 and len(report["objective"]) >= 1
    assert report["top1_changed"] == round((1 - report["top1_agreement"]) * 100)


@pytest.mark.slow
def test_module_entry_point_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "kcp", "decompose", "--model", "digits-cnn", "--layer", "conv4",
                           "--kt", "1", "--cp", "99"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m kcp: error: cp_rank must be between 1 and 24 (the largest meaningful CP rank of a factor "
        "for factor shape 8x8|8x8, split), got 99"
    ]
