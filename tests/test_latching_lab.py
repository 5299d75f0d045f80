"""Latching end to end: Alice behind a kernel NAT with address-and-port-dependent mapping.

The NAT maps Alice's media socket once per destination (nftables `masquerade fully-random`), so
the address her SDP advertises (the mapping the STUN server saw) is not the one her STUN check to
Bob leaves through, and with address-and-port-dependent filtering nothing Bob sends to the SDP
address gets in. Bob is DTLS-active (§7.3 roles): a latching Bob follows the check and his
ClientHello gets through; a Bob that sends to the SDP address, as RFC 5763 says, never completes
the handshake.
"""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace

from pinhole.controller.run import (
    Endpoints,
    Progress,
    Scenario,
    configure,
    drive_call,
    service_kinds,
)
from pinhole.media import LATCH_ON_STUN
from pinhole.nat import Mapping, NatBehaviour
from pinhole.timers import TIMERS

pytestmark = pytest.mark.lab

APDM = NatBehaviour(Mapping.ADDRESS_AND_PORT_DEPENDENT)


def _call(lab, clients, *, latching: bool):
    _, topology, _ = lab
    scenario = Scenario(f"apdm-latching-{latching}", "Alice behind APDM, Bob active", bob={"latching": latching})
    configure(clients, Endpoints.of_topology(topology), scenario, TIMERS["short"], nat=APDM)
    record = drive_call(
        clients, service_kinds(topology), scenario, TIMERS["short"], trace.get_tracer("test"), Progress(False)
    )
    return record, [e for e in record.events if e["call_id"] == record.call_id]


def _client_hellos_dropped(events) -> list[dict]:
    return [
        e for e in events if e["kind"] == "nat.drop" and "client_hello" in e["attrs"].get("dtls.handshake_types", "")
    ]


def test_latching_bob_follows_alices_check_through_an_apdm_nat(lab, clients):
    started = time.time()
    record, events = _call(lab, clients, latching=True)
    alice, bob = record.calls["alice"], record.calls["bob"]
    assert alice["state"] == bob["state"] == "terminated", (alice["reason"], bob["reason"])
    sdp_address, latched_to = bob["media"]["remote_media"], bob["media"]["latched_to"]
    # the NAT really mapped per destination: Alice's check came from somewhere else than her SDP says
    assert alice["media"]["local_media"] == sdp_address and latched_to and latched_to != sdp_address
    assert latched_to.split(":")[0] == sdp_address.split(":")[0]  # the NAT's outside address, another port
    assert int(bob["media"]["latches"]) == 1 and bob["media"]["latched_on"] == LATCH_ON_STUN
    [latched] = [e for e in events if e["service"] == "bob" and e["kind"] == "media.latched"]
    assert latched["attrs"]["from"] == sdp_address and latched["attrs"]["to"] == latched_to
    assert latched["attrs"]["evidence"] == LATCH_ON_STUN
    # the first ClientHello died at the NAT (sent to the SDP address), the resent one reached Alice
    assert len(_client_hellos_dropped(record.events)) >= 1
    resent = [
        e for e in events if e["service"] == "bob" and e["kind"] == "dtls.send" and e["attrs"]["cause"] == "latched"
    ]
    assert resent and resent[0]["attrs"]["peer"] == latched_to
    assert any(
        e["service"] == "alice"
        and e["kind"] == "dtls.recv"
        and "client_hello" in e["attrs"].get("dtls.handshake_types", "")
        for e in events
    )
    # DTLS completed and verified both ways, and media flowed both ways
    for ua in (alice, bob):
        media = ua["media"]
        assert media["dtls_state"] in ("connected", "closed") and media["peer_fingerprint_verified"]
        assert int(media["srtp_received"]) >= 45 and int(media["srtp_auth_failed"]) == 0
    assert {"alice", "bob"} <= {e["service"] for e in events if e["kind"] == "srtp.first_received"}
    assert record.counters["bob"].get("media_latched", 0) >= 1
    assert time.time() - started < 60


def test_without_latching_bobs_client_hellos_die_at_the_apdm_nat(lab, clients):
    record, events = _call(lab, clients, latching=False)
    alice, bob = record.calls["alice"], record.calls["bob"]
    assert bob["state"] == "failed" and "timed out" in bob["media"]["dtls_failure"], bob
    assert bob["media"]["dtls_state"] == "failed" and int(bob["media"]["latches"]) == 0
    assert bob["media"]["latched_to"] == ""
    assert not [e for e in events if e["kind"] == "media.latched"]
    # Alice's check reached Bob (he answered it) but every ClientHello went to the SDP address and died
    assert int(bob["media"]["stun_requests_answered"]) >= 1
    sent = int(bob["media"]["dtls_retransmissions"]) + 1
    assert sent == TIMERS["short"].dtls_max_transmissions
    assert len(_client_hellos_dropped(record.events)) == sent, "every ClientHello Bob sent died at the NAT"
    assert not any(
        e["service"] == "alice"
        and e["kind"] == "dtls.recv"
        and "client_hello" in e["attrs"].get("dtls.handshake_types", "")
        for e in events
    )
    for ua in (alice, bob):
        assert int(ua["media"]["srtp_received"]) == 0
