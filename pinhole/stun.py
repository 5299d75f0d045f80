"""STUN Binding (RFC 5389, obsoleted by RFC 8489): the codec and one client transaction.

RFC 5763 §6.7.2 needs exactly this much STUN: the passive side sends a single *unauthenticated*
Binding request from its media port to open the NAT pinhole, and every endpoint must answer one.
The codec also knows the NAT Behavior Discovery attributes of RFC 5780 §7 (CHANGE-REQUEST,
RESPONSE-ORIGIN, OTHER-ADDRESS, RESPONSE-PORT, PADDING) that services/stunserver and
pinhole/natprobe.py use to classify the lab's NAT.
The codec is pure (bytes in, :class:`Message` out, and back); :class:`BindingTransaction` is the
RFC 5389 §7.2.1 retransmission timer as a sans-IO state machine (time is passed in as ``now``);
:class:`BindingClient` is its thin asyncio adapter for any socket (media or SIP).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from pinhole.address import Address
from pinhole.timers import STUN_RC, STUN_RM, STUN_RTO

__all__ = [
    "FINGERPRINT_XOR",
    "HEADER_LENGTH",
    "MAGIC_COOKIE",
    "TRANSACTION_ID_LENGTH",
    "AddressFamily",
    "AttributeType",
    "BindingTransaction",
    "ChangeRequest",
    "Message",
    "MessageClass",
    "Method",
    "StunError",
    "address_value",
    "binding_error",
    "binding_request",
    "binding_success",
    "decode",
    "encode",
    "error_code_value",
    "looks_like_stun",
    "padding_value",
    "parse_address",
    "parse_mapped_address",
    "parse_response_port",
    "parse_unknown_attributes",
    "parse_xor_address",
    "response_port_value",
    "unknown_attributes_value",
    "xor_address",
]

MAGIC_COOKIE = 0x2112A442
"""RFC 5389 §6: fixed value in bytes 4..8 that tells STUN apart from other protocols."""
FINGERPRINT_XOR = 0x5354554E
"""RFC 5389 §15.5: XORed into the CRC-32 so a protocol that also ends in a CRC-32 is not taken for STUN."""
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12
MESSAGE_INTEGRITY_LENGTH = 20
FINGERPRINT_LENGTH = 4
_ATTRIBUTE_HEADER = 4


class StunError(ValueError):
    """A STUN message is malformed, fails a check, or cannot be built."""


class Method(IntEnum):
    """RFC 5389 §18.1: only Binding is defined by the base spec, and only Binding is needed."""

    BINDING = 0x001


class MessageClass(IntEnum):
    """RFC 5389 §6: the two class bits C1 C0."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS_RESPONSE = 0b10
    ERROR_RESPONSE = 0b11


class AttributeType(IntEnum):
    """RFC 5389 §18.2 / RFC 8489 §18.3 attribute types (plus the ICE ones seen in RFC 5769 and RFC 5780's)."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026  # RFC 5780 §7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 §7.5
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4 (RFC 3489's CHANGED-ADDRESS)


class AddressFamily(IntEnum):
    """RFC 5389 §15.1: the family octet of (XOR-)MAPPED-ADDRESS."""

    IPV4 = 0x01
    IPV6 = 0x02


def _attribute_name(attr_type: int) -> str:
    try:
        return f"0x{attr_type:04X} ({AttributeType(attr_type).name.replace('_', '-')})"
    except ValueError:
        return f"0x{attr_type:04X}"


# -- message type (RFC 5389 §6, figure 3) -----------------------------------------------------------


def _pack_type(method: int, message_class: int) -> int:
    """Interleave the 12 method bits M11..M0 with the class bits C1 C0 (RFC 5389 §6, figure 3)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def _unpack_type(message_type: int) -> tuple[int, int]:
    method = (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    message_class = ((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10)
    return method, message_class


# -- addresses (RFC 5389 §15.1, §15.2) --------------------------------------------------------------


def _pack_address(ip: str, port: int, xor_key: bytes | None) -> bytes:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise StunError(f"{ip!r} is not an IPv4 or IPv6 address") from exc
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"port {port} is out of range 0..65535")
    family = AddressFamily.IPV4 if address.version == 4 else AddressFamily.IPV6
    raw = address.packed
    if xor_key is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_key))
    return struct.pack("!BBH", 0, family, port) + raw


