"""A slider move in the live fragment preempts the run it replaces: the waiting rerun is taken from Streamlit's own
request queue (``ScriptRequests``) only when it reruns the very fragment that is running."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests, ScriptRequestType

from dashboard.components import workers


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch):
    """A script run context (the parts the check reads) with a real request queue; set which fragments run."""
    ctx = SimpleNamespace(script_requests=ScriptRequests(), fragment_ids_this_run=None)
    monkeypatch.setattr(workers, "get_script_run_ctx", lambda suppress_warning=True: ctx)
    return ctx


def test_a_rerun_of_the_running_fragment_is_taken(running) -> None:
    running.fragment_ids_this_run = ["live"]
    assert running.script_requests.request_rerun(RerunData(fragment_id="live"))
    taken = workers._rerun_of_this_fragment()
    assert taken is not None and taken.fragment_id_queue == ["live"]
    assert running.script_requests._state == ScriptRequestType.CONTINUE  # taken once, as Streamlit takes it
    assert workers._rerun_of_this_fragment() is None


def test_other_reruns_are_left_to_streamlit(running) -> None:
    requests = running.script_requests
    requests.request_rerun(RerunData(fragment_id="live"))
    assert workers._rerun_of_this_fragment() is None  # a full run is running: the fragment must not cut it
    running.fragment_ids_this_run = ["grid"]
    assert workers._rerun_of_this_fragment() is None  # another fragment is running
    assert requests._state == ScriptRequestType.RERUN
    full = ScriptRequests()
    full.request_rerun(RerunData())
    running.script_requests, running.fragment_ids_this_run = full, ["live"]
    assert workers._rerun_of_this_fragment() is None  # a full rerun: Streamlit preempts at its own yield point
