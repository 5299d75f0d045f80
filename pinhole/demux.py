"""First-byte demultiplexing of one media port (RFC 7983, updating RFC 5764 §5.1.2).

STUN, DTLS and SRTP/SRTCP share the media 5-tuple in RFC 5763, so every datagram is sorted by
its first byte, and RTP from RTCP by the second (RFC 5761 §4). :func:`describe` turns any
datagram into flat string attributes for traces and ladder diagrams, and never raises.
"""

from __future__ import annotations

import struct
from enum import Enum

from pinhole import dtls, stun

__all__ = ["PacketKind", "classify", "describe"]


class PacketKind(str, Enum):
    STUN = "stun"
    ZRTP = "zrtp"
    DTLS = "dtls"
    TURN_CHANNEL = "turn_channel"
    RTP = "rtp"
    RTCP = "rtcp"
    UNKNOWN = "unknown"


_RTCP_NAMES = {
    192: "FIR",
    193: "NACK",
    195: "IJ",
    200: "SR",
    201: "RR",
    202: "SDES",
    203: "BYE",
    204: "APP",
    205: "RTPFB",
    206: "PSFB",
    207: "XR",
}
_DTLS_CONTENT_TYPES = {
    20: "change_cipher_spec",
    21: "alert",
    22: "handshake",
    23: "application_data",
    24: "heartbeat",
    25: "tls12_cid",
    26: "ack",
}


def classify(datagram: bytes) -> PacketKind:
    """RFC 7983 §7 first-byte ranges; RTCP vs RTP by the second byte (RFC 5761 §4).

    0-3 STUN, 16-19 ZRTP, 20-63 DTLS, 64-79 TURN ChannelData, 128-191 RTP/RTCP: RTCP when the
    whole second byte (marker bit + payload type) is 192..223, the RTCP packet types RFC 5761
    keeps out of RTP's way. Anything else, including an empty datagram, is UNKNOWN (dropped).
    A lone byte in 128..191 counts as RTP: RFC 7983 decides on the first byte only.
    """
    if not datagram:
        return PacketKind.UNKNOWN
    first = datagram[0]
    if first <= 3:
        return PacketKind.STUN
    if 16 <= first <= 19:
        return PacketKind.ZRTP
    if 20 <= first <= 63:
        return PacketKind.DTLS
    if 64 <= first <= 79:
        return PacketKind.TURN_CHANNEL
    if 128 <= first <= 191:
        if len(datagram) >= 2 and 192 <= datagram[1] <= 223:
            return PacketKind.RTCP
        return PacketKind.RTP
    return PacketKind.UNKNOWN


def describe(datagram: bytes | bytearray | memoryview) -> dict[str, str]:
    """Flat string attributes of a datagram: always "kind" and "summary"; "error" if it is malformed."""
    try:
        data = bytes(datagram)
        kind = classify(data)
        describer = _DESCRIBERS.get(kind, _describe_unknown)
        result = describer(data)
    except Exception as exc:  # noqa: BLE001  never raise: this runs on whatever arrives on a socket
        result = {"kind": PacketKind.UNKNOWN.value, "summary": "undescribable datagram", "error": _reason(exc)}
    return {str(k): str(v) for k, v in result.items()}


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def _describe_stun(data: bytes) -> dict[str, str]:
    out = {"kind": PacketKind.STUN.value}
    try:
        message = stun.decode(data)
    except stun.StunError as exc:
        out["error"] = _reason(exc)
        out["summary"] = f"STUN (malformed: {exc})"
        return out
    class_name = message.message_class.name.lower()
    method_name = message.method.name.lower()
    out["stun.class"] = class_name
    out["stun.method"] = method_name
    out["stun.transaction_id"] = message.transaction_id_hex
    summary = (
        f"STUN {message.method.name.capitalize()} {class_name.replace('_', ' ')} {message.transaction_id_hex[:8]}…"
    )
    mapped = message.xor_mapped_address
    if mapped is not None:
        ip, port = mapped
        text = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        out["stun.xor_mapped_address"] = text
        summary += f" xor-mapped={text}"
    if message.software is not None:
        out["stun.software"] = message.software
    error = message.error_code
    if error is not None:
        out["stun.error_code"] = str(error[0])
        summary += f" {error[0]} {error[1]}".rstrip()
    out["stun.fingerprint"] = "yes" if message.has_fingerprint else "no"
    out["stun.message_integrity"] = "yes" if message.has_message_integrity else "no"
    out["summary"] = summary
    return out


