"""pinhole.sip.message: RFC 3261 codec, checked against the RFC 4475 torture messages.

tests/data/sip/*.sip are the bit-exact files of RFC 4475 Appendix A (the base64 tarball at the
end of the RFC, decoded), renamed from .dat; the RFC's <allOneLine>/<hex>/<repeat> renderings are
already resolved there, and lines end in CRLF.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from pinhole.sip.message import (
    AbsoluteUri,
    CSeq,
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    Via,
    _quote,
    check_display_name,
    check_sip_uri,
    make_ack,
    make_cancel,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    salvage_request,
    split_header_values,
)

DATA = Path(__file__).parent / "data" / "sip"
T = TypeVar("T")


def load(name: str) -> bytes:
    return (DATA / f"{name}.sip").read_bytes()


def load_request(name: str) -> Request:
    request = parse_message(load(name))
    assert isinstance(request, Request)
    return request


# -- RFC 4475 §3.1.1 (and the valid ones of §3.2, §3.3): must parse --------------------------------

VALID = [
    "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri",
    "transports", "mpart01", "unreason", "noreason", "badbranch", "unkscm", "novelsc", "unksm2",
    "bext01", "invut", "regaut01", "bcast", "zeromf", "cparam01", "cparam02", "regescrt", "sdp01",
    "baddate",
]  # fmt: skip


@pytest.mark.parametrize("name", VALID)
def test_valid_torture_message_parses_and_round_trips(name: str) -> None:
    message = parse_message(load(name))
    encoded = message.encode()
    again = parse_message(encoded)
    assert again.headers == message.headers
    assert again.body == message.body
    assert again.encode() == encoded  # encoding is a fixpoint
    assert type(again) is type(message)


def test_all_data_files_are_classified() -> None:
    names = {path.stem for path in DATA.glob("*.sip")}
    assert names == set(VALID) | set(INVALID), names ^ (set(VALID) | set(INVALID))


def test_wsinv_short_tortuous_invite() -> None:
    """§3.1.1.1: folding, LWS around every separator, compact forms, leading zeros, unknown headers."""
    request = parse_message(load("wsinv"))
    assert isinstance(request, Request)
    assert request.method == "INVITE"
    assert request.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert request.to.tag == "1918181833n"
    assert request.from_.display_name == 'J Rosenberg \\"'
    assert request.from_.tag == "98asjd8"
    assert request.max_forwards == 68
    assert request.cseq == CSeq(9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in request.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert request.headers.get("Subject") == ""
    assert request.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert request.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"  # unknown: kept as is
    (route,) = request.routes
    assert isinstance(route.uri, SipUri) and route.uri.lr
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    (contact,) = request.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(request.body) == 150 and request.body.startswith(b"v=0\r\n")


def test_intmeth_wide_range_of_valid_characters() -> None:
    """§3.1.1.2: token characters in the method, user, password, tags; quoted NUL; UTF-8 values."""
    request = parse_message(load("intmeth"))
    assert isinstance(request, Request)
    assert request.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = request.request_uri
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert request.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert request.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert request.from_.tag == "_token~1'+`*%!-."
    assert request.from_.param("fromparam''~+*_!.-%") == '"работающий"'
    assert request.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert request.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_stay_escaped() -> None:
    """§3.1.1.3-5: %HEX is kept as received; an unknown method or header is not unescaped."""
    esc01 = parse_message(load("esc01"))
    assert esc01.to.uri == SipUri("sip", "%75se%72", "example.com")
    (contact,) = esc01.contacts
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.params == {"%6C%72": None, "n%61me": "v%61lue%25%34%31"}
    escnull = parse_message(load("escnull"))
    assert [str(c.uri) for c in escnull.contacts] == ["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"]
    esc02 = parse_message(load("esc02"))
    assert isinstance(esc02, Request) and esc02.method == "RE%47IST%45R"
    assert esc02.headers.get_all("Contact") == ["<sip:alias1@host1.example.com>", "<sip:alias3@host3.example.com>"]
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_display_name_glued_to_angle_bracket() -> None:
    assert parse_message(load("lwsdisp")).from_.display_name == "caller"


def test_longreq_long_values() -> None:
    request = parse_message(load("longreq"))
    assert len(request.vias) == 34
    assert request.vias[-1].received == "192.0.2.5"
    assert request.to.uri.port == 6000  # type: ignore[union-attr]
    assert len(request.from_.tag or "") == 155


def test_dblreq_extra_octets_after_content_length_are_ignored() -> None:
    """§3.1.1.8 / RFC 3261 §18.3: the INVITE after the REGISTER is noise."""
    request = parse_message(load("dblreq"))
    assert isinstance(request, Request) and request.method == "REGISTER"
    assert request.body == b""
    assert b"INVITE" not in request.encode()


def test_semicolon_in_user_part_and_transports() -> None:
    uri = load_request("semiuri").request_uri
    assert isinstance(uri, SipUri) and uri.user == "user;par=u%40example.net" and uri.params == {}
    transports = [via.transport for via in parse_message(load("transports")).vias]
    assert transports == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_and_empty_rport() -> None:
    request = parse_message(load("mpart01"))
    assert len(request.body) == 553 and b"\x00" in request.body
    assert request.top_via.rport is True
    assert request.top_via.sent_by == ("127.0.0.1", 5070)


def test_reason_phrases() -> None:
    unreason = parse_message(load("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse_message(load("noreason"))
    assert isinstance(noreason, Response) and (noreason.status_code, noreason.reason) == (100, "")


def test_other_uri_schemes_are_opaque() -> None:
    """§3.3.2-4: unknown schemes parse; only sip/sips are taken apart."""
    assert load_request("unkscm").request_uri == AbsoluteUri("nobodyKnowsThisScheme", "totallyopaquecontent")
    assert load_request("novelsc").request_uri == AbsoluteUri("soap.beep", "//192.0.2.103:3002")
    unksm2 = parse_message(load("unksm2"))
    assert unksm2.to.uri == AbsoluteUri("isbn", "2983792873")
    assert unksm2.from_.uri == AbsoluteUri("http", "//www.example.com")
    assert unksm2.from_.tag == "3234233"


def test_contact_params_versus_uri_params() -> None:
    """§3.3.12-14: without <> a ;param belongs to the header, inside <> to the URI."""
    (c1,) = parse_message(load("cparam01")).contacts
    assert isinstance(c1.uri, SipUri) and c1.uri.params == {} and c1.params == {"unknownparam": None}
    (c2,) = parse_message(load("cparam02")).contacts
    assert isinstance(c2.uri, SipUri) and c2.uri.params == {"unknownparam": None} and c2.params == {}
    (c3,) = parse_message(load("regescrt")).contacts
    assert isinstance(c3.uri, SipUri) and c3.uri.headers == {"Route": "%3Csip:sip.example.com%3E"}


def test_semantic_oddities_parse() -> None:
    assert load_request("zeromf").max_forwards == 0  # §3.3.11: a proxy answers 483
    assert parse_message(load("badbranch")).top_via.branch == "z9hG4bK"  # §3.2.1
    assert parse_message(load("bcast")).vias[1].host == "255.255.255.255"  # §3.3.10
    assert parse_message(load("baddate")).headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"  # Date unused


# -- RFC 4475 §3.1.2 (and §3.3.1, §3.3.8, §3.3.9, §3.4.1): must be refused, with the reason ---------

INVALID = {
    "badinv01": "line 7: Via: empty value in comma-separated list",
    "clerr": "Content-Length 9999 exceeds body length 154",
    "ncl": "Content-Length '-999' is not a non-negative integer",
    "scalar02": "line 5: CSeq: sequence number 36893488147419103232 exceeds 2**32-1",
    "scalarlg": "line 5: CSeq: sequence number 9292394834772304023312 exceeds 2**32-1",
    "quotbal": "line 2: To: unterminated quoted string",
    "ltgtruri": "request line: URI '<sip:user@example.com>': no valid scheme",
    "lwsruri": "request line: expected 'Method SP Request-URI SP SIP-Version', "
    "got 4 SP-separated fields in 'INVITE sip:user@example.com; lr SIP/2.0'",
    "lwsstart": "request line: expected 'Method SP Request-URI SP SIP-Version', "
    "got 5 SP-separated fields in 'INVITE  sip:user@example.com  SIP/2.0'",
    "trws": "request line: expected 'Method SP Request-URI SP SIP-Version', "
    "got 5 SP-separated fields in 'OPTIONS sip:remote-target@example.com SIP/2.0  '",
    "escruri": "request line: Request-URI 'sip:user@example.com?Route=%3Csip:example.com%3E' "
    "must not contain headers (§19.1.1)",
    "regbadct": "line 8: Contact: addr-spec 'sip:user@example.com?Route=%3Csip:sip.example.com%3E' "
    "with '?' or ',' must be enclosed in <>",
    "badaspec": "line 5: To: whitespace inside < sip:t.watson@example.org >",
    "baddn": "line 4: From: display name 'Bell, Alexander' must be a quoted string (contains non-token characters)",
    "badvers": "request line: SIP version SIP/7.0 not supported",
    "mismatch01": "CSeq method INVITE does not match request method OPTIONS",
    "mismatch02": "CSeq method INVITE does not match request method NEWMETHOD",
    "bigcode": "status line: status code 4294967301 out of range 100-699",
    "insuf": "missing mandatory header Call-ID",
    "multi01": "Call-ID appears 2 times, expected once",
    "mcl01": "Content-Length appears 2 times, expected once",
    # RFC 2543 syntax (§3.4.1): pinhole requires Max-Forwards as RFC 3261 §8.1.1 does.
    "inv2543": "missing mandatory header Max-Forwards",
}


@pytest.mark.parametrize(("name", "reason"), INVALID.items(), ids=list(INVALID))
def test_invalid_torture_message_is_refused_with_reason(name: str, reason: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(load(name))
    assert str(caught.value) == reason


# -- hand-made bad input ---------------------------------------------------------------------------

GOOD_OPTIONS = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@192.0.2.1\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty datagram"),
        (b"\r\n\r\n", "empty datagram"),
        (GOOD_OPTIONS.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"), "line 3: header without colon"),
        (
            GOOD_OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: seventy"),
            "line 3: Max-Forwards is not a number: 'seventy'",
        ),
        (GOOD_OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), "line 3: Max-Forwards 256 exceeds 255"),
        (
            GOOD_OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 300") + b"v=0\r\nx=12345",
            "Content-Length 300 exceeds body length 12",
        ),
        (GOOD_OPTIONS.replace(b"63104 OPTIONS", b"63104 BYE"), "CSeq method BYE does not match request method OPTIONS"),
        (GOOD_OPTIONS.replace(b"CSeq: 63104 OPTIONS\r\n", b""), "missing mandatory header CSeq"),
        (
            GOOD_OPTIONS.replace(b"Via: SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK776asdhds\r\n", b""),
            "missing mandatory header Via",
        ),
        (
            GOOD_OPTIONS.replace(b"SIP/2.0/UDP 192.0.2.1:5060", b"SIP/2.0/UDP 192.0.2.1:99999"),
            "line 2: Via: port 99999 out of range 1-65535",
        ),
        (GOOD_OPTIONS.replace(b";rport;", b";rport=x;"), "line 2: Via: rport 'x' is not a port number"),
        (GOOD_OPTIONS.replace(b"SIP/2.0/UDP", b"SIP/3.0/UDP"), "line 2: Via: unsupported sent-protocol SIP/3.0"),
        (
            GOOD_OPTIONS.replace(b"Call-ID: a84b4c76e66710@192.0.2.1", b"Call-ID: a b"),
            "line 6: Call-ID 'a b' is empty or contains whitespace",
        ),
        (GOOD_OPTIONS.replace(b"OPTIONS sip", b"OPT(IONS sip"), "request line: method 'OPT(IONS' is not a token"),
        (GOOD_OPTIONS.replace(b"SIP/2.0\r\nVia", b"SIP/2\r\nVia"), "request line: malformed SIP version 'SIP/2'"),
        (GOOD_OPTIONS.replace(b"\r\nVia:", b"\r\n Via:"), "line 2: continuation line without a header"),
        (GOOD_OPTIONS.replace(b"To: <", b"To Me: <"), "line 4: invalid header name 'To Me'"),
        (GOOD_OPTIONS.replace(b"Alice <sip", b"Alice \xff <sip"), "header section is not UTF-8 (byte 157)"),
        (GOOD_OPTIONS[:-4], "no empty line (CRLF CRLF) after the header section"),
        (b"SIP/2.0 20x OK\r\n\r\n", "status line: status code '20x' is not a number"),
        (
            GOOD_OPTIONS.replace(b"<sip:bob@example.com>", b"<sip:bob@example.com"),
            "line 4: To: '<' without matching '>'",
        ),
        (GOOD_OPTIONS.replace(b";tag=1928301774", b";tag=1928301774;;"), "line 5: From: empty parameter"),
    ],
)
def test_bad_input_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    assert str(caught.value) == reason


def test_lf_only_line_ends_and_leading_crlf_are_tolerated() -> None:
    request = parse_message(b"\r\n" + GOOD_OPTIONS.replace(b"\r\n", b"\n"))
    assert isinstance(request, Request) and request.cseq == CSeq(63104, "OPTIONS")


def test_body_without_content_length_is_rest_of_datagram() -> None:
    data = GOOD_OPTIONS.replace(b"Content-Length: 0\r\n", b"") + b"hello"
    assert parse_message(data).body == b"hello"


def test_salvage_request_for_a_400() -> None:
    broken = load("clerr")
    request = salvage_request(broken)
    assert request is not None and request.method == "INVITE"
    assert request.top_via.branch == "z9hG4bK-39234-23523"
    assert salvage_request(b"\x7fgarbage") is None
    assert salvage_request(load("bigcode")) is None  # a response is never answered
    assert salvage_request(GOOD_OPTIONS.replace(b"OPTIONS", b"ACK").replace(b"Content-Length: 0", b"l: x")) is None


# -- size: parsing is linear in the datagram -------------------------------------------------------


def invite_with_routes(routes: str) -> bytes:
    """GOOD_OPTIONS as an INVITE whose Route header section is ``routes`` (already with its line ends)."""
    head = GOOD_OPTIONS.replace(b"OPTIONS", b"INVITE").replace(b"Content-Length: 0\r\n\r\n", b"")
    return head + routes.encode() + b"Content-Length: 0\r\n\r\n"


def route_uris(count: int) -> list[str]:
    return [f"sip:p{index}" for index in range(count)]


@pytest.mark.parametrize(
    "layout",
    [
        lambda uris: "Route: " + ",".join(f"<{uri}>" for uri in uris) + "\r\n",  # one line, one UDP datagram
        lambda uris: "".join(f"Route: <{uri}>\r\n" for uri in uris),  # one header line each
        lambda uris: "Route: " + "\r\n ,".join(f"<{uri}>" for uri in uris) + "\r\n",  # folded (§7.3.1)
    ],
    ids=["comma-separated", "one-per-line", "folded"],
)
def test_8000_route_values_in_one_datagram(layout: Callable[[list[str]], str]) -> None:
    """An 8,000-value Route once stalled a proxy for 8 s: every value, in order (bench/sip_parsing.py times it)."""
    uris = route_uris(8000)
    data = invite_with_routes(layout(uris))
    request = parse_message(data)
    assert [str(route.uri) for route in request.routes] == uris
    assert request.headers.count("Route") == 8000 and request.cseq == CSeq(63104, "INVITE")


def test_header_lookups_do_not_grow_with_the_number_of_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each lookup by name scans every header entry, so parsing looks up a fixed number of names, not one per value.

    One per value was 8,000 scans of 8,000 entries for an 8,000-value Route (quadratic).
    """
    lookups = 0

    def counted(method: Callable[..., T]) -> Callable[..., T]:
        def lookup(*args: object) -> T:
            nonlocal lookups
            lookups += 1
            return method(*args)

        return lookup

    for name in ("get", "get_all", "count", "_index"):
        monkeypatch.setattr(Headers, name, counted(getattr(Headers, name)))
    per_size = {}
    for count in (10, 8000):
        lookups = 0
        parse_message(invite_with_routes("Route: " + ",".join(f"<{uri}>" for uri in route_uris(count)) + "\r\n"))
        per_size[count] = lookups
    assert per_size[8000] == per_size[10]


