"""Sweeps: the grid, matched baselines, warm starts, the disk cache, resuming and cancelling."""

import json

import pytest
import torch
from torch import nn

from kcp import costs
from kcp.budget import largest_within
from kcp.cache import ResultCache
from kcp.decomposition import kcp
from kcp.kron import make_factor_shape
from kcp.latency import LatencySettings
from kcp.sweep import COLUMNS, SweepConfig, sweep
from kcp.target import LayerTarget


@pytest.fixture
def target() -> LayerTarget:
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    inputs = torch.randn(4, 32, 8, 8)
    return LayerTarget.from_conv(conv, (8, 8), name="toy", inputs=inputs)


def test_grid_rows_and_columns(target, tmp_path):
    config = SweepConfig(kt_ranks=(1, 2), cp_ranks=(1, 2, 4), fidelity=False)
    result = sweep(target, config, cache=ResultCache(tmp_path))
    kcp_rows = [r for r in result.rows if r["method"] == "kcp"]
    assert [(r["kt_rank"], r["cp_rank"]) for r in kcp_rows] == [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4)]
    assert result.rows[0]["method"] == "dense" and result.rows[0]["rel_error"] == 0.0
    assert all(set(COLUMNS) <= set(r) for r in result.rows)
    for row in kcp_rows:
        assert row["params"] == costs.params("kcp", (32, 32, 3, 3), {"kt_rank": row["kt_rank"],
                                                                     "cp_rank": row["cp_rank"]},
                                             make_factor_shape((32, 32, 3, 3)))
        assert 0 < row["output_rel_error"] < 1.5 and row["seconds"] >= 0
    # Warm starts: along each row the kernel error never rises.
    for r in (1, 2):
        errs = [row["rel_error"] for row in kcp_rows if row["kt_rank"] == r]
        assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:])), errs


def test_baselines_are_the_largest_within_each_budget(target, tmp_path):
    config = SweepConfig(kt_ranks=(2,), cp_ranks=(4,), fidelity=False)
    rows = sweep(target, config, cache=ResultCache(tmp_path)).rows
    budget = next(r for r in rows if r["method"] == "kcp")["params"]
    shape = make_factor_shape((32, 32, 3, 3))
    for method in ("kt", "cp", "tucker2", "svd"):
        found = [r for r in rows if r["method"] == method]
        ranks = largest_within(method, (32, 32, 3, 3), budget, factor_shape=shape)
        if ranks is None:
            assert not found
            continue
        (row,) = found
        assert row["params"] <= budget and row["matched_to"] == "R=2 K=4"
        bigger = {k: v + 1 for k, v in ranks.items()}
        assert costs.params(method, (32, 32, 3, 3), bigger, shape) > budget


def test_cached_rerun_is_identical_and_does_no_work(target, tmp_path, monkeypatch):
    cache = ResultCache(tmp_path)
    config = SweepConfig(kt_ranks=(1, 2), cp_ranks=(2, 3), fidelity=False)
    first = sweep(target, config, cache=cache)

    def boom(*args, **kwargs):
        raise AssertionError("a cached sweep decomposed again")

    monkeypatch.setattr("kcp.sweep.decompose_point", boom)
    second = sweep(target, config, cache=cache)
    assert second.rows == first.rows


def test_cancel_then_resume_loses_nothing(target, tmp_path):
    cache = ResultCache(tmp_path)
    config = SweepConfig(kt_ranks=(1, 2, 3), cp_ranks=(1, 2), methods=("kcp",), fidelity=False)
    seen = []

    def stop_after_three() -> bool:
        return len(seen) >= 3

    partial = sweep(target, config, cache=cache, progress=lambda d, n, row: seen.append(row),
                    should_stop=stop_after_three)
    assert partial.cancelled and len(partial.rows) == 3
    full = sweep(target, config, cache=cache)
    assert not full.cancelled and len(full.rows) == 7
    assert full.rows[:3] == partial.rows


def test_damaged_cache_entry_is_recomputed(target, tmp_path):
    cache = ResultCache(tmp_path)
    config = SweepConfig(kt_ranks=(1,), cp_ranks=(2,), methods=("kcp",), fidelity=False)
    first = sweep(target, config, cache=cache)
    for path in tmp_path.glob("*/*.pt"):
        path.write_bytes(b"truncated")
    again = sweep(target, config, cache=cache)
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert untimed(again.rows) == untimed(first.rows)
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_warm_start_matches_a_cold_start_closely(target, tmp_path):
    config = SweepConfig(kt_ranks=(2,), cp_ranks=(2, 4), methods=("kcp",), fidelity=False, warm_start=True)
    warm = [r for r in sweep(target, config, cache=ResultCache(tmp_path)).rows if r["method"] == "kcp"][-1]
    cold = kcp(target.conv.weight, 2, 4)
    assert warm["warm_start"] and abs(warm["rel_error"] - cold.rel_error) < 0.02


