"""The stopping rule shared by every iterative fit: relative improvement over a window of sweeps.

Stopping on one sweep's improvement stops ALS on its first plateau (a "swamp", common from an SVD start);
what converged means is that a whole window of sweeps together changed the error by less than ``tol``.
"""

from __future__ import annotations

# Sweeps (or iterations) over which the improvement is measured.
WINDOW = 10
# A relative error below this is an exact fit (round-off of float64 reconstructions).
EXACT = 1e-13


def window_change(history: list[float], window: int = WINDOW) -> float:
    """Relative improvement ``(e[-1-window] - e[-1]) / e[-1-window]`` over the last ``window`` steps
    (infinite while fewer steps have run, 0 for a zero error)."""
    if len(history) <= window:
        return float("inf")
    before = history[-1 - window]
    return (before - history[-1]) / before if before > 0 else 0.0


def convergence(history: list[float], tol: float, window: int = WINDOW) -> dict:
    """``converged`` (an exact fit, or the window rule met) and ``final_change`` (the relative improvement over the
    last ``window`` steps, or over all of them when fewer ran), as results report them."""
    span = min(window, len(history) - 1)
    before = history[-1 - span] if span > 0 else history[-1]
    change = (before - history[-1]) / before if before > 0 else 0.0
    met = len(history) > window and change <= tol
    return {"converged": bool(history[-1] < EXACT or met), "final_change": float(change)}
