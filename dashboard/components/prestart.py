"""Starts the fork server that the app's worker processes are forked from; standard library only, so that the app
can call it before it imports torch.

The server imports :data:`PRELOAD` once, beside the Streamlit server's own first imports; every worker
(:mod:`dashboard.components.workers`) is then forked from it with kcp already imported, and a worker killed to stop
a job is replaced in milliseconds instead of importing torch again.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import forkserver

# kcp's jobs, and scikit-learn's datasets, which the offline digits model (the app's default) reads its images with:
# seconds of imports each on a busy machine. Then the default layer, built once for every worker (prewarm).
PRELOAD = ("torch", "kcp.jobs", "sklearn.datasets", "sklearn.model_selection", "dashboard.components.prewarm")


def available() -> bool:
    """Whether this platform can fork workers from a server (not on Windows)."""
    return "forkserver" in mp.get_all_start_methods()


def start() -> None:
    """Start the fork server (once per process; later calls return at once)."""
    if available():
        mp.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
        forkserver.ensure_running()
