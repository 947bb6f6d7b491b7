"""Where a sweep's independent pieces of work run: this process, a local process pool, or a Ray cluster.

An engine runs module-level functions (so that they pickle by reference) and hands their outcomes back to
the driver. The driver alone reads and writes the result cache: a worker on another machine of a Ray
cluster has no access to the driver's disk, so a task gets the cache entries it needs as arguments and
returns the ones it made. Large inputs (a layer target with its activations) go through ``share`` once,
not with every task. Ray is imported only when the Ray engine is built.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ENGINES = ("local", "ray")


class TaskFailed(Exception):
    """A task raised, or the worker running it died; the message says which. ``shared``: the failure hit every
    task in flight at once (a dead worker breaks a whole process pool), so it may have been another task's."""

    def __init__(self, message: str, shared: bool = False) -> None:
        super().__init__(message)
        self.shared = shared


class Cancelled(Exception):
    """Raised inside an in-process task when the caller asked the work to stop."""


class Engine:
    """Runs tasks in this process, one at a time (the library's default: no processes, cancellable inside a task).

    Subclasses run tasks elsewhere. ``slots`` is how many tasks can usefully run at once, ``retries`` how
    often the driver retries a failed task (0 where the engine retries by itself), ``in_flight`` how many
    tasks were submitted and not yet collected.
    """

    name = "inline"
    in_process = True
    gpu_tasks = False  # whether latency on a GPU can run as separate tasks that request one
    slots = 1
    retries = 1

    def __init__(self) -> None:
        self.in_flight = 0

    def describe(self) -> str:
        return self.name

    def share(self, obj: Any) -> Any:
        """A handle that tasks receive in place of ``obj`` (resolved to it on the worker)."""
        return obj

    def submit(self, fn: Callable[..., Any], *args: Any, gpu: bool = False, **kwargs: Any) -> Any:
        """Start ``fn(*args, **kwargs)``; returns a handle for ``wait`` and ``get``."""
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - reported through get(), like a remote failure
            future.set_exception(exc)
        self.in_flight += 1
        return future

    def wait(self, handles: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """The handles among ``handles`` that have finished (at least one, unless ``timeout`` passed)."""
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def get(self, handle: Any) -> Any:
        """The task's value; raises TaskFailed (Cancelled passes through)."""
        self.in_flight -= 1
        try:
            return handle.result()
        except Cancelled:
            raise
        except Exception as exc:
            raise TaskFailed(f"{type(exc).__name__}: {exc}") from exc

    def cancel(self, handles: Iterable[Any]) -> None:
        """Give up on tasks that have not been collected (their results are dropped)."""
        for handle in handles:
            handle.cancel()
            self.in_flight -= 1

    def close(self) -> None:
        """Release workers and temporary files."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_engine(name: str | None, *, workers: int | None = None, threads: int = 1,
                 address: str | None = None) -> None:
    """Refuse engine settings that cannot work (before any work is done), with what to give instead."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if address is not None and name != "ray":
        raise ValueError("a Ray address needs engine 'ray' (--engine ray)")
    if name is not None and name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}")


def make_engine(name: str | None, *, workers: int | None = None, threads: int = 1,
                address: str | None = None) -> Engine:
    """The engine called ``name`` ('local' or 'ray'; None for in-process).

    ``workers``: local processes, or the CPUs of a local Ray instance (default: cores // threads);
    ``threads``: torch threads in each worker; ``address``: an existing Ray cluster (``ray.init(address=...)``).
    """
    check_engine(name, workers=workers, threads=threads, address=address)
    if name is None:
        return Engine()
    if name == "local":
        from kcp.engines.local import LocalEngine

        return LocalEngine(workers=workers, threads=threads)
    if name == "ray":
        try:
            from kcp.engines.ray import RayEngine
        except ImportError as exc:
            raise ValueError(f"engine 'ray' needs the ray package ({exc}): pip install 'ray>=2.9'") from None

        return RayEngine(address=address, cpus=workers, threads=threads)
    raise ValueError(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}")


@dataclass
class Node:
    """One task of a graph: ``after`` names the node whose value it needs (None: independent)."""

    id: Hashable
    after: Hashable | None = None


def run_graph(
    engine: Engine,
    nodes: Sequence[Node],
    start: Callable[[Node, Any], tuple[str, Any]],
    finish: Callable[[Node, Any], Any],
    fail: Callable[[Node, str], None],
    should_stop: Callable[[], bool] = lambda: False,
    poll: float = 0.2,
) -> bool:
    """Run ``nodes`` on ``engine`` in order, each once its ``after`` node is through; True if stopped early.

    ``start(node, before)`` gets what the node's ``after`` node passed on (None if it failed or there is none)
    and returns ``("value", v)`` when the node needs no task (a cache hit), else ``("task", (fn, args, kwargs))``.
    ``finish(node, v)`` takes that value or the task's and returns what ``start`` of the nodes after it gets.
    A failed task is retried ``engine.retries`` times, then ``fail(node, message)``; the rest carries on. A
    failure that may have been another task's (``TaskFailed.shared``) does not count: the task runs again alone,
    where a failure is its own.
    """
    waiting = list(nodes)
    values: dict[Hashable, Any] = {}
    through: set[Hashable] = set()
    running: dict[Any, tuple[Node, tuple, int]] = {}
    alone: list[tuple[Node, tuple, int]] = []  # to run with nothing else in flight
    solo = False

    def launch(node: Node, job: tuple, attempt: int) -> None:
        fn, args, kwargs = job
        running[engine.submit(fn, *args, **kwargs)] = (node, job, attempt)

    def settle(node: Node, value: Any) -> None:
        values[node.id] = value
        through.add(node.id)

    try:
        while waiting or running or alone:
            if should_stop():
                engine.cancel(list(running))
                return True
            if alone and not running:
                launch(*alone.pop(0))
                solo = True
            for node in [] if alone or solo else [n for n in waiting if n.after is None or n.after in through]:
                if len(running) >= engine.slots:
                    break
                waiting.remove(node)
                kind, payload = start(node, values.get(node.after))
                if kind == "value":
                    settle(node, finish(node, payload))
                else:
                    launch(node, payload, 0)
                if should_stop():
                    break
            if not running and not alone:
                if waiting and not any(n.after is None or n.after in through for n in waiting):
                    raise ValueError(f"nodes wait on nodes that are not in the graph: {[n.id for n in waiting]}")
                continue
            for handle in engine.wait(list(running), timeout=poll):
                node, job, attempt = running.pop(handle)
                try:
                    value = engine.get(handle)
                except TaskFailed as exc:
                    if exc.shared and not solo:
                        alone.append((node, job, attempt))
                        continue
                    if attempt < engine.retries:
                        launch(node, job, attempt + 1)
                        continue
                    fail(node, str(exc))
                    settle(node, None)
                    continue
                settle(node, finish(node, value))
            solo = solo and bool(running)
    except Cancelled:
        engine.cancel(list(running))
        return True
    return False
