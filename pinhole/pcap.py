"""Classic pcap files and a small UDP decoder for the frames pinhole captures.

The file format is libpcap's classic one (not pcapng): a 24-byte global header and a 16-byte
header per record, microsecond timestamps. We write little-endian files with linktype 1
(Ethernet, LINKTYPE_ETHERNET) because that is what an AF_PACKET socket on a veth delivers, and
every tool (tshark, tcpdump, scapy) reads it. The reader accepts both byte orders and the
nanosecond variant, so captures made by other tools can be checked with the same code.

`decode_udp` is pure: bytes in, a `UdpDatagram` (or None) out. It understands Ethernet II,
802.1Q/802.1ad VLAN tags, IPv4 and UDP, and nothing more. IPv4 fragments (RFC 791) are put back
together by a `Reassembler` passed along, one per link: a SIP INVITE with an RFC 8224 Identity header
is larger than the lab's 1500-byte MTU, so it crosses each link in pieces.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "PcapError",
    "PcapWriter",
    "Reassembler",
    "UdpDatagram",
    "decode_ipv4_udp",
    "decode_udp",
    "read_pcap",
]

# libpcap magic numbers: microsecond and nanosecond resolution.
MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
VERSION_MAJOR = 2
VERSION_MINOR = 4
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, what NFLOG hands out
DEFAULT_SNAPLEN = 262144

GLOBAL_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_VLAN = 0x8100  # IEEE 802.1Q
ETHERTYPE_QINQ = 0x88A8  # IEEE 802.1ad
ETHERNET_HEADER_LEN = 14
VLAN_TAG_LEN = 4
IPV4_MIN_HEADER_LEN = 20
IPPROTO_UDP = 17
UDP_HEADER_LEN = 8
IPV4_FLAG_MF = 0x2000
IPV4_FRAGMENT_OFFSET_MASK = 0x1FFF


class PcapError(ValueError):
    """A pcap file or a captured frame is malformed; the message says what and where."""


@dataclass(frozen=True)
class UdpDatagram:
    """One UDP datagram as seen on the wire: (address, port) of each end, and the payload."""

    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


class PcapWriter:
    """Write a classic pcap file (microsecond timestamps, little-endian).

    Records are written through a buffered file; `flush()` pushes them to the kernel so a
    reader in another process sees every record written so far.
    """

    def __init__(self, path: Path | str, linktype: int = LINKTYPE_ETHERNET, snaplen: int = DEFAULT_SNAPLEN) -> None:
        if not 0 <= linktype <= 0xFFFF:
            raise PcapError(f"linktype {linktype} is out of range 0..65535")
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise PcapError(f"snaplen {snaplen} is out of range 1..4294967295")
        self.path = Path(path)
        self.linktype = linktype
        self.snaplen = snaplen
        self.records = 0
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(pack_global_header(linktype, snaplen))

    def write(self, ts: float, frame: bytes, orig_len: int | None = None) -> None:
        """Append one frame captured at `ts` (seconds since the epoch); longer frames are cut
        to the snaplen and keep their original length in the record header."""
        if self._file is None:
            raise PcapError(f"{self.path}: write after close")
        self._file.write(pack_record(ts, frame, self.snaplen, orig_len))
        self.records += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pack_global_header(linktype: int = LINKTYPE_ETHERNET, snaplen: int = DEFAULT_SNAPLEN) -> bytes:
    """The 24-byte pcap global header (little-endian, microsecond resolution)."""
    return GLOBAL_HEADER.pack(MAGIC_USEC, VERSION_MAJOR, VERSION_MINOR, 0, 0, snaplen, linktype)


def pack_record(ts: float, frame: bytes, snaplen: int = DEFAULT_SNAPLEN, orig_len: int | None = None) -> bytes:
    """One pcap record: 16-byte header (seconds, microseconds, captured and original length)
    followed by the frame, cut to `snaplen`."""
    if ts < 0:
        raise PcapError(f"timestamp {ts} is negative")
    ts_sec, ts_usec = divmod(round(ts * 1_000_000), 1_000_000)
    if ts_sec > 0xFFFFFFFF:
        raise PcapError(f"timestamp {ts} does not fit the 32-bit seconds field")
    data = frame[:snaplen]
    original = len(frame) if orig_len is None else orig_len
    if original < len(data):
        raise PcapError(f"original length {original} is shorter than the {len(data)} bytes captured")
    return RECORD_HEADER.pack(ts_sec, ts_usec, len(data), original) + data


def read_pcap(path: Path | str) -> Iterator[tuple[float, bytes]]:
    """Yield (timestamp, frame) for every record of a classic pcap file.

    Accepts both byte orders and microsecond or nanosecond resolution. A file cut short in
    the middle of a record (a capture still being written) raises PcapError naming the record.
    """
    with open(path, "rb") as f:
        yield from _iter_records(f, str(path))


def _iter_records(f: BinaryIO, where: str) -> Iterator[tuple[float, bytes]]:
    head = f.read(GLOBAL_HEADER.size)
    if len(head) < GLOBAL_HEADER.size:
        raise PcapError(f"{where}: global header is {len(head)} bytes, expected 24")
    magic_le = struct.unpack("<I", head[:4])[0]
    magic_be = struct.unpack(">I", head[:4])[0]
    if magic_le in (MAGIC_USEC, MAGIC_NSEC):
        endian, magic = "<", magic_le
    elif magic_be in (MAGIC_USEC, MAGIC_NSEC):
        endian, magic = ">", magic_be
    else:
        raise PcapError(f"{where}: magic number 0x{magic_le:08x} is not a classic pcap file")
    divisor = 1_000_000 if magic == MAGIC_USEC else 1_000_000_000
    record = struct.Struct(endian + "IIII")
    index = 0
    while True:
        rh = f.read(record.size)
        if not rh:
            return
        if len(rh) < record.size:
            raise PcapError(f"{where}: record {index} header is truncated ({len(rh)} of 16 bytes)")
        ts_sec, ts_frac, incl_len, _orig_len = record.unpack(rh)
        data = f.read(incl_len)
        if len(data) < incl_len:
            raise PcapError(f"{where}: record {index} is truncated ({len(data)} of {incl_len} bytes)")
        yield ts_sec + ts_frac / divisor, data
        index += 1


class Reassembler:
    """IPv4 fragments of one link put back together (RFC 791 §3.2), keyed by protocol and identification.

    Not by source and destination as RFC 791 has it: on a NAT's inside link the capture shows the second
    and later fragments with the addresses already translated (measured here: the kernel defragments
    for conntrack and NAT rewrites the buffer the capture's copy shares), so the addresses are those of
    the first fragment. A new first fragment under a key still pending starts that packet afresh (the
    identification was reused: what was pending never completed). Bounded: at most MAX_PENDING packets in
    reassembly (the oldest is dropped first) and none above 65,535 bytes. Where pieces overlap, the one
    starting lower wins. `dropped` counts the packets given up for those bounds."""

    MAX_PENDING = 256

    def __init__(self) -> None:
        self.pending: dict[tuple[int, int], dict[int, tuple[bytes, bool]]] = {}
        self.headers: dict[tuple[int, int], bytes] = {}
        self.dropped = 0

    def add(self, packet: bytes, ihl: int, total_length: int, flags_fragment: int) -> bytes | None:
        """One fragment (`packet` an IPv4 packet); the whole packet, header first, once every piece is in."""
        key = (packet[9], struct.unpack_from("!H", packet, 4)[0])
        offset = (flags_fragment & IPV4_FRAGMENT_OFFSET_MASK) * 8
        data = bytes(packet[ihl:total_length])
        if offset + len(data) > 65535 - ihl:
            self.dropped += 1
            self.pending.pop(key, None)
            self.headers.pop(key, None)
            return None
        if offset == 0 and key in self.headers:  # the identification came round again
            self.pending.pop(key, None)
        if key not in self.pending and len(self.pending) >= self.MAX_PENDING:
            oldest = next(iter(self.pending))
            del self.pending[oldest]
            self.headers.pop(oldest, None)
            self.dropped += 1
        pieces = self.pending.setdefault(key, {})
        pieces.setdefault(offset, (data, bool(flags_fragment & IPV4_FLAG_MF)))
        if offset == 0:
            self.headers[key] = bytes(packet[:ihl])
        whole = _contiguous(pieces)
        if whole is None or key not in self.headers:
            return None
        del self.pending[key]
        header = bytearray(self.headers.pop(key))
        struct.pack_into("!H", header, 2, len(header) + len(whole))  # total length
        struct.pack_into("!H", header, 6, 0)  # no flags, offset 0: one packet again
        return bytes(header) + whole


def _contiguous(pieces: dict[int, tuple[bytes, bool]]) -> bytes | None:
    """The payload if the pieces cover it from 0 to a last piece (the one without More Fragments)."""
    out, at = [], 0
    for offset in sorted(pieces):
        data, more = pieces[offset]
        if offset > at:
            return None  # a hole
        out.append(data[at - offset :])
        at = max(at, offset + len(data))
        if not more:
            return b"".join(out)
    return None


def decode_udp(frame: bytes, fragments: Reassembler | None = None) -> UdpDatagram | None:
    """Decode an Ethernet frame carrying IPv4/UDP (VLAN tags tolerated).

    Returns None for anything else (ARP, IPv6, TCP, ICMP), and for an IP fragment unless `fragments`
    completes its packet with it. A frame that says it is IPv4/UDP but whose headers are cut short or
    inconsistent raises PcapError.
    """
    if len(frame) < ETHERNET_HEADER_LEN:
        raise PcapError(f"Ethernet frame is {len(frame)} bytes, shorter than its 14-byte header")
    offset = 12
    ethertype = struct.unpack_from("!H", frame, offset)[0]
    while ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ):
        offset += VLAN_TAG_LEN
        if len(frame) < offset + 2:
            raise PcapError(f"VLAN tag at offset {offset - VLAN_TAG_LEN} is truncated")
        ethertype = struct.unpack_from("!H", frame, offset)[0]
    if ethertype != ETHERTYPE_IPV4:
        return None
    return decode_ipv4_udp(frame[offset + 2 :], fragments)


def decode_ipv4_udp(packet: bytes, fragments: Reassembler | None = None) -> UdpDatagram | None:
    """Decode an IPv4 packet (no link-layer header, as NFLOG delivers it) carrying UDP.

    Same contract as `decode_udp`: None for other protocols and for fragments (unless `fragments`
    completes one), PcapError for malformed IPv4/UDP headers.
    """
    if len(packet) < IPV4_MIN_HEADER_LEN:
        raise PcapError(f"IPv4 header is truncated ({len(packet)} of 20 bytes)")
    version_ihl = packet[0]
    if version_ihl >> 4 != 4:
        raise PcapError(f"IP version is {version_ihl >> 4}, expected 4")
    ihl = (version_ihl & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER_LEN:
        raise PcapError(f"IPv4 header length {ihl} is below the minimum of 20")
    total_length = struct.unpack_from("!H", packet, 2)[0]
    if total_length < ihl or total_length > len(packet):
        raise PcapError(
            f"IPv4 total length {total_length} does not fit the {len(packet)} bytes available with a {ihl}-byte header"
        )
    flags_fragment = struct.unpack_from("!H", packet, 6)[0]
    protocol = packet[9]
    if protocol != IPPROTO_UDP:
        return None
    if flags_fragment & (IPV4_FLAG_MF | IPV4_FRAGMENT_OFFSET_MASK):
        whole = fragments.add(packet, ihl, total_length, flags_fragment) if fragments is not None else None
        return decode_ipv4_udp(whole) if whole is not None else None
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    udp = packet[ihl:total_length]
    if len(udp) < UDP_HEADER_LEN:
        raise PcapError(f"UDP header is truncated ({len(udp)} of 8 bytes)")
    sport, dport, udp_length = struct.unpack_from("!HHH", udp, 0)
    if udp_length < UDP_HEADER_LEN or udp_length > len(udp):
        raise PcapError(f"UDP length {udp_length} does not fit the {len(udp)} bytes of the IPv4 payload")
    payload = bytes(udp[UDP_HEADER_LEN:udp_length])
    return UdpDatagram(src=(src, sport), dst=(dst, dport), payload=payload)
