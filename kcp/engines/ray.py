"""The Ray engine: tasks on a Ray cluster (an existing one at an address, else a local instance).

Decompositions are CPU tasks (``num_cpus=1``); latency on a GPU is a task that requests one
(``num_gpus=1``), so Ray runs one at a time per GPU. Ray retries a task once when it raises or its worker
dies (``max_retries=1``, ``retry_exceptions=True``); a second failure reaches the driver, which reports it
in the row. Objects shared with tasks go to Ray's object store once (``ray.put``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

import kcp
from kcp.engines import Engine, TaskFailed


def _call(threads: int, fn, *args: Any, **kwargs: Any) -> Any:
    import torch

    torch.set_num_threads(threads)
    return fn(*args, **kwargs)


class RayEngine(Engine):
    """``ray.init(address=address)`` when an address is given (the ``kcp`` package is shipped to the
    cluster with the job), else a local instance with ``cpus`` CPUs and no dashboard."""

    name = "ray"
    in_process = False
    gpu_tasks = True
    retries = 0  # Ray retries by itself

    def __init__(self, address: str | None = None, cpus: int | None = None, threads: int = 1) -> None:
        super().__init__()
        self.threads = threads
        self._owner = not ray.is_initialized()
        if self._owner:
            if address is not None:
                try:
                    ray.init(address=address, runtime_env={"py_modules": [kcp]}, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ValueError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
            else:  # workers on this machine import the driver's copy of kcp
                here = str(Path(kcp.__file__).resolve().parents[1])
                path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
        self._remote = ray.remote(max_retries=1, retry_exceptions=True)(_call)
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)

    def describe(self) -> str:
        return f"ray x{self.slots}"

    def share(self, obj: Any) -> ray.ObjectRef:
        return ray.put(obj)

    def submit(self, fn, *args: Any, gpu: bool = False, **kwargs: Any) -> ray.ObjectRef:
        resources = {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": self.threads}
        ref = self._remote.options(**resources).remote(self.threads, fn, *args, **kwargs)
        self.in_flight += 1
        return ref

    def wait(self, handles, timeout: float | None = None) -> list[ray.ObjectRef]:
        done, rest = ray.wait(list(handles), num_returns=1, timeout=timeout)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        return done

    def get(self, handle: ray.ObjectRef) -> Any:
        self.in_flight -= 1
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            raise TaskFailed(f"{type(exc.cause).__name__}: {exc.cause}" if exc.cause else str(cause)) from exc
        except ray.exceptions.RayError as exc:
            raise TaskFailed(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc

    def cancel(self, handles) -> None:
        for handle in handles:
            ray.cancel(handle)
            self.in_flight -= 1

    def close(self) -> None:
        if self._owner:
            ray.shutdown()
