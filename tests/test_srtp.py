"""SRTP/SRTCP on libsrtp keyed as DTLS-SRTP does it (RFC 5764 §4.2, RFC 3711)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from pinhole.dtls import Certificate, DtlsEndpoint, Role
from pinhole.srtp import (
    PROFILES,
    SrtpAuthError,
    SrtpError,
    SrtpKeys,
    SrtpSession,
    keying_material_length,
    keys_from_keying_material,
)

PAYLOAD = bytes(range(160))


def rtp(sequence: int, ssrc: int = 0x11223344, payload: bytes = PAYLOAD) -> bytes:
    """RFC 3550 §5.1 header: V=2, PT=0 (PCMU)."""
    return struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, ssrc) + payload


def rtcp_receiver_report(ssrc: int = 0x11223344) -> bytes:
    """RFC 3550 §6.4.2 RR with no report blocks."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def keys_for(profile: str) -> SrtpKeys:
    _, key_len, salt_len = PROFILES[profile]
    material = bytes(range(1, 2 * (key_len + salt_len) + 1))
    return keys_from_keying_material(material, profile, is_client=True)


# -- key layout -------------------------------------------------------------------------------------


def test_keying_material_split_follows_rfc5764_layout() -> None:
    # client_key | server_key | client_salt | server_salt
    material = bytes(range(60))
    client = keys_from_keying_material(material, "SRTP_AES128_CM_SHA1_80", is_client=True)
    server = keys_from_keying_material(material, "SRTP_AES128_CM_SHA1_80", is_client=False)
    assert client.local_key == bytes(range(16))
    assert client.remote_key == bytes(range(16, 32))
    assert client.local_salt == bytes(range(32, 46))
    assert client.remote_salt == bytes(range(46, 60))
    assert server == client.mirrored()


def test_keying_material_lengths() -> None:
    assert keying_material_length("SRTP_AES128_CM_SHA1_80") == 60
    assert keying_material_length("SRTP_AES128_CM_SHA1_32") == 60
    assert keying_material_length("SRTP_AEAD_AES_128_GCM") == 56
    assert keying_material_length("SRTP_AEAD_AES_256_GCM") == 88


def test_bad_keys_are_refused_with_reason() -> None:
    with pytest.raises(SrtpError, match=r"^keying material is 59 bytes, SRTP_AES128_CM_SHA1_80 needs 60$"):
        keys_from_keying_material(bytes(59), "SRTP_AES128_CM_SHA1_80", is_client=True)
    with pytest.raises(SrtpError, match=r"^local_key is 15 bytes, SRTP_AEAD_AES_128_GCM needs 16$"):
        SrtpKeys("SRTP_AEAD_AES_128_GCM", bytes(15), bytes(12), bytes(16), bytes(12))
    with pytest.raises(SrtpError, match=r"^unknown SRTP protection profile 'SRTP_NULL_SHA1_80'"):
        SrtpKeys("SRTP_NULL_SHA1_80", bytes(16), bytes(14), bytes(16), bytes(14))


def test_repr_hides_keys() -> None:
    keys = keys_for("SRTP_AES128_CM_SHA1_80")
    assert repr(keys) == "SrtpKeys(profile='SRTP_AES128_CM_SHA1_80', <keys hidden>)"


# -- protect / unprotect ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rtp_and_rtcp_round_trip_between_mirrored_sessions(profile: str) -> None:
    keys = keys_for(profile)
    alice, bob = SrtpSession(keys), SrtpSession(keys.mirrored())
    for sequence in range(1, 4):
        packet = rtp(sequence)
        protected = alice.protect(packet)
        assert protected != packet and protected[:12] == packet[:12]  # header stays in clear
        assert bob.unprotect(protected) == packet
        reply = rtp(sequence, ssrc=0x55667788)
        assert alice.unprotect(bob.protect(reply)) == reply
    report = rtcp_receiver_report()
    assert bob.unprotect_rtcp(alice.protect_rtcp(report)) == report
    assert alice.unprotect_rtcp(bob.protect_rtcp(report)) == report


def test_protect_adds_the_profile_tag() -> None:
    packet = rtp(1)
    assert len(SrtpSession(keys_for("SRTP_AES128_CM_SHA1_80")).protect(packet)) == len(packet) + 10
    assert len(SrtpSession(keys_for("SRTP_AES128_CM_SHA1_32")).protect(packet)) == len(packet) + 4
    assert len(SrtpSession(keys_for("SRTP_AEAD_AES_128_GCM")).protect(packet)) == len(packet) + 16


@pytest.mark.parametrize("profile", ["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"])
def test_tampered_packets_fail_authentication(profile: str) -> None:
    keys = keys_for(profile)
    alice, bob = SrtpSession(keys), SrtpSession(keys.mirrored())
    protected = bytearray(alice.protect(rtp(1)))
    protected[20] ^= 0x01
    with pytest.raises(SrtpAuthError, match=r"^SRTP unprotect failed: .*(authentication|cipher) failure$"):
        bob.unprotect(bytes(protected))
    protected_rtcp = bytearray(alice.protect_rtcp(rtcp_receiver_report()))
    protected_rtcp[5] ^= 0x01
    with pytest.raises(SrtpAuthError, match=r"^SRTCP unprotect failed: .*(authentication|cipher) failure$"):
        bob.unprotect_rtcp(bytes(protected_rtcp))