def test_lws_around_the_sent_by_colon_in_any_amount() -> None:
    """§25.1 / RFC 4475 §3.1.1.1: LWS around ':' goes, however much (this once took seconds for 32 KB)."""
    spread = "SIP/2.0/UDP host" + " " * 30000 + ":" + "\t" * 30000 + "5070;branch=z9hG4bKx"
    assert parse_via(spread).sent_by == ("host", 5070)
    with pytest.raises(SipParseError) as caught:
        parse_via("SIP/2.0/UDP a" + " " * 30000 + "b;branch=z9hG4bKx")
    assert str(caught.value) == f"Via: invalid host {'a' + ' ' * 30000 + 'b'!r}"


# -- encoding --------------------------------------------------------------------------------------


def test_encode_golden_bytes_and_content_length() -> None:
    headers = Headers()
    headers.add("v", "SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK776asdhds")
    headers.add("max-forwards", "70")
    headers.add("t", "<sip:bob@example.com>")
    headers.add("f", "<sip:alice@example.com>;tag=1928301774")
    headers.add("i", "a84b4c76e66710@192.0.2.1")
    headers.add("cseq", "1 INVITE")
    headers.add("c", "application/sdp")
    headers.add("Content-Length", "999")
    request = Request("INVITE", "sip:bob@example.com", headers, b"v=0\r\n")
    assert request.encode() == (
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK776asdhds\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: <sip:bob@example.com>\r\n"
        b"From: <sip:alice@example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@192.0.2.1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"v=0\r\n"
    )
    response = Response(180, "Ringing", Headers([("Via", "SIP/2.0/UDP h")]))
    assert response.encode() == b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 0\r\n\r\n"


