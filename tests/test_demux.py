"""pinhole.demux: RFC 7983 ranges at every boundary, describe() of golden packets, fuzzing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pinhole import stun
from pinhole.demux import PacketKind, classify, describe
from pinhole.dtls import Certificate, DtlsEndpoint, Role
from pinhole.rtp import RtpPacket, sender_report

STUN_DATA = Path(__file__).parent / "data" / "stun"


def _kind_of_first_byte(first: int) -> PacketKind:
    """The RFC 7983 §7 table, written out independently of the implementation."""
    table = [
        (0, 3, PacketKind.STUN),
        (16, 19, PacketKind.ZRTP),
        (20, 63, PacketKind.DTLS),
        (64, 79, PacketKind.TURN_CHANNEL),
        (128, 191, PacketKind.RTP),
    ]
    for low, high, kind in table:
        if low <= first <= high:
            return kind
    return PacketKind.UNKNOWN


@pytest.mark.parametrize(
    "first, kind",
    [
        (0, PacketKind.STUN),
        (3, PacketKind.STUN),
        (4, PacketKind.UNKNOWN),
        (15, PacketKind.UNKNOWN),
        (16, PacketKind.ZRTP),
        (19, PacketKind.ZRTP),
        (20, PacketKind.DTLS),
        (63, PacketKind.DTLS),
        (64, PacketKind.TURN_CHANNEL),
        (79, PacketKind.TURN_CHANNEL),
        (80, PacketKind.UNKNOWN),
        (127, PacketKind.UNKNOWN),
        (128, PacketKind.RTP),
        (191, PacketKind.RTP),
        (192, PacketKind.UNKNOWN),
        (255, PacketKind.UNKNOWN),
    ],
)
def test_first_byte_boundaries(first: int, kind: PacketKind) -> None:
    assert classify(bytes([first, 0]) + bytes(18)) is kind


def test_every_first_byte_matches_rfc7983_table() -> None:
    for first in range(256):
        assert classify(bytes([first, 0x00]) + bytes(30)) is _kind_of_first_byte(first), first


@pytest.mark.parametrize(
    "second, kind",
    [
        (0x00, PacketKind.RTP),
        (0x7F, PacketKind.RTP),
        (0x80, PacketKind.RTP),
        (191, PacketKind.RTP),
        (192, PacketKind.RTCP),
        (200, PacketKind.RTCP),
        (223, PacketKind.RTCP),
        (224, PacketKind.RTP),
        (255, PacketKind.RTP),
    ],
)
def test_rtp_rtcp_split_on_second_byte(second: int, kind: PacketKind) -> None:
    assert classify(bytes([0x80, second]) + bytes(10)) is kind
    assert classify(bytes([0xBF, second]) + bytes(10)) is kind


def test_short_and_empty() -> None:
    assert classify(b"") is PacketKind.UNKNOWN
    assert classify(b"\x80") is PacketKind.RTP
    assert classify(b"\x00") is PacketKind.STUN


def test_values_are_lower_case_names() -> None:
    assert [k.value for k in PacketKind] == ["stun", "zrtp", "dtls", "turn_channel", "rtp", "rtcp", "unknown"]


# -- describe -----------------------------------------------------------------------------------------


def test_describe_stun_request() -> None:
    tid = bytes.fromhex("3f2a0000000000000000beef")
    data = stun.encode(stun.binding_request(tid))
    assert describe(data) == {
        "kind": "stun",
        "stun.class": "request",
        "stun.method": "binding",
        "stun.transaction_id": "3f2a0000000000000000beef",
        "stun.fingerprint": "yes",
        "stun.message_integrity": "no",
        "summary": "STUN Binding request 3f2a0000…",
    }


def test_describe_rfc5769_ipv4_response() -> None:
    described = describe((STUN_DATA / "rfc5769-ipv4-response.bin").read_bytes())
    assert described == {
        "kind": "stun",
        "stun.class": "success_response",
        "stun.method": "binding",
        "stun.transaction_id": "b7e7a701bc34d686fa87dfae",
        "stun.xor_mapped_address": "192.0.2.1:32853",
        "stun.software": "test vector",
        "stun.fingerprint": "yes",
        "stun.message_integrity": "yes",
        "summary": "STUN Binding success response b7e7a701… xor-mapped=192.0.2.1:32853",
    }


def test_describe_rfc5769_ipv6_response() -> None:
    described = describe((STUN_DATA / "rfc5769-ipv6-response.bin").read_bytes())
    assert described["stun.xor_mapped_address"] == "[2001:db8:1234:5678:11:2233:4455:6677]:32853"


def test_describe_stun_error_response() -> None:
    tid = bytes(12)
    message = stun.Message(
        stun.Method.BINDING,
        stun.MessageClass.ERROR_RESPONSE,
        tid,
        [(stun.AttributeType.ERROR_CODE, b"\x00\x00\x04\x00Bad Request")],
    )
    described = describe(stun.encode(message))
    assert described["stun.class"] == "error_response"
    assert described["stun.error_code"] == "400"
    assert described["summary"] == "STUN Binding error response 00000000… 400 Bad Request"


def test_describe_malformed_stun() -> None:
    data = bytearray((STUN_DATA / "rfc5769-request.bin").read_bytes())
    data[-1] ^= 1
    assert describe(bytes(data)) == {
        "kind": "stun",
        "error": "FINGERPRINT 0xE57A3BCE does not match the computed 0xE57A3BCF",
        "summary": "STUN (malformed: FINGERPRINT 0xE57A3BCE does not match the computed 0xE57A3BCF)",
    }


def test_describe_rtp() -> None:
    data = RtpPacket(0, 5, 160, 0x1234, b"\xff" * 160, marker=True).encode()
    assert describe(data) == {
        "kind": "rtp",
        "rtp.ssrc": "0x00001234",
        "rtp.seq": "5",
        "rtp.timestamp": "160",
        "rtp.payload_type": "0",
        "rtp.marker": "1",
        "summary": "RTP ssrc=0x00001234 seq=5 pt=0",
    }


def test_describe_short_rtp() -> None:
    assert describe(b"\x80\x00\x00") == {
        "kind": "rtp",
        "error": "packet of 3 bytes is shorter than the 12-byte RTP header",
        "summary": "RTP (malformed: packet of 3 bytes is shorter than the 12-byte RTP header)",
    }


def test_describe_rtcp_sender_report() -> None:
    data = sender_report(0xCAFEBABE, 0, 0, 1, 160)
    assert describe(data) == {
        "kind": "rtcp",
        "rtcp.packet_type": "200",
        "rtcp.packet_type_name": "SR",
        "rtcp.ssrc": "0xcafebabe",
        "summary": "RTCP SR ssrc=0xcafebabe",
    }


def test_describe_turn_channel_zrtp_unknown() -> None:
    assert describe(bytes.fromhex("40000004deadbeef")) == {
        "kind": "turn_channel",
        "turn.channel": "0x4000",
        "turn.length": "4",
        "summary": "TURN ChannelData channel=0x4000 length=4",
    }
    assert describe(b"\x10" + bytes(11)) == {"kind": "zrtp", "summary": "ZRTP (12 bytes)"}
    assert describe(b"") == {"kind": "unknown", "summary": "empty datagram"}
    assert describe(b"\xff\x00") == {"kind": "unknown", "summary": "unknown first byte 0xff (2 bytes)"}


def test_describe_real_client_hello() -> None:
    """A ClientHello from our DTLS endpoint is described through pinhole.dtls."""
    endpoint = DtlsEndpoint(Role.CLIENT, Certificate.generate())
    (datagram,) = endpoint.start(0.0)
    described = describe(datagram)
    assert described["kind"] == "dtls"
    assert described["dtls.handshake_types"] == "client_hello"
    assert described["summary"] == "DTLS ClientHello"


def test_describe_truncated_dtls_reports_the_error() -> None:
    described = describe(bytes.fromhex("16fefd0000000000000000002a") + bytes(10))
    assert described["kind"] == "dtls"
    assert "error" in described
    assert described["summary"] == "DTLS (malformed)"


def _check(described: dict[str, str]) -> None:
    assert isinstance(described, dict)
    assert "kind" in described and "summary" in described
    assert described["kind"] in {k.value for k in PacketKind}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in described.items())


def test_fuzz_describe_never_raises() -> None:
    rng = random.Random(5763)
    cookie = bytes.fromhex("2112a442")
    for i in range(4000):
        length = rng.choice([0, 1, 2, 3, 4, 8, 12, 13, 19, 20, 24, 28, 40, rng.randrange(0, 300)])
        data = bytearray(rng.randbytes(length))
        if data and i % 4 == 0:
            data[0] = rng.choice([0, 1, 2, 3, 16, 20, 22, 64, 128, 191])
        if length >= 20 and i % 3 == 0:  # mostly-valid STUN headers reach the attribute parser
            data[0] &= 0x01
            data[4:8] = cookie
            data[2:4] = (length - 20).to_bytes(2, "big")
        _check(describe(bytes(data)))
        assert classify(bytes(data)) is (PacketKind.UNKNOWN if not data else _classify_ref(bytes(data)))


def _classify_ref(data: bytes) -> PacketKind:
    kind = _kind_of_first_byte(data[0])
    if kind is PacketKind.RTP and len(data) >= 2 and 192 <= data[1] <= 223:
        return PacketKind.RTCP
    return kind


def test_fuzz_mutated_golden_stun() -> None:
    rng = random.Random(8489)
    golden = [(STUN_DATA / f"rfc5769-{n}.bin").read_bytes() for n in ("request", "ipv4-response", "ipv6-response")]
    for _ in range(2000):
        data = bytearray(rng.choice(golden))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(20, len(data)) :]
        _check(describe(bytes(data)))


def test_describe_accepts_bytearray_and_memoryview() -> None:
    data = stun.encode(stun.binding_request(bytes(12)))
    assert describe(bytearray(data))["kind"] == "stun"
    assert describe(memoryview(data))["kind"] == "stun"
