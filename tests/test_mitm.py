"""The mitm proxy deviation's SDP rewrite and its media relay, without a lab (RFC 5763 §8's attack)."""

from __future__ import annotations

import asyncio

from pinhole import dtls, sdp
from pinhole.events import EventLog
from pinhole.media import MediaSession, MediaTimers
from services.proxy.mitm import media_timers, rewrite

TIMERS = MediaTimers(dtls=dtls.RetransmitTimer(initial=0.05, maximum=0.4, max_transmissions=6), stun_rto=0.05)


def test_the_rewrite_replaces_address_port_and_every_fingerprint_and_nothing_else():
    alice = dtls.Certificate.generate("alice")
    offer = sdp.build_offer(
        address="203.0.113.1", port=40000, fingerprints=[sdp.certificate_fingerprint(alice.der)], session_id=7
    )
    mallory = sdp.certificate_fingerprint(dtls.Certificate.generate("mallory").der)
    body = rewrite(sdp.serialize(offer).encode(), "203.0.113.20", 45000, mallory)
    before, after = sdp.read_offer(offer), sdp.read_offer(sdp.parse(body))
    assert (after.address, after.port, [str(f) for f in after.fingerprints]) == ("203.0.113.20", 45000, [str(mallory)])
    assert (after.setup, after.rtcp_mux, after.proto) == (before.setup, before.rtcp_mux, before.proto)


def test_media_timers_scale_with_the_proxys_t1():
    assert media_timers(0.5) == MediaTimers()
    short = media_timers(0.1)
    assert (short.dtls.initial, short.stun_rto) == (0.2, 0.1)


def test_a_relay_decrypts_on_one_side_and_protects_for_the_other():
    """alice <-> box(a) | box(b) <-> bob: Alice's SRTP reaches Bob, decrypted and protected again by the box,
    each side's handshake verified against the certificate it was told about (the box's)."""

    async def scenario() -> None:
        def session(name: str, certificate: dtls.Certificate) -> asyncio.Future[MediaSession]:
            return MediaSession.open(
                "127.0.0.1",
                certificate=certificate,
                events=EventLog(name),
                call_id="c",
                timers=TIMERS,
                srtp_profiles=("SRTP_AEAD_AES_128_GCM",),
            )

        box_certificate = dtls.Certificate.generate("mallory")
        alice = await session("alice", dtls.Certificate.generate("alice"))
        bob = await session("bob", dtls.Certificate.generate("bob"))
        box_a, box_b = await session("box", box_certificate), await session("box", box_certificate)
        try:
            box_a.relay_to, box_b.relay_to = box_b, box_a
            for left, right in ((alice, box_a), (box_b, bob)):
                left.set_peer_fingerprints([("sha-256", right.certificate.digest())])
                right.set_peer_fingerprints([("sha-256", left.certificate.digest())])
                left.start_dtls(dtls.Role.SERVER, right.local_address)
                right.start_dtls(dtls.Role.CLIENT, left.local_address)
            for s in (alice, bob, box_a, box_b):
                await asyncio.wait_for(s.connected.wait(), 10)
            alice.start_media(5, ptime=0.001)
            bob.start_media(5, ptime=0.001)
            deadline = asyncio.get_running_loop().time() + 10
            while not (bob.stats.srtp_received == 5 and alice.stats.srtp_received == 5):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.001)
            assert box_b.stats.relayed == 5 and box_a.stats.relayed == 5
            assert alice.stats.srtp_auth_failed == bob.stats.srtp_auth_failed == 0
        finally:
            for s in (alice, bob, box_a, box_b):
                s.teardown("test over")

    asyncio.run(scenario())
