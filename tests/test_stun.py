"""pinhole.stun: RFC 5769 vectors, round trips, every decode error, the RFC 5389 §7.2.1 timer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
import zlib
from pathlib import Path

import pytest

from pinhole import stun
from pinhole.stun import AttributeType, Message, MessageClass, Method, StunError

DATA = Path(__file__).parent / "data" / "stun"
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def vector(name: str) -> bytes:
    return (DATA / f"rfc5769-{name}.bin").read_bytes()


# -- independent reference computations (RFC 5389 §15.4, §15.5), written out in the test ------------


def reference_integrity(message_up_to_mi: bytes, key: bytes) -> bytes:
    """HMAC-SHA1 over the message before MESSAGE-INTEGRITY, length field pointing past it."""
    length = len(message_up_to_mi) - 20 + 24
    adjusted = message_up_to_mi[:2] + struct.pack("!H", length) + message_up_to_mi[4:]
    return hmac.new(key, adjusted, hashlib.sha1).digest()


def reference_fingerprint(message_up_to_fp: bytes) -> bytes:
    length = len(message_up_to_fp) - 20 + 8
    adjusted = message_up_to_fp[:2] + struct.pack("!H", length) + message_up_to_fp[4:]
    return struct.pack("!I", (zlib.crc32(adjusted) ^ 0x5354554E) & 0xFFFFFFFF)


def with_zero_padding(data: bytes) -> bytes:
    """The same message with padding bytes set to zero and MI/FP recomputed by the reference code."""
    out = bytearray(data[:20])
    offset = 20
    while offset < len(data):
        attr_type, length = struct.unpack_from("!HH", data, offset)
        padded = length + (-length % 4)
        if attr_type == AttributeType.MESSAGE_INTEGRITY:
            out += data[offset : offset + 4] + reference_integrity(bytes(out), PASSWORD)
        elif attr_type == AttributeType.FINGERPRINT:
            out += data[offset : offset + 4] + reference_fingerprint(bytes(out))
        else:
            out += data[offset : offset + 4 + length] + bytes(padded - length)
        offset += 4 + padded
    return bytes(out)


# -- RFC 5769 vectors ---------------------------------------------------------------------------------


def test_rfc5769_sample_request() -> None:
    message = stun.decode(vector("request"), integrity_key=PASSWORD)
    assert message.method is Method.BINDING
    assert message.message_class is MessageClass.REQUEST
    assert message.transaction_id == TID
    assert message.transaction_id_hex == "b7e7a701bc34d686fa87dfae"
    assert message.software == "STUN test client"
    assert message.username == "evtj:h6vY"
    assert message.attribute(AttributeType.PRIORITY) == bytes.fromhex("6e0001ff")
    assert message.attribute(AttributeType.ICE_CONTROLLED) == bytes.fromhex("932ff9b151263b36")
    assert message.has_message_integrity and message.has_fingerprint
    assert message.xor_mapped_address is None
    assert [t for t, _ in message.attributes] == [0x8022, 0x0024, 0x8029, 0x0006, 0x0008, 0x8028]


@pytest.mark.parametrize(
    "name, address",
    [
        ("ipv4-response", ("192.0.2.1", 32853)),
        ("ipv6-response", ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_sample_responses(name: str, address: tuple[str, int]) -> None:
    message = stun.decode(vector(name), integrity_key=PASSWORD)
    assert message.method is Method.BINDING
    assert message.message_class is MessageClass.SUCCESS_RESPONSE
    assert message.transaction_id == TID
    assert message.software == "test vector"
    assert message.xor_mapped_address == address
    assert message.has_message_integrity and message.has_fingerprint


def test_rfc5769_vectors_decode_without_key() -> None:
    for name in ("request", "ipv4-response", "ipv6-response"):
        assert stun.decode(vector(name)).transaction_id == TID


@pytest.mark.parametrize("name", ["request", "ipv4-response", "ipv6-response"])
def test_reencoding_rfc5769_vectors_matches_reference_with_zero_padding(name: str) -> None:
    message = stun.decode(vector(name), integrity_key=PASSWORD)
    encoded = stun.encode(message, integrity_key=PASSWORD)
    assert encoded == with_zero_padding(vector(name))
    again = stun.decode(encoded, integrity_key=PASSWORD)
    computed = (AttributeType.MESSAGE_INTEGRITY, AttributeType.FINGERPRINT)
    assert [a for a in again.attributes if a[0] not in computed] == [
        a for a in message.attributes if a[0] not in computed
    ]
    assert [t for t, _ in again.attributes] == [t for t, _ in message.attributes]


def test_xor_address_matches_rfc5769_values() -> None:
    assert stun.xor_address("192.0.2.1", 32853, TID) == bytes.fromhex("0001a147e112a643")
    assert stun.xor_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, TID) == bytes.fromhex(
        "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    )
    assert stun.parse_xor_address(bytes.fromhex("0001a147e112a643"), TID) == ("192.0.2.1", 32853)


def test_mapped_address() -> None:
    value = bytes.fromhex("00010050c0000201")
    assert stun.parse_mapped_address(value) == ("192.0.2.1", 80)
    message = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, TID, [(AttributeType.MAPPED_ADDRESS, value)])
    assert stun.decode(stun.encode(message)).mapped_address == ("192.0.2.1", 80)


# -- building and round trips -------------------------------------------------------------------------


def test_binding_request_is_unauthenticated_with_fingerprint() -> None:
    request = stun.binding_request(TID, software="pinhole")
    data = stun.encode(request)
    assert data.hex() == (
        "00010014"
        "2112a442"
        "b7e7a701bc34d686fa87dfae"
        "80220007"
        "70696e686f6c6500"
        "80280004" + reference_fingerprint(data[:-8]).hex()
    )
    decoded = stun.decode(data)
    assert decoded.username is None and not decoded.has_message_integrity
    assert decoded.has_fingerprint and decoded.software == "pinhole"


def test_binding_request_random_transaction_id() -> None:
    first, second = stun.binding_request(), stun.binding_request()
    assert len(first.transaction_id) == 12 and first.transaction_id != second.transaction_id
    assert first.attributes == []


def test_binding_request_without_fingerprint_is_header_only() -> None:
    data = stun.encode(stun.binding_request(TID), fingerprint=False)
    assert data == bytes.fromhex("000100002112a442b7e7a701bc34d686fa87dfae")


def test_binding_success_echoes_transaction_and_source() -> None:
    request = stun.decode(stun.encode(stun.binding_request(TID)))
    response = stun.binding_success(request, ("192.0.2.1", 32853), software="test vector")
    data = stun.encode(response, integrity_key=PASSWORD)
    decoded = stun.decode(data, integrity_key=PASSWORD)
    assert decoded.message_class is MessageClass.SUCCESS_RESPONSE
    assert decoded.transaction_id == TID
    assert decoded.xor_mapped_address == ("192.0.2.1", 32853)
    assert decoded.software == "test vector"


def test_binding_success_ipv6_round_trip() -> None:
    request = stun.binding_request(TID)
    response = stun.binding_success(request, ("2001:db8::1", 5060))
    assert stun.decode(stun.encode(response)).xor_mapped_address == ("2001:db8::1", 5060)


def test_binding_success_only_answers_requests() -> None:
    response = stun.binding_success(stun.binding_request(TID), ("192.0.2.1", 1))
    with pytest.raises(StunError, match=r"^can only answer a Binding request, not a BINDING SUCCESS_RESPONSE$"):
        stun.binding_success(response, ("192.0.2.1", 1))


@pytest.mark.parametrize("message_class", list(MessageClass))
def test_message_type_round_trip(message_class: MessageClass) -> None:
    data = stun.encode(Message(Method.BINDING, message_class, TID))
    assert data[:2] == {0: b"\x00\x01", 1: b"\x00\x11", 2: b"\x01\x01", 3: b"\x01\x11"}[message_class]
    assert stun.decode(data).message_class is message_class


def test_error_code_round_trip() -> None:
    value = bytes([0, 0, 4, 20]) + b"Unknown Attribute"
    message = Message(Method.BINDING, MessageClass.ERROR_RESPONSE, TID, [(AttributeType.ERROR_CODE, value)])
    assert stun.decode(stun.encode(message)).error_code == (420, "Unknown Attribute")


def test_unknown_comprehension_required() -> None:
    message = Message(Method.BINDING, MessageClass.REQUEST, TID, [(0x7777, b"x"), (0x8888, b"y")])
    assert stun.decode(stun.encode(message)).unknown_comprehension_required == [0x7777]


def test_padding_is_zero_on_send() -> None:
    message = Message(Method.BINDING, MessageClass.INDICATION, TID, [(0x8888, b"abcde")])
    assert stun.encode(message, fingerprint=False)[20:] == bytes.fromhex("88880005") + b"abcde\x00\x00\x00"


def test_attributes_after_message_integrity_are_ignored() -> None:
    body = stun.encode(stun.binding_request(TID), integrity_key=PASSWORD, fingerprint=False)
    extra = bytes.fromhex("80220004") + b"evil"
    data = body[:2] + struct.pack("!H", len(body) - 20 + 8) + body[4:] + extra
    message = stun.decode(data, integrity_key=PASSWORD)
    assert [t for t, _ in message.attributes] == [AttributeType.MESSAGE_INTEGRITY]
    assert message.software is None


def test_looks_like_stun() -> None:
    assert stun.looks_like_stun(vector("request"))
    assert not stun.looks_like_stun(vector("request")[:19])
    assert not stun.looks_like_stun(b"\x04" + vector("request")[1:])
    assert not stun.looks_like_stun(vector("request")[:4] + b"\x00" * 16)
    assert stun.looks_like_stun(b"\x03" + vector("request")[1:])


# -- error paths (exact messages) ---------------------------------------------------------------------


def _replace(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def _fp_ok(data_without_fp: bytes) -> bytes:
    """Append a correct FINGERPRINT to a message body (fixing the header length)."""
    header = data_without_fp[:2] + struct.pack("!H", len(data_without_fp) - 20 + 8) + data_without_fp[4:]
    return header + bytes.fromhex("80280004") + reference_fingerprint(header)


REQUEST = vector("request")
RESPONSE = vector("ipv4-response")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "datagram of 0 bytes is shorter than the 20-byte STUN header"),
        (REQUEST[:19], "datagram of 19 bytes is shorter than the 20-byte STUN header"),
        (_replace(REQUEST, 0, b"\x40"), "first two bits of the message type must be zero (first byte 0x40)"),
        (_replace(REQUEST, 4, b"\x21\x12\xa4\x43"), "magic cookie is 0x2112A443 instead of 0x2112A442"),
        (_replace(REQUEST, 2, b"\x00\x57"), "message length 87 is not a multiple of 4"),
        (_replace(REQUEST, 2, b"\x00\x5c"), "message length 92 does not match the 88 bytes after the header"),
        (REQUEST + b"\x00" * 4, "message length 88 does not match the 92 bytes after the header"),
        (_replace(REQUEST, 0, b"\x00\x02"), "method 0x002 is not supported (only Binding 0x001)"),
        (
            bytes.fromhex("00010004") + REQUEST[4:20] + bytes.fromhex("8022"),
            "message length 4 does not match the 2 bytes after the header",
        ),
        (
            bytes.fromhex("00010004") + REQUEST[4:20] + bytes.fromhex("80220008"),
            "attribute 0x8022 (SOFTWARE) at offset 20: length 8 (padded 8) exceeds the 0 bytes left",
        ),
        (
            bytes.fromhex("00010008") + REQUEST[4:20] + bytes.fromhex("8022000561626364"),
            "attribute 0x8022 (SOFTWARE) at offset 20: length 5 (padded 8) exceeds the 4 bytes left",
        ),
        (
            bytes.fromhex("00010008") + REQUEST[4:20] + bytes.fromhex("7777000561626364"),
            "attribute 0x7777 at offset 20: length 5 (padded 8) exceeds the 4 bytes left",
        ),
        (_replace(REQUEST, 104, b"\xe5\x7a\x3b\xce"), "FINGERPRINT 0xE57A3BCE does not match the computed 0xE57A3BCF"),
        (_replace(REQUEST, 24, b"X"), "FINGERPRINT 0xE57A3BCF does not match the computed 0x05FF72BA"),
    ],
)
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(StunError) as excinfo:
        stun.decode(data)
    assert str(excinfo.value) == message


def test_fingerprint_wrong_length() -> None:
    data = bytes.fromhex("00010004") + REQUEST[4:20] + bytes.fromhex("80280000")
    with pytest.raises(StunError, match=r"^FINGERPRINT at offset 20: length 0 must be 4$"):
        stun.decode(data)


def test_fingerprint_must_be_last() -> None:
    data = (
        bytes.fromhex("00010010")
        + REQUEST[4:20]
        + bytes.fromhex("8028000400000000")
        + bytes.fromhex("8022000461626364")
    )
    with pytest.raises(StunError, match=r"^FINGERPRINT at offset 20 is not the last attribute$"):
        stun.decode(data)


def test_message_integrity_wrong_length() -> None:
    data = _fp_ok(bytes.fromhex("00010008") + REQUEST[4:20] + bytes.fromhex("0008000400000000"))
    with pytest.raises(StunError, match=r"^MESSAGE-INTEGRITY at offset 20: length 4 must be 20$"):
        stun.decode(data)


def test_message_integrity_wrong_key() -> None:
    with pytest.raises(StunError, match=r"^MESSAGE-INTEGRITY does not match \(wrong key or altered message\)$"):
        stun.decode(REQUEST, integrity_key=b"wrong")


def test_message_integrity_missing_with_key() -> None:
    with pytest.raises(StunError, match=r"^MESSAGE-INTEGRITY is missing but an integrity_key was given$"):
        stun.decode(stun.encode(stun.binding_request(TID)), integrity_key=PASSWORD)


def test_message_integrity_altered_message() -> None:
    altered = _fp_ok(_replace(REQUEST, 24, b"X")[:-8])
    with pytest.raises(StunError, match=r"^MESSAGE-INTEGRITY does not match"):
        stun.decode(altered, integrity_key=PASSWORD)
    assert stun.decode(altered).software == "XTUN test client"


@pytest.mark.parametrize(
    "attribute, message",
    [
        (
            bytes.fromhex("0020000800030000c0000201"),
            "attribute at offset 20: XOR-MAPPED-ADDRESS: unknown address family 0x03",
        ),
        (
            bytes.fromhex("002000040001a147"),
            "attribute at offset 20: XOR-MAPPED-ADDRESS: length 4 does not fit family IPV4 (expected 8)",
        ),
        (bytes.fromhex("00200000"), "attribute at offset 20: XOR-MAPPED-ADDRESS: value of 0 bytes is shorter than 4"),
        (
            bytes.fromhex("00200014") + bytes(20)[:1] + b"\x01" + bytes(18),
            "attribute at offset 20: XOR-MAPPED-ADDRESS: length 20 does not fit family IPV4 (expected 8)",
        ),
        (
            bytes.fromhex("0001000800020000c0000201"),
            "attribute at offset 20: MAPPED-ADDRESS: length 8 does not fit family IPV6 (expected 20)",
        ),
        (bytes.fromhex("80220002ffff0000"), "attribute at offset 20: 0x8022 (SOFTWARE) is not valid UTF-8"),
        (bytes.fromhex("00060002ffff0000"), "attribute at offset 20: 0x0006 (USERNAME) is not valid UTF-8"),
        (
            bytes.fromhex("0009000400000263"),
            "attribute at offset 20: ERROR-CODE: class 2 / number 99 is not a code 300..699",
        ),
        (
            bytes.fromhex("0009000200000000"[:16]),
            "attribute at offset 20: ERROR-CODE: value of 2 bytes is shorter than 4",
        ),
    ],
)
def test_attribute_value_errors(attribute: bytes, message: str) -> None:
    data = struct.pack("!HHI", 0x0101, len(attribute), 0x2112A442) + TID + attribute
    with pytest.raises(StunError) as excinfo:
        stun.decode(data)
    assert str(excinfo.value) == message


def test_encode_errors() -> None:
    with pytest.raises(StunError, match=r"^transaction ID must be 12 bytes, got 11$"):
        Message(Method.BINDING, MessageClass.REQUEST, b"x" * 11)
    with pytest.raises(StunError, match=r"^transaction ID must be 12 bytes, got 13$"):
        stun.binding_request(b"x" * 13)
    signed = stun.decode(REQUEST)
    with pytest.raises(
        StunError, match=r"^message has MESSAGE-INTEGRITY but no integrity_key was given to recompute it$"
    ):
        stun.encode(signed)
    big = Message(Method.BINDING, MessageClass.REQUEST, TID, [(0x8888, bytes(0x10000))])
    with pytest.raises(StunError, match=r"^attribute 0x8888: value of 65536 bytes is too long$"):
        stun.encode(big)
    many = Message(Method.BINDING, MessageClass.REQUEST, TID, [(0x8888, bytes(0xFFFF))] * 2)
    with pytest.raises(StunError, match=r"^message body of 131088 bytes does not fit the 16-bit length field$"):
        stun.encode(many)
    with pytest.raises(StunError, match=r"^'host.example' is not an IPv4 or IPv6 address$"):
        stun.xor_address("host.example", 1, TID)
    with pytest.raises(StunError, match=r"^port 65536 is out of range 0..65535$"):
        stun.xor_address("192.0.2.1", 65536, TID)


def test_properties_on_built_messages_raise_stun_error() -> None:
    message = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, TID, [(AttributeType.SOFTWARE, b"\xff")])
    with pytest.raises(StunError, match=r"^0x8022 \(SOFTWARE\) is not valid UTF-8$"):
        _ = message.software


# -- BindingTransaction (RFC 5389 §7.2.1) -------------------------------------------------------------


def _transaction(**kwargs: float) -> stun.BindingTransaction:
    return stun.BindingTransaction(stun.encode(stun.binding_request(TID)), **kwargs)  # type: ignore[arg-type]


def test_transaction_schedule_rto_500ms() -> None:
    transaction = _transaction()
    request = transaction.start(0.0)
    assert request == stun.encode(stun.binding_request(TID))
    deadlines = []
    while transaction.next_deadline is not None:
        now = transaction.next_deadline
        deadlines.append(now)
        sent = transaction.on_deadline(now)
        assert sent in (request, None)
    assert transaction.sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert deadlines == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 39.5]
    assert transaction.state == "failed"
    assert transaction.completed_at == 39.5
    assert transaction.on_deadline(100.0) is None


def test_transaction_schedule_other_parameters() -> None:
    transaction = _transaction(rto=1.0, rc=3, rm=4)
    transaction.start(10.0)
    assert transaction.on_deadline(11.0) is not None
    assert transaction.on_deadline(13.0) is not None
    assert transaction.next_deadline == 17.0
    assert transaction.on_deadline(17.0) is None
    assert transaction.sends == [10.0, 11.0, 13.0]
    assert transaction.state == "failed"


def test_transaction_early_call_does_nothing() -> None:
    transaction = _transaction()
    transaction.start(0.0)
    assert transaction.on_deadline(0.499) is None
    assert transaction.state == "pending" and transaction.sends == [0.0]
    assert transaction.next_deadline == 0.5


def test_transaction_success_stops_timer() -> None:
    transaction = _transaction()
    transaction.start(0.0)
    transaction.on_deadline(0.5)
    response = stun.binding_success(stun.binding_request(TID), ("192.0.2.1", 4000))
    assert transaction.on_response(response, 0.7) is True
    assert transaction.state == "succeeded"
    assert transaction.response == response
    assert transaction.next_deadline is None
    assert transaction.on_deadline(1.5) is None
    assert transaction.sends == [0.0, 0.5]
    assert transaction.on_response(response, 0.8) is True  # retransmitted response: still ours
    assert transaction.completed_at == 0.7


def test_transaction_ignores_other_ids_and_requests() -> None:
    transaction = _transaction()
    transaction.start(0.0)
    other = stun.binding_success(stun.binding_request(b"\x00" * 12), ("192.0.2.1", 4000))
    assert transaction.on_response(other, 0.1) is False
    assert transaction.on_response(stun.binding_request(TID), 0.1) is False
    assert transaction.state == "pending"


def test_transaction_error_response_fails() -> None:
    transaction = _transaction()
    transaction.start(0.0)
    error = Message(
        Method.BINDING, MessageClass.ERROR_RESPONSE, TID, [(AttributeType.ERROR_CODE, b"\x00\x00\x04\x00Bad")]
    )
    assert transaction.on_response(error, 0.2) is True
    assert transaction.state == "failed" and transaction.next_deadline is None


def test_transaction_errors() -> None:
    with pytest.raises(StunError, match=r"^a client transaction sends a request, not a SUCCESS_RESPONSE$"):
        stun.BindingTransaction(RESPONSE)
    with pytest.raises(StunError, match=r"^rto must be > 0 and rc, rm >= 1 \(got rto=0, rc=7, rm=16\)$"):
        _transaction(rto=0)
    with pytest.raises(StunError, match=r"^datagram of 3 bytes is shorter than the 20-byte STUN header$"):
        stun.BindingTransaction(b"abc")
    transaction = _transaction()
    transaction.start(0.0)
    with pytest.raises(StunError, match=r"^transaction already started$"):
        transaction.start(1.0)
    assert _transaction().next_deadline is None


# -- BindingClient: the asyncio adapter, over real loopback sockets --------------------------------


class _Responder(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.transport.sendto(stun.encode(stun.binding_success(stun.decode(data), addr)), addr)


class _Owner(asyncio.DatagramProtocol):
    """A socket owner that feeds responses to its client, as MediaSession does."""

    def __init__(self, rto: float) -> None:
        self.sent: list[tuple[int, str]] = []
        self.client = stun.BindingClient(
            self._send, rto=rto, on_send=lambda tid, dest, attempt, label: self.sent.append((attempt, label))
        )

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def _send(self, data: bytes, destination: tuple[str, int]) -> None:
        self.transport.sendto(data, destination)

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.client.receive(stun.decode(data))


def test_binding_client_resolves_to_the_mapped_address_and_times_out_on_schedule() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(_Responder, local_addr=("127.0.0.1", 0))
        transport, owner = await loop.create_datagram_endpoint(lambda: _Owner(0.01), local_addr=("127.0.0.1", 0))
        try:
            mapped = await asyncio.wait_for(owner.client.request(server.get_extra_info("sockname"), label="x"), 5)
            assert mapped == transport.get_extra_info("sockname")
            assert owner.sent == [(1, "x")]
            black_hole, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            with pytest.raises(TimeoutError, match="no response after 7 sends"):
                await asyncio.wait_for(owner.client.request(black_hole.get_extra_info("sockname")), 5)
            black_hole.close()
            pending = owner.client.request(server.get_extra_info("sockname"))
            owner.client.close("test over")
            with pytest.raises(ConnectionAbortedError, match="test over"):
                await pending
        finally:
            server.close()
            transport.close()

    asyncio.run(scenario())


# -- RFC 5780 attributes (NAT Behavior Discovery) -----------------------------------------------------


def _request_bytes(*attributes: bytes) -> bytes:
    body = b"".join(attributes)
    return struct.pack("!HHI", 0x0001, len(body), 0x2112A442) + TID + body


@pytest.mark.parametrize(
    "change, value",
    [
        (stun.ChangeRequest(), "00000000"),
        (stun.ChangeRequest(change_port=True), "00000002"),
        (stun.ChangeRequest(change_ip=True), "00000004"),
        (stun.ChangeRequest(True, True), "00000006"),
    ],
)
def test_change_request_bytes(change: stun.ChangeRequest, value: str) -> None:
    request = stun.binding_request(TID, change_request=change)
    data = stun.encode(request, fingerprint=False)
    assert data == bytes.fromhex("000100082112a442") + TID + bytes.fromhex("00030004" + value)
    assert stun.decode(data).change_request == change
    assert stun.decode(stun.encode(request)).change_request == change


def test_change_request_names() -> None:
    assert str(stun.ChangeRequest()) == "no change"
    assert str(stun.ChangeRequest(True, False)) == "change IP"
    assert str(stun.ChangeRequest(False, True)) == "change port"
    assert str(stun.ChangeRequest(True, True)) == "change IP and port"
    assert stun.decode(stun.encode(stun.binding_request(TID))).change_request is None


def test_rfc5780_success_response_bytes() -> None:
    """XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS, written out by hand."""
    request = stun.binding_request(TID)
    response = stun.binding_success(
        request,
        ("203.0.113.1", 40000),
        mapped_address=True,
        response_origin=("203.0.113.31", 3479),
        other_address=("203.0.113.31", 3479),
    )
    body = (
        bytes.fromhex("0020 0008 0001 bd52 ea12d543")  # XOR-MAPPED-ADDRESS: 40000 ^ 0x2112, cb007101 ^ 2112a442
        + bytes.fromhex("0001 0008 0001 9c40 cb007101")  # MAPPED-ADDRESS 203.0.113.1:40000
        + bytes.fromhex("802b 0008 0001 0d97 cb00711f")  # RESPONSE-ORIGIN 203.0.113.31:3479
        + bytes.fromhex("802c 0008 0001 0d97 cb00711f")  # OTHER-ADDRESS 203.0.113.31:3479
    )
    head = struct.pack("!HHI", 0x0101, len(body), 0x2112A442) + TID + body
    expected = head[:2] + struct.pack("!H", len(body) + 8) + head[4:] + bytes.fromhex("80280004")
    expected += reference_fingerprint(head)
    assert stun.encode(response) == expected
    decoded = stun.decode(expected)
    assert decoded.xor_mapped_address == ("203.0.113.1", 40000)
    assert decoded.mapped_address == ("203.0.113.1", 40000)
    assert decoded.response_origin == ("203.0.113.31", 3479)
    assert decoded.other_address == ("203.0.113.31", 3479)
    assert decoded.unknown_comprehension_required == []


def test_plain_binding_success_has_no_rfc5780_attributes() -> None:
    response = stun.binding_success(stun.binding_request(TID), ("203.0.113.1", 40000), software="x")
    assert [t for t, _ in response.attributes] == [AttributeType.XOR_MAPPED_ADDRESS, AttributeType.SOFTWARE]
    assert response.other_address is None and response.response_origin is None and response.mapped_address is None


def test_rfc5780_addresses_ipv6() -> None:
    value = stun.address_value("2001:db8::1", 3478)
    assert value == bytes.fromhex("00020d96 20010db8000000000000000000000001")
    assert stun.parse_address(value, "OTHER-ADDRESS") == ("2001:db8::1", 3478)


def test_response_port_and_padding_bytes() -> None:
    request = stun.binding_request(TID, response_port=40000, padding=5)
    data = stun.encode(request, fingerprint=False)
    assert data[20:] == bytes.fromhex("00270004 9c400000 00260005 0000000000000000")
    decoded = stun.decode(data)
    assert decoded.response_port == 40000
    assert decoded.attribute(AttributeType.PADDING) == bytes(5)
    # a RESPONSE-PORT of length 2 (the padding left to the TLV) reads the same
    assert stun.decode(_request_bytes(bytes.fromhex("002700029c400000"))).response_port == 40000


def test_error_response_420_bytes() -> None:
    request = stun.binding_request(TID, change_request=stun.ChangeRequest(True, True))
    response = stun.binding_error(request, 420, "Unknown Attribute", unknown_attributes=[0x0003])
    data = stun.encode(response, fingerprint=False)
    assert data == (
        bytes.fromhex("011100242112a442")
        + TID
        + bytes.fromhex("00090015 00000414")
        + b"Unknown Attribute\x00\x00\x00"
        + bytes.fromhex("000a0002 00030000")
    )
    decoded = stun.decode(data)
    assert decoded.error_code == (420, "Unknown Attribute")
    assert decoded.unknown_attributes == [AttributeType.CHANGE_REQUEST]


def test_rfc5780_attributes_are_known() -> None:
    request = stun.binding_request(TID, change_request=stun.ChangeRequest(True), response_port=1, padding=4)
    assert stun.decode(stun.encode(request)).unknown_comprehension_required == []


@pytest.mark.parametrize(
    "attribute, message",
    [
        (bytes.fromhex("0003000200000000"), "attribute at offset 20: CHANGE-REQUEST: length 2 must be 4"),
        (bytes.fromhex("00030008 00000006 00000000"), "attribute at offset 20: CHANGE-REQUEST: length 8 must be 4"),
        (
            bytes.fromhex("0003000400000001"),
            "attribute at offset 20: CHANGE-REQUEST: flags 0x00000001 set bits other than change IP (0x4) "
            "and change port (0x2)",
        ),
        (
            bytes.fromhex("0003000480000006"),
            "attribute at offset 20: CHANGE-REQUEST: flags 0x80000006 set bits other than change IP (0x4) "
            "and change port (0x2)",
        ),
        (
            bytes.fromhex("802c 0008 0003 0d97 cb00711f"),
            "attribute at offset 20: OTHER-ADDRESS: unknown address family 0x03",
        ),
        (
            bytes.fromhex("802c00040001a147"),
            "attribute at offset 20: OTHER-ADDRESS: length 4 does not fit family IPV4 (expected 8)",
        ),
        (
            bytes.fromhex("802b0008 00020d96 cb00711e"),
            "attribute at offset 20: RESPONSE-ORIGIN: length 8 does not fit family IPV6 (expected 20)",
        ),
        (bytes.fromhex("802b0000"), "attribute at offset 20: RESPONSE-ORIGIN: value of 0 bytes is shorter than 4"),
        (bytes.fromhex("002700039c400000"), "attribute at offset 20: RESPONSE-PORT: length 3 must be 2 or 4"),
        (bytes.fromhex("00270000"), "attribute at offset 20: RESPONSE-PORT: length 0 must be 2 or 4"),
        (
            bytes.fromhex("000a000300030000"),
            "attribute at offset 20: UNKNOWN-ATTRIBUTES: length 3 is not a multiple of 2",
        ),
    ],
)
def test_rfc5780_attribute_errors(attribute: bytes, message: str) -> None:
    with pytest.raises(StunError) as excinfo:
        stun.decode(_request_bytes(attribute))
    assert str(excinfo.value) == message


def test_rfc5780_attribute_errors_after_other_attributes_name_the_offset() -> None:
    software = bytes.fromhex("80220004") + b"test"
    with pytest.raises(StunError, match=r"^attribute at offset 28: CHANGE-REQUEST: length 2 must be 4$"):
        stun.decode(_request_bytes(software, bytes.fromhex("0003000200000000")))


def test_rfc5780_encode_errors() -> None:
    with pytest.raises(StunError, match=r"^RESPONSE-PORT: port 65536 is out of range 0..65535$"):
        stun.response_port_value(65536)
    with pytest.raises(StunError, match=r"^RESPONSE-PORT: port True is out of range 0..65535$"):
        stun.response_port_value(True)  # type: ignore[arg-type]
    with pytest.raises(StunError, match=r"^PADDING: length -1 is out of range 0..65535$"):
        stun.padding_value(-1)
    with pytest.raises(StunError, match=r"^ERROR-CODE: code 299 is not in 300..699$"):
        stun.error_code_value(299, "x")
    with pytest.raises(StunError, match=r"^ERROR-CODE: reason phrase of 129 characters is longer than 128$"):
        stun.error_code_value(400, "x" * 129)
    with pytest.raises(StunError, match=r"^UNKNOWN-ATTRIBUTES: 65536 is not a 16-bit attribute type$"):
        stun.unknown_attributes_value([0x10000])
    with pytest.raises(StunError, match=r"^'a2' is not an IPv4 or IPv6 address$"):
        stun.binding_success(stun.binding_request(TID), ("192.0.2.1", 1), other_address=("a2", 1))
    response = stun.binding_success(stun.binding_request(TID), ("192.0.2.1", 1))
    with pytest.raises(StunError, match=r"^can only answer a Binding request, not a BINDING SUCCESS_RESPONSE$"):
        stun.binding_error(response, 400, "Bad Request")
