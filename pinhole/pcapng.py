"""pcapng files (draft-ietf-opsawg-pcapng): one file for every link of a run, with its key log.

A run captures every link of the lab; pcapng keeps them in one file that says which link each frame
was seen on (one Interface Description Block per link, named `node:ifname`), in which direction
(the Enhanced Packet Block's flags), what the kernel dropped (an Interface Statistics Block per
link) and the DTLS secrets that decrypt it (a Decryption Secrets Block holding the NSS key log, so
`tshark -r capture.pcapng` decrypts every handshake without `-o tls.keylog_file`). Section header
comments carry free text; pinhole puts one JSON line there (`pinhole-run {...}`) that names the
run's nodes, links and scenario, so the verdict can be computed from the file alone.

Pure: bytes in, objects out, and back; no sockets, no clocks. Files are written little-endian with
nanosecond timestamps (if_tsresol 9); the reader accepts either byte order, any if_tsresol, several
sections, and skips block types it does not know, as the format asks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "DIRECTION_INBOUND",
    "DIRECTION_OUTBOUND",
    "Capture",
    "Interface",
    "InterfaceStatistics",
    "Packet",
    "PcapngError",
    "PcapngWriter",
    "SECRETS_TLS_KEY_LOG",
    "read_pcapng",
]

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_ISB = 0x00000005
BLOCK_EPB = 0x00000006
BLOCK_DSB = 0x0000000A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SECTION_LENGTH_UNKNOWN = 0xFFFFFFFFFFFFFFFF

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
EPB_FLAGS = 2
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5

#: epb_flags bits 0-1 (inbound/outbound, as the capturing node's interface saw the frame)
DIRECTION_INBOUND = 1
DIRECTION_OUTBOUND = 2
#: Decryption Secrets Block type of an NSS key log ("TLSK"), which Wireshark applies to TLS and DTLS
SECRETS_TLS_KEY_LOG = 0x544C534B
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 262144
NANOSECONDS = 9  # if_tsresol of the files written here: 10^-9 s


class PcapngError(ValueError):
    """A malformed pcapng file: the message says which block and what is wrong."""


@dataclass(frozen=True)
class Interface:
    """One captured interface (an IDB): pinhole names it `node:ifname` and describes the link."""

    name: str
    description: str = ""
    linktype: int = LINKTYPE_ETHERNET
    snaplen: int = DEFAULT_SNAPLEN
    tsresol: float = 1e-6  # seconds per timestamp unit


@dataclass(frozen=True)
class Packet:
    """One frame (an EPB): on which interface, when (seconds since the epoch), in which direction."""

    interface: int
    t: float
    data: bytes
    original_length: int
    direction: int = 0  # 0 unknown, DIRECTION_INBOUND, DIRECTION_OUTBOUND
    ts_units: int = 0  # the raw timestamp, in the interface's units (exact ordering, no float rounding)


@dataclass(frozen=True)
class InterfaceStatistics:
    """What an interface's capture counted (an ISB): frames received, and frames dropped by the kernel."""

    interface: int
    received: int | None = None
    dropped: int | None = None


@dataclass
class Capture:
    """A whole file: section comments, interfaces, packets in file order, statistics and secrets."""

    comments: list[str] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    packets: list[Packet] = field(default_factory=list)
    statistics: list[InterfaceStatistics] = field(default_factory=list)
    secrets: list[tuple[int, bytes]] = field(default_factory=list)  # (secrets type, data)

    def key_log(self) -> str:
        """Every embedded NSS key log, joined."""
        return "".join(data.decode("utf-8", "replace") for kind, data in self.secrets if kind == SECRETS_TLS_KEY_LOG)


# --------------------------------------------------------------------------- writing


def _pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _options(options: Iterable[tuple[int, bytes]]) -> bytes:
    out = b""
    for code, value in options:
        if len(value) > 0xFFFF:
            raise PcapngError(f"option {code} is {len(value)} bytes, more than an option holds (65535)")
        out += struct.pack("<HH", code, len(value)) + _pad(value)
    return out + struct.pack("<HH", OPT_ENDOFOPT, 0) if out else b""


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def section_header(comments: Iterable[str] = (), application: str = "pinhole") -> bytes:
    options = [(OPT_COMMENT, c.encode()) for c in comments] + [(SHB_USERAPPL, application.encode())]
    body = struct.pack("<IHHQ", BYTE_ORDER_MAGIC, 1, 0, SECTION_LENGTH_UNKNOWN) + _options(options)
    return _block(BLOCK_SHB, body)


def interface_description(interface: Interface) -> bytes:
    options = [(IF_NAME, interface.name.encode()), (IF_TSRESOL, bytes([NANOSECONDS]))]
    if interface.description:
        options.insert(1, (IF_DESCRIPTION, interface.description.encode()))
    return _block(BLOCK_IDB, struct.pack("<HHI", interface.linktype, 0, interface.snaplen) + _options(options))


