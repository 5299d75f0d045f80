"""The media session on loopback: STUN, DTLS and SRTP sharing one socket each side."""

from __future__ import annotations

import asyncio
import random

from pinhole import dtls
from pinhole.events import EventLog
from pinhole.media import MediaSession, MediaTimers

TIMERS = MediaTimers(dtls=dtls.RetransmitTimer(initial=0.05, maximum=0.4, max_transmissions=6), stun_rto=0.05)


async def pair(*, bob_claims: dtls.Certificate | None = None) -> tuple[MediaSession, MediaSession]:
    """Alice passive (server), Bob active (client), each knowing the other's fingerprint."""
    sessions = []
    for name in ("alice", "bob"):
        sessions.append(
            await MediaSession.open(
                "127.0.0.1",
                certificate=dtls.Certificate.generate(name),
                events=EventLog(name),
                call_id="call-1",
                timers=TIMERS,
                srtp_profiles=("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"),
            )
        )
    alice, bob = sessions
    bob_cert = bob_claims or bob.certificate
    alice.set_peer_fingerprints([("sha-256", bob_cert.digest("sha-256"))])
    bob.set_peer_fingerprints([("sha-256", alice.certificate.digest("sha-256"))])
    return alice, bob


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 10)


async def until(condition, timeout: float = 10.0) -> None:
    """Yield to the loop until `condition` holds: packets in flight on loopback, no timer involved."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0)


def kinds(session: MediaSession) -> list[str]:
    return [e.kind for e in session.events.since()]


def test_handshake_stun_check_and_srtp_both_ways():
    async def scenario():
        alice, bob = await pair()
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            mapped = await asyncio.wait_for(alice.stun_binding(bob.local_address, purpose="connectivity-check"), 10)
            assert mapped == alice.local_address
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            alice.start_media(5, ptime=0.001)
            bob.start_media(5, ptime=0.001)
            await wait(alice.connected)
            await wait(bob.connected)
            await until(lambda: alice.stats.srtp_received == 5 and bob.stats.srtp_received == 5)
            assert alice.stats.srtp_auth_failed == bob.stats.srtp_auth_failed == 0
            assert bob.stats.stun_requests_answered == 1 and alice.stats.stun_checks_sent == 1
            assert {"stun.send", "stun.recv", "dtls.send", "dtls.recv", "dtls.connected", "srtp.first_received"} <= set(
                kinds(alice)
            )
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_garbage_is_counted_and_the_session_goes_on():
    async def scenario():
        alice, bob = await pair()
        try:
            rng = random.Random(5)
            loop = asyncio.get_running_loop()
            junk, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            burst = [rng.randbytes(rng.randint(1, 200)) for _ in range(300)] + [b"\x00\x01", b"\x16\xfe", b"\x80"]
            for datagram in burst:
                junk.sendto(datagram, alice.local_address)
            junk.close()
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            await wait(alice.connected)
            await wait(bob.connected)
            assert alice.stats.malformed > 0
            assert "media.malformed" in kinds(alice)
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_fingerprint_mismatch_tears_the_session_down():
    async def scenario():
        alice, bob = await pair(bob_claims=dtls.Certificate.generate("mallory"))
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            alice.start_media(5, ptime=0.001)
            await wait(alice.failed)
            assert alice.closed and not alice.connected.is_set()
            assert "matches no a=fingerprint" in alice.endpoint.failure_reason
            assert alice.stats.srtp_received == 0
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())
