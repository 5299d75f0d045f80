"""services/useragent/call.py: a call's states are the strings gRPC and the events carry, and
Call.transition refuses a move no call makes."""

from __future__ import annotations

import pytest

from pinhole.events import EventLog
from pinhole.rpc.v1 import useragent_pb2
from services.useragent.call import TRANSITIONS, Call, CallState, CallStateError


def test_the_states_are_the_strings_on_the_wire() -> None:
    assert [s.value for s in CallState] == ["calling", "ringing", "established", "failed", "terminated"]
    assert CallState.FAILED == "failed" and f"{CallState.RINGING}" == "ringing"
    event = EventLog("ua").emit("call.state", "c1", state=CallState.ESTABLISHED)
    assert event.attributes["state"] == "established"
    assert useragent_pb2.CallStatus(state=CallState.TERMINATED).state == "terminated"


def test_a_call_rings_is_established_and_terminates() -> None:
    call = Call("c1", "outgoing", 0.0)
    assert call.state is CallState.CALLING
    for state in (CallState.RINGING, CallState.ESTABLISHED, CallState.TERMINATED):
        call.transition(state, f"now {state}")
        assert (call.state, call.reason) == (state, f"now {state}")


def test_a_transition_no_call_makes_is_refused_and_changes_nothing() -> None:
    call = Call("c1", "incoming", 0.0, state=CallState.ESTABLISHED, reason="answered")
    with pytest.raises(CallStateError) as refused:
        call.transition(CallState.RINGING, "a late 180")
    assert (
        str(refused.value) == "call c1 is established: it cannot become ringing (from established: failed, terminated)"
    )
    assert (call.state, call.reason) == (CallState.ESTABLISHED, "answered")


def test_no_call_goes_back_to_calling_or_rings_again() -> None:
    for state, allowed in TRANSITIONS.items():
        assert CallState.CALLING not in allowed
        assert CallState.RINGING not in allowed or state is CallState.CALLING
    assert set(TRANSITIONS) == set(CallState)
