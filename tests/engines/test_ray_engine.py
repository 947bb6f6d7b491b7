"""The Ray engine on a local Ray instance (two CPUs, no dashboard), shared by the tests of this module."""

from __future__ import annotations

import engine_faults
import pytest
from engine_faults import calls
from engine_support import CONFIG, make_target, untimed

from kcp.cache import ResultCache
from kcp.engines import make_engine
from kcp.latency import LatencySettings
from kcp.sweep import SweepConfig, sweep

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray2():
    # Ray workers cannot import the tests folder: the fault injector travels by value.
    ray.cloudpickle.register_pickle_by_value(engine_faults)
    with make_engine("ray", workers=2) as engine:
        yield engine
    ray.cloudpickle.unregister_pickle_by_value(engine_faults)


def test_ray_gives_the_same_rows(tmp_path, reference, ray2):
    assert ray2.slots == 2
    rows = sweep(make_target(tmp_path / "log"), CONFIG, cache=ResultCache(tmp_path), engine=ray2).rows
    assert untimed(rows) == reference


def test_a_killed_ray_worker_is_retried_and_the_sweep_completes(tmp_path, reference, ray2):
    log = tmp_path / "crash.log"
    rows = sweep(make_target(log, crash_once=True), CONFIG, cache=ResultCache(tmp_path), engine=ray2).rows
    assert log.with_suffix(".crashed").exists()
    assert untimed(rows) == reference and len(calls(log)) == len(rows) + 1


def test_a_ray_worker_that_dies_twice_leaves_an_error_row(tmp_path, reference, ray2):
    log = tmp_path / "crash.log"
    rows = sweep(make_target(log, crash_on="Tucker2Conv2d"), CONFIG, cache=ResultCache(tmp_path), engine=ray2).rows
    (bad,) = [r for r in rows if r["error"]]
    assert bad["method"] == "tucker2" and "WorkerCrashedError" in bad["error"]
    assert calls(log).count("Tucker2Conv2d") == 2  # the first try and one retry
    assert [r for r in untimed(rows) if not r["error"]] == [r for r in reference if r["method"] != "tucker2"]


def test_interrupted_on_ray_resumes_on_the_local_engine(tmp_path, reference, ray2, local2):
    cache = ResultCache(tmp_path / "cache")
    seen: list[dict] = []
    first = sweep(make_target(tmp_path / "first.log"), CONFIG, cache=cache, engine=ray2,
                  progress=lambda d, n, r: seen.append(r), should_stop=lambda: len(seen) >= 3)
    assert first.cancelled and 3 <= len(first.rows) < len(reference)
    log = tmp_path / "resume.log"
    rows = sweep(make_target(log), CONFIG, cache=cache, engine=local2).rows
    assert untimed(rows) == reference and len(calls(log)) == len(reference) - len(first.rows)


def test_latency_is_timed_after_the_points_and_cached_like_an_in_process_sweep(tmp_path, ray2, one_thread):
    latency = LatencySettings(runs=3, warmup=1, min_run_time=0.01)
    config = SweepConfig(kt_ranks=(1,), cp_ranks=(2,), methods=("kcp", "cp"), latency=latency)
    cache = ResultCache(tmp_path)
    progress: list[tuple[int, int]] = []
    rows = sweep(make_target(tmp_path / "log"), config, cache=cache, engine=ray2,
                 progress=lambda d, n, r: progress.append((d, n))).rows
    assert all(r["latency_ms"] > 0 and r["dense_latency_ms"] > 0 and r["device"].startswith("CPU") for r in rows)
    assert progress[-1] == (len(rows), len(rows)) and len(progress) == 2 * len(rows)  # points, then timings
    log = tmp_path / "again.log"
    again = sweep(make_target(log), config, cache=cache).rows  # in this process, from the same cache
    assert calls(log) == [] and untimed(again) == untimed(rows)
    assert [r["latency_ms"] for r in again[1:]] == [r["latency_ms"] for r in rows[1:]]  # the dense one is fresh