def _timestamp(t: float) -> tuple[int, int]:
    if t < 0:
        raise PcapngError(f"timestamp {t} is negative")
    units = round(t * 10**NANOSECONDS)
    return units >> 32, units & 0xFFFFFFFF


def enhanced_packet(
    interface: int,
    t: float,
    data: bytes,
    *,
    direction: int = 0,
    original_length: int | None = None,
    snaplen: int = DEFAULT_SNAPLEN,
) -> bytes:
    """One EPB; `t` in seconds since the epoch (written in nanoseconds), `direction` into epb_flags."""
    high, low = _timestamp(t)
    captured = data[:snaplen]
    original = len(data) if original_length is None else original_length
    options = [(EPB_FLAGS, struct.pack("<I", direction & 0x3))] if direction else []
    body = struct.pack("<IIIII", interface, high, low, len(captured), original) + _pad(captured) + _options(options)
    return _block(BLOCK_EPB, body)


def interface_statistics(interface: int, t: float, *, received: int, dropped: int) -> bytes:
    high, low = _timestamp(t)
    options = [(ISB_IFRECV, struct.pack("<Q", received)), (ISB_IFDROP, struct.pack("<Q", dropped))]
    return _block(BLOCK_ISB, struct.pack("<III", interface, high, low) + _options(options))


def decryption_secrets(data: bytes, secrets_type: int = SECRETS_TLS_KEY_LOG) -> bytes:
    return _block(BLOCK_DSB, struct.pack("<II", secrets_type, len(data)) + _pad(data))


