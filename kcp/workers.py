"""Worker processes that run heavy jobs outside the caller's process, and can be stopped mid-job.

A :class:`WorkerPool` owns a few processes (``spawn`` context, ``threads`` torch threads each, so the pool
never asks for more cores than it was given). Jobs are any picklable function and arguments, e.g. the ones in
:mod:`kcp.jobs`. The queue is bounded; owners (a dashboard session, say) share the workers fairly: an owner
with a job running waits behind owners with none. A job submitted into an owner's ``slot`` supersedes that
slot's older job: a queued one is dropped, a running one is stopped by killing its worker, which the pool's
thread replaces at once (the caller waits for neither). A worker that dies (the kernel's OOM killer, a crash)
fails its job with the reason and is replaced; the caller's process is never at risk. ``alive(owner)`` is polled
so that jobs of owners that went away (a closed browser tab) are stopped too.

A worker takes jobs only once it is ready: it has imported ``preload`` and run the calls registered with
:meth:`WorkerPool.warm` (e.g. building a layer's target), so a job never waits behind a fresh interpreter's imports
while a warm worker is free. With ``context="forkserver"`` the ``preload`` modules are imported once, in the fork
server, and a replacement worker starts in milliseconds instead of importing torch again.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for
from typing import Any

STATES = ("queued", "running", "done", "failed", "cancelled")
POLL_SECONDS = 0.02
ALIVE_EVERY_SECONDS = 1.0
# Pause before trying again when a replacement worker cannot be started.
RETRY_SECONDS = 1.0
# How many warm-up calls a new worker runs (the most recently registered ones).
WARM_CALLS = 4
# Niceness of a background job's thread (0 is the default, 19 the lowest priority).
BACKGROUND_NICE = 10


class QueueFull(ValueError):
    """The pool's queue is at its bound: the request is refused, not queued."""


class JobCancelled(Exception):
    """The job was superseded, stopped, or its owner went away before it finished."""


class WorkerDied(RuntimeError):
    """The worker process running the job ended without an answer (killed for memory, crashed)."""


@dataclass(eq=False)
class Job:
    """One submitted call. ``state`` moves queued -> running -> done | failed | cancelled."""

    id: int
    owner: str
    slot: str | None
    key: Hashable
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    wants_progress: bool = False
    background: bool = False
    state: str = "queued"
    result: Any = None
    error: BaseException | None = None
    progress: Any = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    pid: int | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (in any way) within ``timeout`` seconds."""
        return self._done.wait(timeout)

    def outcome(self) -> Any:
        """The result; raises the job's own exception, :class:`JobCancelled` or :class:`WorkerDied`."""
        self._done.wait()
        if self.state == "cancelled":
            raise JobCancelled(self.error or "stopped")
        if self.error is not None:
            raise self.error
        return self.result


def _warm_up(calls: list[tuple[Callable[..., Any], tuple]]) -> None:
    for fn, args in calls:
        try:
            fn(*args)
        except Exception:  # noqa: S112 - a warm-up only saves time; the job that needs it reports the error itself
            continue


