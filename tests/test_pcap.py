"""pinhole.pcap: classic pcap files and the Ethernet/IPv4/UDP decoder, with golden bytes."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pinhole.pcap import (
    PcapError,
    PcapWriter,
    UdpDatagram,
    decode_ipv4_udp,
    decode_udp,
    pack_global_header,
    pack_record,
    read_pcap,
)

ETH = bytes.fromhex("0200000000020200000000010800")
# 192.0.2.10:5060 -> 198.51.100.20:3478, DF, TTL 64, header checksum 0x4e7a, UDP checksum 0.
IPV4 = bytes.fromhex("450000200001400040114e7ac000020ac6336414")
UDP = bytes.fromhex("13c40d96000c0000") + b"ping"
FRAME = ETH + IPV4 + UDP
DATAGRAM = UdpDatagram(src=("192.0.2.10", 5060), dst=("198.51.100.20", 3478), payload=b"ping")

GLOBAL_HEADER = bytes.fromhex(
    "d4c3b2a1"  # magic, little-endian, microseconds
    "0200"
    "0400"  # version 2.4
    "00000000"
    "00000000"  # thiszone, sigfigs
    "00000400"  # snaplen 262144
    "01000000"  # linktype 1, Ethernet
)


def test_global_header_golden() -> None:
    assert pack_global_header() == GLOBAL_HEADER


def test_writer_golden_bytes(tmp_path: Path) -> None:
    path = tmp_path / "one.pcap"
    with PcapWriter(path) as writer:
        writer.write(1700000000.25, b"\x01\x02\x03")
    assert path.read_bytes() == GLOBAL_HEADER + bytes.fromhex(
        "00f15365"  # 1700000000 s
        "90d00300"  # 250000 us
        "03000000"
        "03000000"  # captured and original length
        "010203"
    )


def test_record_timestamp_rounds_with_carry() -> None:
    record = pack_record(1.9999999, b"")
    assert struct.unpack("<IIII", record) == (2, 0, 0, 0)


def test_record_cut_to_snaplen_keeps_original_length() -> None:
    record = pack_record(0.0, b"abcdef", snaplen=4)
    assert record == struct.pack("<IIII", 0, 0, 4, 6) + b"abcd"


def test_record_rejects_negative_timestamp() -> None:
    with pytest.raises(PcapError, match=r"^timestamp -1.0 is negative$"):
        pack_record(-1.0, b"")


def test_write_after_close(tmp_path: Path) -> None:
    writer = PcapWriter(tmp_path / "x.pcap")
    writer.close()
    with pytest.raises(PcapError, match=r"x\.pcap: write after close$"):
        writer.write(0.0, b"")


def test_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "rt.pcap"
    with PcapWriter(path) as writer:
        writer.write(10.000001, FRAME)
        writer.write(11.5, b"\xff" * 60)
    assert list(read_pcap(path)) == [(10.000001, FRAME), (11.5, b"\xff" * 60)]


def test_read_big_endian_nanosecond_file(tmp_path: Path) -> None:
    path = tmp_path / "be.pcap"
    header = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(header + struct.pack(">IIII", 3, 500_000_000, 2, 2) + b"hi")
    assert list(read_pcap(path)) == [(3.5, b"hi")]


def test_read_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(20))  # a pcapng section header block
    with pytest.raises(PcapError) as info:
        list(read_pcap(path))
    assert str(info.value) == f"{path}: magic number 0x0a0d0d0a is not a classic pcap file"


def test_read_reports_truncated_record(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    path.write_bytes(GLOBAL_HEADER + struct.pack("<IIII", 0, 0, 10, 10) + b"12345")
    with pytest.raises(PcapError, match=r"cut\.pcap: record 0 is truncated \(5 of 10 bytes\)$"):
        list(read_pcap(path))


def test_decode_udp_golden() -> None:
    assert decode_udp(FRAME) == DATAGRAM


def test_decode_udp_tolerates_vlan_tags() -> None:
    tagged = ETH[:12] + bytes.fromhex("88a8 0064 8100 00c8 0800") + IPV4 + UDP
    assert decode_udp(tagged) == DATAGRAM


def test_decode_ipv4_udp_without_link_layer() -> None:
    assert decode_ipv4_udp(IPV4 + UDP) == DATAGRAM


def test_decode_udp_ignores_trailing_ethernet_padding() -> None:
    assert decode_udp(FRAME + bytes(14)) == DATAGRAM


@pytest.mark.parametrize(
    "frame",
    [
        ETH[:12] + b"\x08\x06" + bytes(28),  # ARP
        ETH[:12] + b"\x86\xdd" + bytes(40),  # IPv6
        ETH + IPV4[:9] + b"\x06" + IPV4[10:] + UDP,  # TCP
        ETH + IPV4[:6] + b"\x20\x00" + IPV4[8:] + UDP,  # first fragment (MF)
        ETH + IPV4[:6] + b"\x00\x10" + IPV4[8:] + UDP,  # later fragment
    ],
    ids=["arp", "ipv6", "tcp", "first-fragment", "later-fragment"],
)
def test_decode_udp_returns_none_for_other_traffic(frame: bytes) -> None:
    assert decode_udp(frame) is None


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (ETH[:10], "Ethernet frame is 10 bytes, shorter than its 14-byte header"),
        (ETH[:12] + b"\x81\x00\x00", "VLAN tag at offset 12 is truncated"),
        (ETH + IPV4[:12], "IPv4 header is truncated (12 of 20 bytes)"),
        (ETH + b"\x65" + IPV4[1:] + UDP, "IP version is 6, expected 4"),
        (ETH + b"\x44" + IPV4[1:] + UDP, "IPv4 header length 16 is below the minimum of 20"),
        (
            ETH + IPV4[:2] + b"\x00\x40" + IPV4[4:] + UDP,
            "IPv4 total length 64 does not fit the 32 bytes available with a 20-byte header",
        ),
        (
            ETH + IPV4[:2] + b"\x00\x18" + IPV4[4:] + UDP,
            "UDP header is truncated (4 of 8 bytes)",
        ),
        (
            ETH + IPV4 + UDP[:4] + b"\x00\x20" + UDP[6:],
            "UDP length 32 does not fit the 12 bytes of the IPv4 payload",
        ),
    ],
    ids=[
        "short-ethernet",
        "short-vlan",
        "short-ipv4",
        "version",
        "ihl",
        "total-length",
        "short-udp",
        "udp-length",
    ],
)
def test_decode_udp_rejects_malformed(frame: bytes, message: str) -> None:
    with pytest.raises(PcapError) as info:
        decode_udp(frame)
    assert str(info.value) == message


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_our_file(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    with PcapWriter(path) as writer:
        writer.write(1700000000.0, FRAME)
        writer.write(1700000000.5, FRAME)
    fields = ["-e", "ip.src", "-e", "udp.srcport", "-e", "udp.dstport"]
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", *fields],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.splitlines() == ["192.0.2.10\t5060\t3478"] * 2


def fragments_of(payload: bytes, sizes: list[int], identification: int = 7) -> list[bytes]:
    """An IPv4/UDP datagram carrying `payload`, cut into Ethernet frames of `sizes` payload bytes (multiples
    of 8 but the last), as a host with a small MTU sends it (RFC 791 §3.2)."""
    udp = struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload
    frames, offset = [], 0
    for index, size in enumerate(sizes):
        piece = udp[offset : offset + size]
        more = index < len(sizes) - 1
        flags = (0x2000 if more else 0) | (offset // 8)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), identification, flags, 64, 17, 0,
                             bytes([192, 0, 2, 10]), bytes([198, 51, 100, 20]))  # fmt: skip
        frames.append(ETH + header + piece)
        offset += len(piece)
    assert offset == len(udp)
    return frames


def test_fragments_are_put_back_together_in_any_order() -> None:
    """A SIP INVITE with an RFC 8224 Identity header is larger than the MTU: it crosses in pieces."""
    from pinhole.pcap import Reassembler

    payload = bytes(range(256)) * 14  # 3,584 bytes
    frames = fragments_of(payload, [1480, 1480, 632])
    assert [decode_udp(f) for f in frames] == [None, None, None]  # without a reassembler: no datagram
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 0, 2, 1]):
        reassembler = Reassembler()
        decoded = [decode_udp(frames[i], reassembler) for i in order]
        assert decoded[:-1] == [None] * (len(order) - 1)
        assert decoded[-1] == UdpDatagram(("192.0.2.10", 5060), ("198.51.100.20", 5060), payload)
        assert not reassembler.pending


def test_reassembly_is_bounded() -> None:
    from pinhole.pcap import Reassembler

    reassembler = Reassembler()
    for identification in range(Reassembler.MAX_PENDING + 10):  # first pieces only: never complete
        decode_udp(fragments_of(b"x" * 2000, [1480, 528], identification)[0], reassembler)
    assert len(reassembler.pending) == Reassembler.MAX_PENDING and reassembler.dropped == 10
    beyond = fragments_of(b"y" * 16, [8, 16], identification=1)[1]
    far = bytearray(beyond)
    struct.pack_into("!H", far, 14 + 6, 8191)  # an offset of 65,528 bytes: past any IPv4 packet
    assert decode_udp(bytes(far), reassembler) is None and reassembler.dropped == 11


def test_later_fragments_already_translated_by_the_nat_still_join_the_first() -> None:
    """Captured on a NAT's inside link, the second and later fragments can carry the translated source
    (measured here): they are matched by identification, and the datagram has the first one's addresses."""
    from pinhole.pcap import Reassembler

    payload = b"INVITE " * 500
    frames = [bytearray(f) for f in fragments_of(payload, [1480, 1480, 563])]
    for frame in frames[1:]:
        frame[14 + 12 : 14 + 16] = bytes([203, 0, 113, 1])  # the NAT's outside address
    reassembler = Reassembler()
    decoded = [decode_udp(bytes(f), reassembler) for f in frames]
    assert decoded[-1] == UdpDatagram(("192.0.2.10", 5060), ("198.51.100.20", 5060), payload)
