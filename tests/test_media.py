"""The media session on loopback: STUN, DTLS and SRTP sharing one socket each side."""

from __future__ import annotations

import asyncio
import random

from pinhole import dtls
from pinhole.events import EventLog
from pinhole.media import MediaSession, MediaTimers
from pinhole.stranger import malformed_client_hello

TIMERS = MediaTimers(dtls=dtls.RetransmitTimer(initial=0.05, maximum=0.4, max_transmissions=6), stun_rto=0.05)


async def pair(
    *, bob_claims: dtls.Certificate | None = None, alice_knows: bool = True
) -> tuple[MediaSession, MediaSession]:
    """Alice passive (server), Bob active (client), each knowing the other's fingerprint (Alice not before
    the answer with `alice_knows=False`: she serves an early ClientHello, RFC 5763 §7.1)."""
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
    if alice_knows:
        alice.set_peer_fingerprints([("sha-256", bob_cert.digest("sha-256"))])
    else:
        alice.accept_early_client_hello = True
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


def test_early_media_is_held_until_the_answer_verifies_the_peer():
    """RFC 5763 §7.1: Bob's ClientHello comes before the answer, the handshake completes, his early SRTP
    (message 6) is held undecrypted; the answer's a=fingerprint (message 9) verifies him and releases it."""

    async def scenario():
        alice, bob = await pair(alice_knows=False)
        try:
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            bob.start_media(5, ptime=0.001)
            await wait(bob.connected)
            await until(lambda: alice.srtp_held == 5)
            assert "dtls.handshake_complete" in kinds(alice) and not alice.connected.is_set()
            assert alice.stats.srtp_received == 0 and alice.stats.before_handshake == 0
            alice.set_peer_fingerprints([("sha-256", bob.certificate.digest("sha-256"))])  # the answer arrives
            await wait(alice.connected)
            await until(lambda: alice.stats.srtp_received == 5)
            assert alice.stats.srtp_auth_failed == 0
            order = [
                k
                for k in kinds(alice)
                if k
                in ("dtls.handshake_complete", "srtp.held", "dtls.connected", "srtp.released", "srtp.first_received")
            ]
            assert order == [
                "dtls.handshake_complete",
                "srtp.held",
                "dtls.connected",
                "srtp.released",
                "srtp.first_received",
            ]
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_early_media_of_a_peer_the_answer_does_not_vouch_for_is_never_decrypted():
    async def scenario():
        alice, bob = await pair(alice_knows=False)
        try:
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            bob.start_media(5, ptime=0.001)
            await until(lambda: alice.srtp_held == 5)
            alice.set_peer_fingerprints([("sha-256", dtls.Certificate.generate("mallory").digest("sha-256"))])
            await wait(alice.failed)
            assert "srtp.discarded" in kinds(alice)
            assert alice.stats.srtp_received == 0 and alice.stats.before_handshake == 5
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())


def test_a_port_takes_dtls_state_for_a_bounded_number_of_forks():
    """RFC 5763 §6.3: an offerer's port accepts a ClientHello from each new address as a fork, but anyone
    can send ClientHellos: past MAX_SESSIONS_PER_PORT they are dropped and counted, no state is made."""
    from pinhole.media import MAX_SESSIONS_PER_PORT

    async def scenario():
        alice, bob = await pair()
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            alice.accept_forks = True
            hello = dtls.DtlsEndpoint(dtls.Role.CLIENT, dtls.Certificate.generate("stranger")).start(0.0)[0]
            strangers = [("127.0.0.1", 40000 + n) for n in range(MAX_SESSIONS_PER_PORT + 5)]
            for address in strangers:
                alice.datagram_received(hello, address)
            assert len(alice.socket_sessions) == MAX_SESSIONS_PER_PORT
            assert alice.stats.unexpected_source == len(strangers) - (MAX_SESSIONS_PER_PORT - 1)
        finally:
            for session in list(alice.socket_sessions) + [bob]:
                session.teardown("test over")

    asyncio.run(scenario())


def test_a_strangers_bad_client_hello_before_the_answer_fails_alone():
    """Before the answer Alice serves any ClientHello (RFC 5763 §5); one that OpenSSL rejects is a
    tentative association no answer vouched for: it fails alone, and the peer's handshake then works."""

    async def scenario():
        alice, bob = await pair(alice_knows=False)
        alice.accept_forks = True  # as the offerer's session has it until the INVITE transaction ends
        loop = asyncio.get_running_loop()
        stranger, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            stranger.sendto(malformed_client_hello(), alice.local_address)
            await until(lambda: "dtls.failed_alone" in kinds(alice))
            assert not alice.closed and not alice.failed.is_set() and alice.endpoint is None
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            await until(lambda: "dtls.handshake_complete" in kinds(alice))
            alice.set_peer_fingerprints([("sha-256", bob.certificate.digest("sha-256"))])  # the answer arrives
            await wait(alice.connected)
            await wait(bob.connected)
            assert alice.remote == bob.local_address and alice.association == 2
            failed = [e for e in alice.events.since() if e.kind == "dtls.failed_alone"]
            assert len(failed) == 1 and "dtls.failed" not in kinds(alice)
        finally:
            stranger.close()
            for session in list(alice.socket_sessions) + [bob]:
                session.teardown("test over")

    asyncio.run(scenario())


def test_the_peers_media_before_our_handshake_completes_resends_our_last_flight():
    """Alice's last flight (ChangeCipherSpec, Finished) is lost on its way to Bob; she is done and sends SRTP.
    Bob resends his flight at once on her SRTP (RFC 6347 §4.2.4: she answers it with hers), not at his
    timer, backed off to seconds by then."""
    slow = MediaTimers(dtls=dtls.RetransmitTimer(initial=5.0, maximum=10.0, max_transmissions=6), stun_rto=0.05)

    async def scenario():
        alice, bob = await pair()
        bob.timers = alice.timers = slow
        lost: list[bytes] = []
        delivered = bob.datagram_received

        def lossy(data: bytes, addr: tuple[str, int]) -> None:
            records = dtls.parse_records(data) if data[:1] == b"\x16" or data[:1] == b"\x14" else []
            if not lost and any(r.epoch == 1 for r in records):
                lost.append(data)  # Alice's Finished, once
                return
            delivered(data, addr)

        bob.datagram_received = lossy  # type: ignore[method-assign]
        try:
            alice.start_dtls(dtls.Role.SERVER, bob.local_address)
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            await wait(alice.connected)
            alice.start_media(50, ptime=0.01)
            await wait(bob.connected)
            resent = [e for e in bob.events.since() if e.kind == "dtls.send" and e.attributes["cause"] == "peer-media"]
            assert lost and len(resent) == 1
            assert bob.endpoint.retransmissions == 1  # that one: the 5 s timer never fired
            await until(lambda: bob.stats.srtp_received > 0)
        finally:
            alice.teardown("test over")
            bob.teardown("test over")

    asyncio.run(scenario())
