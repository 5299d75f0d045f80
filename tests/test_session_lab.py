"""rtcp-mux off and re-INVITE end to end: real processes, Alice behind the default kernel NAT (EIM+APDF).

Without rtcp-mux (RFC 5761) RTCP runs on its own port, so each component has its own DTLS
association (RFC 5764 §4), its own §6.7.2 check from Alice (each opens its own NAT mapping), and
its own keys: SRTP on the RTP component, SRTCP on the RTCP component. A re-INVITE that changes a
fingerprint or the roles makes a new association (RFC 5763 §6.6) while media keeps flowing; one
that changes nothing keeps the association.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pinhole.controller.run import Endpoints, Scenario, configure, service_kinds
from pinhole.controller.services import EventCollector, ServiceClients
from pinhole.rpc.v1 import useragent_pb2
from pinhole.timers import TIMERS

pytestmark = pytest.mark.lab

Events = list[dict[str, Any]]


class LabCall:
    """One call Alice -> Bob, driven over gRPC, with every service's events collected."""

    def __init__(self, clients: ServiceClients, collector: EventCollector, call_id: str) -> None:
        self.clients, self.collector, self.call_id = clients, collector, call_id

    def events(self) -> Events:
        return [e for e in self.collector.snapshot() if e["call_id"] == self.call_id]

    def wait(self, predicate: Callable[[Events], bool], what: str, timeout: float = 20.0) -> None:
        ok = self.collector.wait_for(lambda ev: predicate([e for e in ev if e["call_id"] == self.call_id]), timeout)
        assert ok, f"timed out waiting for {what}; errors {self.collector.errors}"

    def status(self, ua: str) -> useragent_pb2.CallStatus:
        return self.clients.stub(ua).GetCall(useragent_pb2.GetCallRequest(call_id=self.call_id), timeout=10)

    def reinvite(self, ua: str, **options: Any) -> useragent_pb2.ReinviteReply:
        request = useragent_pb2.ReinviteRequest(call_id=self.call_id, **options)
        return self.clients.stub(ua).Reinvite(request, timeout=30)


@contextlib.contextmanager
def lab_call(lab, clients, scenario: Scenario) -> Iterator[LabCall]:
    """Configure the scenario, place the call, and hang up (waiting for both ends) when done."""
    _, topology, _ = lab
    configure(clients, Endpoints.of_topology(topology), scenario, TIMERS["short"])
    collector = EventCollector(clients, list(service_kinds(topology)), since=time.time())
    collector.start()
    try:
        handle = clients.stub("alice").PlaceCall(useragent_pb2.PlaceCallRequest(target="sip:bob@b.example"), timeout=10)
        call = LabCall(clients, collector, handle.call_id)
        yield call
        if call.status("alice").state == "established":
            clients.stub("alice").HangUp(useragent_pb2.HangUpRequest(call_id=call.call_id), timeout=10)
        call.wait(
            lambda ev: all(
                any(e["service"] == ua and e["kind"] == "call.terminated" for e in ev) for ua in ("alice", "bob")
            ),
            "both ends to end the call",
        )
    finally:
        collector.stop()


def has(service: str, kind: str, **attrs: str) -> Callable[[Events], bool]:
    return lambda ev: any(of(ev, service, kind, **attrs))


def of(events: Events, service: str, kind: str, **attrs: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["service"] == service and e["kind"] == kind and all(e["attrs"].get(k) == v for k, v in attrs.items())
    ]


def both(kind: str, **attrs: str) -> Callable[[Events], bool]:
    return lambda ev: has("alice", kind, **attrs)(ev) and has("bob", kind, **attrs)(ev)


def components(status: useragent_pb2.CallStatus) -> dict[str, useragent_pb2.MediaComponent]:
    return {c.name: c for c in status.media.components}


def associations(status: useragent_pb2.CallStatus, component: int = 1) -> list[useragent_pb2.DtlsAssociation]:
    return [a for a in status.media.associations if a.component == component]


# -- rtcp-mux off --------------------------------------------------------------------------------------