def test_comma_separated_values_become_entries() -> None:
    request = parse_message(
        GOOD_OPTIONS.replace(
            b"Content-Length: 0\r\n",
            b'Route: <sip:p1.example.com;lr>, "A, B" <sip:p2.example.com;lr>\r\n'
            b"Record-Route: <sip:a@x;p=1,2>\r\nAccept: a/b, c/d\r\nContent-Length: 0\r\n",
        )
    )
    assert request.headers.get_all("Route") == ["<sip:p1.example.com;lr>", '"A, B" <sip:p2.example.com;lr>']
    assert request.headers.get_all("Record-Route") == ["<sip:a@x;p=1,2>"]
    assert request.headers.get_all("Accept") == ["a/b, c/d"]  # not split: value kept as is


# -- Headers ---------------------------------------------------------------------------------------


def test_headers_multimap() -> None:
    headers = Headers([("v", "a"), ("To", "t"), ("VIA", "b"), ("x-custom", "1")])
    assert headers.items() == [("Via", "a"), ("To", "t"), ("Via", "b"), ("x-custom", "1")]
    assert headers.get("via") == "a" and headers.get_all("V") == ["a", "b"]
    assert headers.get("X-CUSTOM") == "1" and headers.get("nope") is None and headers.get("nope", "d") == "d"
    assert "to" in headers and "From" not in headers and len(headers) == 4
    headers.insert_first("Via", "top")
    assert headers.get_all("Via") == ["top", "a", "b"]
    headers.insert_first("Record-Route", "rr")
    assert headers.items()[4] == ("Record-Route", "rr")  # none yet: right after the last Via
    assert headers.remove_first("Via") == "top"
    headers.replace("Via", "b2", 1)
    assert headers.get_all("Via") == ["a", "b2"]
    headers.set("Via", "only")
    assert headers.get_all("Via") == ["only"] and headers.items()[0] == ("Via", "only")
    headers.set("Max-Forwards", "70")
    assert headers.items()[-1] == ("Max-Forwards", "70")
    assert headers.remove_all("Via") == 1
    with pytest.raises(KeyError):
        headers.remove_first("Via")
    with pytest.raises(IndexError):
        headers.replace("Via", "x")
    copy = headers.copy()
    copy.add("Foo", "bar")
    assert "Foo" not in headers and copy != headers
    assert Headers.canonical("call-id") == "Call-ID" and Headers.canonical("WWW-authenticate") == "WWW-Authenticate"
    assert Headers.canonical("y") == "Identity" and Headers.canonical("n") == "Identity-Info"


