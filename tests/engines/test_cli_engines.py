"""`python -m kcp sweep` with an engine and several layers: the rows of an in-process sweep, and clear refusals."""

from __future__ import annotations

import json

import pytest
from engine_support import untimed

from kcp import zoo
from kcp.cli import main
from kcp.sweep import SweepConfig, sweep
from kcp.target import LayerTarget


@pytest.mark.slow
def test_sweep_all_layers_on_the_local_engine_matches_in_process_sweeps(tmp_path, capsys, one_thread):
    out = tmp_path / "net.json"
    args = ["sweep", "--model", "digits-cnn", "--layer", "all", "--kt", "1,2", "--cp", "2", "--methods", "kcp,svd",
            "--images", "32", "--no-fidelity", "--engine", "local", "--workers", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    assert "local x1" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert [layer["layer"] for layer in data["config"]["layers"]] == ["conv2", "conv3", "conv4"]  # conv1 has C_in=1
    loaded = zoo.load_model("digits-cnn")
    config = SweepConfig(kt_ranks=(1, 2), cp_ranks=(2,), methods=("kcp", "svd"), fidelity=False)
    expected = [row for name in ("conv2", "conv3", "conv4")
                for row in sweep(LayerTarget.from_zoo(loaded, name, n_images=32, fidelity=False), config).rows]
    assert untimed(data["rows"]) == untimed(expected)


@pytest.mark.parametrize(("extra", "message"), [
    (["--layer", "all", "--cp", "99"], "layer conv2: CP ranks [99] are outside"),
    (["--layer", "conv1,conv2", "--cp", "1"], "layer conv1: C_in=1 has only the trivial split"),
    (["--layer", "conv2", "--cp", "1", "--workers", "0"], "workers must be at least 1"),
    (["--layer", "conv2", "--cp", "1", "--ray-address", "ray://head:10001"], "a Ray address needs engine 'ray'"),
    (["--layer", "conv2", "--cp", "1", "--engine", "spark"], "invalid choice: 'spark'"),
])
def test_engine_and_layer_refusals_exit_2_with_one_line(tmp_path, capsys, extra, message):
    args = ["sweep", "--model", "digits-cnn", "--kt", "1", "--no-fidelity", "--images", "8",
            "--out", str(tmp_path / "x.csv"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