def test_replayed_packet_is_refused() -> None:
    keys = keys_for("SRTP_AES128_CM_SHA1_80")
    alice, bob = SrtpSession(keys), SrtpSession(keys.mirrored())
    protected = alice.protect(rtp(7))
    bob.unprotect(protected)
    with pytest.raises(SrtpAuthError, match=r"^SRTP unprotect failed: replay check failed \(bad index\)$"):
        bob.unprotect(protected)


# Found by fuzzing (python -m fuzz --target srtp), zlib+base64 of the exact inputs: pylibsrtp refuses a packet
# longer than its 1500-byte buffer (less the room for the tag) with a ValueError, which got past SrtpSession.
OVERSIZED_SRTP = zlib.decompress(
    base64.b64decode(  # 10,846 bytes, sha1 a7626444a2691e27f759af9334bd204be6e01561
        "eNprYHh6Mjnf51SkXGWKvJ8sZ8JWQ3N3JfmPWot/my3c8Zu1/aBZSI/qUaeHLheFbae66RZ8OLnz26G2Dwnyf9c1Otv8T+DQj/J2XJTb91Ew"
        "quCSQcXUNrV3r4UD1SI2a94LdpzPz72y4pOH+hqHCSILfTZHqrh7Zl2dWblWRDbE+8yTytWHGb4GF0Y/kpnc6pXJtLek8ufMXX+jWe977vl6"
        "zyDzifjOmU3buFmNdxXK//319dvVyZus70nb+TMY89iIL/+ez2J9w6+9xUnm+oNPIIdyEeHQzEHh0iETpKMOHXXoqENHHTrq0FGHjjp01KGj"
        "Dh116KhDRx066tBRh446dNShow4ddeioQ0cdOurQUYeOOnTUoaMOHXXoqENHHTrq0FGHjjp01KGjDh116KhDRx066tBRh446dAQ6FACsmnox"
    )
)
OVERSIZED_RTP = zlib.decompress(
    base64.b64decode(  # 1,448 bytes, sha1 5fb28a6ff6910169612e00cb920faa5a69f08ee2
        "eNprYJhtv+D6krY7XUYbWi69ncJd7CxoIH5826rJovvn2WjM2lH0VqV7YUdgv6Vdjfy0GC/z1PDOI2lfa26cP+594EjyE0b7G9N97L5e+fz9"
        "YH5FlXrilqpFPEqMRfujPpSeZIg2WXjaV/+Asv5BoytdfY9fWb15cVr1Vu0C43sMkY95t8gnTHE/OCP5RFnwLv252verNnH/X8vX0bh53qbL"
        "7hcXvLX4lR9UcNsw0SJUyWxF8BJbqS2TcgN3XJ+yypZlx7RtjxxKR9086uZRN4+6eSS4GQC9Otk6"
    )
)


def test_a_packet_too_long_for_libsrtp_is_an_srtp_error() -> None:
    """unprotect raises the error its callers drop a received packet on (media.py catches SrtpAuthError)."""
    session = SrtpSession(keys_for("SRTP_AES128_CM_SHA1_80"))
    for unprotect in (session.unprotect, session.unprotect_rtcp):
        with pytest.raises(SrtpAuthError, match=r"^SRTC?P unprotect failed: packet is too long$"):
            unprotect(OVERSIZED_SRTP)
    for protect in (session.protect, session.protect_rtcp):
        with pytest.raises(SrtpError, match=r"^SRTC?P protect failed: packet is too long$"):
            protect(OVERSIZED_RTP)


def test_wrong_direction_keys_do_not_decrypt() -> None:
    keys = keys_for("SRTP_AES128_CM_SHA1_80")
    alice, eve = SrtpSession(keys), SrtpSession(keys)  # eve uses alice's own keys, not mirrored
    with pytest.raises(SrtpAuthError, match=r"^SRTP unprotect failed: authentication failure$"):
        eve.unprotect(alice.protect(rtp(1)))


# -- keyed by a real DTLS handshake -----------------------------------------------------------------


def handshake(client: DtlsEndpoint, server: DtlsEndpoint) -> None:
    pending = [(server, d) for d in client.start(0.0)]
    server.start(0.0)
    while pending:
        receiver, datagram = pending.pop(0)
        sender = client if receiver is server else server
        pending += [(sender, d) for d in receiver.receive(datagram, 0.0)]
    assert client.state == server.state == "connected"


@pytest.mark.parametrize("profile", ["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"])
def test_keys_from_dtls_handshake_work_end_to_end(profile: str) -> None:
    bob_cert, alice_cert = Certificate.generate("bob"), Certificate.generate("alice")
    bob = DtlsEndpoint(
        Role.CLIENT,
        bob_cert,
        srtp_profiles=[profile],
        peer_fingerprints=[("sha-256", alice_cert.digest())],
    )
    alice = DtlsEndpoint(Role.SERVER, alice_cert, peer_fingerprints=[("sha-256", bob_cert.digest())])
    handshake(bob, alice)
    assert bob.selected_profile == alice.selected_profile == profile
    bob_srtp, alice_srtp = SrtpSession(bob.srtp_keys()), SrtpSession(alice.srtp_keys())
    assert alice_srtp.unprotect(bob_srtp.protect(rtp(1))) == rtp(1)
    assert bob_srtp.unprotect(alice_srtp.protect(rtp(1, ssrc=9))) == rtp(1, ssrc=9)
    report = rtcp_receiver_report()
    assert alice_srtp.unprotect_rtcp(bob_srtp.protect_rtcp(report)) == report
    assert bob_srtp.unprotect_rtcp(alice_srtp.protect_rtcp(report)) == report