def test_split_header_values_respects_quotes_and_angles() -> None:
    assert split_header_values('"a,\\"b" <sip:x;p=1,2>;q=1 , <sip:y>') == ['"a,\\"b" <sip:x;p=1,2>;q=1', "<sip:y>"]
    assert split_header_values("a,,b") == ["a", "", "b"]


# -- URI, name-addr, Via, CSeq ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sip:alice:secretword@atlanta.com;transport=tcp",
        "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sips:1212@gateway.com",
        "sip:alice@192.0.2.4",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:[2001:db8::10]:5070;lr",
        "sip:127.0.0.1:5060;lr;maddr=239.255.255.1",
    ],
)
def test_rfc3261_19_1_3_uri_examples_round_trip(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_uri_fields() -> None:
    uri = parse_uri("sip:alice:pw@[2001:db8::10]:5070;transport=udp;LR?subject=x")
    assert uri == SipUri("sip", "alice", "2001:db8::10", 5070, {"transport": "udp", "LR": None}, {"subject": "x"}, "pw")
    assert (
        isinstance(uri, SipUri)
        and uri.lr
        and uri.param("TRANSPORT") == "udp"
        and uri.hostport == ("2001:db8::10", 5070)
    )
    assert parse_uri("sip:example.com").hostport == ("example.com", 5060)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("alice@atlanta.com", "URI 'alice@atlanta.com': no valid scheme"),
        ("sip:@host", "URI 'sip:@host': empty user part"),
        ("sip:alice@host_name", "URI 'sip:alice@host_name': invalid host 'host_name'"),
        ("sip:alice@host:0", "URI 'sip:alice@host:0': port 0 out of range 1-65535"),
        ("sip:host;;lr", "URI 'sip:host;;lr': empty parameter"),
        ("sip:host?x", "URI 'sip:host?x': header 'x' is not name=value"),
        ("sip:a b@host", "URI 'sip:a b@host': contains whitespace"),
        ("tel:", "URI 'tel:': empty or contains whitespace"),
    ],
)
def test_uri_errors(text: str, reason: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_uri(text)
    assert str(caught.value) == reason


def test_name_addr() -> None:
    value = parse_name_addr('"Bob \\"B\\"" <sip:bob@biloxi.com;transport=udp>;tag=a6c85cf;expires=60')
    assert value == NameAddr('Bob "B"', SipUri("sip", "bob", "biloxi.com", None, {"transport": "udp"}),
                             {"tag": "a6c85cf", "expires": "60"})  # fmt: skip
    assert value.tag == "a6c85cf"
    assert str(value) == '"Bob \\"B\\"" <sip:bob@biloxi.com;transport=udp>;tag=a6c85cf;expires=60'
    assert parse_name_addr(str(value)) == value
    assert parse_name_addr("sip:bob@biloxi.com;tag=1").params == {"tag": "1"}
    assert str(parse_name_addr("<sip:x@y>").with_tag("t9")) == "<sip:x@y>;tag=t9"
    with pytest.raises(SipParseError, match="display name without <URI>"):
        parse_name_addr("Bob sip:bob@biloxi.com")
    with pytest.raises(SipParseError, match="quoted display name not followed by <URI>"):
        parse_name_addr('"Bob" sip:bob@biloxi.com')


@pytest.mark.parametrize("name", ["a\r\nX: y", "a\rb", "a\nb", 'Bob"\r\nX-Injected: yes\r\nY: "'])
def test_quote_refuses_cr_and_lf(name: str) -> None:
    """No quoted-pair carries CR or LF (§25.1): writing one would end the header line (header injection)."""
    for write in (_quote, lambda text: str(NameAddr(text, parse_uri("sip:bob@biloxi.com")))):
        with pytest.raises(SipParseError) as caught:
            write(name)
        assert str(caught.value) == f"{name!r} cannot be quoted: no quoted-pair carries CR or LF (§25.1)"


@pytest.mark.parametrize("name", ['Bob "B"', "back\\slash", "BEL:\x07 NUL:\x00 DEL:\x7f", "Zoë 大", ""])
def test_quote_writes_a_quoted_string_that_reads_back(name: str) -> None:
    quoted = _quote(name)
    check_display_name(quoted[1:-1], "quoted")  # qdtext and quoted-pairs only
    assert parse_name_addr(f"{quoted} <sip:bob@biloxi.com>").display_name == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a\r\nX: y", "contains CR or LF, which would end the header line"),
        ('Bob"\r\nX-Injected: yes', "contains CR or LF, which would end the header line"),
        ('Eve" <sip:eve@e.example>;tag=1, "Bob', 'has a DQUOTE at index 3; write it as \\"'),
        ("Bob\\", "ends in a backslash, which would escape the closing DQUOTE"),
        ("Bob\x00", "has '\\x00' at index 3, not allowed in a quoted string"),
        ("Bob\\é", "has '\\\\é' at index 3, not allowed in a quoted string"),  # a quoted-pair is ASCII only
    ],
)
def test_check_display_name_refuses_what_would_leave_the_quoted_string(name: str, reason: str) -> None:
    with pytest.raises(SipParseError) as caught:
        check_display_name(name, "display_name")
    assert str(caught.value) == f"display_name: {name!r} {reason}"


