"""Several UDP datagrams as one fuzz input, replayed as a saved run's capture for the wire decoder.

The wire decoder reads a whole capture: links, the run's comment, the key log, and datagrams seen on
several links. Fuzzing the pcapng bytes would mostly break the container; this input keeps the
container of a real run (tests/data/runs) and fuzzes what crossed it. Layout: one byte picks the run,
then chunks of ``place (1 byte) | length (2 bytes, big-endian) | payload``, where a place is one of
the run's (link, direction, source, destination) as seen in its capture. A short last chunk keeps
what is there, so every byte string is an input. Chunk i is seen at the run's first frame + i ms.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from fuzz import REPO
from pinhole import pcapng
from pinhole.pcap import decode_udp

RUNS = REPO / "tests" / "data" / "runs"
MAX_PAYLOAD = 65535 - 20 - 8  # what one IPv4/UDP datagram carries

Address = tuple[str, int]
Place = tuple[int, int, Address, Address]  # interface, epb direction, source, destination
Chunk = tuple[int, bytes]  # place index, payload


@dataclass(frozen=True)
class Run:
    """What a saved run's capture contributes besides its datagrams."""

    name: str
    interfaces: tuple[pcapng.Interface, ...]
    comments: tuple[str, ...]
    secrets: tuple[tuple[int, bytes], ...]
    statistics: tuple[pcapng.InterfaceStatistics, ...]
    places: tuple[Place, ...]
    t0: float
    chunks: tuple[Chunk, ...]  # the datagrams it really carried, in capture order


@functools.cache
def runs() -> tuple[Run, ...]:
    out = []
    for path in sorted(RUNS.glob("*/capture.pcapng")):
        capture = pcapng.read_pcapng(path)
        places: dict[Place, int] = {}
        chunks = []
        for packet in capture.packets:
            udp = decode_udp(packet.data)
            if udp is None:
                continue
            place = (packet.interface, packet.direction, udp.src, udp.dst)
            chunks.append((places.setdefault(place, len(places)), udp.payload))
        out.append(
            Run(
                path.parent.name,
                tuple(capture.interfaces),
                tuple(capture.comments),
                tuple(capture.secrets),
                tuple(capture.statistics),
                tuple(places),
                capture.packets[0].t,
                tuple(chunks),
            )
        )
    return tuple(out)


def split(data: bytes) -> tuple[int, list[Chunk]]:
    """(run byte, chunks) of any byte string."""
    if not data:
        return 0, []
    chunks, offset = [], 1
    while offset < len(data):
        place = data[offset]
        length = int.from_bytes(data[offset + 1 : offset + 3].ljust(2, b"\0"), "big")
        chunks.append((place, data[offset + 3 : offset + 3 + length]))
        offset += 3 + length
    return data[0], chunks


def join(run: int, chunks: list[Chunk]) -> bytes:
    out = bytearray([run & 0xFF])
    for place, payload in chunks:
        payload = payload[:MAX_PAYLOAD]
        out += bytes([place & 0xFF]) + len(payload).to_bytes(2, "big") + payload
    return bytes(out)


def udp_frame(src: Address, dst: Address, payload: bytes) -> bytes:
    """Ethernet II + IPv4 (no options, checksum left 0: nobody checks it) + UDP."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, _ip(src[0]), _ip(dst[0]))
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0)
    return bytes(6) + bytes(6) + b"\x08\x00" + ip + udp + payload


def _ip(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def capture(data: bytes) -> pcapng.Capture:
    """The capture of the run the input picks, carrying the input's datagrams instead of its own."""
    index, chunks = split(data)
    run = runs()[index % len(runs())]
    packets = []
    for i, (place, payload) in enumerate(chunks):
        interface, direction, src, dst = run.places[place % len(run.places)]
        frame = udp_frame(src, dst, payload[:MAX_PAYLOAD])
        packets.append(pcapng.Packet(interface, run.t0 + i / 1000, frame, len(frame), direction))
    return pcapng.Capture(list(run.comments), list(run.interfaces), packets, list(run.statistics), list(run.secrets))


def seeds() -> list[bytes]:
    """Each run whole, and its first 16 and 48 datagrams (the SIP and the handshake: quicker to decode)."""
    out = []
    for index, run in enumerate(runs()):
        for count in (16, 48, len(run.chunks)):
            out.append(join(index, list(run.chunks[:count])))
    return out
