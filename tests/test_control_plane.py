"""Every service's gRPC control plane: health, reflection, and precise errors on bad requests."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from pinhole.controller.run import Endpoints, Scenario, configure, service_kinds
from pinhole.controller.services import EventCollector, channel
from pinhole.rpc.v1 import natgw_pb2, proxy_pb2, useragent_pb2
from pinhole.timers import TIMERS

pytestmark = pytest.mark.lab

SERVICES = {
    "useragent": "pinhole.rpc.v1.UserAgent",
    "proxy": "pinhole.rpc.v1.Proxy",
    "natgw": "pinhole.rpc.v1.NatGateway",
    "stunserver": "pinhole.rpc.v1.StunServer",
    "switch": "pinhole.rpc.v1.Switch",
}


def test_reflection_lists_health_and_the_service(lab):
    running, topology, _ = lab
    for node, kind in service_kinds(topology).items():
        with channel(running.run_dir, node) as health_channel:
            names = set(ProtoReflectionDescriptorDatabase(health_channel).get_services())
        assert {"grpc.health.v1.Health", SERVICES[kind]} <= names, node


def _error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def test_natgw_rejects_a_short_mapping_timeout_and_unknown_settings(clients):
    natgw = clients.stub("natgw")
    error = _error(natgw.Configure, natgw_pb2.NatConfig(mapping_timeout_seconds=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mapping_timeout_seconds: 30: at least 120 (RFC 4787 REQ-5)" in error.details()
    error = _error(natgw.Configure, natgw_pb2.NatConfig(port_preservation=7))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "port_preservation: unknown value 7" in error.details()
    reply = natgw.Configure(natgw_pb2.NatConfig(), timeout=10)
    assert reply.effective.port_preservation == natgw_pb2.PORT_PRESERVATION_ON
    assert reply.effective.mapping == natgw_pb2.MAPPING_ENDPOINT_INDEPENDENT
    assert reply.effective.filtering == natgw_pb2.FILTERING_ADDRESS_AND_PORT_DEPENDENT
    assert reply.effective.mapping_timeout_seconds == 300 and "masquerade" in reply.ruleset


def test_useragent_names_the_bad_field(clients):
    alice = clients.stub("alice")
    error = _error(alice.Configure, useragent_pb2.UserAgentConfig(aor="alice"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("aor:")
    error = _error(alice.Configure, useragent_pb2.UserAgentConfig(aor="sip:alice@a.example", ring_seconds=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "ring_seconds: -1.0 is not between 0 and 60"
    error = _error(
        alice.Configure,
        useragent_pb2.UserAgentConfig(aor="sip:alice@a.example", timers=useragent_pb2.Timers(dtls_initial_seconds=-1)),
    )
    assert error.details() == "timers.dtls_initial_seconds: must be a finite number of seconds >= 0, got -1.0"
    error = _error(alice.Configure, useragent_pb2.UserAgentConfig(aor="sip:alice@a.example", outbound_proxy="nowhere"))
    assert error.details() == "outbound_proxy: expected IPv4:port, got 'nowhere'"
    error = _error(
        alice.Configure,
        useragent_pb2.UserAgentConfig(
            aor="sip:alice@a.example", timers=useragent_pb2.Timers(stun_rto_seconds=float("nan"))
        ),
    )
    assert error.details() == "timers.stun_rto_seconds: must be a finite number of seconds >= 0, got nan"
    error = _error(alice.Configure, useragent_pb2.UserAgentConfig(aor="sip:alice@a.example", stun_server="stun:3478"))
    assert error.details() == "stun_server: 'stun' is not an IPv4 address (the lab has no DNS)"
    error = _error(alice.Configure, useragent_pb2.UserAgentConfig(aor="sip:alice@a.example", deviations=["fly"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("deviations: unknown deviation 'fly' (a useragent knows: no-stun-answer, ")
    error = _error(
        alice.Configure, useragent_pb2.UserAgentConfig(aor="sip:alice@a.example", deviations=["proxy-rewrite-sdp"])
    )
    assert error.details() == "deviations: 'proxy-rewrite-sdp' is a proxy's deviation, not a useragent's"
    error = _error(alice.GetCall, useragent_pb2.GetCallRequest(call_id="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = _error(alice.PlaceCall, useragent_pb2.PlaceCallRequest(target="bob"))
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


def test_proxy_names_the_bad_route(clients):
    error = _error(
        clients.stub("proxy-a").Configure,
        proxy_pb2.ProxyConfig(routes=[proxy_pb2.ProxyRoute(domain="b.example", next_hop="nope")]),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "routes[0].next_hop: expected IPv4:port, got 'nope'"
    error = _error(clients.stub("proxy-a").Configure, proxy_pb2.ProxyConfig(deviations=["no-stun-check"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "deviations: 'no-stun-check' is a useragent's deviation, not a proxy's"
    reply = clients.stub("proxy-a").Configure(proxy_pb2.ProxyConfig(deviations=["proxy-keep-max-forwards"]))
    assert list(reply.effective.deviations) == ["proxy-keep-max-forwards"]
    assert not clients.stub("proxy-a").Configure(proxy_pb2.ProxyConfig()).effective.deviations  # the next test's


def test_natgw_lists_mappings(clients, lab):
    reply = clients.stub("natgw").ListMappings(natgw_pb2.ListMappingsRequest(), timeout=10)
    assert all(m.external.ip for m in reply.mappings)


def _seen(collector, service: str, kind: str, timeout: float = 15.0) -> bool:
    return collector.wait_for(lambda ev: any(e["service"] == service and e["kind"] == kind for e in ev), timeout)


def test_manual_answer_and_decline(lab, clients):
    """With auto_answer off, Bob rings until Answer; HangUp on a ringing call declines it (603)."""
    _, topology, _ = lab
    manual = Scenario("manual", "", bob={"auto_answer": False})
    configure(clients, Endpoints.of_topology(topology), manual, TIMERS["short"])
    alice, bob = clients.stub("alice"), clients.stub("bob")

    collector = EventCollector(clients, ["alice", "bob"], since=time.time())
    collector.start()
    try:
        call_id = alice.PlaceCall(useragent_pb2.PlaceCallRequest(target="sip:bob@b.example"), timeout=10).call_id
        assert _seen(collector, "bob", "call.incoming")
        assert bob.GetCall(useragent_pb2.GetCallRequest(call_id=call_id), timeout=10).state == "ringing"
        assert bob.Answer(useragent_pb2.AnswerRequest(call_id=call_id), timeout=10).state == "established"
        assert _seen(collector, "alice", "srtp.first_received")
        error = _error(bob.Answer, useragent_pb2.AnswerRequest(call_id=call_id))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        alice.HangUp(useragent_pb2.HangUpRequest(call_id=call_id), timeout=10)
        assert _seen(collector, "bob", "call.terminated")
    finally:
        collector.stop()

    collector = EventCollector(clients, ["alice", "bob"], since=time.time())
    collector.start()
    try:
        call_id = alice.PlaceCall(useragent_pb2.PlaceCallRequest(target="sip:bob@b.example"), timeout=10).call_id
        assert _seen(collector, "bob", "call.incoming")
        bob.HangUp(useragent_pb2.HangUpRequest(call_id=call_id), timeout=10)
        assert _seen(collector, "alice", "call.failed")
        status = alice.GetCall(useragent_pb2.GetCallRequest(call_id=call_id), timeout=10)
        assert status.state == "failed" and "603" in status.reason
    finally:
        collector.stop()


def test_hang_up_while_ringing_cancels(lab, clients):
    """RFC 3261 §9: the caller's CANCEL makes Bob answer 487 and end the call; nothing is left ringing."""
    _, topology, _ = lab
    manual = Scenario("manual", "", bob={"auto_answer": False})
    configure(clients, Endpoints.of_topology(topology), manual, TIMERS["short"])
    alice, bob = clients.stub("alice"), clients.stub("bob")
    collector = EventCollector(clients, ["alice", "bob", "proxy-a"], since=time.time())
    collector.start()
    try:
        call_id = alice.PlaceCall(useragent_pb2.PlaceCallRequest(target="sip:bob@b.example"), timeout=10).call_id
        assert _seen(collector, "bob", "call.incoming")
        alice.HangUp(useragent_pb2.HangUpRequest(call_id=call_id), timeout=10)
        assert _seen(collector, "bob", "call.terminated")
        assert bob.GetCall(useragent_pb2.GetCallRequest(call_id=call_id), timeout=10).state == "terminated"
        assert collector.wait_for(
            lambda ev: any(e["service"] == "alice" and e["attrs"].get("sip.status_code") == "487" for e in ev), 15
        )
        assert alice.GetCall(useragent_pb2.GetCallRequest(call_id=call_id), timeout=10).state == "terminated"
    finally:
        collector.stop()