def test_latency_and_writing(target, tmp_path):
    config = SweepConfig(kt_ranks=(1,), cp_ranks=(2,), methods=("kcp", "cp"), fidelity=False,
                         latency=LatencySettings(runs=5, warmup=1, min_run_time=0.02))
    result = sweep(target, config, cache=ResultCache(tmp_path))
    for row in result.rows:
        assert row["latency_ms"] > 0 and row["dense_latency_ms"] > 0 and row["device"].startswith("CPU")
    csv_path, json_path = result.write(tmp_path / "grid.csv"), result.write(tmp_path / "grid.json")
    assert csv_path.read_text().splitlines()[0].split(",") == list(COLUMNS)
    data = json.loads(json_path.read_text())
    assert len(data["rows"]) == len(result.rows) and data["config"]["kt_ranks"] == [1]
    with pytest.raises(ValueError, match=r"must end in \.csv or \.json"):
        result.write(tmp_path / "grid.txt")


@pytest.mark.parametrize(("config", "message"), [
    (SweepConfig(kt_ranks=(1, 500), cp_ranks=(1,)), r"KT ranks \[500\] are outside 1..48"),
    (SweepConfig(kt_ranks=(1,), cp_ranks=(0,)), r"CP ranks \[0\] are outside"),
    (SweepConfig(kt_ranks=(1,), cp_ranks=(1,), methods=("kcp", "hosvd")), "unknown methods"),
    (SweepConfig(kt_ranks=(1,), cp_ranks=(1,), match="latency"), "match must be one of"),
    (SweepConfig(kt_ranks=(1,), cp_ranks=(1,), fit="weights"), "unknown fit 'weights'"),
    (SweepConfig(kt_ranks=(1,), cp_ranks=(1,), fit="outputs"), "has no calibration images"),
])
def test_bad_configs(target, config, message):
    with pytest.raises(ValueError, match=message):
        sweep(target, config)


def test_real_network_fidelity_in_the_sweep(tmp_path):
    from kcp import zoo

    target = LayerTarget.from_zoo(zoo.load_model("digits-cnn"), "conv4")
    rows = sweep(target, SweepConfig(kt_ranks=(4,), cp_ranks=(8,), methods=("kcp",)), cache=ResultCache(tmp_path)).rows
    dense, point = rows
    assert dense["top1_agreement"] == 1.0 and dense["accuracy"] == pytest.approx(448 / 450, abs=1e-6)
    assert 0 <= point["top1_agreement"] <= 1 and point["accuracy"] is not None


def calibrated(target: LayerTarget, seed: int) -> LayerTarget:
    torch.manual_seed(seed)
    return LayerTarget.from_conv(target.conv, (8, 8), name="toy", inputs=target.inputs,
                                 calibration_inputs=torch.randn(6, 32, 8, 8).relu())


def test_fit_column_and_one_cache_entry_per_fit_and_calibration(target, tmp_path):
    cache = ResultCache(tmp_path)
    base = dict(kt_ranks=(1,), cp_ranks=(1, 2), methods=("kcp", "svd"), fidelity=False)
    first = calibrated(target, 1)
    kernel = sweep(first, SweepConfig(**base), cache=cache).rows
    entries = len(cache)
    outputs = sweep(first, SweepConfig(**base, fit="outputs"), cache=cache).rows
    assert [r["fit"] for r in kernel] == ["kernel"] * len(kernel)
    assert [r["fit"] for r in outputs] == ["outputs"] * len(outputs)
    assert all(r["calibration_images"] == 6 for r in outputs if r["method"] != "dense")
    # Every fitted point is computed again (its own cache entries), never read from the kernel fit's.
    assert len(cache) == 2 * entries - 2  # the dense decomposition and its row are shared
    assert [r["rel_error"] for r in outputs[1:]] != [r["rel_error"] for r in kernel[1:]]
    # Other calibration data is another fit: its own entries again; the same data is a cache hit.
    sweep(calibrated(target, 2), SweepConfig(**base, fit="outputs"), cache=cache)
    assert len(cache) == 3 * entries - 4
    again = sweep(calibrated(target, 1), SweepConfig(**base, fit="outputs"), cache=cache).rows
    assert len(cache) == 3 * entries - 4
    assert [r["rel_error"] for r in again] == [r["rel_error"] for r in outputs]