def _call(job_id: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple:
    try:
        return ("done", job_id, fn(*args, **kwargs))
    except BaseException as exc:  # everything goes back to the caller, who decides
        return ("error", job_id, exc)


def _at_low_priority(fn: Callable[..., Any], *args) -> Any:
    """``fn(*args)`` in a thread of its own at a lower CPU priority (Linux: niceness is per thread, and a thread
    that ends takes it along; with one torch thread the work runs in that thread), so that it yields the cores to
    foreground jobs in the other workers."""
    reply: list[Any] = []

    def run() -> None:
        if sys.platform.startswith("linux"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        reply.append(fn(*args))

    thread = threading.Thread(target=run, name="kcp-background-job")
    thread.start()
    thread.join()
    return reply[0]


def _worker_main(conn, threads: int, preload: tuple[str, ...], calls: list) -> None:
    """A worker's loop: import ``preload``, run the warm-up ``calls``, say it is ready; then receive a job, run it,
    send back its result or its exception (picklable or not). A message with no job id is a warm-up call."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the parent's terminal is the parent's to handle
    import importlib

    import torch

    torch.set_num_threads(threads)
    for name in preload:
        importlib.import_module(name)
    # A replacement (for a killed worker) warms up while a slider move's job runs in another worker: let that win.
    _at_low_priority(_warm_up, calls)
    conn.send(("ready", None, None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job_id, fn, args, kwargs, wants_progress, background = message
        if job_id is None:
            _warm_up([(fn, args)])
            continue
        if wants_progress:
            kwargs = {**kwargs, "progress": lambda payload, _id=job_id: conn.send(("progress", _id, payload))}
        reply = _call(job_id, fn, args, kwargs) if not background else _at_low_priority(_call, job_id, fn, args, kwargs)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send(("error", job_id, RuntimeError(f"the job's answer could not be sent back: {exc}")))


class _Worker:
    def __init__(self, context, threads: int, preload: tuple[str, ...], calls: list) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads, preload, calls), daemon=True,
                                       name="kcp-worker")
        self.process.start()
        child.close()
        self.job: Job | None = None
        self.ready = False
        self.stopped = False

    def stop(self) -> None:
        """SIGKILL without waiting: the pool's thread reaps the process and starts the replacement."""
        self.stopped, self.ready, self.job = True, False, None
        self.process.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """``workers`` processes with ``threads`` torch threads each, at most ``max_queued`` jobs waiting; each worker
    imports the ``preload`` modules before it takes a job (in the fork server, once, with ``context="forkserver"``)."""

    def __init__(self, workers: int = 2, *, threads: int = 1, max_queued: int = 32,
                 alive: Callable[[str], bool] | None = None, context: str = "spawn",
                 preload: tuple[str, ...] = ()) -> None:
        if workers < 1 or threads < 1 or max_queued < 1:
            raise ValueError(f"workers, threads and max_queued must be >= 1, got {workers}, {threads}, {max_queued}")
        self.threads, self.max_queued, self.alive, self.preload = threads, max_queued, alive, tuple(preload)
        self._context = mp.get_context(context)
        if context == "forkserver":
            self._context.set_forkserver_preload(["torch", *self.preload])
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._queue: list[Job] = []
        self._warm: list[tuple[Callable[..., Any], tuple]] = []
        # Started by the pool's thread: with a fork server still importing, starting a worker waits for it.
        self._workers: list[_Worker] = []
        self._closed = False
        self._last_alive_check = 0.0
        self._thread = threading.Thread(target=self._loop, args=(workers,), name="kcp-worker-pool", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args, owner: str = "", slot: str | None = None,
               key: Hashable = None, progress: bool = False, background: bool = False, **kwargs) -> Job:
        """Queue ``fn(*args, **kwargs)``. In a ``slot``, a job with the same ``key`` still in flight is returned
        instead of a new one, and any other job of that owner's slot is cancelled. With ``progress`` the
        function gets a ``progress(payload)`` keyword whose latest payload shows in ``job.progress``. A
        ``background`` job (nobody waits on it to see a page) starts only while another worker stays free, so it
        never delays a foreground job (in a pool of one worker: only while no foreground job waits)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            if slot is not None:
                for job in self._in_flight(owner, slot):
                    if key is not None and job.key == key:
                        return job
                    self._cancel(job, "superseded by a newer request")
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"the server is busy: {len(self._queue)} requests are waiting already. Try again "
                                f"in a moment.")
            job = Job(next(self._ids), owner, slot, key, fn, args, kwargs, progress, background)
            self._queue.append(job)
            return job

    def warm(self, fn: Callable[..., Any], *args) -> None:
        """Have every worker call ``fn(*args)`` before its next job, and every new worker (a replacement for a killed
        one) before it takes any: for work that jobs reuse, such as building a layer's target. The last
        ``WARM_CALLS`` calls are kept; registering one again does nothing. Failures are ignored (the job that needs
        the work reports them)."""
        call = (fn, args)
        with self._lock:
            if call in self._warm:
                return
            self._warm = [*self._warm, call][-WARM_CALLS:]
            for worker in self._workers:
                try:
                    worker.conn.send((None, fn, args, {}, False, False))
                except (OSError, pickle.PicklingError, TypeError, AttributeError):
                    continue  # a dying worker is replaced by _reap, and the replacement gets the call

    def cancel(self, job: Job, reason: str = "stopped") -> None:
        """Stop ``job``: drop it from the queue, or kill its worker (replaced at once) if it is running."""
        with self._lock:
            self._cancel(job, reason)

    def cancel_owner(self, owner: str, reason: str = "its session ended", slot: str | None = None) -> int:
        """Stop every job of ``owner`` (in ``slot`` only, if given); returns how many were stopped."""
        with self._lock:
            jobs = [j for j in self._all_jobs() if j.owner == owner and slot in (None, j.slot)]
            for job in jobs:
                self._cancel(job, reason)
            return len(jobs)

    def jobs(self) -> list[Job]:
        """The jobs queued or running now."""
        with self._lock:
            return self._all_jobs()

    def pids(self) -> list[int]:
        """Process ids of the workers (they change when a worker is killed and replaced)."""
        with self._lock:
            return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop every job and end the workers."""
        with self._lock:
            self._closed = True
            for job in self._all_jobs():
                self._cancel(job, "the pool closed")
        self._thread.join(timeout=60)
        with self._lock:
            for worker in self._workers:
                worker.kill()

    # -- inside, under the lock -------------------------------------------------------------------------------
    def _all_jobs(self) -> list[Job]:
        return [*self._queue, *(w.job for w in self._workers if w.job is not None)]

    def _in_flight(self, owner: str, slot: str) -> list[Job]:
        return [j for j in self._all_jobs() if j.owner == owner and j.slot == slot]

    def _finish(self, job: Job, state: str, result: Any = None, error: BaseException | None = None) -> None:
        job.state, job.result, job.error = state, result, error
        job._done.set()

    def _cancel(self, job: Job, reason: str) -> None:
        # The caller (a slider move) does not wait for the process to end nor for its replacement to start (tenths
        # of a second together): the pool's thread does both, outside the lock.
        if job.finished:
            return
        if job in self._queue:
            self._queue.remove(job)
        for worker in self._workers:
            if worker.job is job:
                worker.stop()
        self._finish(job, "cancelled", error=JobCancelled(reason))

    def _next_job(self, idle: int) -> Job | None:
        """The oldest queued job of the owner with the fewest jobs running (a fair share of the workers); foreground
        jobs first, and a background one only while another of the ``idle`` workers stays free."""
        foreground_waits = any(not j.background for j in self._queue)
        spare = idle > 1 or (len(self._workers) == 1 and not foreground_waits)
        candidates = [j for j in self._queue if spare or not j.background]
        if not candidates:
            return None
        running: dict[str, int] = {}
        for w in self._workers:
            if w.job is not None:
                running[w.job.owner] = running.get(w.job.owner, 0) + 1
        return min(candidates, key=lambda j: (j.background, running.get(j.owner, 0), j.submitted, j.id))

    def _dispatch(self) -> None:
        idle = sum(w.job is None and w.ready for w in self._workers)
        for worker in self._workers:
            if worker.job is not None or not worker.ready:
                continue
            job = self._next_job(idle)
            if job is None:
                return
            idle -= 1
            self._queue.remove(job)
            try:
                worker.conn.send((job.id, job.fn, job.args, job.kwargs, job.wants_progress, job.background))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                self._finish(job, "failed", error=TypeError(f"the job cannot be sent to a worker: {exc}"))
                continue
            worker.job, job.state, job.started, job.pid = job, "running", time.monotonic(), worker.process.pid

    def _check_owners(self) -> None:
        now = time.monotonic()
        if self.alive is None or now - self._last_alive_check < ALIVE_EVERY_SECONDS:
            return
        self._last_alive_check = now
        for owner in {j.owner for j in self._all_jobs()}:
            if not self.alive(owner):
                for job in [j for j in self._all_jobs() if j.owner == owner]:
                    self._cancel(job, "its session ended")

    def _receive(self, worker: _Worker) -> bool:
        """Handle one message; False when the pipe has ended (the process died: ``_reap`` handles it)."""
        try:
            kind, job_id, payload = worker.conn.recv()
        except (EOFError, OSError):
            return False
        except Exception as exc:  # an answer that cannot be unpickled here
            kind, job_id, payload = "error", worker.job.id if worker.job else -1, RuntimeError(str(exc))
        if kind == "ready":
            worker.ready = True
            return True
        job = worker.job
        if job is None or job.id != job_id:
            return True
        if kind == "progress":
            job.progress = payload
            return True
        worker.job = None
        if kind == "done":
            self._finish(job, "done", result=payload)
        else:
            self._finish(job, "failed", error=payload)
        return True

    def _reap(self) -> list[_Worker]:
        """Fail the jobs of workers that ended; those workers, to be replaced (by :meth:`_replace`)."""
        dead = []
        for worker in self._workers:
            if worker.process.is_alive():
                continue
            while worker.job is not None and not worker.conn.closed and worker.conn.poll() and self._receive(worker):
                pass  # an answer sent just before the process ended still counts
            code = worker.process.exitcode
            job, worker.job, worker.ready = worker.job, None, False
            dead.append(worker)
            if job is not None:
                why = "killed (probably out of memory)" if code == -signal.SIGKILL else f"exit code {code}"
                self._finish(job, "failed", error=WorkerDied(f"the worker process running this ended: {why}"))
        return dead

    def _replace(self, dead: list[_Worker]) -> None:
        """Start a worker for each of ``dead`` outside the lock (a start takes tens of milliseconds, and a slider move
        must not wait on it to submit its job), then swap them in."""
        with self._lock:
            calls = list(self._warm)
        for old in dead:
            old.kill()
            try:
                new = _Worker(self._context, self.threads, self.preload, calls)
            except OSError:  # no process can start now (the fork server is gone at exit): retry a little later
                time.sleep(RETRY_SECONDS)
                continue
            with self._lock:
                if self._closed or old not in self._workers:
                    new.kill()
                    continue
                self._workers[self._workers.index(old)] = new

    def _start(self, workers: int) -> None:
        started = [_Worker(self._context, self.threads, self.preload, []) for _ in range(workers)]
        with self._lock:
            self._workers = started
            if self._closed:
                return
            for worker in started:  # the warm-up calls registered while they started
                for fn, args in self._warm:
                    worker.conn.send((None, fn, args, {}, False, False))

    def _loop(self, workers: int) -> None:
        self._start(workers)
        while True:
            with self._lock:
                if self._closed:
                    return
                self._check_owners()
                dead = self._reap()
                self._dispatch()
                busy = {w.conn: w for w in self._workers if (w.job is not None or not w.ready) and not w.stopped}
            if dead:
                self._replace(dead)
                continue
            ready = wait_for(list(busy), timeout=POLL_SECONDS) if busy else time.sleep(POLL_SECONDS)
            with self._lock:
                for conn in ready or ():
                    worker = busy[conn]
                    if worker in self._workers and not conn.closed:
                        while not conn.closed and conn.poll() and self._receive(worker):
                            pass


def cpu_share() -> int:
    """Cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
