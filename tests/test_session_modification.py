"""RTCP components and re-INVITEs on loopback: media sessions and two user agents, no lab.

The user agents talk SIP straight to each other (each one's outbound proxy is the other), so the
offer/answer, the association bookkeeping of RFC 5763 §6.6 and the RFC 5761 §5.1.1 negotiation
are exercised in a second; the lab tests (test_session_lab.py) add the NAT and the proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pinhole import dtls, rtp, srtp
from pinhole.events import Counters, EventLog
from pinhole.media import RTCP, MediaSession, MediaTimers
from pinhole.rpc.v1 import useragent_pb2
from pinhole.sip import SipTimers
from services.useragent import agent as agent_module
from services.useragent.__main__ import call_status, config_from_proto
from services.useragent.agent import AgentConfig, CallStateError, ReinviteSetup, UserAgent

TIMERS = MediaTimers(dtls=dtls.RetransmitTimer(initial=0.05, maximum=0.4, max_transmissions=6), stun_rto=0.05)
PROFILES = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Yield to the loop until `condition` holds (packets in flight on loopback)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def kinds(events: EventLog, kind: str, **attrs: str) -> list[dict[str, str]]:
    return [
        dict(e.attributes)
        for e in events.since()
        if e.kind == kind and all(e.attributes.get(k) == v for k, v in attrs.items())
    ]


# -- media sessions -----------------------------------------------------------------------------------


async def session_pair(component: int = 1) -> tuple[MediaSession, MediaSession]:
    """Alice and Bob, each knowing the other's fingerprint; nothing started."""
    alice, bob = [
        await MediaSession.open(
            "127.0.0.1",
            certificate=dtls.Certificate.generate(name),
            events=EventLog(name),
            call_id="call-1",
            timers=TIMERS,
            srtp_profiles=PROFILES,
            component=component,
        )
        for name in ("alice", "bob")
    ]
    alice.set_peer_fingerprints([("sha-256", bob.certificate.digest())])
    bob.set_peer_fingerprints([("sha-256", alice.certificate.digest())])
    return alice, bob


