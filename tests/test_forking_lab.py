"""RFC 5763 §6.3 forking in the namespace lab: proxy-b forks Alice's INVITE to bob and bob2.

The §7.3 shape twice over: Alice behind the kernel NAT, passive DTLS on ONE media port; both Bobs
auto-answer with a=setup:active and their own certificates. Each Bob's first ClientHello dies at
the NAT until Alice's STUN check to that Bob's answer address opens its pinhole (address-and-port
dependent filtering), so every answer is in before its association. Short timers; waits are on
the services' event streams, never fixed sleeps.

`configure_forking` is this test's own controller step (the controller's `configure` knows one
Bob): proxy-b's route for bob@b.example gets `fork_to` = bob2, and bob2 is configured as bob is.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pinhole.controller.run import MEDIA_PACKETS, Endpoints, Scenario, configure, service_kinds
from pinhole.controller.services import EventCollector, ServiceClients, to_dict
from pinhole.rpc.v1 import proxy_pb2, useragent_pb2
from pinhole.timers import TIMERS, TimerProfile

pytestmark = pytest.mark.lab
SHORT = TIMERS["short"]
BOBS = ("bob", "bob2")


def configure_forking(
    clients: ServiceClients, endpoints: Endpoints, timers: TimerProfile, bob2: dict[str, Any]
) -> None:
    """After `configure`: proxy-b forks bob@b.example to bob and bob2; bob2 answers like bob."""
    reply = clients.stub("proxy-b").Configure(
        proxy_pb2.ProxyConfig(
            sip_t1_seconds=timers.sip_t1,
            routes=[
                proxy_pb2.ProxyRoute(
                    domain="b.example", user="bob", next_hop=endpoints.sip("bob"), fork_to=[endpoints.sip("bob2")]
                ),
                proxy_pb2.ProxyRoute(domain="a.example", next_hop=endpoints.sip("proxy-a")),
            ],
        )
    )
    assert list(reply.effective.routes[0].fork_to) == [endpoints.sip("bob2")]
    config = useragent_pb2.UserAgentConfig(
        aor="sip:bob@b.example",
        display_name="Bob2",
        outbound_proxy=endpoints.sip(endpoints.proxies["bob"]),
        auto_answer=True,
        answer_setup=useragent_pb2.DTLS_SETUP_ACTIVE,
        timers=timers.proto(),
        media_packets=MEDIA_PACKETS,
        **bob2,
    )
    clients.stub("bob2").Configure(config)


def _of_call(events: list[dict[str, Any]], call_id: str, service: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["call_id"] == call_id and e["service"] == service and e["kind"] == kind]


def _forks_done(events: list[dict[str, Any]], call_id: str) -> bool:
    """Each fork has sent all its media at Alice or failed there, and each Bob is done too."""
    at_alice = {e["attrs"].get("fork") for e in _of_call(events, call_id, "alice", "srtp.sent")}
    at_alice |= {e["attrs"].get("fork") for e in _of_call(events, call_id, "alice", "call.fork_failed")}
    bobs_done = all(
        _of_call(events, call_id, bob, "srtp.sent") or _of_call(events, call_id, bob, "call.failed") for bob in BOBS
    )
    return len(at_alice - {None}) == 2 and bobs_done


def _forked_call(lab, clients, bob2: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Place alice -> bob@b.example with proxy-b forking; hang up once every fork is done."""
    _, topology, _ = lab
    endpoints = Endpoints.of_topology(topology)
    configure(clients, endpoints, Scenario("forking", "RFC 5763 §6.3: proxy-b forks to bob and bob2"), SHORT)
    configure_forking(clients, endpoints, SHORT, bob2)
    collector = EventCollector(clients, list(service_kinds(topology)), since=time.time())
    collector.start()
    try:
        alice = clients.stub("alice")
        call_id = alice.PlaceCall(useragent_pb2.PlaceCallRequest(target="sip:bob@b.example")).call_id
        budget = SHORT.handshake_budget() + 64 * SHORT.sip_t1 + MEDIA_PACKETS * 0.02 + 10
        assert collector.wait_for(lambda ev: _forks_done(ev, call_id), timeout=budget), collector.errors
        alice.HangUp(useragent_pb2.HangUpRequest(call_id=call_id))
        ended = ("call.terminated", "call.failed")
        assert collector.wait_for(
            lambda ev: all(any(_of_call(ev, call_id, bob, kind) for kind in ended) for bob in BOBS),
            timeout=64 * SHORT.sip_t1 + 5,
        )
        calls = {
            ua: to_dict(clients.stub(ua).GetCall(useragent_pb2.GetCallRequest(call_id=call_id)))
            for ua in ("alice", *BOBS)
        }
        return call_id, calls, collector.snapshot()
    finally:
        collector.stop()


def _restore_proxy_b(lab, clients) -> None:
    """The lab is shared by the module: proxy-b routes to bob alone again, as `configure` leaves it."""
    _, topology, _ = lab
    configure(clients, Endpoints.of_topology(topology), Scenario("rfc5763-7.3", "no forking"), SHORT)


@pytest.fixture
def forking(lab, clients):
    yield
    _restore_proxy_b(lab, clients)