@pytest.mark.parametrize("name", ["Alice", 'J \\"R\\" Doe', "tab\there", "BEL:\\\x07", "Zoë 大", ""])
def test_a_checked_display_name_stays_inside_its_header(name: str) -> None:
    check_display_name(name, "display_name")
    request = parse_message(GOOD_OPTIONS.replace(b"From: Alice <", f'From: "{name}" <'.encode()))
    assert len(request.headers) == 7 and request.from_.tag == "1928301774"


def test_quoted_string_with_cr_or_lf_is_refused() -> None:
    """A lone CR in a quoted display name would go out as a line end from whoever writes it again."""
    for text in ('"a\rb" <sip:x@y>', '"a\\\rb" <sip:x@y>', '"a\nb" <sip:x@y>'):
        with pytest.raises(SipParseError) as caught:
            parse_name_addr(text, "To")
        assert str(caught.value) == "To: CR or LF inside a quoted string"


def test_a_bare_cr_in_a_header_is_refused() -> None:
    """A CR not followed by LF: a peer that ends lines at CR would read a header this parser never saw,
    and a proxy would forward it as it is."""
    smuggled = GOOD_OPTIONS.replace(b"From: Alice <", b"Subject: hi\rX-Smuggled: yes\r\nFrom: Alice <")
    with pytest.raises(SipParseError, match="a CR not followed by LF"):
        parse_message(smuggled)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sip:bob@b.example\r\nX: y", "{!r} has '\\r' at index 17, which a SIP URI cannot carry"),
        ("sip:bob>;tag=1@b.example", "{!r} has '>' at index 7, which a SIP URI cannot carry"),
        ('sip:"bob"@b.example', "{!r} has '\"' at index 4, which a SIP URI cannot carry"),
        ("sip:%4@b.example", "{!r} has '%' at index 4, which a SIP URI cannot carry"),
        ("sip:bob@b.example?Route=x", "{!r} has URI headers, not allowed here (§19.1.1)"),
        ("tel:+1555", "expected a sip: or sips: URI, got {!r}"),
        ("sip:bob@", "URI {!r}: invalid host ''"),
    ],
)
def test_check_sip_uri_refuses_what_would_leave_its_brackets(text: str, reason: str) -> None:
    with pytest.raises(SipParseError) as caught:
        check_sip_uri(text, "target")
    assert str(caught.value) == "target: " + reason.format(text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sips:bob@biloxi.com;transport=udp",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:alice%40x@[2001:db8::10]:5070;lr",
        "sip:a!~*'()&=+$,;/b@h",  # user-unreserved and marks (§25.1)
    ],
)
def test_check_sip_uri_takes_rfc3261_uris(text: str) -> None:
    assert str(check_sip_uri(text, "aor")) == text