def test_without_rtcp_mux_two_associations_each_opened_by_its_own_check(lab, clients):
    scenario = Scenario("no-rtcp-mux", "RTP and RTCP apart", alice={"rtcp_mux": False}, bob={"rtcp_mux": False})
    with lab_call(lab, clients, scenario) as call:
        call.wait(
            lambda ev: both("srtcp.first_received")(ev) and both("srtp.sent")(ev),
            "SRTCP both ways and the whole RTP stream",
        )
        alice, bob = call.status("alice"), call.status("bob")
        events = call.events()
        drops = [e for e in call.collector.snapshot() if e["kind"] == "nat.drop"]
    for status in (alice, bob):
        assert status.state == "established" and not status.media.rtcp_mux
        assert set(components(status)) == {"rtp", "rtcp"}
    a, b = components(alice), components(bob)
    # the offer and answer: no a=rtcp-mux, and Alice advertises the reflexive address of *each* component
    offer = next(e for e in events if e["service"] == "bob" and e["attrs"].get("sip.method") == "INVITE")
    answer = next(e for e in events if e["service"] == "alice" and e["attrs"].get("sip.status_code") == "200")
    assert offer["attrs"]["sdp.rtcp_mux"] == answer["attrs"]["sdp.rtcp_mux"] == "False"
    assert offer["attrs"]["sdp.rtcp"] == a["rtcp"].local_media.split(":")[1]  # a=rtcp (RFC 3605): the mapping's port
    assert answer["attrs"]["sdp.rtcp"] == b["rtcp"].local_media.split(":")[1]
    for name in ("rtp", "rtcp"):
        assert a[name].local_media != a[name].local_socket, "advertised the NAT's mapping, not the socket"
        assert a[name].local_media.split(":")[0] == a["rtp"].local_media.split(":")[0]  # the NAT's outside address
        assert b[name].remote_media == a[name].local_media and a[name].remote_media == b[name].local_media
    assert a["rtcp"].local_media != a["rtp"].local_media
    # one association per component, both verified, with different keys (RFC 5764 §4)
    for name, component in (("rtp", 1), ("rtcp", 2)):
        [at_alice], [at_bob] = associations(alice, component), associations(bob, component)
        assert (at_alice.role, at_bob.role) == ("server", "client")
        assert at_alice.state == at_bob.state == "connected" and at_alice.completed > 0
        assert at_alice.exporter_digest == at_bob.exporter_digest != ""
        assert a[name].peer_fingerprint_verified and b[name].peer_fingerprint_verified
    assert associations(alice, 1)[0].exporter_digest != associations(alice, 2)[0].exporter_digest
    # Alice (passive) sent one check per component, each from that component's socket to Bob's
    checks = of(events, "alice", "stun.send", purpose="connectivity-check")
    assert {e["attrs"]["component"] for e in checks} == {"rtp", "rtcp"}
    by_component = {
        c: {e["attrs"]["stun.transaction_id"] for e in checks if e["attrs"]["component"] == c} for c in ("rtp", "rtcp")
    }
    assert all(len(tids) == 1 for tids in by_component.values()), by_component
    for e in checks:
        name = e["attrs"]["component"]
        assert e["attrs"]["local"] == a[name].local_socket and e["attrs"]["peer"] == b[name].local_media
    assert a["rtp"].stun_checks_sent == a["rtcp"].stun_checks_sent == 1
    assert b["rtp"].stun_requests_answered >= 1 and b["rtcp"].stun_requests_answered >= 1
    # each component's first ClientHello died at the NAT until its own check opened its mapping
    for name in ("rtp", "rtcp"):
        assert any(
            d["attrs"].get("destination") == a[name].local_media
            and "client_hello" in d["attrs"].get("dtls.handshake_types", "")
            for d in drops
        ), f"no dropped ClientHello to Alice's {name} mapping"
        assert of(events, "alice", "dtls.recv", component=name, **{"dtls.handshake_types": "client_hello"})
    # SRTP on the RTP component, SRTCP (sender reports) on the RTCP component, both ways
    for mine, theirs in ((a, b), (b, a)):
        assert mine["rtp"].srtp_received >= 45 and mine["rtp"].srtcp_received == 0
        assert mine["rtcp"].srtcp_received >= 3 and mine["rtcp"].srtp_received == 0
        assert mine["rtcp"].srtcp_sent >= 3 and mine["rtcp"].srtcp_received <= theirs["rtcp"].srtcp_sent
        assert mine["rtp"].srtp_auth_failed == mine["rtcp"].srtp_auth_failed == 0
    for ua in ("alice", "bob"):
        [first] = of(events, ua, "srtcp.first_received")
        assert first["attrs"]["component"] == "rtcp" and first["attrs"]["rtcp.packet_type"] == "200"  # SR
    assert alice.media.srtcp_received == a["rtcp"].srtcp_received  # the totals add up the components


