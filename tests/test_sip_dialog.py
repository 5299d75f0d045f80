"""pinhole.sip.dialog: RFC 3261 §12 dialog state and in-dialog requests (pure)."""

from __future__ import annotations

import pytest

from pinhole.sip.dialog import Dialog, DialogError
from pinhole.sip.message import CSeq, Request, Response, make_response, parse_message

# The INVITE as Bob receives it after two Record-Routing proxies (RFC 3261 §24.2 F2/F3, shortened).
INVITE_AT_BOB = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKp2;rport=5060;received=192.0.2.20\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKp1;rport=5060;received=192.0.2.10\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKuac;rport=40000;received=198.51.100.1\r\n"
    b"Record-Route: <sip:192.0.2.20:5060;lr>\r\n"
    b"Record-Route: <sip:192.0.2.10:5060;lr>\r\n"
    b"Max-Forwards: 68\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@198.51.100.1:40000>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def invite_at_bob() -> Request:
    request = parse_message(INVITE_AT_BOB)
    assert isinstance(request, Request)
    return request


def ok_from_bob(invite: Request) -> Response:
    ok = make_response(invite, 200, to_tag="8321234356")
    ok.headers.add("Contact", "<sip:bob@192.0.2.30:5062>")
    return ok


def test_uas_dialog_and_bye_through_the_route_set() -> None:
    invite = invite_at_bob()
    dialog = Dialog.from_uas(invite, "8321234356", "<sip:bob@192.0.2.30:5062>")
    assert dialog.id == ("3848276298220188511@atlanta.example.com", "8321234356", "9fxced76sl")
    assert dialog.local_uri == "sip:bob@biloxi.example.com"
    assert dialog.remote_uri == "sip:alice@atlanta.example.com"
    assert dialog.remote_target == "sip:alice@198.51.100.1:40000"
    assert dialog.route_set == ["<sip:192.0.2.20:5060;lr>", "<sip:192.0.2.10:5060;lr>"]
    assert (dialog.local_cseq, dialog.remote_cseq) == (None, 314159)

    bye, destination = dialog.create_request("BYE")
    assert destination == ("192.0.2.20", 5060)  # the first route, not the remote target
    assert bye.encode() == (
        b"BYE sip:alice@198.51.100.1:40000 SIP/2.0\r\n"
        b"Route: <sip:192.0.2.20:5060;lr>\r\n"
        b"Route: <sip:192.0.2.10:5060;lr>\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:bob@biloxi.example.com>;tag=8321234356\r\n"
        b"To: <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
        b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
        b"CSeq: 1 BYE\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    update, _ = dialog.create_request("UPDATE", b"v=0\r\n")
    assert update.cseq == CSeq(2, "UPDATE")
    assert update.headers.get("Contact") == "<sip:bob@192.0.2.30:5062>"  # target refresh carries Contact
    assert update.content_type == "application/sdp" and update.body == b"v=0\r\n"


def test_uac_dialog_reverses_record_route_and_acks_the_2xx() -> None:
    invite = invite_at_bob()
    ok = ok_from_bob(invite)
    dialog = Dialog.from_uac(invite, ok)
    assert dialog.id == ("3848276298220188511@atlanta.example.com", "9fxced76sl", "8321234356")
    assert dialog.route_set == ["<sip:192.0.2.10:5060;lr>", "<sip:192.0.2.20:5060;lr>"]
    assert dialog.remote_target == "sip:bob@192.0.2.30:5062"
    assert dialog.local_contact == "<sip:alice@198.51.100.1:40000>"

    ack, destination = dialog.create_ack(314159)
    assert destination == ("192.0.2.10", 5060)
    assert ack.method == "ACK" and ack.uri == "sip:bob@192.0.2.30:5062"
    assert ack.cseq == CSeq(314159, "ACK") and "Via" not in ack.headers and "Contact" not in ack.headers
    assert ack.headers.get_all("Route") == dialog.route_set
    assert dialog.local_cseq == 314159  # the ACK does not consume a sequence number
    bye, _ = dialog.create_request("BYE")
    assert bye.cseq == CSeq(314160, "BYE")
    with pytest.raises(DialogError, match="ACK reuses the CSeq"):
        dialog.create_request("ACK")


def test_no_route_set_goes_to_the_remote_target() -> None:
    invite = invite_at_bob()
    invite.headers.remove_all("Record-Route")
    dialog = Dialog.from_uac(invite, ok_from_bob(invite))
    bye, destination = dialog.create_request("BYE")
    assert destination == ("192.0.2.30", 5062)
    assert bye.uri == "sip:bob@192.0.2.30:5062" and "Route" not in bye.headers


def test_strict_route_puts_the_first_route_in_the_request_uri() -> None:
    """§12.2.1.1: a route without lr is an RFC 2543 strict router."""
    invite = invite_at_bob()
    invite.headers.remove_all("Record-Route")
    invite.headers.add("Record-Route", "<sip:192.0.2.20:5060;transport=udp>")
    invite.headers.add("Record-Route", "<sip:192.0.2.10:5060;lr>")
    dialog = Dialog.from_uac(invite, ok_from_bob(invite))  # route set: 10 (lr), then 20 (strict)
    dialog.route_set.reverse()  # put the strict router first
    bye, destination = dialog.create_request("BYE")
    assert destination == ("192.0.2.20", 5060)
    assert bye.uri == "sip:192.0.2.20:5060"
    assert bye.headers.get_all("Route") == ["<sip:192.0.2.10:5060;lr>", "<sip:bob@192.0.2.30:5062>"]


def test_matches_and_remote_cseq_and_target_refresh() -> None:
    invite = invite_at_bob()
    bob = Dialog.from_uas(invite, "8321234356", "<sip:bob@192.0.2.30:5062>")
    alice = Dialog.from_uac(invite, ok_from_bob(invite))
    bye, _ = alice.create_request("BYE")
    assert bob.matches(bye) and not alice.matches(bye)
    bob.receive_request(bye)
    assert bob.remote_cseq == 314160
    reinvite, _ = alice.create_request("INVITE")
    reinvite.headers.set("Contact", "<sip:alice@198.51.100.1:40002>")
    bob.receive_request(reinvite)
    assert bob.remote_target == "sip:alice@198.51.100.1:40002"
    with pytest.raises(DialogError, match="CSeq 314160 is lower than the remote sequence number 314161"):
        bob.receive_request(bye)
    refreshed = make_response(reinvite, 200, to_tag="8321234356")
    refreshed.headers.add("Contact", "<sip:bob@192.0.2.31:5062>")
    alice.receive_response(refreshed)
    assert alice.remote_target == "sip:bob@192.0.2.31:5062"


def test_dialog_errors() -> None:
    invite = invite_at_bob()
    with pytest.raises(DialogError, match="200 response has no To tag"):
        Dialog.from_uac(invite, make_response(invite, 200))
    no_contact = make_response(invite, 200, to_tag="x")
    with pytest.raises(DialogError, match="200 response has no Contact"):
        Dialog.from_uac(invite, no_contact)
    invite.headers.remove_all("Contact")
    with pytest.raises(DialogError, match="INVITE has no Contact"):
        Dialog.from_uas(invite, "t", "<sip:bob@192.0.2.30>")
    assert issubclass(DialogError, ValueError)