def _describe_rtp(data: bytes) -> dict[str, str]:
    """Header fields only: under SRTP the header stays clear but padding/payload do not."""
    out = {"kind": PacketKind.RTP.value}
    if len(data) < 12:
        out["error"] = f"packet of {len(data)} bytes is shorter than the 12-byte RTP header"
        out["summary"] = f"RTP (malformed: {out['error']})"
        return out
    version = data[0] >> 6
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    out["rtp.ssrc"] = f"0x{ssrc:08x}"
    out["rtp.seq"] = str(seq)
    out["rtp.timestamp"] = str(ts)
    out["rtp.payload_type"] = str(data[1] & 0x7F)
    out["rtp.marker"] = "1" if data[1] & 0x80 else "0"
    out["summary"] = f"RTP ssrc=0x{ssrc:08x} seq={seq} pt={data[1] & 0x7F}"
    if version != 2:
        out["error"] = f"version {version} is not 2"
    return out


def _describe_rtcp(data: bytes) -> dict[str, str]:
    """First packet of a compound only; its first 8 bytes stay clear under SRTCP (RFC 3711 §3.4)."""
    out = {"kind": PacketKind.RTCP.value}
    packet_type = data[1]
    name = _RTCP_NAMES.get(packet_type, str(packet_type))
    out["rtcp.packet_type"] = str(packet_type)
    out["rtcp.packet_type_name"] = name
    if len(data) < 8:
        out["error"] = f"packet of {len(data)} bytes is shorter than the 8-byte RTCP header with SSRC"
        out["summary"] = f"RTCP {name} (malformed: {out['error']})"
        return out
    (ssrc,) = struct.unpack_from("!I", data, 4)
    out["rtcp.ssrc"] = f"0x{ssrc:08x}"
    out["summary"] = f"RTCP {name} ssrc=0x{ssrc:08x}"
    return out


def _describe_dtls(data: bytes) -> dict[str, str]:
    described = dtls.describe(data)  # never raises: garbage comes back with an "error" key
    out = {str(k): str(v) for k, v in described.items()}
    out["kind"] = PacketKind.DTLS.value
    out.setdefault("summary", f"DTLS {_DTLS_CONTENT_TYPES.get(data[0], str(data[0]))}")
    return out


def _describe_zrtp(data: bytes) -> dict[str, str]:
    return {"kind": PacketKind.ZRTP.value, "summary": f"ZRTP ({len(data)} bytes)"}


def _describe_turn_channel(data: bytes) -> dict[str, str]:
    """RFC 8656 §12.4: channel number (0x4000..0x4FFF) and length."""
    out = {"kind": PacketKind.TURN_CHANNEL.value}
    if len(data) < 4:
        out["error"] = f"ChannelData of {len(data)} bytes is shorter than its 4-byte header"
        out["summary"] = f"TURN ChannelData (malformed: {out['error']})"
        return out
    channel, length = struct.unpack_from("!HH", data)
    out["turn.channel"] = f"0x{channel:04x}"
    out["turn.length"] = str(length)
    out["summary"] = f"TURN ChannelData channel=0x{channel:04x} length={length}"
    return out


def _describe_unknown(data: bytes) -> dict[str, str]:
    if not data:
        return {"kind": PacketKind.UNKNOWN.value, "summary": "empty datagram"}
    return {
        "kind": PacketKind.UNKNOWN.value,
        "summary": f"unknown first byte 0x{data[0]:02x} ({len(data)} bytes)",
    }


_DESCRIBERS = {
    PacketKind.STUN: _describe_stun,
    PacketKind.ZRTP: _describe_zrtp,
    PacketKind.DTLS: _describe_dtls,
    PacketKind.TURN_CHANNEL: _describe_turn_channel,
    PacketKind.RTP: _describe_rtp,
    PacketKind.RTCP: _describe_rtcp,
    PacketKind.UNKNOWN: _describe_unknown,
}