def test_offered_rtcp_mux_declined_falls_back_to_the_offers_a_rtcp(lab, clients):
    """RFC 5761 §5.1.1: Alice offers rtcp-mux (and a=rtcp, her reserved RTCP port); Bob does not want it."""
    scenario = Scenario("rtcp-mux-declined", "", bob={"rtcp_mux": False})
    with lab_call(lab, clients, scenario) as call:
        call.wait(lambda ev: both("srtcp.first_received")(ev), "SRTCP both ways")
        alice, bob = call.status("alice"), call.status("bob")
    assert not alice.media.rtcp_mux and not bob.media.rtcp_mux
    a, b = components(alice), components(bob)
    assert b["rtcp"].remote_media == a["rtcp"].local_media  # Bob sends RTCP where Alice's a=rtcp said
    assert a["rtcp"].srtcp_received >= 1 and b["rtcp"].srtcp_received >= 1


def test_offered_rtcp_mux_accepted_releases_the_fallback_port(lab, clients):
    scenario = Scenario("rtcp-mux", "")
    with lab_call(lab, clients, scenario) as call:
        call.wait(both("srtp.first_received"), "SRTP both ways")
        alice = call.status("alice")
        events = call.events()
    assert alice.media.rtcp_mux and [c.name for c in alice.media.components] == ["rtp"]
    [released] = of(events, "alice", "media.released")
    assert released["attrs"]["component"] == "rtcp" and "rtcp-mux" in released["attrs"]["reason"]
    assert not of(events, "alice", "stun.send", purpose="connectivity-check", component="rtcp")


# -- re-INVITE (RFC 5763 §6.6) -------------------------------------------------------------------------

LONG_MEDIA = {"media_packets": 250}  # 5 s of media: it is still flowing when the re-INVITE is done


def _new_association_carries_media(call: LabCall, index: str) -> None:
    call.wait(
        lambda ev: both("dtls.connected", association=index)(ev) and both("srtp.first_received", association=index)(ev),
        f"association {index} verified and SRTP decrypted under its keys both ways",
    )


def test_reinvite_with_a_new_fingerprint_makes_a_new_association(lab, clients):
    scenario = Scenario("reinvite-fingerprint", "", alice=LONG_MEDIA, bob=LONG_MEDIA)
    with lab_call(lab, clients, scenario) as call:
        call.wait(both("srtp.first_received", association="1"), "media under the first association")
        reply = call.reinvite("alice", new_certificate=True)
        assert reply.modification.status_code == 200 and reply.modification.new_association
        assert "our fingerprint changed" in reply.modification.reason and reply.modification.dtls_role == "server"
        _new_association_carries_media(call, "2")
        # and once more from Bob's side, through the NAT to Alice's reflexive Contact
        reply = call.reinvite("bob", new_certificate=True)
        assert reply.modification.status_code == 200 and reply.modification.new_association
        _new_association_carries_media(call, "3")
        call.wait(both("srtp.sent"), "the end of the media")
        alice, bob = call.status("alice"), call.status("bob")
        events = call.events()
    [offered] = of(events, "alice", "call.reinvite", direction="sent")
    new_fingerprint = offered["attrs"]["fingerprint"].split(" ")[1]
    for status in (alice, bob):
        assert status.state == "established" and status.media.dtls_associations == 3
        assert [a.state for a in associations(status)] == ["retired", "retired", "connected"]
        assert [m.new_association for m in status.modifications] == [True, True]
    aa, ba = associations(alice), associations(bob)
    # new handshakes, new keys: every association has its own exporter output, the same on both sides
    assert len({a.exporter_digest for a in aa}) == 3 and [a.exporter_digest for a in aa] == [
        a.exporter_digest for a in ba
    ]
    assert [a.role for a in aa] == ["server"] * 3 and [a.role for a in ba] == ["client"] * 3
    # Bob checked Alice's new certificate against the re-offer's fingerprint
    assert ba[1].peer_fingerprint == new_fingerprint != ba[0].peer_fingerprint
    assert aa[2].peer_fingerprint != aa[1].peer_fingerprint == aa[0].peer_fingerprint  # then Bob's changed
    # media went on under each association's keys, both ways, with nothing rejected
    for status in (alice, bob):
        assert all(a.srtp_received > 0 and a.srtp_sent > 0 for a in associations(status))
        assert status.media.srtp_auth_failed == 0 and status.media.srtp_received >= 200
    # the old association was retired when the new one was made, and the media switched keys once verified
    for ua in ("alice", "bob"):
        assert [e["attrs"]["association"] for e in of(events, ua, "dtls.retired")] == ["1", "2"]
        assert [(e["attrs"]["from"], e["attrs"]["to"]) for e in of(events, ua, "srtp.switched")] == [
            ("1", "2"),
            ("2", "3"),
        ]