def test_via_parse_and_format() -> None:
    via = parse_via("SIP/2.0/UDP pc33.atlanta.com:5066 ; branch=z9hG4bK776asdhds ;rport;received=192.0.2.101")
    assert via == Via("UDP", "pc33.atlanta.com", 5066, {"branch": "z9hG4bK776asdhds", "rport": None,
                                                        "received": "192.0.2.101"})  # fmt: skip
    assert via.rport is True and via.received == "192.0.2.101" and via.branch == "z9hG4bK776asdhds"
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.101"
    assert parse_via("SIP/2.0/UDP h;rport=5070").rport == 5070
    assert parse_via("SIP/2.0/UDP h").rport is None and parse_via("SIP/2.0/UDP h").sent_by == ("h", 5060)
    assert parse_via("SIP/2.0/UDP h : 5070;branch=x").sent_by == ("h", 5070)
    ipv6 = parse_via("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKx")
    assert ipv6.host == "2001:db8::9" and str(ipv6) == "SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKx"
    with pytest.raises(SipParseError, match="Via: branch parameter without a value"):
        parse_via("SIP/2.0/UDP h;branch")
    with pytest.raises(SipParseError, match="Via: missing sent-by"):
        parse_via("SIP/2.0/UDP ")


def test_cseq() -> None:
    assert parse_cseq(" 0042 \r\n INVITE") == CSeq(42, "INVITE")
    assert parse_cseq("4294967295 BYE").number == 2**32 - 1
    assert str(CSeq(1, "ACK")) == "1 ACK"
    with pytest.raises(SipParseError, match=r"CSeq: expected 'number method', got '1'"):
        parse_cseq("1")
    with pytest.raises(SipParseError, match=r"CSeq: sequence number '-1' is not a number"):
        parse_cseq("-1 INVITE")


