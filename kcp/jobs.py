"""Jobs for worker processes (:mod:`kcp.workers`): each takes small picklable specs, rebuilds the model and the
layer it needs, and remembers them (and recent decompositions) in its own process, so that a worker answers a
slider move in the time the decomposition takes, not the time a model load takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kcp import zoo
from kcp.cache import ResultCache
from kcp.decomposition import Decomposition, KTSpectrum, kt_spectrum
from kcp.evaluate import evaluate, module_for
from kcp.fit import DEFAULT_FIT, decompose_point
from kcp.latency import LatencySettings, PairedTiming, paired
from kcp.sweep import SweepConfig, SweepResult, sweep
from kcp.target import LayerTarget
from kcp.zoo._memo import Memo


@dataclass(frozen=True)
class TargetSpec:
    """Where a layer comes from: ``zoo.load_model(source, arch=arch)``, its conv ``layer``, ``n_images`` evaluation
    and ``n_calibration`` calibration images (None: the model's defaults)."""

    source: str
    arch: str | None
    layer: str
    n_images: int | None = None
    fidelity: bool = True
    n_calibration: int | None = None


_targets: Memo[LayerTarget] = Memo(size=4)
_decompositions: Memo[Decomposition] = Memo(size=64)


def target(spec: TargetSpec) -> LayerTarget:
    """The layer with its real activations (built once per worker process)."""
    def build() -> LayerTarget:
        loaded = zoo.load_model(spec.source, arch=spec.arch)
        return LayerTarget.from_zoo(loaded, spec.layer, n_images=spec.n_images, fidelity=spec.fidelity,
                                    calibration=spec.n_calibration)

    return _targets.get(spec, build)


def warm(spec: TargetSpec, moments: bool = False) -> None:
    """Build what every point of the layer reuses, before a point waits for it: the layer (:func:`target`), the
    network after it and the unchanged network's outputs (one fidelity check of the dense layer), and with
    ``moments`` the calibration moments that an output fit starts from (a second of CPU on digits conv4)."""
    t = target(spec)
    if t.fidelity is not None:
        t.fidelity(t.conv)
    if moments and t.calibration is not None:
        t.moments()


def decomposition(spec: TargetSpec, method: str, ranks: dict[str, int], options: dict[str, Any],
                  fit: str = DEFAULT_FIT) -> Decomposition:
    """The layer's decomposition fitted to ``fit``, as :func:`kcp.fit.decompose_point` makes it everywhere
    (remembered per process)."""
    key = (spec, method, tuple(sorted(ranks.items())), tuple(sorted(options.items())), fit)
    t = target(spec)
    return _decompositions.get(key, lambda: decompose_point(t, method, ranks, fit=fit, options=options))


def metrics(spec: TargetSpec, method: str, ranks: dict[str, int], options: dict[str, Any],
            fidelity: bool = True, fit: str = DEFAULT_FIT) -> dict[str, Any]:
    """``kcp.evaluate.evaluate``'s row (costs, kernel and output error, network fidelity; no latency)."""
    return evaluate(target(spec), decomposition(spec, method, ranks, options, fit), output_error=True,
                    fidelity=fidelity)


def point(spec: TargetSpec, method: str, ranks: dict[str, int], options: dict[str, Any], fidelity: bool = True,
          fit: str = DEFAULT_FIT) -> tuple[Decomposition, dict[str, Any]]:
    """The decomposition and its :func:`metrics` row in one job (one round trip, one process's caches)."""
    return decomposition(spec, method, ranks, options, fit), metrics(spec, method, ranks, options, fidelity, fit)


def latency(spec: TargetSpec, method: str, ranks: dict[str, int], options: dict[str, Any],
            settings: LatencySettings, fit: str = DEFAULT_FIT, result: Decomposition | None = None) -> PairedTiming:
    """The dense layer and the factorised one timed in one paired measurement; ``result`` is the decomposition when
    the caller has it (a worker other than the one that made it would otherwise decompose the point again)."""
    t = target(spec)
    module = module_for(t, result if result is not None else decomposition(spec, method, ranks, options, fit))
    return paired(t.conv, module, (t.kernel_shape[1], *t.in_hw), settings)


def spectrum(spec: TargetSpec, factors: tuple[int, int, int, int] | None, placement: str) -> KTSpectrum:
    """The layer's KT spectrum for a factor shape and placement."""
    return kt_spectrum(target(spec).conv.weight.detach(), factors=factors, placement=placement)


def grid(spec: TargetSpec, config: SweepConfig, cache_root: str | None = None,
         progress: Callable[[Any], None] | None = None) -> SweepResult:
    """``kcp.sweep.sweep`` of the layer; ``progress((done, total, row))`` after every point."""
    report = None if progress is None else (lambda done, total, row: progress((done, total, row)))
    return sweep(target(spec), config, cache=ResultCache(cache_root), progress=report)