def test_renew_makes_a_new_association_while_media_goes_on():
    async def scenario():
        alice, bob = await session_pair()
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            alice.start_media(400, ptime=0.005)
            bob.start_media(400, ptime=0.005)
            await until(lambda: alice.stats.srtp_received > 10 and bob.stats.srtp_received > 10)
            new = dtls.Certificate.generate("alice-2")
            bob.renew(
                dtls.Role.CLIENT,
                None,
                reason="test: new fingerprint",
                peer_fingerprints=[("sha-256", new.digest())],
            )
            alice.renew(dtls.Role.SERVER, None, reason="test: new fingerprint", certificate=new)
            await until(lambda: alice.keys_association == bob.keys_association == 2)
            received = alice.stats.srtp_received, bob.stats.srtp_received
            await until(lambda: alice.associations[1].srtp_received > 10 and bob.associations[1].srtp_received > 10)
            assert alice.stats.srtp_received > received[0] and bob.stats.srtp_received > received[1]
            assert [r.state for r in alice.associations] == ["retired", "connected"]
            assert alice.associations[1].exporter_digest == bob.associations[1].exporter_digest
            assert alice.associations[1].exporter_digest != alice.associations[0].exporter_digest
            assert bob.associations[1].peer_fingerprint == dtls.format_fingerprint(new.digest())
            assert alice.stats.srtp_auth_failed == bob.stats.srtp_auth_failed == 0
            for s in (alice, bob):
                [retired] = kinds(s.events, "dtls.retired")
                assert retired["association"] == "1" and retired["component"] == "rtp"
                [switched] = kinds(s.events, "srtp.switched")
                assert (switched["from"], switched["to"]) == ("1", "2")
                assert [e["association"] for e in kinds(s.events, "srtp.first_received")] == ["1", "2"]
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_a_new_client_hello_during_a_re_offer_starts_the_new_association_early():
    """The offerer let the answerer be active: its ClientHello can beat the answer (RFC 5763 §5, §6.6)."""

    async def scenario():
        alice, bob = await session_pair()
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            await until(lambda: alice.connected.is_set() and bob.connected.is_set())
            alice.expect_new_association = True
            new_bob = dtls.Certificate.generate("bob-2")
            bob.renew(dtls.Role.CLIENT, None, reason="test", certificate=new_bob)
            await until(lambda: alice.renewed_early and alice.association == 2)
            assert alice.role is dtls.Role.SERVER and alice.keys_association == 1  # not verified: old keys on
            await until(lambda: alice.endpoint.state == "connected")
            assert alice.keys_association == 1 and not alice.endpoint.fingerprint_verified
            alice.set_peer_fingerprints([("sha-256", new_bob.digest())])  # the answer arrives
            await until(lambda: alice.keys_association == 2 and bob.keys_association == 2)
            [start] = kinds(alice.events, "dtls.start", association="2")
            assert "before the answer" in start["reason"]
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_a_retransmitted_client_hello_of_the_current_association_starts_nothing():
    async def scenario():
        alice, bob = await session_pair()
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            # a ClientHello of a handshake that is not the one Bob is about to run
            client = dtls.DtlsEndpoint(dtls.Role.CLIENT, bob.certificate, srtp_profiles=PROFILES, timer=TIMERS.dtls)
            hello = client.start(0.0)[0]
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            await until(lambda: alice.connected.is_set() and bob.connected.is_set())
            alice.expect_new_association = True
            current = alice.endpoint.client_random
            bob._send(hello, alice.local_address)  # a ClientHello of another handshake: renews
            await until(lambda: alice.association == 2)
            assert alice.endpoint.client_random != current
            alice.expect_new_association = True
            client_random = dtls.client_hello_random(hello)
            assert client_random == alice.endpoint.client_random
            received = len(kinds(alice.events, "dtls.recv"))
            bob._send(hello, alice.local_address)  # the same ClientHello again: a retransmission
            await until(lambda: len(kinds(alice.events, "dtls.recv")) > received)  # fed to the association
            assert alice.association == 2 and not kinds(alice.events, "dtls.start", association="3")
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_previous_keys_decrypt_packets_in_flight_only_for_the_grace_period():
    async def scenario():
        alice, bob = await session_pair()
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            await until(lambda: alice.connected.is_set() and bob.connected.is_set())
            old_keys: srtp.SrtpSession = bob.srtp_session
            stream = rtp.RtpStream(ssrc=7, payload_type=0)
            bob.renew(dtls.Role.CLIENT, None, reason="test")
            alice.renew(dtls.Role.SERVER, None, reason="test")
            await until(lambda: alice.keys_association == bob.keys_association == 2)
            bob._send(old_keys.protect(stream.next_packet(b"\xff" * 160).encode()), alice.local_address)
            await until(lambda: alice.stats.received_with_previous_keys == 1)
            assert alice.associations[0].srtp_received == 1 and alice.stats.srtp_auth_failed == 0
            session, association, _ = alice._previous_rx
            alice._previous_rx = (session, association, alice._now() - 1)  # the grace period is over
            bob._send(old_keys.protect(stream.next_packet(b"\xff" * 160).encode()), alice.local_address)
            await until(lambda: alice.stats.srtp_auth_failed == 1)
            assert alice.stats.received_with_previous_keys == 1 and alice._previous_rx is None
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_rtcp_component_sends_sender_reports_under_its_own_keys():
    async def scenario():
        rtp_alice, rtp_bob = await session_pair()
        rtcp_alice, rtcp_bob = await session_pair(RTCP)
        sessions = (rtp_alice, rtp_bob, rtcp_alice, rtcp_bob)
        try:
            for server, client in ((rtp_alice, rtp_bob), (rtcp_alice, rtcp_bob)):
                server.start_dtls(dtls.Role.SERVER, client.local_address)
                client.start_dtls(dtls.Role.CLIENT, server.local_address)
            for rtp_session, rtcp_session in ((rtp_alice, rtcp_alice), (rtp_bob, rtcp_bob)):
                rtp_session.start_media(20, ptime=0.005)
                rtcp_session.start_rtcp(rtp_session, interval=0.02, minimum=3)
            await until(lambda: all(s.stats.srtcp_received >= 3 for s in (rtcp_alice, rtcp_bob)))
            await until(lambda: bool(kinds(rtcp_alice.events, "srtcp.sent")))
            assert rtcp_alice.associations[0].exporter_digest != rtp_alice.associations[0].exporter_digest
            assert rtp_alice.stats.srtcp_received == 0 and rtcp_alice.stats.srtp_received == 0
            [first] = kinds(rtcp_bob.events, "srtcp.first_received")
            assert first["component"] == "rtcp" and first["rtcp.packet_type"] == "200"
            assert first["rtcp.ssrc"] == f"0x{rtp_alice.stream.ssrc:08x}"  # the SR speaks for the RTP stream
        finally:
            for s in sessions:
                s.teardown("test over")

    asyncio.run(scenario())