def _unpack_address(value: bytes, xor_key: bytes | None, what: str) -> tuple[str, int]:
    if len(value) < 4:
        raise StunError(f"{what}: value of {len(value)} bytes is shorter than 4")
    _, family, port = struct.unpack_from("!BBH", value)
    if family == AddressFamily.IPV4:
        expected = 8
    elif family == AddressFamily.IPV6:
        expected = 20
    else:
        raise StunError(f"{what}: unknown address family 0x{family:02X}")
    if len(value) != expected:
        raise StunError(
            f"{what}: length {len(value)} does not fit family {AddressFamily(family).name} (expected {expected})"
        )
    raw = value[4:]
    if xor_key is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_key))
    return str(ipaddress.ip_address(raw)), port


def _xor_key(transaction_id: bytes) -> bytes:
    """RFC 5389 §15.2: IPv4 is XORed with the cookie, IPv6 with cookie || transaction ID."""
    return struct.pack("!I", MAGIC_COOKIE) + transaction_id


def xor_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS value for ip:port (RFC 5389 §15.2).

    XORing keeps ALGs that rewrite every copy of the address in a packet from touching it.
    """
    _check_transaction_id(transaction_id)
    return _pack_address(ip, port, _xor_key(transaction_id))


def parse_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """Inverse of :func:`xor_address`: (ip, port) from an XOR-MAPPED-ADDRESS value."""
    _check_transaction_id(transaction_id)
    return _unpack_address(value, _xor_key(transaction_id), "XOR-MAPPED-ADDRESS")


def parse_mapped_address(value: bytes) -> tuple[str, int]:
    """(ip, port) from a plain MAPPED-ADDRESS value (RFC 5389 §15.1, kept for RFC 3489 servers)."""
    return _unpack_address(value, None, "MAPPED-ADDRESS")


def address_value(ip: str, port: int) -> bytes:
    """A plain (not XORed) address value: MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS (RFC 5780 §7.1)."""
    return _pack_address(ip, port, None)


def parse_address(value: bytes, what: str = "MAPPED-ADDRESS") -> tuple[str, int]:
    """(ip, port) from a plain address value; `what` names the attribute in errors."""
    return _unpack_address(value, None, what)


# -- RFC 5780 §7: NAT Behavior Discovery attributes ---------------------------------------------------

_CHANGE_IP = 0x4
_CHANGE_PORT = 0x2


@dataclass(frozen=True)
class ChangeRequest:
    """CHANGE-REQUEST (RFC 5780 §7.2): answer from the other IP (flag A) and/or the other port (flag B)."""

    change_ip: bool = False
    change_port: bool = False

    def encode(self) -> bytes:
        return struct.pack("!I", (_CHANGE_IP if self.change_ip else 0) | (_CHANGE_PORT if self.change_port else 0))

    @classmethod
    def decode(cls, value: bytes) -> ChangeRequest:
        if len(value) != 4:
            raise StunError(f"CHANGE-REQUEST: length {len(value)} must be 4")
        (flags,) = struct.unpack("!I", value)
        if flags & ~(_CHANGE_IP | _CHANGE_PORT):
            raise StunError(
                f"CHANGE-REQUEST: flags 0x{flags:08X} set bits other than change IP (0x4) and change port (0x2)"
            )
        return cls(bool(flags & _CHANGE_IP), bool(flags & _CHANGE_PORT))

    def __str__(self) -> str:
        changed = [what for what, flag in (("IP", self.change_ip), ("port", self.change_port)) if flag]
        return "change " + " and ".join(changed) if changed else "no change"


def response_port_value(port: int) -> bytes:
    """RESPONSE-PORT (RFC 5780 §7.5): the port in network order, then 2 bytes of padding (zero)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise StunError(f"RESPONSE-PORT: port {port!r} is out of range 0..65535")
    return struct.pack("!HH", port, 0)


def parse_response_port(value: bytes) -> int:
    """The port of a RESPONSE-PORT value; 2 bytes, or 4 with the padding counted in the length."""
    if len(value) not in (2, 4):
        raise StunError(f"RESPONSE-PORT: length {len(value)} must be 2 or 4")
    (port,) = struct.unpack_from("!H", value)
    return port


