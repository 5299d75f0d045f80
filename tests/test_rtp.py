"""pinhole.rtp: RFC 3550 header codec, stream numbering, sender report, with golden bytes."""

from __future__ import annotations

import pytest

from pinhole.rtp import HeaderExtension, RtpError, RtpPacket, RtpStream, ntp_timestamp, sender_report

SIMPLE = bytes.fromhex("80801234deadbeef12345678ffffffff")
FULL = bytes.fromhex(
    "b260"
    "0001"
    "00000002"
    "00000003"  # V=2 P X CC=2, PT 96, seq, ts, ssrc
    "0000000a"
    "0000000b"  # CSRCs
    "bede0001"
    "10ff0000"  # extension: profile 0xBEDE, one word
    "616263"  # payload "abc"
    "00000004"  # four padding octets, the last one counts them
)


def test_encode_simple_golden() -> None:
    packet = RtpPacket(0, 0x1234, 0xDEADBEEF, 0x12345678, b"\xff" * 4, marker=True)
    assert packet.encode() == SIMPLE
    assert RtpPacket.decode(SIMPLE) == packet


def test_encode_full_golden() -> None:
    packet = RtpPacket(
        payload_type=96,
        sequence_number=1,
        timestamp=2,
        ssrc=3,
        payload=b"abc",
        csrc=(10, 11),
        extension=HeaderExtension(0xBEDE, bytes.fromhex("10ff0000")),
        padding=4,
    )
    assert packet.encode() == FULL
    decoded = RtpPacket.decode(FULL)
    assert decoded == packet
    assert decoded.payload == b"abc"


def test_empty_extension_and_payload() -> None:
    packet = RtpPacket(8, 65535, 0, 0xFFFFFFFF, extension=HeaderExtension(1))
    data = packet.encode()
    assert data == bytes.fromhex("9008ffff00000000ffffffff00010000")
    assert RtpPacket.decode(data) == packet


@pytest.mark.parametrize(
    "data, message",
    [
        (SIMPLE[:11], "packet of 11 bytes is shorter than the 12-byte RTP header"),
        (b"\x40" + SIMPLE[1:], "version 1 is not 2"),
        (b"\x00" + SIMPLE[1:], "version 0 is not 2"),
        (b"\x83" + SIMPLE[1:12] + b"\x00" * 8, "CSRC count 3 needs 24 header bytes, packet has 20"),
        (b"\x90" + SIMPLE[1:12] + b"\xbe\xde", "extension header at offset 12 is truncated"),
        (
            b"\x90" + SIMPLE[1:12] + bytes.fromhex("bede0002") + b"\x00" * 4,
            "extension of 2 words at offset 12 exceeds the packet",
        ),
        (b"\xa0" + SIMPLE[1:12], "padding bit set but there is no padding count octet"),
        (b"\xa0" + SIMPLE[1:12] + b"\x01\x00", "padding count is 0 (it includes itself, so must be >= 1)"),
        (b"\xa0" + SIMPLE[1:12] + b"\x01\x03", "padding count 3 exceeds the 2 bytes after the header"),
    ],
)
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtpError) as excinfo:
        RtpPacket.decode(data)
    assert str(excinfo.value) == message


def test_padding_may_fill_the_whole_payload() -> None:
    decoded = RtpPacket.decode(b"\xa0" + SIMPLE[1:12] + b"\x00\x02")
    assert decoded.payload == b"" and decoded.padding == 2


@pytest.mark.parametrize(
    "packet, message",
    [
        (RtpPacket(128, 0, 0, 0), "payload type 128 does not fit in 7 bits"),
        (RtpPacket(0, 65536, 0, 0), "sequence number 65536 does not fit in 16 bits"),
        (RtpPacket(0, 0, -1, 0), "timestamp -1 does not fit in 32 bits"),
        (RtpPacket(0, 0, 0, 1 << 32), "SSRC 4294967296 does not fit in 32 bits"),
        (RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))), "16 CSRCs: at most 15 fit the CC field"),
        (RtpPacket(0, 0, 0, 0, csrc=(1 << 32,)), "CSRC 4294967296 does not fit in 32 bits"),
        (RtpPacket(0, 0, 0, 0, padding=256), "padding 256 does not fit in one count octet (0..255)"),
        (
            RtpPacket(0, 0, 0, 0, extension=HeaderExtension(1, b"abc")),
            "extension data of 3 bytes is not a whole number of 32-bit words",
        ),
        (RtpPacket(0, 0, 0, 0, extension=HeaderExtension(1 << 16)), "extension profile 65536 does not fit in 16 bits"),
    ],
)
def test_encode_errors(packet: RtpPacket, message: str) -> None:
    with pytest.raises(RtpError) as excinfo:
        packet.encode()
    assert str(excinfo.value) == message


def test_stream_numbering_and_wrap() -> None:
    stream = RtpStream(0x11223344, 0, first_sequence_number=65534, first_timestamp=0xFFFFFFA0)
    packets = [stream.next_packet(b"\x00" * 160) for _ in range(3)]
    assert [p.sequence_number for p in packets] == [65534, 65535, 0]
    assert [p.timestamp for p in packets] == [0xFFFFFFA0, 0x00000040, 0x000000E0]
    assert [p.marker for p in packets] == [True, False, False]
    assert packets[0].encode()[:12] == bytes.fromhex("8080fffeffffffa011223344")
    assert stream.packets_sent == 3 and stream.octets_sent == 480


def test_stream_other_clock() -> None:
    stream = RtpStream(1, 111, clock_rate=48000, ptime=0.02, first_sequence_number=0, first_timestamp=0)
    stream.next_packet(b"")
    assert stream.next_packet(b"").timestamp == 960


def test_stream_random_start() -> None:
    starts = {RtpStream(1, 0).sequence_number for _ in range(20)}
    assert len(starts) > 1


def test_stream_errors() -> None:
    with pytest.raises(RtpError, match=r"^payload type 200 does not fit in 7 bits$"):
        RtpStream(1, 200)
    with pytest.raises(RtpError, match=r"^sequence number 70000 does not fit in 16 bits$"):
        RtpStream(1, 0, first_sequence_number=70000)


def test_sender_report_golden() -> None:
    report = sender_report(0x12345678, 0x0102030405060708, 0xDEADBEEF, packets=10, octets=1600)
    assert report == bytes.fromhex("80c80006123456780102030405060708deadbeef0000000a00000640")


def test_sender_report_counts_wrap() -> None:
    report = sender_report(1, 0, 0, packets=(1 << 32) + 1, octets=(1 << 32) + 2)
    assert report[-8:] == bytes.fromhex("0000000100000002")


def test_sender_report_errors() -> None:
    with pytest.raises(RtpError, match=r"^NTP timestamp 18446744073709551616 does not fit in 64 bits$"):
        sender_report(1, 1 << 64, 0, 0, 0)
    with pytest.raises(RtpError, match=r"^packet count -1 and octet count 0 must not be negative$"):
        sender_report(1, 0, 0, -1, 0)


def test_ntp_timestamp() -> None:
    assert ntp_timestamp(0.0) == 0x83AA7E80_00000000
    assert ntp_timestamp(1.5) == 0x83AA7E81_80000000
