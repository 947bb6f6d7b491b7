"""Refusing requests that would not fit in memory, and turning user-caused errors into messages.

Every error a user can cause (a bad upload, a layer KCP does not apply to, weights missing offline, a request
too large) is shown as a message that says why and what to do; only real bugs reach Streamlit's traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from dashboard.components import fmt
from kcp import zoo
from kcp.estimate import available_memory
from kcp.workers import JobCancelled, WorkerDied

T = TypeVar("T")

# The most memory the activations kept for one layer may take, unless less is free (requests are judged by
# kcp.estimate).
DEFAULT_LIMIT_BYTES = 4 * 2**30
LIMIT_ENV = "KCP_DASHBOARD_MAX_BYTES"
FLOAT32_BYTES = 4


class RequestTooLarge(ValueError):
    """A request refused before it runs because it would need more memory than this app allows."""


def memory_limit() -> int:
    """The per-request limit: ``$KCP_DASHBOARD_MAX_BYTES`` (default 4 GiB), and never over half the free memory."""
    configured = int(os.environ.get(LIMIT_ENV, DEFAULT_LIMIT_BYTES))
    return min(configured, available_memory() // 2)


def check_fits(what: str, need: int, fix: str) -> None:
    """Raise :class:`RequestTooLarge` when ``need`` bytes are over the limit."""
    limit = memory_limit()
    if need > limit:
        raise RequestTooLarge(
            f"{what} would need about {fmt.nbytes(need)} of memory, over the {fmt.nbytes(limit)} this app allows "
            f"for one request (free memory now: {fmt.nbytes(available_memory())}). {fix}"
        )


def activation_bytes(n_images: int, in_channels: int, in_hw: tuple[int, int]) -> int:
    """Memory held by the real activations captured at a layer: N x C x H x W float32 values."""
    return n_images * in_channels * in_hw[0] * in_hw[1] * FLOAT32_BYTES


def explain(exc: Exception) -> str | None:
    """The message for an error the user's request caused, or None for one that is a bug."""
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return (f"Not enough memory for this request ({exc or 'MemoryError'}). Lower the ranks, the batch or the "
                f"number of images, or pick a smaller layer.")
    if isinstance(exc, JobCancelled):
        return f"Stopped ({exc}). Move a slider or rerun the page to compute it again."
    if isinstance(exc, WorkerDied):
        return (f"The worker computing this ended without an answer ({exc}); the app itself is fine. Lower the "
                f"ranks, the batch or the number of images and try again.")
    if isinstance(exc, zoo.WeightsUnavailable):
        return f"Pretrained weights missing: {exc}"
    if isinstance(exc, ValueError):  # kcp's refusals, zoo errors and RequestTooLarge all say what to do
        return str(exc)
    if isinstance(exc, RuntimeError):
        return f"PyTorch could not run this: {exc}"
    return None


def attempt(what: str, fn: Callable[..., T], *args, warn: bool = False, **kwargs) -> T | None:
    """``fn(*args, **kwargs)``, or None after showing why it failed (as an error, or a warning if ``warn``)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # narrowed by explain(): anything it does not recognise is re-raised
        message = explain(exc)
        if message is None:
            raise
        show, icon = (st.warning, ":material/warning:") if warn else (st.error, ":material/block:")
        show(f"**{what}**: {message}", icon=icon)
        return None
