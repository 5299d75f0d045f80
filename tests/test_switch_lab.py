"""Faults injected by the switch on the public links of a real §7.3 call (SetFaults over gRPC, NFQUEUE on
the bridge's ports in the `public` namespace).

Each test declares one fault on a link that does not cross the NAT gateway, drives the call with short
timers, and checks that the protocol recovered as its RFC says, that the call still works end to end,
and that the fault is an event of the call's trace (`fault.injected` from the switch's node, with the
link, the direction and the packet's summary). Faults are cleared after each call: the module shares
the lab.
"""

from __future__ import annotations

import socket
import time

import grpc
import pytest
from faulted_calls import assert_works as _works
from faulted_calls import call_with_faults, injected

from pinhole.controller.run import Endpoints
from pinhole.nsenter import in_netns
from pinhole.rpc.v1 import events_pb2, faults_pb2, switch_pb2
from pinhole.timers import TIMERS

pytestmark = pytest.mark.lab
SHORT = TIMERS["short"]
SWITCH = "public"


def _call(lab, clients, name: str, plan):
    return call_with_faults(lab, clients, SWITCH, name, plan)


def _faults(events, rule: str) -> list[dict]:
    return injected(events, SWITCH, rule)


def _rule(name: str, link: str, direction: int, what: str, **action) -> faults_pb2.FaultRule:
    match = faults_pb2.FaultMatch(link_name=link, direction=direction, what=what)
    return faults_pb2.FaultRule(name=name, match=match, **action)


def test_the_switch_lists_one_link_per_public_node(lab, clients):
    _, topology, _ = lab
    reply = clients.stub(SWITCH).ListPorts(switch_pb2.ListPortsRequest(), timeout=10)
    ends = [(link.a[0], link.b[0]) for link in topology.links]
    expected = {a if b == SWITCH else b for a, b in ends if SWITCH in (a, b)}
    assert reply.bridge == "br0" and {p.link for p in reply.ports} == expected
    assert all(p.interface == f"p-{p.link}" and p.ifindex > 0 for p in reply.ports)


def test_bobs_lost_200_ok_is_retransmitted_by_his_uas_core_and_the_call_works(lab, clients):
    """RFC 3261 §13.3.1.4: the UAS core resends a 2xx at T1, 2*T1, ... until the ACK; losing the first
    copy on Bob's own link only delays the answer by T1."""
    plan = faults_pb2.FaultPlan(
        rules=[
            _rule(
                "lose-bobs-200",
                "bob",
                faults_pb2.FAULT_DIRECTION_OUTBOUND,
                "sip:200/INVITE",
                count=1,
                drop=faults_pb2.FaultDrop(),
            )
        ]
    )
    record, events = _call(lab, clients, "lost-200-on-bobs-link", plan)
    _works(record)
    [fault] = _faults(events, "lose-bobs-200")
    attrs = fault["attrs"]
    assert (attrs["action"], attrs["link"], attrs["direction"]) == ("drop", "bob", "outbound")
    assert attrs["summary"].startswith("SIP/2.0 200") and attrs["sip.call_id"] == record.call_id
    assert fault["trace_id"] and fault["trace_id"] == next(e["trace_id"] for e in events if e["service"] == "bob")
    # the copy that got through came a retransmission interval (T1) after the lost one
    answers = [
        e
        for e in events
        if e["service"] == "proxy-b"
        and e["kind"] == "sip.recv"
        and e["attrs"].get("sip.status_code") == "200"
        and e["attrs"].get("sip.cseq_method") == "INVITE"
    ]
    assert answers and answers[0]["t"] - fault["t"] >= SHORT.sip_t1 * 0.9
    assert record.counters[SWITCH]["faults_injected_drop"] >= 1


