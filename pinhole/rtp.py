"""RTP fixed header (RFC 3550 §5.1) and a minimal RTCP sender report (RFC 3550 §6.4.1).

Pure codec: the SRTP layer (pylibsrtp) protects what :meth:`RtpPacket.encode` produces, and the
media path only needs to build packets, read their headers, and send an occasional SR so that
SRTCP has something to carry.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

__all__ = [
    "RTCP_SR",
    "RTP_VERSION",
    "HeaderExtension",
    "RtpError",
    "RtpPacket",
    "RtpStream",
    "ntp_timestamp",
    "sender_report",
]

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12
RTCP_SR = 200
"""RFC 3550 §12.1: RTCP packet type of a sender report."""
NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from 1900-01-01 (the NTP epoch) to 1970-01-01 (the Unix epoch)."""


class RtpError(ValueError):
    """An RTP/RTCP packet is malformed or a field is out of range."""


@dataclass(frozen=True)
class HeaderExtension:
    """RFC 3550 §5.3.1: 16 profile-defined bits, then ``data`` (a whole number of 32-bit words)."""

    profile: int
    data: bytes = b""


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise RtpError(f"{name} {value} does not fit in {bits} bits")


@dataclass
class RtpPacket:
    """One RTP packet. ``padding`` is the number of padding octets (count octet included)."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: HeaderExtension | None = None
    padding: int = 0

    def encode(self) -> bytes:
        """The wire form (RFC 3550 §5.1)."""
        _check_range("payload type", self.payload_type, 7)
        _check_range("sequence number", self.sequence_number, 16)
        _check_range("timestamp", self.timestamp, 32)
        _check_range("SSRC", self.ssrc, 32)
        if len(self.csrc) > 15:
            raise RtpError(f"{len(self.csrc)} CSRCs: at most 15 fit the CC field")
        for item in self.csrc:
            _check_range("CSRC", item, 32)
        if not 0 <= self.padding <= 255:
            raise RtpError(f"padding {self.padding} does not fit in one count octet (0..255)")
        first = (RTP_VERSION << 6) | (0x20 if self.padding else 0) | len(self.csrc)
        if self.extension is not None:
            first |= 0x10
        second = (0x80 if self.marker else 0) | self.payload_type
        out = struct.pack("!BBHII", first, second, self.sequence_number, self.timestamp, self.ssrc)
        out += b"".join(struct.pack("!I", c) for c in self.csrc)
        if self.extension is not None:
            ext = self.extension
            _check_range("extension profile", ext.profile, 16)
            if len(ext.data) % 4:
                raise RtpError(f"extension data of {len(ext.data)} bytes is not a whole number of 32-bit words")
            words = len(ext.data) // 4
            _check_range("extension length", words, 16)
            out += struct.pack("!HH", ext.profile, words) + ext.data
        out += self.payload
        if self.padding:
            out += bytes(self.padding - 1) + bytes([self.padding])
        return out

    @classmethod
    def decode(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet (RFC 3550 §5.1, §5.3.1); padding is removed from ``payload``."""
        data = bytes(data)
        if len(data) < RTP_HEADER_LENGTH:
            raise RtpError(f"packet of {len(data)} bytes is shorter than the {RTP_HEADER_LENGTH}-byte RTP header")
        first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpError(f"version {version} is not {RTP_VERSION}")
        cc = first & 0x0F
        offset = RTP_HEADER_LENGTH + 4 * cc
        if offset > len(data):
            raise RtpError(f"CSRC count {cc} needs {offset} header bytes, packet has {len(data)}")
        csrc = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_LENGTH)
        extension = None
        if first & 0x10:
            if offset + 4 > len(data):
                raise RtpError(f"extension header at offset {offset} is truncated")
            profile, words = struct.unpack_from("!HH", data, offset)
            end = offset + 4 + 4 * words
            if end > len(data):
                raise RtpError(f"extension of {words} words at offset {offset} exceeds the packet")
            extension = HeaderExtension(profile, data[offset + 4 : end])
            offset = end
        end = len(data)
        padding = 0
        if first & 0x20:
            if end == offset:
                raise RtpError("padding bit set but there is no padding count octet")
            padding = data[-1]
            if padding == 0:
                raise RtpError("padding count is 0 (it includes itself, so must be >= 1)")
            if padding > end - offset:
                raise RtpError(f"padding count {padding} exceeds the {end - offset} bytes after the header")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=data[offset:end],
            marker=bool(second & 0x80),
            csrc=tuple(csrc),
            extension=extension,
            padding=padding,
        )