def test_reinvite_that_changes_nothing_keeps_the_association(lab, clients):
    scenario = Scenario("reinvite-unchanged", "", alice=LONG_MEDIA, bob=LONG_MEDIA)
    with lab_call(lab, clients, scenario) as call:
        call.wait(both("srtp.first_received"), "media")
        handshakes_before = len([e for e in call.events() if e["kind"] in ("dtls.start", "dtls.send")])
        reply = call.reinvite("alice")
        assert reply.modification.status_code == 200 and not reply.modification.new_association
        assert reply.modification.offered_setup == "passive"  # our current role: nothing changes
        call.wait(both("dtls.kept"), "both ends keeping the association")
        call.wait(both("srtp.sent"), "the end of the media")
        alice, bob = call.status("alice"), call.status("bob")
        events = call.events()
    assert len([e for e in events if e["kind"] in ("dtls.start", "dtls.send")]) == handshakes_before, "no handshake"
    assert not [e for e in events if e["kind"] in ("dtls.retired", "srtp.switched")]
    for status in (alice, bob):
        assert status.media.dtls_associations == 1 and len(associations(status)) == 1
        assert [(m.status_code, m.new_association) for m in status.modifications] == [(200, False)]
        assert status.media.srtp_received >= 240 and status.media.srtp_auth_failed == 0


def test_reinvite_that_flips_the_roles_makes_a_new_association_with_roles_swapped(lab, clients):
    scenario = Scenario("reinvite-flip", "", alice=LONG_MEDIA, bob=LONG_MEDIA)
    with lab_call(lab, clients, scenario) as call:
        call.wait(both("srtp.first_received"), "media")
        reply = call.reinvite("alice", setup=useragent_pb2.REINVITE_SETUP_FLIP)
        assert reply.modification.offered_setup == "active" and reply.modification.dtls_role == "client"
        assert reply.modification.new_association and "roles changed" in reply.modification.reason
        _new_association_carries_media(call, "2")
        call.wait(both("srtp.sent"), "the end of the media")
        alice, bob = call.status("alice"), call.status("bob")
        events = call.events()
    assert [a.role for a in associations(alice)] == ["server", "client"]
    assert [a.role for a in associations(bob)] == ["client", "server"]
    assert associations(alice)[1].exporter_digest == associations(bob)[1].exporter_digest
    assert associations(alice)[1].exporter_digest != associations(alice)[0].exporter_digest
    # now Bob is passive: he sends the §6.7.2 check when the re-offer arrives; Alice sends the ClientHello
    [check] = of(events, "bob", "stun.send", purpose="connectivity-check")
    [start] = of(events, "alice", "dtls.start", association="2")
    assert start["attrs"]["role"] == "client" and "roles changed" in start["attrs"]["reason"]
    assert of(events, "alice", "dtls.send", association="2", cause="start")
    assert check["attrs"]["peer"] == components(alice)["rtp"].local_media
    for status in (alice, bob):
        assert status.media.srtp_auth_failed == 0 and status.media.dtls_role == associations(status)[1].role
        assert associations(status)[1].srtp_received > 0
