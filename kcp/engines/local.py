"""The local engine: a pool of worker processes on this machine, each with its own torch thread count."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import os
import pickle
import shutil
import tempfile
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcp.engines import Engine, TaskFailed


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _SharedFile:
    """An object pickled once to a file that every worker reads (once per process)."""

    path: str


@functools.lru_cache(maxsize=8)
def _load(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(fn, args: tuple, kwargs: dict) -> Any:
    args = tuple(_load(a.path) if isinstance(a, _SharedFile) else a for a in args)
    return fn(*args, **kwargs)


class LocalEngine(Engine):
    """A process pool (spawned processes, so no thread pools are inherited mid-flight).

    Two workers with one thread each do not fight over two cores, so the default is cores // threads
    workers. A worker that dies breaks the whole pool (that is how ``concurrent.futures`` reports it): every
    task in flight fails with it and runs again, alone, on a fresh pool, so that only the culprit is charged.
    """

    name = "local"
    in_process = False

    def __init__(self, workers: int | None = None, threads: int = 1) -> None:
        super().__init__()
        self.threads = threads
        self.slots = workers or max(1, cores() // threads)
        self._dir = Path(tempfile.mkdtemp(prefix="kcp-engine-"))
        self._shared = 0
        self._pool = self._new_pool()

    def describe(self) -> str:
        return f"local x{self.slots}"

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_worker, initargs=(self.threads,))

    def share(self, obj: Any) -> _SharedFile:
        self._shared += 1
        path = self._dir / f"shared-{self._shared}.pkl"
        with path.open("wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        return _SharedFile(str(path))

    def submit(self, fn, *args: Any, gpu: bool = False, **kwargs: Any) -> cf.Future:
        try:
            future = self._pool.submit(_call, fn, args, kwargs)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            future = self._pool.submit(_call, fn, args, kwargs)
        self.in_flight += 1
        return future

    def get(self, handle: cf.Future) -> Any:
        try:
            return super().get(handle)
        except TaskFailed as exc:
            if isinstance(exc.__cause__, BrokenProcessPool):
                raise TaskFailed("a worker process died while this task was in flight", shared=True) from exc.__cause__
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._dir, ignore_errors=True)