def padding_value(length: int) -> bytes:
    """PADDING (RFC 5780 §7.6): `length` bytes whose value does not matter (zeros here)."""
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= 0xFFFF:
        raise StunError(f"PADDING: length {length!r} is out of range 0..65535")
    return bytes(length)


# -- errors (RFC 5389 §15.6, §15.9) ---------------------------------------------------------------------


def error_code_value(code: int, reason: str) -> bytes:
    """ERROR-CODE: class (hundreds) and number, then a UTF-8 reason phrase of at most 128 characters."""
    if isinstance(code, bool) or not isinstance(code, int) or not 300 <= code <= 699:
        raise StunError(f"ERROR-CODE: code {code!r} is not in 300..699")
    if len(reason) > 128:
        raise StunError(f"ERROR-CODE: reason phrase of {len(reason)} characters is longer than 128")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def unknown_attributes_value(types: list[int] | tuple[int, ...]) -> bytes:
    """UNKNOWN-ATTRIBUTES: the 16-bit types a server did not understand (RFC 5389 §15.9)."""
    for attr_type in types:
        if isinstance(attr_type, bool) or not isinstance(attr_type, int) or not 0 <= attr_type <= 0xFFFF:
            raise StunError(f"UNKNOWN-ATTRIBUTES: {attr_type!r} is not a 16-bit attribute type")
    return struct.pack(f"!{len(types)}H", *types)


def parse_unknown_attributes(value: bytes) -> list[int]:
    if len(value) % 2:
        raise StunError(f"UNKNOWN-ATTRIBUTES: length {len(value)} is not a multiple of 2")
    return list(struct.unpack(f"!{len(value) // 2}H", value))


def _check_transaction_id(transaction_id: bytes) -> None:
    if not isinstance(transaction_id, (bytes, bytearray)) or len(transaction_id) != TRANSACTION_ID_LENGTH:
        size = len(transaction_id) if isinstance(transaction_id, (bytes, bytearray)) else "?"
        raise StunError(f"transaction ID must be {TRANSACTION_ID_LENGTH} bytes, got {size}")


# -- message ------------------------------------------------------------------------------------------


@dataclass
class Message:
    """One STUN message. ``attributes`` are (type, raw value) pairs in wire order.

    MESSAGE-INTEGRITY and FINGERPRINT are computed attributes: :func:`decode` keeps them in
    ``attributes`` (so ``has_*`` can report them) and :func:`encode` recomputes them.
    """

    method: Method
    message_class: MessageClass
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_transaction_id(self.transaction_id)
        self.transaction_id = bytes(self.transaction_id)

    def attribute(self, attr_type: int) -> bytes | None:
        """The first value of ``attr_type`` (RFC 5389 §15: only the first occurrence counts)."""
        for t, value in self.attributes:
            if t == attr_type:
                return value
        return None

    @property
    def transaction_id_hex(self) -> str:
        return self.transaction_id.hex()

    @property
    def xor_mapped_address(self) -> tuple[str, int] | None:
        value = self.attribute(AttributeType.XOR_MAPPED_ADDRESS)
        return None if value is None else parse_xor_address(value, self.transaction_id)

    @property
    def mapped_address(self) -> tuple[str, int] | None:
        value = self.attribute(AttributeType.MAPPED_ADDRESS)
        return None if value is None else parse_mapped_address(value)

    @property
    def change_request(self) -> ChangeRequest | None:
        """CHANGE-REQUEST of a request (RFC 5780 §7.2), None when absent."""
        value = self.attribute(AttributeType.CHANGE_REQUEST)
        return None if value is None else ChangeRequest.decode(value)

    @property
    def response_origin(self) -> tuple[str, int] | None:
        """Where the server sent the response from, by its own account (RFC 5780 §7.3)."""
        value = self.attribute(AttributeType.RESPONSE_ORIGIN)
        return None if value is None else parse_address(value, "RESPONSE-ORIGIN")

    @property
    def other_address(self) -> tuple[str, int] | None:
        """The server's alternate IP and port, the source of a change-IP-and-port answer (RFC 5780 §7.4)."""
        value = self.attribute(AttributeType.OTHER_ADDRESS)
        return None if value is None else parse_address(value, "OTHER-ADDRESS")

    @property
    def response_port(self) -> int | None:
        value = self.attribute(AttributeType.RESPONSE_PORT)
        return None if value is None else parse_response_port(value)

    @property
    def unknown_attributes(self) -> list[int] | None:
        value = self.attribute(AttributeType.UNKNOWN_ATTRIBUTES)
        return None if value is None else parse_unknown_attributes(value)

    @property
    def software(self) -> str | None:
        return self._text(AttributeType.SOFTWARE)

    @property
    def username(self) -> str | None:
        return self._text(AttributeType.USERNAME)

    @property
    def error_code(self) -> tuple[int, str] | None:
        """(code, reason phrase) from ERROR-CODE (RFC 5389 §15.6)."""
        value = self.attribute(AttributeType.ERROR_CODE)
        if value is None:
            return None
        return _parse_error_code(value)

    @property
    def has_message_integrity(self) -> bool:
        return self.attribute(AttributeType.MESSAGE_INTEGRITY) is not None

    @property
    def has_fingerprint(self) -> bool:
        return self.attribute(AttributeType.FINGERPRINT) is not None

    @property
    def unknown_comprehension_required(self) -> list[int]:
        """Types below 0x8000 this codec does not know; a server answers 420 (RFC 5389 §7.3.1)."""
        known = {int(t) for t in AttributeType}
        return [t for t, _ in self.attributes if t < 0x8000 and t not in known]

    def _text(self, attr_type: AttributeType) -> str | None:
        value = self.attribute(attr_type)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StunError(f"{_attribute_name(attr_type)} is not valid UTF-8") from exc


