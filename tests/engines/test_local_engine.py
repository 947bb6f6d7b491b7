"""The in-process and local engines: the same rows, retries after a dead worker, errors in the row, resuming."""

from __future__ import annotations

import concurrent.futures as cf

import pytest
from engine_faults import calls
from engine_support import CONFIG, make_target, untimed

from kcp.cache import ResultCache
from kcp.engines import Engine, Node, TaskFailed, make_engine, run_graph
from kcp.sweep import sweep


def test_graph_runs_nodes_after_the_ones_they_need_and_retries_once():
    attempts: dict[str, int] = {}

    def work(name: str, before: int | None) -> int:
        attempts[name] = attempts.get(name, 0) + 1
        if name == "flaky" and attempts[name] == 1 or name == "broken":
            raise RuntimeError(f"{name} failed")
        return (before or 0) + 1

    nodes = [Node("a"), Node("b", after="a"), Node("flaky", after="b"), Node("broken"), Node("c", after="broken")]
    got, failed = {}, {}
    start = lambda node, before: ("task", (work, (node.id, before), {}))
    finish = lambda node, value: got.setdefault(node.id, value)
    stopped = run_graph(Engine(), nodes, start, finish, lambda node, msg: failed.setdefault(node.id, msg))
    assert not stopped
    assert got == {"a": 1, "b": 2, "flaky": 3, "c": 1}  # c ran without what the failed node would have passed on
    assert attempts == {"a": 1, "b": 1, "flaky": 2, "broken": 2, "c": 1}
    assert failed == {"broken": "RuntimeError: broken failed"}


class _CrowdEngine(Engine):
    """Two slots; while the task 'bomb' is in flight, every task in flight fails, as a broken process pool does."""

    slots = 2

    def __init__(self) -> None:
        super().__init__()
        self.batch: list = []
        self.log: list[tuple[str, ...]] = []

    def submit(self, fn, *args, gpu=False, **kwargs):
        handle = cf.Future()
        self.batch.append((handle, args[0]))
        self.in_flight += 1
        return handle

    def wait(self, handles, timeout=None):
        self.log.append(tuple(name for _, name in self.batch))
        bomb = any(name == "bomb" for _, name in self.batch)
        for handle, name in self.batch:
            if bomb:
                handle.set_exception(TaskFailed("a worker died", shared=True))
            else:
                handle.set_result(name)
        self.batch = []
        return list(handles)

    def get(self, handle):
        self.in_flight -= 1
        return handle.result()


def test_a_failure_shared_by_every_task_in_flight_is_charged_only_to_the_task_that_fails_alone():
    engine = _CrowdEngine()
    got, failed = [], []
    nodes = [Node(name) for name in ("a", "bomb", "b", "c")]
    run_graph(engine, nodes, lambda node, _: ("task", (str, (node.id,), {})),
              lambda node, value: got.append(value), lambda node, msg: failed.append((node.id, msg)))
    assert sorted(got) == ["a", "b", "c"] and failed == [("bomb", "a worker died")]
    # The crowd that failed together ran again one task at a time; the bomb failed alone twice.
    assert engine.log[:4] == [("a", "bomb"), ("a",), ("bomb",), ("bomb",)]


def test_bad_engine_settings():
    with pytest.raises(ValueError, match="unknown engine 'dask'"):
        make_engine("dask")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        make_engine("local", workers=0)
    with pytest.raises(ValueError, match="needs engine 'ray'"):
        make_engine("local", address="ray://head:10001")


def test_a_point_that_keeps_failing_is_reported_in_its_row(tmp_path, reference, monkeypatch):
    def failing_tucker(weight, method, **kwargs):
        if method == "tucker2":
            raise ArithmeticError("no convergence")
        return real(weight, method, **kwargs)

    from kcp.fit import decompose as real

    monkeypatch.setattr("kcp.fit.decompose", failing_tucker)
    rows = sweep(make_target(tmp_path / "log"), CONFIG, cache=ResultCache(tmp_path)).rows
    assert len(rows) == len(reference)
    for row, ref in zip(rows, untimed(reference)):
        if ref["method"] == "tucker2":
            assert row["error"] == "ArithmeticError: no convergence" and row["rel_error"] is None
            assert (row["in_rank"], row["out_rank"], row["matched_to"]) == (ref["in_rank"], ref["out_rank"],
                                                                            ref["matched_to"])
        else:
            assert untimed([row]) == [ref]


@pytest.mark.slow
def test_local_engine_with_one_and_two_workers_gives_the_same_rows(tmp_path, reference, local2):
    rows2 = sweep(make_target(tmp_path / "two.log"), CONFIG, cache=ResultCache(tmp_path / "two"), engine=local2).rows
    assert untimed(rows2) == reference
    with make_engine("local", workers=1) as local1:
        rows1 = sweep(make_target(tmp_path / "one.log"), CONFIG, cache=ResultCache(tmp_path / "one"),
                      engine=local1).rows
    assert untimed(rows1) == reference


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_sweep_completes(tmp_path, reference, local2):
    log = tmp_path / "crash.log"
    rows = sweep(make_target(log, crash_once=True), CONFIG, cache=ResultCache(tmp_path), engine=local2).rows
    assert log.with_suffix(".crashed").exists()  # a worker did die mid-sweep
    assert untimed(rows) == reference
    assert len(calls(log)) > len(rows)  # the point whose worker died was evaluated again


@pytest.mark.slow
def test_a_worker_that_dies_twice_leaves_an_error_row_and_nothing_else_is_lost(tmp_path, reference, local2):
    cache = ResultCache(tmp_path / "cache")
    log = tmp_path / "crash.log"
    # A dead worker fails every task in flight with it; those run again alone, so only the culprit fails.
    rows = sweep(make_target(log, crash_on="Tucker2Conv2d"), CONFIG, cache=cache, engine=local2).rows
    (bad,) = [r for r in rows if r["error"]]
    assert bad["method"] == "tucker2" and "worker process died" in bad["error"]
    assert [r for r in untimed(rows) if not r["error"]] == [r for r in reference if r["method"] != "tucker2"]
    # A rerun in this process evaluates only the point that failed: the rest is in the cache.
    log2 = tmp_path / "rerun.log"
    again = sweep(make_target(log2), CONFIG, cache=cache).rows
    assert calls(log2) == ["Tucker2Conv2d"] and untimed(again) == reference


@pytest.mark.slow
def test_interrupted_in_process_resumes_on_the_local_engine(tmp_path, reference, local2):
    cache = ResultCache(tmp_path / "cache")
    seen: list[dict] = []
    first = sweep(make_target(tmp_path / "first.log"), CONFIG, cache=cache, progress=lambda d, n, r: seen.append(r),
                  should_stop=lambda: len(seen) >= 4)
    assert first.cancelled and len(first.rows) == 4
    log = tmp_path / "resume.log"
    rows = sweep(make_target(log), CONFIG, cache=cache, engine=local2).rows
    assert untimed(rows) == reference
    assert len(calls(log)) == len(reference) - 4  # only the points not done before were evaluated
