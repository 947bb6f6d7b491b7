"""Imported once by the workers' fork server (:data:`dashboard.components.prestart.PRELOAD`): it builds the layer
a first visit opens, as a worker would (:func:`kcp.jobs.warm`: activations, the network after the layer, the
unchanged network's outputs), so that every worker forked from the server, and every replacement for a worker
killed to stop a job, starts with it ready instead of spending half a second of CPU on it beside the point a user is
waiting for. Not the calibration moments (a second more): the workers fork only once this is done, and the first
view, fitted to the kernel, does not need them. A failure here only loses that head start."""

from __future__ import annotations

import contextlib

import torch

from dashboard.components.defaults import default_spec
from kcp import jobs


def build() -> None:
    """Build the default layer in this process's memos (one torch thread: the workers forked from it use one)."""
    torch.set_num_threads(1)
    # If this fails, the workers build the layer themselves (and report the error to the page that needs it).
    with contextlib.suppress(Exception):
        jobs.warm(default_spec())


build()