def _parse_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError(f"ERROR-CODE: value of {len(value)} bytes is shorter than 4")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunError(f"ERROR-CODE: class {klass} / number {number} is not a code 300..699")
    try:
        reason = value[4:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunError("ERROR-CODE: reason phrase is not valid UTF-8") from exc
    return klass * 100 + number, reason


def _pack_attribute(attr_type: int, value: bytes) -> bytes:
    """TLV with zero padding to a 4-byte boundary (RFC 5389 §15; RFC 8489 §14: pad with zeros)."""
    if len(value) > 0xFFFF:
        raise StunError(f"attribute {_attribute_name(attr_type)}: value of {len(value)} bytes is too long")
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def _header(message_type: int, length: int, transaction_id: bytes) -> bytes:
    return struct.pack("!HHI", message_type, length, MAGIC_COOKIE) + transaction_id


def _message_integrity(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha1).digest()


def _fingerprint(data: bytes) -> int:
    return (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def encode(message: Message, *, integrity_key: bytes | None = None, fingerprint: bool = True) -> bytes:
    """Serialize ``message``; add MESSAGE-INTEGRITY (RFC 5389 §15.4) and FINGERPRINT last (§15.5).

    MESSAGE-INTEGRITY and FINGERPRINT already in ``message.attributes`` are dropped and recomputed.
    A message that carried MESSAGE-INTEGRITY cannot be re-encoded without the key.
    """
    _check_transaction_id(message.transaction_id)
    computed = (AttributeType.MESSAGE_INTEGRITY, AttributeType.FINGERPRINT)
    attributes = [(t, v) for t, v in message.attributes if t not in computed]
    if integrity_key is None and message.has_message_integrity:
        raise StunError("message has MESSAGE-INTEGRITY but no integrity_key was given to recompute it")
    message_type = _pack_type(message.method, message.message_class)
    body = b"".join(_pack_attribute(t, v) for t, v in attributes)
    total = len(body) + (_ATTRIBUTE_HEADER + MESSAGE_INTEGRITY_LENGTH if integrity_key is not None else 0)
    total += _ATTRIBUTE_HEADER + FINGERPRINT_LENGTH if fingerprint else 0
    if total > 0xFFFF:
        raise StunError(f"message body of {total} bytes does not fit the 16-bit length field")
    if integrity_key is not None:
        length = len(body) + _ATTRIBUTE_HEADER + MESSAGE_INTEGRITY_LENGTH
        mac = _message_integrity(integrity_key, _header(message_type, length, message.transaction_id) + body)
        body += _pack_attribute(AttributeType.MESSAGE_INTEGRITY, mac)
    if fingerprint:
        length = len(body) + _ATTRIBUTE_HEADER + FINGERPRINT_LENGTH
        crc = _fingerprint(_header(message_type, length, message.transaction_id) + body)
        body += _pack_attribute(AttributeType.FINGERPRINT, struct.pack("!I", crc))
    return _header(message_type, len(body), message.transaction_id) + body


def looks_like_stun(data: bytes) -> bool:
    """Cheap demux test (RFC 5389 §8, RFC 7983): >= 20 bytes, first byte 0..3, magic cookie."""
    return len(data) >= HEADER_LENGTH and data[0] <= 3 and data[4:8] == b"\x21\x12\xa4\x42"


def decode(data: bytes, *, integrity_key: bytes | None = None) -> Message:
    """Parse and validate one STUN datagram (RFC 5389 §6, §7.3, §15).

    Checks the header (two zero bits, magic cookie, length a multiple of 4 that equals the
    datagram), every attribute's length and padding, FINGERPRINT (must be last, CRC must match)
    and, when ``integrity_key`` is given, MESSAGE-INTEGRITY (must be present and match).
    Attributes after MESSAGE-INTEGRITY other than FINGERPRINT are dropped (§15.4: MUST ignore).
    """
    data = bytes(data)
    if len(data) < HEADER_LENGTH:
        raise StunError(f"datagram of {len(data)} bytes is shorter than the {HEADER_LENGTH}-byte STUN header")
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000:
        raise StunError(f"first two bits of the message type must be zero (first byte 0x{data[0]:02X})")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"magic cookie is 0x{cookie:08X} instead of 0x{MAGIC_COOKIE:08X}")
    if length % 4:
        raise StunError(f"message length {length} is not a multiple of 4")
    if length != len(data) - HEADER_LENGTH:
        raise StunError(
            f"message length {length} does not match the {len(data) - HEADER_LENGTH} bytes after the header"
        )
    method_value, class_value = _unpack_type(message_type)
    try:
        method = Method(method_value)
    except ValueError:
        raise StunError(f"method 0x{method_value:03X} is not supported (only Binding 0x001)") from None
    message_class = MessageClass(class_value)
    transaction_id = data[8:20]

    attributes: list[tuple[int, bytes]] = []
    integrity_offset: int | None = None
    offset = HEADER_LENGTH
    while offset < len(data):
        left = len(data) - offset  # >= 4: the length is a multiple of 4 and so is every padded attribute
        attr_type, attr_length = struct.unpack_from("!HH", data, offset)
        name = _attribute_name(attr_type)
        padded = attr_length + (-attr_length % 4)
        if padded > left - _ATTRIBUTE_HEADER:
            raise StunError(
                f"attribute {name} at offset {offset}: length {attr_length} (padded {padded}) "
                f"exceeds the {left - _ATTRIBUTE_HEADER} bytes left"
            )
        value = data[offset + _ATTRIBUTE_HEADER : offset + _ATTRIBUTE_HEADER + attr_length]
        if attr_type == AttributeType.FINGERPRINT:
            if attr_length != FINGERPRINT_LENGTH:
                raise StunError(f"FINGERPRINT at offset {offset}: length {attr_length} must be {FINGERPRINT_LENGTH}")
            if offset + _ATTRIBUTE_HEADER + FINGERPRINT_LENGTH != len(data):
                raise StunError(f"FINGERPRINT at offset {offset} is not the last attribute")
            (received,) = struct.unpack("!I", value)
            computed = _fingerprint(data[:offset])
            if received != computed:
                raise StunError(f"FINGERPRINT 0x{received:08X} does not match the computed 0x{computed:08X}")
            attributes.append((attr_type, value))
        elif integrity_offset is not None:
            pass  # §15.4: ignore everything after MESSAGE-INTEGRITY except FINGERPRINT
        elif attr_type == AttributeType.MESSAGE_INTEGRITY:
            if attr_length != MESSAGE_INTEGRITY_LENGTH:
                raise StunError(
                    f"MESSAGE-INTEGRITY at offset {offset}: length {attr_length} must be {MESSAGE_INTEGRITY_LENGTH}"
                )
            integrity_offset = offset
            attributes.append((attr_type, value))
        else:
            _check_attribute(attr_type, value, transaction_id, offset)
            attributes.append((attr_type, value))
        offset += _ATTRIBUTE_HEADER + padded

    if integrity_key is not None:
        if integrity_offset is None:
            raise StunError("MESSAGE-INTEGRITY is missing but an integrity_key was given")
        end = integrity_offset + _ATTRIBUTE_HEADER + MESSAGE_INTEGRITY_LENGTH
        signed = data[:2] + struct.pack("!H", end - HEADER_LENGTH) + data[4:integrity_offset]
        received_mac = data[integrity_offset + _ATTRIBUTE_HEADER : end]
        if not hmac.compare_digest(received_mac, _message_integrity(integrity_key, signed)):
            raise StunError("MESSAGE-INTEGRITY does not match (wrong key or altered message)")
    return Message(method, message_class, transaction_id, attributes)


def _check_attribute(attr_type: int, value: bytes, transaction_id: bytes, offset: int) -> None:
    """Validate the values this module interprets, so Message properties never fail after decode."""
    try:
        if attr_type == AttributeType.XOR_MAPPED_ADDRESS:
            parse_xor_address(value, transaction_id)
        elif attr_type == AttributeType.MAPPED_ADDRESS:
            parse_mapped_address(value)
        elif attr_type in (AttributeType.SOFTWARE, AttributeType.USERNAME):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise StunError(f"{_attribute_name(attr_type)} is not valid UTF-8") from None
        elif attr_type == AttributeType.ERROR_CODE:
            _parse_error_code(value)
        elif attr_type == AttributeType.CHANGE_REQUEST:
            ChangeRequest.decode(value)
        elif attr_type == AttributeType.RESPONSE_ORIGIN:
            parse_address(value, "RESPONSE-ORIGIN")
        elif attr_type == AttributeType.OTHER_ADDRESS:
            parse_address(value, "OTHER-ADDRESS")
        elif attr_type == AttributeType.RESPONSE_PORT:
            parse_response_port(value)
        elif attr_type == AttributeType.UNKNOWN_ATTRIBUTES:
            parse_unknown_attributes(value)
    except StunError as exc:
        raise StunError(f"attribute at offset {offset}: {exc}") from None


# -- Binding helpers ----------------------------------------------------------------------------------


def binding_request(
    transaction_id: bytes | None = None,
    software: str | None = None,
    *,
    change_request: ChangeRequest | None = None,
    response_port: int | None = None,
    padding: int | None = None,
) -> Message:
    """An unauthenticated Binding request (RFC 5763 §6.7.2: no USERNAME or MESSAGE-INTEGRITY).

    The transaction ID is 96 random bits (RFC 5389 §6: cryptographically random).
    `change_request`, `response_port` and `padding` (a length) add the RFC 5780 request attributes.
    """
    attributes: list[tuple[int, bytes]] = []
    if change_request is not None:
        attributes.append((AttributeType.CHANGE_REQUEST, change_request.encode()))
    if response_port is not None:
        attributes.append((AttributeType.RESPONSE_PORT, response_port_value(response_port)))
    if padding is not None:
        attributes.append((AttributeType.PADDING, padding_value(padding)))
    if software is not None:
        attributes.append((AttributeType.SOFTWARE, software.encode("utf-8")))
    tid = os.urandom(TRANSACTION_ID_LENGTH) if transaction_id is None else transaction_id
    return Message(Method.BINDING, MessageClass.REQUEST, tid, attributes)


def binding_success(
    request: Message,
    source: tuple[str, int],
    software: str | None = None,
    *,
    mapped_address: bool = False,
    response_origin: tuple[str, int] | None = None,
    other_address: tuple[str, int] | None = None,
) -> Message:
    """The success response to ``request``: XOR-MAPPED-ADDRESS = the request's source (RFC 5389 §7.3.1.1).

    RFC 5780 §6.1 adds MAPPED-ADDRESS too (`mapped_address`), RESPONSE-ORIGIN (where the response
    leaves from) and OTHER-ADDRESS (only from a server with a second IP address, §7.4).
    """
    _check_request(request)
    ip, port = source
    attributes: list[tuple[int, bytes]] = [
        (AttributeType.XOR_MAPPED_ADDRESS, xor_address(ip, port, request.transaction_id))
    ]
    if mapped_address:
        attributes.append((AttributeType.MAPPED_ADDRESS, address_value(ip, port)))
    if response_origin is not None:
        attributes.append((AttributeType.RESPONSE_ORIGIN, address_value(*response_origin)))
    if other_address is not None:
        attributes.append((AttributeType.OTHER_ADDRESS, address_value(*other_address)))
    if software is not None:
        attributes.append((AttributeType.SOFTWARE, software.encode("utf-8")))
    return Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, request.transaction_id, attributes)


