"""Traces of real calls: one trace per call, every hop in it, also with 20 calls at once."""

from __future__ import annotations

import time

import pytest

from pinhole.controller import from_trace
from pinhole.controller import run as controller
from pinhole.controller.otlp import spans_to_events, trace_of_call
from pinhole.controller.run import Endpoints, Scenario, configure, service_kinds
from pinhole.controller.services import EventCollector, ServiceClients
from pinhole.rpc.v1 import events_pb2, useragent_pb2
from pinhole.timers import TimerProfile

pytestmark = pytest.mark.lab

CALLS = 20
TIMERS = TimerProfile(sip_t1=0.1, dtls_initial=0.2, dtls_maximum=1.6, dtls_max_transmissions=8, stun_rto=0.1)


def _count(events, service: str, kind: str) -> int:
    return len({e["call_id"] for e in events if e["service"] == service and e["kind"] == kind})


def test_twenty_concurrent_calls_give_twenty_traces_with_no_span_in_the_wrong_one(lab):
    running, topology, _ = lab
    receiver = controller._RECEIVERS[running.name]
    clients = ServiceClients.local(running.run_dir, service_kinds(topology))
    collector = EventCollector(clients, ["alice", "bob"], since=time.time())
    try:
        load = Scenario("load", "", alice={"media_packets": 5}, bob={"media_packets": 5})
        configure(clients, Endpoints.of_topology(topology), load, TIMERS)
        receiver.clear()
        collector.start()
        alice = clients.stub("alice")
        call_ids = [
            alice.PlaceCall(useragent_pb2.PlaceCallRequest(target="sip:bob@b.example"), timeout=20).call_id
            for _ in range(CALLS)
        ]
        assert collector.wait_for(
            lambda ev: _count(ev, "alice", "srtp.sent") == CALLS and _count(ev, "bob", "srtp.sent") == CALLS, 90
        ), "not every call got its media through"
        for call_id in call_ids:
            alice.HangUp(useragent_pb2.HangUpRequest(call_id=call_id), timeout=20)
        assert collector.wait_for(lambda ev: _count(ev, "bob", "call.terminated") == CALLS, 60)
        for node in service_kinds(topology):
            clients.stub(node).FlushTelemetry(events_pb2.FlushRequest(), timeout=30)
        collected = collector.snapshot()
    finally:
        collector.stop()
        clients.close()

    request = receiver.request()
    assert from_trace.lost_spans(request, collected) == [], "every span alice and bob made reached the receiver"
    traces = {call_id: trace_of_call(request, call_id) for call_id in call_ids}
    assert len(set(traces.values())) == CALLS, "one trace per call"
    everything = spans_to_events(request)
    for call_id, trace_id in traces.items():
        spans = [e for e in everything if e["trace_id"] == trace_id]
        strangers = {e["call_id"] for e in spans if e["call_id"] and e["call_id"] != call_id}
        assert not strangers, f"spans of other calls in the trace of {call_id}: {strangers}"
        assert {"alice", "proxy-a", "proxy-b", "bob", "natgw"} <= {e["service"] for e in spans}
        offer = next(e for e in spans if e["service"] == "alice" and e["attrs"].get("sip.method") == "INVITE")
        drops = [e for e in spans if e["kind"] == "nat.drop"]
        assert drops and all(d["attrs"]["destination"] == offer["attrs"]["sdp.media"] for d in drops)