def test_media_lost_on_the_gateways_port_lands_in_the_calls_trace(lab, clients):
    """Media carries no trace context: the switch finds the call by the addresses its SDP announced."""
    plan = faults_pb2.FaultPlan(
        rules=[
            _rule(
                "lose-rtp-to-natgw",
                "natgw",
                faults_pb2.FAULT_DIRECTION_INBOUND,
                "rtp",
                nth=5,
                count=2,
                drop=faults_pb2.FaultDrop(),
            )
        ]
    )
    record, events = _call(lab, clients, "lost-media-on-natgws-link", plan)
    _works(record)  # SRTP (RFC 3711) goes on after a lost packet: the rest decrypts
    faults = _faults(events, "lose-rtp-to-natgw")
    assert len(faults) == 2 and all(f["attrs"]["kind"] == "rtp" for f in faults)
    bob_ip = Endpoints.of_topology(lab[1]).addresses["bob"]
    assert all(f["attrs"]["peer"].startswith(bob_ip + ":") for f in faults)


def test_the_switch_refuses_what_it_cannot_do_with_a_precise_error(lab, clients):
    switch = clients.stub(SWITCH)
    cases = [
        (
            _rule("nat", "lan", 0, "any", drop=faults_pb2.FaultDrop()),
            "rules[0].match.link_name: 'lan' is not a link here (one of ",
        ),
        (
            _rule("gone", "bob", 0, "any", expire_mapping=faults_pb2.FaultExpireMapping()),
            "rules[0].action: expire-mapping is not carried out here (only delay, drop, reorder)",
        ),
    ]
    for rule, message in cases:
        with pytest.raises(grpc.RpcError) as error:
            switch.SetFaults(faults_pb2.FaultPlan(rules=[rule]), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(message), error.value.details()
    assert not switch.ClearFaults(faults_pb2.ClearFaultsRequest(), timeout=10).active


JUNK = [
    b"",
    b"\x00",
    b"INVITE",  # a request line cut short
    b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n",  # no CSeq, no Via
    b"\x16\xfe\xfd\x00",  # a DTLS record header cut short
    b"\x00\x01\xff\xff\x21\x12\xa4\x42" + b"\x00" * 12,  # STUN header claiming 65535 bytes
    b"\x80",  # one byte of RTP
    bytes(range(256)) * 5,
    b"\xff" * 3000,  # more than the MTU: IPv4 fragments
]


def test_malformed_datagrams_across_the_bridge_never_stop_the_switch(lab, clients):
    """Junk to Bob while a plan selects his link: each whole datagram is decided (here: dropped, with its
    event), fragments and junk pass undecided, and the switch keeps serving."""
    running, topology, _ = lab
    addresses = Endpoints.of_topology(topology).addresses
    switch = clients.stub(SWITCH)
    plan = faults_pb2.FaultPlan(
        rules=[
            faults_pb2.FaultRule(
                name="junk",
                match=faults_pb2.FaultMatch(
                    link_name="bob", direction=faults_pb2.FAULT_DIRECTION_INBOUND, peer=f"{addresses['proxy-b']}:4999"
                ),
                drop=faults_pb2.FaultDrop(),
            )
        ]
    )
    events = switch.WatchEvents(events_pb2.WatchEventsRequest(follow=True, since_unix_nano=time.time_ns()), timeout=20)
    assert switch.SetFaults(plan, timeout=10).active
    try:
        with in_netns(running.ns("proxy-b")), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((addresses["proxy-b"], 4999))
            for payload in JUNK:
                sock.sendto(payload, (addresses["bob"], 9))
        whole = len(JUNK) - 1  # every datagram but the fragmented one
        seen = 0
        for event in events:
            if event.kind == "fault.injected" and event.attributes["rule"] == "junk":
                seen += 1
                if seen == whole:
                    break
        events.cancel()
        assert seen == whole
        counters = {c.name: c.value for c in switch.GetCounters(events_pb2.CountersRequest(), timeout=10).counters}
        assert counters["faults_injected_drop"] >= whole and counters.get("faults_errors", 0) == 0
        assert switch.ListPorts(switch_pb2.ListPortsRequest(), timeout=10).ports
    finally:
        switch.ClearFaults(faults_pb2.ClearFaultsRequest(), timeout=10)
