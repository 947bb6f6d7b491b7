"""The app's heavy work runs in kcp's worker processes, never in the Streamlit server.

One :class:`kcp.workers.WorkerPool` per server (``st.cache_resource``), started by the app's first run: as many
workers as cores, one torch thread each, forked from a server process that has imported kcp (so a worker killed
to stop a job is replaced in milliseconds), each building the layers in use before it takes a job. Every job
belongs to the browser session that asked for it; within a session a ``slot`` (the live point, the other fit,
the latency figure, the grid...) holds one job, so a newer request stops the older one. The toolbar's Stop
stops the session's job, and a session whose tab closed loses its jobs within a second
(``Runtime.is_active_session``). While it waits, the script touches session state every few milliseconds:
that is where Streamlit delivers a rerun or a stop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import streamlit as st
import torch
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequestType

from dashboard.components import prestart
from kcp.workers import WorkerPool, cpu_share

# The server itself does little torch work (capturing a layer's activations once): one thread, so that it never
# competes with the workers for the cores.
torch.set_num_threads(1)

T = TypeVar("T")
WORKERS_ENV = "KCP_DASHBOARD_WORKERS"
# Slots whose answer completes a view already drawn (the other fit's row): they run only while a worker stays free
# for the next slider move, of this session or another.
BACKGROUND_SLOTS = frozenset({"contrast"})
WAIT_SECONDS = 0.02


def _session_alive(session_id: str) -> bool:
    if not Runtime.exists() or not session_id:
        return True  # no server (AppTest, a bare script): nobody to lose
    return Runtime.instance().is_active_session(session_id)


@st.cache_resource(show_spinner=False)
def pool() -> WorkerPool:
    """The server's worker pool: ``$KCP_DASHBOARD_WORKERS`` workers (default: the cores), one thread each."""
    workers = int(os.environ.get(WORKERS_ENV, cpu_share()))
    prestart.start()
    return WorkerPool(max(1, workers), threads=1, max_queued=64, alive=_session_alive,
                      context="forkserver" if prestart.available() else "spawn", preload=prestart.PRELOAD)


def session_id() -> str:
    """This browser session's id ("" outside a Streamlit run)."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else ""


def _rerun_of_this_fragment() -> RerunData | None:
    """A waiting rerun of the fragment that is running now (a slider moved in it), taken from Streamlit's queue.

    Streamlit lets a rerun preempt the script only at its yield points, and never lets a fragment's own widget
    preempt a running fragment: without this, a slider move would wait for the point it replaces. Read the way
    ``ScriptRequests.on_scriptrunner_yield`` reads it; if the internals differ (another Streamlit), nothing is
    taken and the move waits as before.
    """
    ctx = get_script_run_ctx(suppress_warning=True)
    requests = getattr(ctx, "script_requests", None)
    running = getattr(ctx, "fragment_ids_this_run", None)
    lock = getattr(requests, "_lock", None)
    if not running or lock is None:
        return None
    with lock:
        data = getattr(requests, "_rerun_data", None)
        queue = getattr(data, "fragment_id_queue", None)
        if getattr(requests, "_state", None) != ScriptRequestType.RERUN or not queue or not set(queue) <= set(running):
            return None
        requests._state = ScriptRequestType.CONTINUE
        return data


def run(fn: Callable[..., T], *args, slot: str, key: Hashable, progress: Callable[[Any], None] | None = None,
        **kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker as this session's ``slot`` job, waiting for it here.

    A rerun (a slider moved) leaves the job running: the next request either joins it (same ``key``) or
    supersedes it. A stop (the toolbar) cancels it. Raises the job's own exception, or
    ``kcp.workers.JobCancelled``.
    """
    workers = pool()
    job = workers.submit(fn, *args, owner=session_id(), slot=slot, key=key, progress=progress is not None,
                         background=slot in BACKGROUND_SLOTS, **kwargs)
    seen = None
    try:
        while not job.wait(WAIT_SECONDS):
            st.session_state.get("_kcp_yield")  # where Streamlit raises a pending rerun or stop
            rerun = _rerun_of_this_fragment()
            if rerun is not None:
                raise RerunException(rerun)
            if progress is not None and job.progress is not None and job.progress is not seen:
                seen = job.progress
                progress(seen)
    except StopException:
        workers.cancel(job, "stopped from the app")
        raise
    return job.outcome()


def cancel(slot: str, keep: Hashable = None) -> int:
    """Stop this session's job in ``slot`` (a Cancel button; or a job whose answer is no longer wanted, unless its
    key is ``keep``); returns how many were stopped."""
    workers, owner = pool(), session_id()
    stale = [j for j in workers.jobs() if j.owner == owner and j.slot == slot and (keep is None or j.key != keep)]
    for job in stale:
        workers.cancel(job, "cancelled from the app")
    return len(stale)
