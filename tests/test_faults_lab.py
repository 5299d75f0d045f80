"""Faults injected by the NAT gateway into a real §7.3 call (SetFaults over gRPC, NFQUEUE in its namespace).

Each test declares one fault, drives the call with short timers, and checks three things: the
protocol recovered the way its RFC says (a STUN retransmission, a DTLS flight retransmission, a late
answer), the call still works end to end, and the fault is an event of the call's trace
(`fault.injected` from natgw, with the rule and the packet's summary). Faults are cleared after each
call: the lab is shared by the module.
"""

from __future__ import annotations

import pytest
from faulted_calls import assert_works as _works
from faulted_calls import call_with_faults, injected

from pinhole.controller.run import (
    Endpoints,
)
from pinhole.rpc.v1 import natgw_pb2
from pinhole.timers import TIMERS

pytestmark = pytest.mark.lab
SHORT = TIMERS["short"]


def _call(lab, clients, name: str, plan):
    return call_with_faults(lab, clients, "natgw", name, plan)


def _faults(events, rule: str) -> list[dict]:
    return injected(events, "natgw", rule)


def _is_client_hello(e: dict) -> bool:
    return "client_hello" in e["attrs"].get("dtls.handshake_types", "")


def test_a_lost_stun_check_is_retransmitted_and_the_call_works(lab, clients):
    _, topology, _ = lab
    bob_ip = Endpoints.of_topology(topology).addresses["bob"]
    plan = natgw_pb2.FaultPlan(
        rules=[
            natgw_pb2.FaultRule(
                name="lose-first-check",
                match=natgw_pb2.FaultMatch(
                    direction=natgw_pb2.FAULT_DIRECTION_OUTBOUND, what="stun-request", peer=bob_ip
                ),
                nth=1,
                count=1,
                drop=natgw_pb2.FaultDrop(),
            )
        ]
    )
    record, events = _call(lab, clients, "lost-stun-check", plan)
    _works(record)
    [fault] = _faults(events, "lose-first-check")
    attrs = fault["attrs"]
    assert (attrs["action"], attrs["direction"], attrs["stun.class"]) == ("drop", "outbound", "request")
    assert attrs["summary"].startswith("STUN Binding request") and attrs["peer"].startswith(bob_ip + ":")
    # Alice's check: the same transaction sent again after the RTO (RFC 5389 §7.2.1), and Bob answered it
    checks = [
        e
        for e in events
        if e["service"] == "alice" and e["kind"] == "stun.send" and e["attrs"].get("purpose") == "connectivity-check"
    ]
    dropped_tid = attrs["stun.transaction_id"]
    assert [e["attrs"]["attempt"] for e in checks if e["attrs"]["stun.transaction_id"] == dropped_tid][:2] == ["1", "2"]
    resent = [e for e in checks if e["attrs"]["stun.transaction_id"] == dropped_tid and e["attrs"]["attempt"] == "2"]
    assert resent[0]["t"] - fault["t"] >= SHORT.stun_rto * 0.9
    assert int(record.calls["bob"]["media"]["stun_requests_answered"]) >= 1
    assert record.counters["natgw"]["faults_injected_drop"] >= 1


def test_the_first_client_hello_retransmission_that_would_pass_is_lost_and_the_next_passes(lab, clients):
    plan = natgw_pb2.FaultPlan(
        rules=[
            natgw_pb2.FaultRule(
                name="lose-resent-hello",
                match=natgw_pb2.FaultMatch(
                    direction=natgw_pb2.FAULT_DIRECTION_INBOUND, what="dtls:client_hello#retransmission"
                ),
                nth=1,
                count=1,
                drop=natgw_pb2.FaultDrop(),
            )
        ]
    )
    record, events = _call(lab, clients, "lost-resent-client-hello", plan)
    _works(record)
    [fault] = _faults(events, "lose-resent-hello")
    lost = int(fault["attrs"]["dtls.record_sequence"])
    assert lost >= 1 and fault["attrs"]["summary"].startswith("DTLS ClientHello")
    # what reached Alice is a later copy of the same flight: a higher record number, same message
    received = [e for e in events if e["service"] == "alice" and e["kind"] == "dtls.recv" and _is_client_hello(e)]
    assert received and int(received[0]["attrs"]["dtls.record_sequence"]) > lost
    assert received[0]["t"] > fault["t"]
    sent = [e for e in events if e["service"] == "bob" and e["kind"] == "dtls.send" and _is_client_hello(e)]
    assert len(sent) >= 3  # the first died at the NAT (no pinhole yet), the second at the fault, then one passed


def test_a_200_ok_delayed_past_two_dtls_timer_expiries_still_makes_a_call(lab, clients):
    delay = SHORT.dtls_initial * (1 + 2) + 0.2  # Bob's ClientHello timer expires at 0.1 s and 0.3 s
    plan = natgw_pb2.FaultPlan(
        rules=[
            natgw_pb2.FaultRule(
                name="late-answer",
                match=natgw_pb2.FaultMatch(direction=natgw_pb2.FAULT_DIRECTION_INBOUND, what="sip:200/INVITE"),
                delay=natgw_pb2.FaultDelay(seconds=delay),
            )
        ]
    )
    record, events = _call(lab, clients, "late-200-ok", plan)
    _works(record)
    faults = _faults(events, "late-answer")
    assert faults and all(f["attrs"]["summary"] == "SIP/2.0 200 OK" for f in faults)
    assert faults[0]["attrs"]["delay_seconds"] == f"{delay:g}" and faults[0]["attrs"]["sip.cseq_method"] == "INVITE"
    answered = min(
        e["t"]
        for e in events
        if e["service"] == "alice" and e["kind"] == "sip.recv" and e["attrs"].get("sip.status_code") == "200"
    )
    assert answered - faults[0]["t"] >= delay * 0.95
    # Bob's handshake timer ran out at least twice before Alice even knew his answer
    timers = [
        e
        for e in events
        if e["service"] == "bob"
        and e["kind"] == "dtls.send"
        and _is_client_hello(e)
        and e["attrs"]["cause"] == "timer"
        and e["t"] < answered
    ]
    assert len(timers) >= 2


def test_set_faults_rejects_an_invalid_plan_precisely(clients):
    import grpc

    natgw = clients.stub("natgw")
    bad = natgw_pb2.FaultPlan(
        rules=[
            natgw_pb2.FaultRule(match=natgw_pb2.FaultMatch(what="dtls:hello"), delay=natgw_pb2.FaultDelay(seconds=1))
        ]
    )
    with pytest.raises(grpc.RpcError) as raised:
        natgw.SetFaults(bad, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("rules[0].match.what: 'dtls:hello': unknown DTLS message 'hello'")
    assert not natgw.ClearFaults(natgw_pb2.ClearFaultsRequest(), timeout=10).active
