"""The worker pool: results and errors come back, a superseded or stopped job's process is killed (and replaced),
a dead worker fails its job with the reason, the queue is bounded, owners share the workers fairly."""

from __future__ import annotations

import math
import os
import sys
import threading
import time

import pytest

from kcp.workers import BACKGROUND_NICE, JobCancelled, QueueFull, WorkerDied, WorkerPool


def _running(job, timeout=60.0):
    deadline = time.monotonic() + timeout
    while job.state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    return job.state == "running"


def _eventually(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie not yet reaped by its parent counts as gone
        return f.read().split()[2] == "Z"


_WARMED: list = []


def _remember(value) -> None:
    _WARMED.append(value)


def _warmed() -> list:
    return list(_WARMED)


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.fixture(scope="module")
def pool():
    """Workers forked from a server that imported torch once (a kill's replacement starts in milliseconds)."""
    owners = {"gone": False}
    p = WorkerPool(2, threads=1, max_queued=4, alive=lambda owner: owners.get(owner, True), context="forkserver",
                   preload=("torch",))
    p.owners = owners
    yield p
    p.close()


@pytest.mark.slow  # a fresh interpreter importing torch: seconds on a busy machine
def test_spawned_workers_run_jobs() -> None:
    spawned = WorkerPool(1, threads=1)
    try:
        assert spawned.submit(math.factorial, 6).outcome() == 720
    finally:
        spawned.close()


def test_results_and_errors_come_back(pool):
    assert pool.submit(math.factorial, 10).outcome() == 3628800
    with pytest.raises(ValueError, match="math domain error"):
        pool.submit(math.sqrt, -1.0).outcome()


def test_a_superseded_job_is_killed_not_finished(pool):
    slow = pool.submit(time.sleep, 60, owner="a", slot="live", key="slow")
    assert _running(slow)
    pid = slow.pid
    same = pool.submit(time.sleep, 60, owner="a", slot="live", key="slow")
    assert same is slow  # the same request again joins the job in flight
    started = time.monotonic()
    newer = pool.submit(math.factorial, 5, owner="a", slot="live", key="new")
    assert slow.wait(5) and slow.state == "cancelled"
    with pytest.raises(JobCancelled, match="superseded"):
        slow.outcome()
    assert newer.outcome() == 120
    assert time.monotonic() - started < 30
    assert _eventually(lambda: _gone(pid) and pid not in pool.pids() and len(pool.pids()) == 2)


def test_stopping_a_job_leaves_the_wait_and_the_restart_to_the_pools_thread(pool, monkeypatch):
    import kcp.workers as kw

    threads = []
    for name in ("kill", "__init__"):  # waiting for a process's end; starting a process
        original = getattr(kw._Worker, name)
        monkeypatch.setattr(kw._Worker, name, lambda self, *a, _f=original, _n=name, **k: (
            threads.append((_n, threading.current_thread().name)), _f(self, *a, **k))[1])
    slow = pool.submit(time.sleep, 60, owner="a", slot="live", key="slow")
    assert _running(slow)
    pool.cancel(slow)
    assert slow.state == "cancelled"
    assert _eventually(lambda: _gone(slow.pid) and slow.pid not in pool.pids() and len(pool.pids()) == 2)
    assert pool.submit(math.factorial, 5).outcome() == 120
    assert {n for n, _ in threads} == {"kill", "__init__"}
    assert {t for _, t in threads} == {"kcp-worker-pool"}  # never the caller's thread (a slider move)


def test_a_dead_worker_fails_its_job_and_is_replaced(pool):
    job = pool.submit(os._exit, 3)
    with pytest.raises(WorkerDied, match="exit code 3"):
        job.outcome()
    assert pool.submit(math.factorial, 3).outcome() == 6


def test_jobs_of_an_owner_that_went_away_are_stopped(pool):
    job = pool.submit(time.sleep, 60, owner="gone")
    assert _running(job)
    pool.owners["gone"] = True  # still here
    time.sleep(1.5)
    assert job.state == "running"
    pool.owners["gone"] = False
    assert job.wait(5) and job.state == "cancelled"


def test_the_queue_is_bounded_and_owners_share_the_workers(pool):
    hogs = [pool.submit(time.sleep, 60, owner="hog") for _ in range(2)]
    assert all(_running(h) for h in hogs)
    waiting = [pool.submit(time.sleep, 60, owner="hog") for _ in range(1)]
    other = pool.submit(math.factorial, 4, owner="polite")
    # Both workers are busy; the polite owner's job is next in line even though the hog queued first.
    pool.cancel(hogs[1])
    assert other.outcome() == 24
    assert waiting[0].started is None or other.started <= waiting[0].started
    more = []
    with pytest.raises(QueueFull, match="busy"):
        for _ in range(pool.max_queued + 2):  # a worker may take one of them first
            more.append(pool.submit(time.sleep, 60, owner="hog"))
    assert sum(j.state == "queued" for j in pool.jobs()) == pool.max_queued
    in_flight = [j for j in [*hogs, *waiting, *more] if not j.finished]
    assert pool.cancel_owner("hog") == len(in_flight)
    assert all(j.state == "cancelled" for j in [*hogs, *waiting, *more])


def test_workers_warm_up_before_their_first_job_replacements_too(pool):
    pool.warm(_remember, "layer")
    pool.warm(_remember, "layer")  # registered once
    assert pool.submit(_warmed).outcome() == ["layer"]
    slow, busy = (pool.submit(time.sleep, 60, owner=o) for o in ("a", "b"))
    assert _running(slow) and _running(busy)
    pool.cancel(slow)  # its worker is replaced; the other is busy, so the next job can only go to the replacement
    job = pool.submit(_warmed)
    assert job.outcome() == ["layer"] and job.pid not in (slow.pid, busy.pid)
    pool.cancel(busy)


def test_a_background_job_leaves_a_worker_free_for_the_foreground(pool):
    busy = pool.submit(time.sleep, 60, owner="a")
    assert _running(busy)
    later = pool.submit(math.factorial, 7, owner="b", background=True)
    time.sleep(0.5)
    assert later.state == "queued"  # one worker is free, and it stays free for a foreground job
    assert pool.submit(math.factorial, 5, owner="c").outcome() == 120
    assert later.state == "queued"
    pool.cancel(busy)
    assert later.outcome() == 5040


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_a_background_job_runs_at_a_lower_priority_and_leaves_the_worker_as_it_was(pool):
    base = pool.submit(_niceness).outcome()
    assert pool.submit(_niceness, background=True).outcome() == base + BACKGROUND_NICE
    assert pool.submit(_niceness).outcome() == base