# -- user agents ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def agents(alice_config: dict | None = None, bob_config: dict | None = None) -> AsyncIterator[tuple]:
    alice, bob = [
        UserAgent(
            name=name,
            sip_address=("127.0.0.1", 0),
            media_ip="127.0.0.1",
            events=EventLog(name),
            counters=Counters(),
        )
        for name in ("alice", "bob")
    ]
    await alice.start()
    await bob.start()
    common = {"sip_timers": SipTimers.scaled(0.05), "media_timers": TIMERS, "media_packets": 400}
    alice.configure(
        AgentConfig(
            aor="sip:alice@a.example", outbound_proxy=bob.endpoint.local_address, **common, **(alice_config or {})
        )
    )
    bob.configure(
        AgentConfig(
            aor="sip:bob@b.example", outbound_proxy=alice.endpoint.local_address, **common, **(bob_config or {})
        )
    )
    try:
        yield alice, bob
    finally:
        alice.close()
        bob.close()


async def established(alice: UserAgent, bob: UserAgent) -> str:
    call_id = await alice.place_call("sip:bob@b.example")
    await until(
        lambda: (
            call_id in bob.calls
            and all(s.stats.srtp_received > 0 for ua in (alice, bob) for s in ua.calls[call_id].sessions()[:1])
        )
    )
    return call_id


@pytest.mark.parametrize(
    ("alice_config", "bob_config", "mux"),
    [
        ({}, {}, True),
        ({"rtcp_mux": False}, {}, False),  # not offered: the answer must not multiplex (RFC 5761 §5.1.1)
        ({}, {"rtcp_mux": False}, False),  # offered, declined: RTCP to the offer's a=rtcp fallback
        ({"rtcp_mux": False}, {"rtcp_mux": False}, False),
    ],
)
def test_rtcp_mux_negotiation(alice_config, bob_config, mux):
    async def scenario():
        async with agents(alice_config, bob_config) as (alice, bob):
            call_id = await established(alice, bob)
            a, b = alice.calls[call_id], bob.calls[call_id]
            assert a.rtcp_mux == b.rtcp_mux == mux
            assert (a.rtcp is None) == (b.rtcp is None) == mux
            if not mux:
                await until(lambda: a.rtcp.stats.srtcp_received >= 1 and b.rtcp.stats.srtcp_received >= 1)
                assert b.remote_rtcp == a.advertised_rtcp and a.remote_rtcp == b.advertised_rtcp
                assert a.rtcp.stats.stun_checks_sent == a.media.stats.stun_checks_sent == 1
            elif "rtcp_mux" not in alice_config:
                [released] = kinds(alice.events, "media.released")
                assert released["component"] == "rtcp"

    asyncio.run(scenario())


def test_declined_rtcp_mux_without_a_fallback_leaves_no_rtcp_and_bob_fails_on_it():
    """The case the fallback exists for: Bob sends RTCP to the port pair nobody holds at Alice."""

    async def scenario():
        async with agents({"rtcp_mux_fallback": False}, {"rtcp_mux": False}) as (alice, bob):
            call_id = await alice.place_call("sip:bob@b.example")
            await until(lambda: call_id in bob.calls and bob.calls[call_id].state == "failed")
            assert "timed out" in bob.calls[call_id].reason
            [unavailable] = kinds(alice.events, "media.rtcp_unavailable")
            assert "RFC 5761 §5.1.1" in unavailable["reason"]

    asyncio.run(scenario())