def binding_error(
    request: Message,
    code: int,
    reason: str,
    *,
    unknown_attributes: list[int] | tuple[int, ...] = (),
    software: str | None = None,
) -> Message:
    """The error response to ``request`` (RFC 5389 §7.3.1.1): ERROR-CODE, and UNKNOWN-ATTRIBUTES for a 420."""
    _check_request(request)
    attributes: list[tuple[int, bytes]] = [(AttributeType.ERROR_CODE, error_code_value(code, reason))]
    if unknown_attributes:
        attributes.append((AttributeType.UNKNOWN_ATTRIBUTES, unknown_attributes_value(unknown_attributes)))
    if software is not None:
        attributes.append((AttributeType.SOFTWARE, software.encode("utf-8")))
    return Message(Method.BINDING, MessageClass.ERROR_RESPONSE, request.transaction_id, attributes)


def _check_request(request: Message) -> None:
    if request.method != Method.BINDING or request.message_class != MessageClass.REQUEST:
        raise StunError(f"can only answer a Binding request, not a {request.method.name} {request.message_class.name}")


# -- client transaction (RFC 5389 §7.2.1) -------------------------------------------------------------


class BindingTransaction:
    """Retransmission timer of one client transaction over UDP (RFC 5389 §7.2.1), sans-IO.

    The request is sent at 0, RTO, 3 RTO, 7 RTO, ... (doubling) for Rc sends in all; after the
    last send the client waits Rm * RTO and then fails. With RTO 0.5 s: 0, 0.5, 1.5, 3.5, 7.5,
    15.5, 31.5 and failure at 39.5. The RTT estimate / Karn's algorithm is not kept: one
    transaction per check, and RFC 5763 §6.7.2 sends a single check.
    """

    def __init__(self, request: bytes, *, rto: float = STUN_RTO, rc: int = STUN_RC, rm: int = STUN_RM) -> None:
        message = decode(request)
        if message.message_class != MessageClass.REQUEST:
            raise StunError(f"a client transaction sends a request, not a {message.message_class.name}")
        if rto <= 0 or rc < 1 or rm < 1:
            raise StunError(f"rto must be > 0 and rc, rm >= 1 (got rto={rto}, rc={rc}, rm={rm})")
        self.request = bytes(request)
        self.transaction_id = message.transaction_id
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self.state = "pending"
        self.sends: list[float] = []
        self.response: Message | None = None
        self.completed_at: float | None = None
        self._deadline: float | None = None
        self._interval = rto

    def start(self, now: float) -> bytes:
        """The first send; arms the timer at ``now + RTO``."""
        if self.sends:
            raise StunError("transaction already started")
        self.sends.append(now)
        self._deadline = now + self._interval
        return self.request

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`on_deadline` must be called next, or None when the timer is not running."""
        return self._deadline if self.state == "pending" else None

    def on_deadline(self, now: float) -> bytes | None:
        """Timer expiry: the datagram to retransmit, or None.

        None means the transaction has just failed (Rm * RTO after the last of Rc sends), or that
        nothing was due (``now`` before the deadline, or not pending): check :attr:`state`.
        """
        if self.state != "pending" or self._deadline is None or now < self._deadline:
            return None
        if len(self.sends) >= self.rc:
            self.state = "failed"
            self.completed_at = now
            self._deadline = None
            return None
        self.sends.append(now)
        self._interval *= 2
        if len(self.sends) >= self.rc:
            self._deadline = now + self.rm * self.rto
        else:
            self._deadline = now + self._interval
        return self.request

    def on_response(self, message: Message, now: float) -> bool:
        """True if ``message`` is a response to this transaction (same transaction ID).

        A success response completes the transaction as "succeeded", an error response as
        "failed"; either stops the timer. Retransmitted responses still match but change nothing.
        """
        if message.transaction_id != self.transaction_id or message.message_class not in (
            MessageClass.SUCCESS_RESPONSE,
            MessageClass.ERROR_RESPONSE,
        ):
            return False
        if self.state == "pending":
            self.state = "succeeded" if message.message_class == MessageClass.SUCCESS_RESPONSE else "failed"
            self.response = message
            self.completed_at = now
            self._deadline = None
        return True




@dataclass
class _Pending:
    transaction: BindingTransaction
    destination: Address
    future: asyncio.Future[Address]
    label: str
    timer: asyncio.TimerHandle | None = None


class BindingClient:
    """Binding transactions over any datagram socket: the asyncio adapter of BindingTransaction.

    The socket's owner passes its send function and feeds every STUN response it receives to
    `receive()`; each `request()` resolves to the XOR-MAPPED-ADDRESS, or fails on timeout, on
    an error response, or when the client is closed. `on_send(request, destination, attempt,
    label)` and `on_timeout(transaction_id, attempts, label)` let the owner record evidence.
    """

    def __init__(
        self,
        send: Callable[[bytes, Address], None],
        *,
        rto: float = STUN_RTO,
        on_send: Callable[[bytes, Address, int, str], None] | None = None,
        on_timeout: Callable[[bytes, int, str], None] | None = None,
    ) -> None:
        self.send = send
        self.rto = rto
        self.on_send = on_send
        self.on_timeout = on_timeout
        self._pending: dict[bytes, _Pending] = {}

    def request(
        self, destination: Address, *, label: str = "", username: str | None = None, integrity_key: bytes | None = None
    ) -> asyncio.Future[Address]:
        """One Binding transaction; `username` and `integrity_key` add USERNAME and MESSAGE-INTEGRITY
        (RFC 5389 §15.3, §15.4), which the RFC 5763 §6.7.2 check does not carry."""
        loop = asyncio.get_running_loop()
        message = binding_request(software="pinhole")
        if username is not None:
            message.attributes.insert(0, (AttributeType.USERNAME, username.encode("utf-8")))
        data = encode(message, integrity_key=integrity_key)
        pending = _Pending(BindingTransaction(data, rto=self.rto), destination, loop.create_future(), label)
        self._pending[message.transaction_id] = pending
        self._transmit(message.transaction_id, pending.transaction.start(loop.time()))
        return pending.future

    def _transmit(self, tid: bytes, data: bytes) -> None:
        pending = self._pending[tid]
        if self.on_send is not None:
            self.on_send(tid, pending.destination, len(pending.transaction.sends), pending.label)
        self.send(data, pending.destination)
        self._arm(tid)

    def _arm(self, tid: bytes) -> None:
        pending = self._pending[tid]
        deadline = pending.transaction.next_deadline
        if deadline is not None:
            pending.timer = asyncio.get_running_loop().call_at(deadline, self._expired, tid)

    def _expired(self, tid: bytes) -> None:
        pending = self._pending.get(tid)
        if pending is None:
            return
        data = pending.transaction.on_deadline(asyncio.get_running_loop().time())
        if data is not None:
            self._transmit(tid, data)
        elif pending.transaction.state == "pending":  # woke up early: nothing due yet
            self._arm(tid)
        else:
            del self._pending[tid]
            attempts = len(pending.transaction.sends)
            if self.on_timeout is not None:
                self.on_timeout(tid, attempts, pending.label)
            if not pending.future.done():
                pending.future.set_exception(
                    TimeoutError(f"STUN Binding {tid.hex()} got no response after {attempts} sends")
                )

    def receive(self, message: Message) -> bool:
        """Feed a received response; True when it belonged to one of our transactions."""
        pending = self._pending.get(message.transaction_id)
        if pending is None or not pending.transaction.on_response(message, asyncio.get_running_loop().time()):
            return False
        del self._pending[message.transaction_id]
        if pending.timer is not None:
            pending.timer.cancel()
        mapped = message.xor_mapped_address
        if not pending.future.done():
            if message.message_class == MessageClass.SUCCESS_RESPONSE and mapped is not None:
                pending.future.set_result(mapped)
            else:
                pending.future.set_exception(StunError(f"Binding failed: {message.message_class.name.lower()}"))
        return True

    def close(self, reason: str) -> None:
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_exception(ConnectionAbortedError(reason))
        self._pending.clear()