class PcapngWriter:
    """Write one section: the header, the interfaces, then secrets, packets and statistics in any order.

    Wireshark applies a Decryption Secrets Block to the packets after it, so a caller that knows
    the secrets only at the end writes the packets to a spool first (`Capture` + `write_pcapng`).
    """

    def __init__(self, path: Path | str, interfaces: list[Interface], comments: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.interfaces = list(interfaces)
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(section_header(comments))
        for interface in self.interfaces:
            self._file.write(interface_description(interface))

    def _write(self, block: bytes) -> None:
        if self._file is None:
            raise PcapngError(f"{self.path}: write after close")
        self._file.write(block)

    def secrets(self, data: bytes, secrets_type: int = SECRETS_TLS_KEY_LOG) -> None:
        self._write(decryption_secrets(data, secrets_type))

    def packet(
        self, interface: int, t: float, data: bytes, *, direction: int = 0, original_length: int | None = None
    ) -> None:
        if not 0 <= interface < len(self.interfaces):
            raise PcapngError(f"interface {interface} was not described (there are {len(self.interfaces)})")
        snaplen = self.interfaces[interface].snaplen
        self._write(
            enhanced_packet(interface, t, data, direction=direction, original_length=original_length, snaplen=snaplen)
        )

    def statistics(self, interface: int, t: float, *, received: int, dropped: int) -> None:
        self._write(interface_statistics(interface, t, received=received, dropped=dropped))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pcapng(path: Path | str, capture: Capture) -> None:
    """A whole capture in one section: header, interfaces, secrets first, packets, statistics last."""
    with PcapngWriter(path, capture.interfaces, capture.comments) as writer:
        for kind, data in capture.secrets:
            writer.secrets(data, kind)
        for p in capture.packets:
            writer.packet(p.interface, p.t, p.data, direction=p.direction, original_length=p.original_length)
        end = max((p.t for p in capture.packets), default=0.0)
        for s in capture.statistics:
            writer.statistics(s.interface, end, received=s.received or 0, dropped=s.dropped or 0)


# --------------------------------------------------------------------------- reading


def read_pcapng(path: Path | str) -> Capture:
    """Read a whole pcapng file (every section; interface numbers count across sections)."""
    with open(path, "rb") as f:
        return parse_pcapng(f.read(), str(path))


def parse_pcapng(data: bytes, where: str = "pcapng") -> Capture:
    capture = Capture()
    base = 0  # interfaces of earlier sections
    section: list[Interface] = []
    endian = "<"
    offset = 0
    index = 0
    while offset < len(data):
        if len(data) - offset < 12:
            raise PcapngError(f"{where}: block {index} at offset {offset} is truncated ({len(data) - offset} bytes)")
        raw_type = data[offset : offset + 4]
        if struct.unpack("<I", raw_type)[0] == BLOCK_SHB:
            if len(data) - offset < 28:
                raise PcapngError(f"{where}: section header at offset {offset} is truncated")
            magic = data[offset + 8 : offset + 12]
            if struct.unpack("<I", magic)[0] == BYTE_ORDER_MAGIC:
                endian = "<"
            elif struct.unpack(">I", magic)[0] == BYTE_ORDER_MAGIC:
                endian = ">"
            else:
                raise PcapngError(f"{where}: section header at offset {offset} has no byte-order magic")
            base += len(section)
            section = []
        elif index == 0:
            raise PcapngError(f"{where}: does not start with a section header block (not pcapng)")
        block_type, length = struct.unpack(endian + "II", data[offset : offset + 8])
        if length < 12 or length % 4 or offset + length > len(data):
            raise PcapngError(f"{where}: block {index} at offset {offset} has a bad length {length}")
        trailer = struct.unpack(endian + "I", data[offset + length - 4 : offset + length])[0]
        if trailer != length:
            raise PcapngError(f"{where}: block {index} at offset {offset}: trailing length {trailer} != {length}")
        body = data[offset + 8 : offset + length - 4]
        what = f"{where}: block {index} (type 0x{block_type:08x}) at offset {offset}"
        if block_type == BLOCK_SHB:
            for code, value in _parse_options(body[16:], endian, what):
                if code == OPT_COMMENT:
                    capture.comments.append(value.decode("utf-8", "replace"))
        elif block_type == BLOCK_IDB:
            interface = _parse_idb(body, endian, what)
            section.append(interface)
            capture.interfaces.append(interface)
        elif block_type == BLOCK_EPB:
            capture.packets.append(_parse_epb(body, endian, what, section, base))
        elif block_type == BLOCK_ISB:
            capture.statistics.append(_parse_isb(body, endian, what, base))
        elif block_type == BLOCK_DSB:
            if len(body) < 8:
                raise PcapngError(f"{what}: decryption secrets block is truncated")
            kind, size = struct.unpack(endian + "II", body[:8])
            if 8 + size > len(body):
                raise PcapngError(f"{what}: secrets length {size} exceeds the block")
            capture.secrets.append((kind, body[8 : 8 + size]))
        offset += length
        index += 1
    return capture


def _parse_options(data: bytes, endian: str, what: str) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        code, length = struct.unpack(endian + "HH", data[offset : offset + 4])
        if code == OPT_ENDOFOPT:
            return
        value = data[offset + 4 : offset + 4 + length]
        if len(value) < length:
            raise PcapngError(f"{what}: option {code} is truncated ({len(value)} of {length} bytes)")
        yield code, value
        offset += 4 + length + (-length % 4)


def _tsresol(value: bytes) -> float:
    if not value:
        return 1e-6
    v = value[0]
    return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v


def _parse_idb(body: bytes, endian: str, what: str) -> Interface:
    if len(body) < 8:
        raise PcapngError(f"{what}: interface description block is truncated")
    linktype, _, snaplen = struct.unpack(endian + "HHI", body[:8])
    name = description = ""
    tsresol = 1e-6
    for code, value in _parse_options(body[8:], endian, what):
        if code == IF_NAME:
            name = value.decode("utf-8", "replace")
        elif code == IF_DESCRIPTION:
            description = value.decode("utf-8", "replace")
        elif code == IF_TSRESOL:
            tsresol = _tsresol(value)
    return Interface(name, description, linktype, snaplen, tsresol)


def _parse_epb(body: bytes, endian: str, what: str, section: list[Interface], base: int) -> Packet:
    if len(body) < 20:
        raise PcapngError(f"{what}: enhanced packet block is truncated")
    interface, high, low, captured, original = struct.unpack(endian + "IIIII", body[:20])
    if interface >= len(section):
        raise PcapngError(f"{what}: interface {interface} was never described in this section")
    if 20 + captured > len(body):
        raise PcapngError(f"{what}: captured length {captured} exceeds the block")
    frame = body[20 : 20 + captured]
    direction = 0
    for code, value in _parse_options(body[20 + captured + (-captured % 4) :], endian, what):
        if code == EPB_FLAGS and len(value) == 4:
            direction = struct.unpack(endian + "I", value)[0] & 0x3
    units = (high << 32) | low
    return Packet(base + interface, units * section[interface].tsresol, frame, original, direction, units)


def _parse_isb(body: bytes, endian: str, what: str, base: int) -> InterfaceStatistics:
    if len(body) < 12:
        raise PcapngError(f"{what}: interface statistics block is truncated")
    (interface,) = struct.unpack(endian + "I", body[:4])
    counts: dict[int, int] = {}
    for code, value in _parse_options(body[12:], endian, what):
        if code in (ISB_IFRECV, ISB_IFDROP) and len(value) == 8:
            counts[code] = struct.unpack(endian + "Q", value)[0]
    return InterfaceStatistics(base + interface, counts.get(ISB_IFRECV), counts.get(ISB_IFDROP))