@dataclass
class RtpStream:
    """The sender side of one SSRC: sequence numbers and timestamps (RFC 3550 §5.1).

    Both start at random values (RFC 3550 §5.1: makes known-plaintext attacks on SRTP harder);
    pass ``first_sequence_number`` / ``first_timestamp`` for golden tests. The first packet has
    the marker bit set (RFC 3551 §4.1: first packet of a talkspurt).
    """

    ssrc: int
    payload_type: int
    clock_rate: int = 8000
    ptime: float = 0.02
    first_sequence_number: int | None = None
    first_timestamp: int | None = None
    sequence_number: int = field(init=False)
    timestamp: int = field(init=False)
    packets_sent: int = field(init=False, default=0)
    octets_sent: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        _check_range("SSRC", self.ssrc, 32)
        _check_range("payload type", self.payload_type, 7)
        self.sequence_number = (
            random.getrandbits(16) if self.first_sequence_number is None else self.first_sequence_number
        )
        self.timestamp = random.getrandbits(32) if self.first_timestamp is None else self.first_timestamp
        _check_range("sequence number", self.sequence_number, 16)
        _check_range("timestamp", self.timestamp, 32)

    @property
    def samples_per_packet(self) -> int:
        return round(self.clock_rate * self.ptime)

    def next_packet(self, payload: bytes) -> RtpPacket:
        """The next packet; then seq += 1 and timestamp += clock_rate * ptime, both wrapping."""
        packet = RtpPacket(
            payload_type=self.payload_type,
            sequence_number=self.sequence_number,
            timestamp=self.timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=self.packets_sent == 0,
        )
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.samples_per_packet) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return packet


def is_plain_rtcp(data: bytes) -> bool:
    """Whether `data` is an RTCP compound packet in the clear (RFC 3550 §6.1): version-2 packets whose length
    fields add up to exactly the datagram. SRTCP (RFC 3711 §3.4) appends its E flag, index and tag, so a
    protected packet never does."""
    offset = 0
    while offset + 4 <= len(data):
        if data[offset] >> 6 != 2:
            return False
        offset += 4 * (int.from_bytes(data[offset + 2 : offset + 4], "big") + 1)
    return offset == len(data) and len(data) > 0


def ntp_timestamp(unix_seconds: float) -> int:
    """64-bit NTP timestamp (RFC 3550 §4: seconds since 1900 in 32.32 fixed point)."""
    value = round((unix_seconds + NTP_UNIX_OFFSET) * (1 << 32))
    _check_range("NTP timestamp", value, 64)
    return value


def sender_report(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    """An RTCP SR with no report blocks (RFC 3550 §6.4.1): 28 bytes, length field 6.

    ``ntp`` is the 64-bit NTP timestamp (see :func:`ntp_timestamp`); ``packets`` and ``octets``
    are the sender's counts (payload octets only), both wrapping at 2^32.
    """
    _check_range("SSRC", ssrc, 32)
    _check_range("NTP timestamp", ntp, 64)
    _check_range("RTP timestamp", rtp_ts, 32)
    if packets < 0 or octets < 0:
        raise RtpError(f"packet count {packets} and octet count {octets} must not be negative")
    header = struct.pack("!BBH", RTP_VERSION << 6, RTCP_SR, 6)
    return header + struct.pack("!IQIII", ssrc, ntp, rtp_ts, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF)