def test_two_forks_two_dialogs_two_associations_on_one_port(lab, clients, forking):
    call_id, calls, events = _forked_call(lab, clients, bob2={})
    alice = calls["alice"]
    forks = {f["remote_tag"]: f for f in alice["forks"]}
    assert len(forks) == 2, alice  # two 2xx with their own To tags: two dialogs (RFC 3261 §13.2.2.4)
    assert alice["state"] == "terminated", alice["reason"]

    # proxy-b forked: one INVITE per branch, each its own span, and both 2xx went upstream
    forwards = [e for e in _of_call(events, call_id, "proxy-b", "sip.forward") if e["attrs"]["method"] == "INVITE"]
    assert sorted(e["attrs"]["fork"] for e in forwards) == ["0", "1"]
    assert len({e["attrs"]["sip.branch"] for e in forwards}) == 2 and len({e["span_id"] for e in forwards}) == 2
    oks = [e for e in _of_call(events, call_id, "proxy-b", "sip.response") if e["attrs"]["status"] == "200"]
    assert {e["attrs"]["fork"] for e in oks if e["attrs"].get("method") == "INVITE"} == {"0", "1"}
    # Alice ACKed each dialog
    acks = [e for e in _of_call(events, call_id, "alice", "sip.send") if e["attrs"].get("sip.method") == "ACK"]
    assert len(acks) >= 2

    # two associations on ONE local port, each verified against its own answer's fingerprint
    assert len({f["local_socket"] for f in forks.values()}) == 1
    for bob in BOBS:
        answerer = calls[bob]
        fork = _fork_of(forks, answerer)
        assert fork["fingerprint_verified"], fork
        assert fork["peer_fingerprint"] == _local_fingerprint(events, call_id, bob)
        assert fork["answer_fingerprint"].endswith(fork["peer_fingerprint"])
        assert int(fork["stun_checks_sent"]) >= 1  # §6.7.2, to this answer's address
        # SRTP both ways on each fork, and both BYEs
        assert int(fork["srtp_sent"]) > 0 and int(fork["srtp_received"]) > 0, fork
        assert int(answerer["media"]["srtp_received"]) > 0 and answerer["media"]["peer_fingerprint_verified"]
        assert answerer["state"] == "terminated" and answerer["reason"] == "BYE received", answerer
    connected = {e["attrs"]["fork"] for e in _of_call(events, call_id, "alice", "dtls.connected")}
    assert connected == set(forks)  # a ladder tells the forks apart by the dialog's remote tag
    byes = [e for e in _of_call(events, call_id, "alice", "sip.send") if e["attrs"].get("sip.method") == "BYE"]
    assert len(byes) >= 2


def test_a_fork_with_a_wrong_fingerprint_fails_alone(lab, clients, forking):
    call_id, calls, events = _forked_call(lab, clients, bob2={"deviations": ["tamper-answer-fingerprint"]})
    alice = calls["alice"]
    forks = {f["remote_tag"]: f for f in alice["forks"]}
    bad, good = _fork_of(forks, calls["bob2"]), _fork_of(forks, calls["bob"])
    assert bad["state"] == "failed" and "matches no a=fingerprint" in bad["reason"], bad
    assert not bad["fingerprint_verified"] and int(bad["srtp_received"]) == 0
    [failed] = _of_call(events, call_id, "alice", "call.fork_failed")
    assert failed["attrs"]["fork"] == bad["remote_tag"]
    # the other fork is untouched: verified, SRTP both ways, ended by Alice's hang-up
    assert good["fingerprint_verified"] and int(good["srtp_sent"]) > 0 and int(good["srtp_received"]) > 0
    assert good["state"] == "terminated" and alice["state"] == "terminated", alice
    assert int(calls["bob"]["media"]["srtp_received"]) > 0 and calls["bob"]["reason"] == "BYE received"
    assert calls["bob2"]["state"] in ("failed", "terminated") and int(calls["bob2"]["media"]["srtp_received"]) == 0


def test_a_bad_fork_target_is_named_precisely(clients):
    import grpc

    with pytest.raises(grpc.RpcError) as raised:
        clients.stub("proxy-b").Configure(
            proxy_pb2.ProxyConfig(
                routes=[proxy_pb2.ProxyRoute(domain="b.example", next_hop="203.0.113.40:5060", fork_to=["bob2"])]
            ),
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "routes[0].fork_to[0]: expected IPv4:port, got 'bob2'"


def _fork_of(forks: dict[str, dict[str, Any]], answerer: dict[str, Any]) -> dict[str, Any]:
    """Alice's fork whose answer named `answerer`'s media address (its GetCall local_media)."""
    [fork] = [f for f in forks.values() if f["peer_media"] == answerer["media"]["local_media"]]
    return fork


def _local_fingerprint(events: list[dict[str, Any]], call_id: str, bob: str) -> str:
    """The fingerprint of the certificate `bob` made its association with (its dtls.start event)."""
    [start] = _of_call(events, call_id, bob, "dtls.start")
    return start["attrs"]["local_fingerprint"]


def test_a_fork_target_named_twice_is_refused(clients):
    """RFC 3261 §16.5: a target is in the target set once."""
    import grpc

    with pytest.raises(grpc.RpcError) as raised:
        clients.stub("proxy-b").Configure(
            proxy_pb2.ProxyConfig(
                routes=[
                    proxy_pb2.ProxyRoute(
                        domain="b.example",
                        next_hop="203.0.113.40:5060",
                        fork_to=["203.0.113.41:5060", "203.0.113.40:5060"],
                    )
                ]
            ),
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == ("routes[0].fork_to: names a target twice (203.0.113.41:5060, 203.0.113.40:5060)")
