"""Pick the fastest implementation of a layer for the input at hand, by timing each candidate once."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from kcp.latency import cuda_samples


def time_ms(fn: Callable[[], object], device: torch.device, runs: int = 10, budget_s: float = 0.25) -> float:
    """Median wall time of ``fn()`` in ms after a warm-up call (CUDA events on a GPU, perf_counter on the CPU).

    The first call (Triton compilation, cuDNN's algorithm search) is never timed; slow candidates get
    fewer runs (at least three: a median of one is at the mercy of a busy machine) so one choice costs
    about ``budget_s`` per candidate.
    """
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    runs = max(3, min(runs if cuda else 5, int(budget_s / max(time.perf_counter() - start, 1e-6))))
    if cuda:
        return statistics.median(cuda_samples(fn, 0, runs))
    samples = []
    for _ in range(runs):
        begin = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(samples)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def choose(run: Callable[[str], torch.Tensor], candidates: Sequence[str], skipped: dict[str, str],
           device: torch.device, tol: float) -> tuple[str, str]:
    """Time ``run(path)`` for each candidate and return the fastest with a one-line account of the choice.

    The first candidate is the reference: one whose output differs from it by more than ``tol`` (relative
    Frobenius error) or that raises is dropped and the note says so. ``skipped`` maps paths that could not
    run to why.
    """
    times: dict[str, float] = {}
    by_reason: dict[str, list[str]] = {}
    for path, why in skipped.items():
        by_reason.setdefault(why, []).append(path)
    notes = [f"{', '.join(paths)} skipped ({why})" for why, paths in by_reason.items()]
    with torch.no_grad():
        ref = run(candidates[0])
        for path in candidates:
            try:
                err = 0.0 if path == candidates[0] else _rel_err(run(path), ref)
                if err > tol:
                    notes.append(f"{path} dropped (differs from {candidates[0]} by {err:.2g})")
                    continue
                times[path] = time_ms(lambda p=path: run(p), device)
            except Exception as exc:  # a candidate that fails must not break the layer: note it, use another
                first_line = (str(exc).splitlines() or [""])[0][:120]
                notes.append(f"{path} failed ({type(exc).__name__}: {first_line})")
    if not times:
        raise ValueError(f"no implementation could run this input: {'; '.join(notes)}")
    ranked = sorted(times, key=times.get)
    best = ranked[0]
    others = ", ".join(f"{p} {times[p]:.3g}" for p in ranked[1:])
    note = f"{best}: {times[best]:.3g} ms" + (f" vs {others} ms" if others else "")
    return best, "; ".join([note, *notes])
