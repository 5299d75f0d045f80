"""pinhole.pcapng: the run's one-file capture, with golden bytes and what tshark makes of it."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pinhole import pcapng
from pinhole.pcapng import (
    DIRECTION_INBOUND,
    DIRECTION_OUTBOUND,
    Capture,
    Interface,
    InterfaceStatistics,
    Packet,
    PcapngError,
    parse_pcapng,
    read_pcapng,
    write_pcapng,
)

FRAME = bytes.fromhex("0200000000020200000000010800") + bytes.fromhex(
    "450000200001400040114e7ac000020ac6336414" "13c40d96000c0000"
) + b"ping"  # fmt: skip


def sample() -> Capture:
    return Capture(
        comments=["pinhole-run {}"],
        interfaces=[Interface("natgw:lan0", "natgw:lan0 <-> alice:eth0"), Interface("bob:eth0")],
        packets=[
            Packet(0, 1700000000.123456789, FRAME, len(FRAME), DIRECTION_INBOUND),
            Packet(1, 1700000000.5, FRAME + b"\x00", len(FRAME) + 1, DIRECTION_OUTBOUND),
        ],
        statistics=[InterfaceStatistics(0, 1, 0), InterfaceStatistics(1, 1, 3)],
        secrets=[(pcapng.SECRETS_TLS_KEY_LOG, b"CLIENT_RANDOM " + b"00" * 32 + b" " + b"11" * 48 + b"\n")],
    )


def test_round_trip_keeps_links_directions_statistics_and_secrets(tmp_path: Path) -> None:
    write_pcapng(tmp_path / "c.pcapng", sample())
    back = read_pcapng(tmp_path / "c.pcapng")
    assert back.comments == ["pinhole-run {}"]
    assert [(i.name, i.description, i.tsresol) for i in back.interfaces] == [
        ("natgw:lan0", "natgw:lan0 <-> alice:eth0", 1e-9),
        ("bob:eth0", "", 1e-9),
    ]
    assert [(p.interface, p.data, p.direction) for p in back.packets] == [
        (0, FRAME, DIRECTION_INBOUND),
        (1, FRAME + b"\x00", DIRECTION_OUTBOUND),
    ]
    assert back.packets[0].ts_units == 1700000000123456768  # nanoseconds, as far as a float carries them
    assert abs(back.packets[0].t - 1700000000.123456789) < 1e-6
    assert [(s.interface, s.received, s.dropped) for s in back.statistics] == [(0, 1, 0), (1, 1, 3)]
    assert back.key_log().startswith("CLIENT_RANDOM 0000")


def test_section_header_golden_bytes() -> None:
    block = pcapng.section_header([], application="x")
    assert block == bytes.fromhex(
        "0a0d0d0a"  # block type
        "28000000"  # total length 40
        "4d3c2b1a"  # byte-order magic
        "01000000"  # version 1.0
        "ffffffffffffffff"  # section length unknown
        "04000100" "78000000"  # shb_userappl "x", padded
        "00000000"  # opt_endofopt
        "28000000"
    )  # fmt: skip


def test_reads_big_endian_and_microsecond_files() -> None:
    """Another tool's file: big-endian, default resolution (if_tsresol absent = microseconds)."""
    shb_body = struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)
    shb = struct.pack(">II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body + struct.pack(">I", 12 + len(shb_body))
    idb_body = struct.pack(">HHI", 1, 0, 65535)
    idb = struct.pack(">II", 1, 12 + len(idb_body)) + idb_body + struct.pack(">I", 12 + len(idb_body))
    epb_body = struct.pack(">IIIII", 0, 0, 2_500_000, 4, 4) + b"abcd"
    epb = struct.pack(">II", 6, 12 + len(epb_body)) + epb_body + struct.pack(">I", 12 + len(epb_body))
    unknown = struct.pack(">II", 0xBAD, 12) + struct.pack(">I", 12)  # a block type we skip, as the format asks
    capture = parse_pcapng(shb + idb + unknown + epb)
    assert [(p.interface, p.t, p.data) for p in capture.packets] == [(0, 2.5, b"abcd")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xd4\xc3\xb2\xa1" + bytes(20), "does not start with a section header block (not pcapng)"),
        (pcapng.section_header()[:-4] + b"\x00\x00\x00\x00", "trailing length 0 != 44"),
        (pcapng.section_header() + pcapng.enhanced_packet(0, 1.0, b"x"), "interface 0 was never described"),
        (pcapng.section_header() + b"\x01\x00\x00\x00\x05\x00\x00\x00" + bytes(4), "bad length 5"),
    ],
)
def test_malformed_files_are_refused_with_the_block_named(data: bytes, message: str) -> None:
    with pytest.raises(PcapngError, match=re.escape(message)):
        parse_pcapng(data, "f")


def test_writer_refuses_an_undescribed_interface(tmp_path: Path) -> None:
    with pcapng.PcapngWriter(tmp_path / "w.pcapng", [Interface("a:b")]) as writer:
        with pytest.raises(PcapngError, match="interface 1 was not described"):
            writer.packet(1, 1.0, b"x")


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_tshark_reads_names_directions_and_comments(tmp_path: Path) -> None:
    write_pcapng(tmp_path / "c.pcapng", sample())
    out = subprocess.run(
        ["tshark", "-r", str(tmp_path / "c.pcapng"), "-T", "fields", "-e", "frame.interface_name",
         "-e", "frame.p2p_dir", "-e", "ip.src", "-e", "udp.dstport"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert out.splitlines() == ["natgw:lan0\t1\t192.0.2.10\t3478", "bob:eth0\t0\t192.0.2.10\t3478"]
