"""What a decomposition is fitted to, and the one way every path (CLI, sweep, dashboard) decomposes a point.

The CLI, the sweep and the dashboard all decompose through :func:`decompose_point` with options from
:func:`point_options`, so the same point gets the same options, seed, calibration data and fit everywhere,
and therefore the same numbers. Options left as None take the library's defaults (never restated here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kcp.decomposition import Decomposition, decompose
from kcp.decomposition.outputs import FITS
from kcp.methods import get

if TYPE_CHECKING:
    from kcp.target import LayerTarget

# FITS: "kernel" minimises ||W - W_hat||, "outputs" the layer's output error on calibration inputs.
DEFAULT_FIT = "kernel"

__all__ = ["DEFAULT_FIT", "FITS", "decompose_point", "point_options"]


def point_options(method: str, *, factors: tuple[int, int, int, int] | None = None, placement: str = "split",
                  refine_sweeps: int | None = None, tol: float | None = None,
                  seed: int | None = None) -> dict[str, Any]:
    """The keyword options of ``method`` (besides ranks and fit) that change its result; None is the default."""
    chosen = {"factors": None if factors is None else tuple(factors), "placement": placement,
              "refine_sweeps": refine_sweeps, "tol": tol, "random_state": seed}
    return {name: chosen[name] for name in get(method).options
            if name in chosen and (chosen[name] is not None or name == "factors")}


def decompose_point(
    target: LayerTarget,
    method: str,
    ranks: dict[str, int],
    *,
    fit: str = DEFAULT_FIT,
    options: dict[str, Any] | None = None,
    init: Decomposition | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> Decomposition:
    """Decompose ``target``'s kernel with ``method`` at ``ranks``, fitted to ``fit`` (outputs: on the target's
    calibration images). ``options`` come from :func:`point_options`; ``init`` (a warm start) and ``callback``
    (polled between refinement sweeps) apply to KCP only."""
    extra: dict[str, Any] = dict(options or {})
    extra.update(target.fit_options(fit))
    if method == "kcp":
        extra.update({k: v for k, v in (("init", init), ("callback", callback)) if v is not None})
    return decompose(target.conv.weight.detach(), method, **ranks, **extra)