# -- building messages -----------------------------------------------------------------------------

INVITE = (
    b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.atlanta.com;branch=z9hG4bK2d4790.1;received=192.0.2.2\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8;rport=5060;received=192.0.2.1\r\n"
    b"Record-Route: <sip:proxy.atlanta.com;lr>\r\n"
    b"Route: <sip:proxy.biloxi.com;lr>\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: Bob <sip:bob@biloxi.com>\r\n"
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_make_response_copies_per_8_2_6_2_and_12_1_1() -> None:
    invite = parse_message(INVITE)
    assert isinstance(invite, Request)
    ok = make_response(invite, 200, to_tag="a6c85cf")
    assert ok.reason == "OK"
    assert ok.headers.items() == [
        ("Via", "SIP/2.0/UDP proxy.atlanta.com;branch=z9hG4bK2d4790.1;received=192.0.2.2"),
        ("Via", "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8;rport=5060;received=192.0.2.1"),
        ("From", "Alice <sip:alice@atlanta.com>;tag=1928301774"),
        ("To", "Bob <sip:bob@biloxi.com>;tag=a6c85cf"),
        ("Call-ID", "a84b4c76e66710"),
        ("CSeq", "314159 INVITE"),
        ("Record-Route", "<sip:proxy.atlanta.com;lr>"),
    ]
    trying = make_response(invite, 100)
    assert trying.to.tag is None and "Record-Route" not in trying.headers
    busy = make_response(invite, 486, to_tag="x")
    assert busy.reason == "Busy Here" and "Record-Route" not in busy.headers
    assert make_response(invite, 299).reason == "OK" and make_response(invite, 499, "Odd").reason == "Odd"
    reinvite = invite.copy()
    reinvite.headers.set("To", "Bob <sip:bob@biloxi.com>;tag=t1")
    assert make_response(reinvite, 200, to_tag="t2").to.tag == "t1"  # an existing To tag is kept
    assert parse_message(ok.encode()).encode() == ok.encode()


def test_make_ack_for_non_2xx_and_make_cancel() -> None:
    invite = parse_message(INVITE)
    assert isinstance(invite, Request)
    busy = make_response(invite, 486, to_tag="bobtag")
    ack = make_ack(invite, busy)
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.headers.get_all("Via") == [invite.headers.get_all("Via")[0]]  # top Via only (§17.1.1.3)
    assert ack.headers.get_all("Route") == ["<sip:proxy.biloxi.com;lr>"]
    assert ack.to.tag == "bobtag" and ack.cseq == CSeq(314159, "ACK") and ack.call_id == "a84b4c76e66710"
    cancel = make_cancel(invite)
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert cancel.top_via.branch == "z9hG4bK2d4790.1" and len(cancel.vias) == 1
    assert cancel.to.tag is None and cancel.cseq == CSeq(314159, "CANCEL")
    assert parse_message(cancel.encode()).encode() == cancel.encode()


def test_identifiers() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100 and all(b.startswith("z9hG4bK") and len(b) > 7 + 8 for b in branches)
    assert len(new_tag()) >= 8 and new_tag() != new_tag()
    assert new_call_id("alice.example").endswith("@alice.example")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"SIP/2.0\r\n", b"SIP/" + b"9" * 5000 + b".0\r\n"),  # int() refuses 4,300+ digits with its own error
        (b"CSeq: 63104", b"CSeq: " + b"7" * 5000),
        (b"Max-Forwards: 70", b"Max-Forwards: " + b"0" * 5000 + b"70x"),
        (b"Content-Length: 0", b"Content-Length: " + b"0" * 5000 + b"1"),  # 1 byte, past the body
        (b";branch=", b";rport=1\xc2\xb2;branch="),  # a superscript two: str.isdigit() says yes, int() says no
    ],
)
def test_numbers_in_headers_are_refused_as_sip_errors_whatever_their_digits(old: bytes, new: bytes) -> None:
    """Found by fuzz/: each raised a bare ValueError (the transport logged a traceback instead of a 400)."""
    assert old in GOOD_OPTIONS
    with pytest.raises(SipParseError):
        parse_message(GOOD_OPTIONS.replace(old, new, 1))