def test_reinvite_outcomes_and_the_modifications_they_leave():
    async def scenario():
        async with agents({"rtcp_mux": False}) as (alice, bob):
            call_id = await established(alice, bob)
            a, b = alice.calls[call_id], bob.calls[call_id]
            versions = a.sdp_version, b.sdp_version
            unchanged = await alice.reinvite(call_id)
            assert unchanged.status_code == 200 and not unchanged.new_association
            # RFC 3264 §8: same o= session id, version one up, on both sides
            assert (a.sdp_version, b.sdp_version) == (versions[0] + 1, versions[1] + 1) and a.sdp_version > 1000
            assert [s.association for s in a.sessions() + b.sessions()] == [1, 1, 1, 1]
            assert len(kinds(bob.events, "dtls.kept")) == 2  # both components
            flip = await bob.reinvite(call_id, new_certificate=True, setup=ReinviteSetup.FLIP)
            assert flip.new_association and flip.offered_setup == "passive" and flip.dtls_role == "server"
            assert "roles changed" in flip.reason and "our fingerprint changed" in flip.reason
            await until(lambda: all(s.keys_association == 2 for s in a.sessions() + b.sessions()))
            assert [s.role for s in a.sessions()] == [dtls.Role.CLIENT] * 2
            # Bob, passive now, checks each component; Alice accepts his new certificate only
            assert [s.stats.stun_checks_sent for s in b.sessions()] == [1, 1]
            assert a.media.associations[1].peer_fingerprint == dtls.format_fingerprint(b.certificate.digest())
            actpass = await alice.reinvite(call_id, setup=ReinviteSetup.ACTPASS)
            assert actpass.offered_setup == "actpass" and not actpass.new_association  # Bob keeps his role
            assert [(m.direction, m.new_association) for m in a.modifications] == [
                ("sent", False),
                ("received", True),
                ("sent", False),
            ]
            status = call_status(a)
            assert status.media.dtls_associations == 2 and len(status.media.associations) == 4
            assert [c.name for c in status.media.components] == ["rtp", "rtcp"]
            assert [m.status_code for m in status.modifications] == [200, 200, 200]

    asyncio.run(scenario())


def test_glare_gets_491_both_ways_and_the_session_goes_on():
    async def scenario():
        async with agents() as (alice, bob):
            call_id = await established(alice, bob)
            first, second = await asyncio.gather(
                alice.reinvite(call_id, new_certificate=True), bob.reinvite(call_id, new_certificate=True)
            )
            assert first.status_code == second.status_code == 491  # RFC 3261 §14.2 on both sides
            assert "continues unchanged" in first.reason
            for ua in (alice, bob):
                call = ua.calls[call_id]
                assert call.state == "established" and call.media.association == 1 and not call.offer_pending
                assert call.media.certificate is ua.certificate  # the withdrawn offer's certificate is gone
            again = await alice.reinvite(call_id, new_certificate=True)
            assert again.status_code == 200 and again.new_association

    asyncio.run(scenario())


def test_reinvite_needs_an_established_call_and_one_offer_at_a_time():
    async def scenario():
        async with agents({}, {"auto_answer": False}) as (alice, bob):
            with pytest.raises(KeyError):
                await alice.reinvite("nope")
            call_id = await alice.place_call("sip:bob@b.example")
            await until(lambda: call_id in bob.calls)
            with pytest.raises(CallStateError, match="no established session"):
                await alice.reinvite(call_id)
            await bob.answer(call_id)
            await until(lambda: alice.calls[call_id].state == "established" and alice.calls[call_id].negotiated)
            pending = asyncio.ensure_future(alice.reinvite(call_id))
            await asyncio.sleep(0)
            with pytest.raises(CallStateError, match="in progress"):
                await alice.reinvite(call_id)
            assert (await pending).status_code == 200

    asyncio.run(scenario())


def test_a_re_offer_we_cannot_answer_gets_488_and_changes_nothing():
    async def scenario():
        async with agents() as (alice, bob):
            call_id = await established(alice, bob)
            alice.calls[call_id].rtcp_mux = False  # her re-offer drops rtcp-mux: Bob adds no component mid-call
            rejected = await alice.reinvite(call_id, new_certificate=True)
            assert rejected.status_code == 488 and not rejected.new_association
            [received] = bob.calls[call_id].modifications
            assert received.status_code == 488 and "rtcp-mux" in received.reason
            assert alice.calls[call_id].media.association == bob.calls[call_id].media.association == 1
            assert bob.calls[call_id].state == "established"

    asyncio.run(scenario())


def test_configure_defaults_rtcp_mux_and_its_fallback_on():
    config = config_from_proto(useragent_pb2.UserAgentConfig(aor="sip:a@a.example"))
    assert config.rtcp_mux and config.rtcp_mux_fallback
    config = config_from_proto(
        useragent_pb2.UserAgentConfig(aor="sip:a@a.example", rtcp_mux=False, rtcp_mux_fallback=False)
    )
    assert not config.rtcp_mux and not config.rtcp_mux_fallback


def test_ended_calls_are_forgotten_beyond_the_kept_ones_once_their_transactions_are_over(monkeypatch) -> None:
    """A UA under load must not keep every call (issue: 1,000 calls and memory never released): beyond
    FINISHED_CALLS_KEPT, the oldest ended calls go once 64*T1 has passed since they ended, not before."""
    monkeypatch.setattr(agent_module, "FINISHED_CALLS_KEPT", 2)

    async def scenario() -> None:
        async with agents() as (alice, bob):
            ended = []
            for _ in range(4):
                call_id = await established(alice, bob)
                await alice.hang_up(call_id)
                await until(lambda call_id=call_id: bob.calls[call_id].state == "terminated")
                ended.append(call_id)
            assert all(c in alice.calls and c in bob.calls for c in ended)  # within 64*T1: all still there
            await asyncio.sleep(64 * alice.config.sip_timers.t1)  # the RFC timer itself is the condition
            last = await established(alice, bob)
            await alice.hang_up(last)
            await until(lambda: bob.calls[last].state == "terminated")
            for ua in (alice, bob):
                assert [c for c in [*ended, last] if c in ua.calls] == ended[-1:] + [last], ua.name

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_event_log_replays_exactly_what_came_after_a_sequence_and_stays_bounded() -> None:
    log = EventLog("x", limit=8)
    for number in range(1, 31):
        log.emit("e", n=number)
    kept = [e.sequence for e in log.since()]
    assert 8 <= len(kept) <= 9 and kept == list(range(31 - len(kept), 31))
    assert [e.sequence for e in log.since(27)] == [28, 29, 30]
    assert log.since(30) == [] and [e.sequence for e in log.since(-3)] == kept


def test_an_event_log_keeps_the_trace_contexts_of_as_many_calls_as_their_events() -> None:
    """A call's context holds its latest span: kept for every call ever seen, they were what grew a proxy's
    memory from 1,000 to 4,000 calls."""
    from opentelemetry.sdk.trace import TracerProvider

    log = EventLog("x", calls=8, tracer=TracerProvider().get_tracer("test"))
    for call in range(100):
        log.emit("sip.recv", f"c{call}")
        log.bind_call(f"c{call}", log.last_context)
        log.start_call(f"s{call}")
        log.end_call(f"s{call}")
    assert len(log._calls) == 8 and set(log._calls) == {f"c{n}" for n in range(96, 100)} | {
        f"s{n}" for n in range(96, 100)
    }


def test_an_event_log_keeps_the_events_of_its_latest_calls_whole_however_many_calls_pass() -> None:
    """Bounded per call: the oldest calls' events go together, a busy call-less stream does not push out a
    call's, and followers still replay by sequence across the gaps."""
    log = EventLog("x", calls=8, limit=8)
    for call in range(1, 101):
        for step in range(3):
            log.emit("e", f"c{call}", n=step)
        log.emit("noise")
    kept = log.since()
    calls = [e.call_id for e in kept if e.call_id]
    assert 8 <= len(set(calls)) <= 9 and set(calls) == {f"c{n}" for n in range(101 - len(set(calls)), 101)}
    assert all(calls.count(c) == 3 for c in set(calls)) and sum(not e.call_id for e in kept) <= 9
    last_three = [e.sequence for e in kept][-3:]
    assert [e.sequence for e in log.since(last_three[0] - 1)] == last_three


def test_an_invite_beyond_the_callees_max_calls_gets_503_with_retry_after() -> None:
    """Past what it carries, the callee answers at once with 503 and when to retry (RFC 3261 §21.5.4, §20.33),
    and the caller's call fails on it; the call in progress goes on."""

    async def scenario() -> None:
        async with agents(bob_config={"max_calls": 1}) as (alice, bob):
            first = await established(alice, bob)
            second = await alice.place_call("sip:bob@b.example")
            await until(lambda: alice.calls[second].state == "failed")
            assert "503" in alice.calls[second].reason, alice.calls[second].reason
            (refused,) = kinds(bob.events, "call.refused")
            assert refused["reason"] == "max_calls 1 in progress" and bob.counters["calls_refused_over_limit"] == 1
            answers = [e for e in bob.events.since() if e.kind == "sip.send" and e.call_id == second]
            assert [(e.attributes["sip.status_code"], e.attributes["sip.retry_after"]) for e in answers] == [
                ("503", "1")
            ]
            assert alice.calls[first].state == "established" and second not in bob.calls

    asyncio.run(asyncio.wait_for(scenario(), 30))
