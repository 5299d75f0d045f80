"""pinhole.sdp: strict RFC 4566 codec, RFC 5763 §5 offer/answer rules, RFC 8122 fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pinhole import sdp
from pinhole.sdp import DtlsSrtpMedia, Fingerprint, SdpError, Setup

DATA = Path(__file__).parent / "data" / "sdp"
ALICE_DER = (DATA / "alice-cert.der").read_bytes()
BOB_DER = (DATA / "bob-cert.der").read_bytes()
SHA1_OFFER = Fingerprint.parse("sha-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB")
SHA1_ANSWER = Fingerprint.parse("sha-1 FF:FF:FF:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB")
SHA1_WARNING = "a=fingerprint uses sha-1: accepted, but weak; many stacks reject it (RFC 8122 §5)"
ORDER = "RFC 4566 §5 order: v o s i u e p c b t r z k a, then m i c b k a per media"


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def fp256(der: bytes) -> Fingerprint:
    return sdp.certificate_fingerprint(der, "sha-256")


# -- golden SDPs: ours --------------------------------------------------------------------------------


def build_alice_offer() -> sdp.SessionDescription:
    return sdp.build_offer(
        address="203.0.113.10",
        port=40000,
        fingerprints=[fp256(ALICE_DER), sdp.certificate_fingerprint(ALICE_DER, "sha-512")],
        session_id=1181923068,
        username="alice",
        payload_types=(0, 8),
    )


def test_build_offer_golden() -> None:
    assert sdp.serialize(build_alice_offer()).encode() == read("pinhole-offer.sdp")


def test_build_answer_golden() -> None:
    answer = sdp.build_answer(
        build_alice_offer(),
        address="198.51.100.20",
        port=50000,
        fingerprints=[fp256(BOB_DER)],
        session_id=6418913922105372816,
        username="bob",
        payload_types=(8, 0),
    )
    assert sdp.serialize(answer).encode() == read("pinhole-answer.sdp")


@pytest.mark.parametrize(
    "name", ["pinhole-offer.sdp", "pinhole-answer.sdp", "rfc5763-offer-fixed.sdp", "rfc5763-answer-fixed.sdp"]
)
def test_round_trip_exact(name: str) -> None:
    text = read(name)
    assert sdp.serialize(sdp.parse(text)).encode() == text
    assert sdp.parse(text.replace(b"\r\n", b"\n")) == sdp.parse(text)  # LF accepted too
    assert sdp.parse(text.decode()) == sdp.parse(text)


def test_read_our_offer_and_answer() -> None:
    offer = sdp.read_offer(sdp.parse(read("pinhole-offer.sdp")))
    assert offer == DtlsSrtpMedia(
        address="203.0.113.10",
        port=40000,
        rtcp_port=40000,
        proto="UDP/TLS/RTP/SAVP",
        setup=Setup.ACTPASS,
        fingerprints=[fp256(ALICE_DER), sdp.certificate_fingerprint(ALICE_DER, "sha-512")],
        rtcp_mux=True,
        capneg=False,
        warnings=[],
        formats=["0", "8"],
    )
    answer = sdp.read_answer(sdp.parse(read("pinhole-answer.sdp")), offer)
    assert answer == DtlsSrtpMedia(
        address="198.51.100.20",
        port=50000,
        rtcp_port=50000,
        proto="UDP/TLS/RTP/SAVP",
        setup=Setup.ACTIVE,
        fingerprints=[fp256(BOB_DER)],
        rtcp_mux=True,
        capneg=False,
        warnings=[],
        formats=["0", "8"],
    )
    # Bob checks Alice's certificate against the strongest hash she offered (RFC 8122 §5)
    selected = sdp.select_fingerprints(offer.fingerprints)
    assert [f.hash_function for f in selected] == ["sha-512"]
    assert any(f.matches(ALICE_DER) for f in selected)
    assert not any(f.matches(BOB_DER) for f in selected)


def test_parsed_structure() -> None:
    sd = sdp.parse(read("pinhole-offer.sdp"))
    assert (sd.version, sd.origin_username, sd.session_id, sd.session_version) == (0, "alice", 1181923068, 1181923068)
    assert (sd.origin_nettype, sd.origin_addrtype, sd.origin_address) == ("IN", "IP4", "203.0.113.10")
    assert sd.session_name == "-" and sd.connection == "IN IP4 203.0.113.10"
    assert sd.timing == [sdp.Timing(0, 0, [])]
    media = sd.media[0]
    assert (media.media, media.port, media.proto, media.formats) == ("audio", 40000, "UDP/TLS/RTP/SAVP", ["0", "8"])
    assert media.attribute("setup") == "actpass"
    assert media.attributes_named("rtpmap") == ["0 PCMU/8000", "8 PCMA/8000"]
    assert media.has_attribute("rtcp-mux") and media.attribute("rtcp-mux") is None
    assert media.attribute("absent") is None and not media.has_attribute("absent")
    lines = sdp.line_numbers(sd)
    assert lines[("m", 0)] == 6 and lines[("m", 0, "a", 0)] == 7 and lines[("t", 0)] == 5


def test_round_trip_every_field() -> None:
    text = (
        "v=0\r\no=- 1 2 IN IP6 2001:db8::1\r\ns=x\r\ni=info\r\nu=http://example.com/\r\ne=a@example.com\r\n"
        "e=b@example.com\r\np=+1 555\r\nc=IN IP6 2001:db8::1\r\nb=AS:64\r\nb=CT:128\r\nt=1 2\r\nr=7d 1h 0 25h\r\n"
        "t=3 4\r\nz=2882844526 -1h\r\nk=prompt\r\na=tool:x\r\na=recvonly\r\n"
        "m=audio 49170/2 RTP/AVP 0\r\ni=voice\r\nc=IN IP6 2001:db8::2\r\nb=AS:32\r\nk=prompt\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "m=video 0 RTP/AVP 31\r\n"
    )
    sd = sdp.parse(text)
    assert sdp.serialize(sd) == text
    assert sd.timing[0].repeats == ["7d 1h 0 25h"] and sd.media[0].number_of_ports == 2
    assert sd.bandwidths == [("AS", 64), ("CT", 128)]


# -- golden SDPs: RFC 5763 §7.1 / §7.3 examples -------------------------------------------------------


def test_raw_rfc5763_offer_fails_a_before_t() -> None:
    with pytest.raises(SdpError) as excinfo:
        sdp.parse(read("rfc5763-offer-raw.sdp"))
    assert str(excinfo.value) == f"line 5: a= before the required t= ({ORDER})"


def test_raw_rfc5763_answer_fails_a_before_t() -> None:
    with pytest.raises(SdpError) as excinfo:
        sdp.parse(read("rfc5763-answer-raw.sdp"))
    assert str(excinfo.value) == f"line 5: a= before the required t= ({ORDER})"


def _raw_offer_lines() -> list[str]:
    return read("rfc5763-offer-raw.sdp").decode().splitlines()


def test_raw_rfc5763_offer_reordered_fails_on_line_wrapping() -> None:
    lines = _raw_offer_lines()
    reordered = lines[:4] + [lines[7]] + lines[4:7] + lines[8:]
    with pytest.raises(SdpError) as excinfo:
        sdp.parse("\n".join(reordered))
    assert str(excinfo.value) == (
        "line 8: expected <type>=<value> with no space around '=' (RFC 4566 §5), "
        "got '  4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E…'"
    )


def test_raw_rfc5763_offer_unwrapped_fails_on_space_after_colon() -> None:
    lines = _raw_offer_lines()
    fingerprint = lines[5].rstrip("\\") + lines[6].strip()
    assert fingerprint == "a=fingerprint: SHA-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB"
    fixed_order = lines[:4] + [lines[7], lines[4], fingerprint] + lines[8:]
    sd = sdp.parse("\n".join(fixed_order))  # the grammar is fine now; the attribute value is not
    with pytest.raises(SdpError) as excinfo:
        sdp.read_offer(sd)
    assert str(excinfo.value) == (
        "line 7: a=fingerprint: SHA-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB: "
        "fingerprint starts with whitespace: expected '<hash-func> SP <hex bytes>' (RFC 8122 §5)"
    )
    # upper-case hash token alone is fine: ABNF literals are case-insensitive
    sd = sdp.parse("\n".join(fixed_order).replace("fingerprint: SHA-1", "fingerprint:SHA-1"))
    assert sdp.read_offer(sd).fingerprints == [SHA1_OFFER]


def test_fixed_rfc5763_offer_via_capability_negotiation() -> None:
    offer = sdp.read_offer(sdp.parse(read("rfc5763-offer-fixed.sdp")))
    assert offer == DtlsSrtpMedia(
        address="ua1.example.com",
        port=6056,
        rtcp_port=6057,
        proto="UDP/TLS/RTP/SAVP",
        setup=Setup.ACTPASS,
        fingerprints=[SHA1_OFFER],
        rtcp_mux=False,
        capneg=True,
        warnings=[SHA1_WARNING],
        formats=["0"],
    )


def test_fixed_rfc5763_answer() -> None:
    offer = sdp.read_offer(sdp.parse(read("rfc5763-offer-fixed.sdp")))
    answer = sdp.read_answer(sdp.parse(read("rfc5763-answer-fixed.sdp")), offer)
    assert answer == DtlsSrtpMedia(
        address="ua2.example.com",
        port=12000,
        rtcp_port=12001,
        proto="UDP/TLS/RTP/SAVP",
        setup=Setup.ACTIVE,
        fingerprints=[SHA1_ANSWER],
        rtcp_mux=False,
        capneg=True,
        warnings=[SHA1_WARNING],
        formats=["0"],
    )


def test_build_answer_to_capneg_offer_uses_acfg() -> None:
    answer = sdp.build_answer(
        sdp.parse(read("rfc5763-offer-fixed.sdp")),
        address="198.51.100.20",
        port=12000,
        fingerprints=[fp256(BOB_DER)],
        session_id=1,
    )
    media = answer.media[0]
    assert media.proto == "UDP/TLS/RTP/SAVP"
    assert media.attribute("acfg") == "1 t=1"
    assert not media.has_attribute("rtcp-mux")  # not offered (RFC 5761 §5.1.1)
    read_back = sdp.read_answer(
        sdp.parse(sdp.serialize(answer)), sdp.read_offer(sdp.parse(read("rfc5763-offer-fixed.sdp")))
    )
    assert read_back.capneg and read_back.rtcp_port == 12001


# -- offers and answers: variations -------------------------------------------------------------------

FP_HEX = ":".join(["AB"] * 32)
BASE_OFFER = [
    "v=0",
    "o=- 1 1 IN IP4 203.0.113.10",
    "s=-",
    "c=IN IP4 203.0.113.10",
    "t=0 0",
    "m=audio 40000 UDP/TLS/RTP/SAVP 0",
    "a=setup:actpass",
    f"a=fingerprint:sha-256 {FP_HEX}",
    "a=rtcp-mux",
    "a=sendrecv",
]
BASE_ANSWER = [line.replace("actpass", "active").replace("203.0.113.10", "198.51.100.20") for line in BASE_OFFER]


def sdp_text(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def edit(lines: list[str], **changes: str | None) -> list[str]:
    """Replace line N (key 'lN') with a new text, or drop it with None."""
    out = list(lines)
    for key, value in sorted(changes.items(), key=lambda kv: -int(kv[0][1:])):
        index = int(key[1:]) - 1
        if value is None:
            del out[index]
        else:
            out[index] = value
    return out


def offer_of(lines: list[str]) -> DtlsSrtpMedia:
    return sdp.read_offer(sdp.parse(sdp_text(lines)))


def answer_of(lines: list[str], offer: DtlsSrtpMedia | None = None) -> DtlsSrtpMedia:
    return sdp.read_answer(sdp.parse(sdp_text(lines)), offer)


def test_base_offer_and_answer() -> None:
    offer = offer_of(BASE_OFFER)
    assert offer.setup is Setup.ACTPASS and offer.rtcp_mux and offer.warnings == []
    answer = answer_of(BASE_ANSWER, offer)
    assert answer.setup is Setup.ACTIVE and answer.address == "198.51.100.20"


def test_offer_active_or_passive_accepted_with_warning() -> None:
    for role in ("active", "passive"):
        offer = offer_of(edit(BASE_OFFER, l7=f"a=setup:{role}"))
        assert offer.setup == Setup(role)
        assert offer.warnings == [f"a=setup:{role} in an offer: RFC 5763 §5 requires actpass (relaxed by RFC 8842)"]


def test_answer_role_must_complement_offer() -> None:
    offer = offer_of(edit(BASE_OFFER, l7="a=setup:active"))
    assert answer_of(edit(BASE_ANSWER, l7="a=setup:passive"), offer).setup is Setup.PASSIVE
    with pytest.raises(SdpError) as excinfo:
        answer_of(BASE_ANSWER, offer)
    assert str(excinfo.value) == (
        "line 7: a=setup:active answers an offer of a=setup:active: expected passive (RFC 4145 §4.1)"
    )
    offer = offer_of(edit(BASE_OFFER, l7="a=setup:passive"))
    with pytest.raises(
        SdpError, match=r"^line 7: a=setup:passive answers an offer of a=setup:passive: expected active"
    ):
        answer_of(edit(BASE_ANSWER, l7="a=setup:passive"), offer)


def test_session_level_setup_and_fingerprint() -> None:
    lines = BASE_OFFER[:5] + ["a=setup:actpass", f"a=fingerprint:sha-256 {FP_HEX}"] + BASE_OFFER[5:6] + BASE_OFFER[8:]
    offer = offer_of(lines)
    assert offer.setup is Setup.ACTPASS and offer.fingerprints == [Fingerprint("sha-256", b"\xab" * 32)]


def test_media_level_fingerprint_wins() -> None:
    other = ":".join(["CD"] * 32)
    lines = BASE_OFFER[:5] + [f"a=fingerprint:sha-256 {other}"] + BASE_OFFER[5:]
    assert offer_of(lines).fingerprints == [Fingerprint("sha-256", b"\xab" * 32)]


def test_media_level_connection_wins() -> None:
    lines = BASE_OFFER[:6] + ["c=IN IP4 192.0.2.99"] + BASE_OFFER[6:]
    assert offer_of(lines).address == "192.0.2.99"
    assert offer_of(edit(BASE_OFFER, l4="c=IN IP4 233.252.0.1/127")).address == "233.252.0.1"


def test_ipv6_connection() -> None:
    assert offer_of(edit(BASE_OFFER, l4="c=IN IP6 2001:db8::5")).address == "2001:db8::5"


def test_rtcp_port_rules() -> None:
    assert offer_of(edit(BASE_OFFER, l9=None)).rtcp_port == 40001
    assert offer_of(edit(BASE_OFFER, l9="a=rtcp:40005 IN IP4 203.0.113.10")).rtcp_port == 40005
    with pytest.raises(SdpError) as excinfo:
        offer_of(edit(BASE_OFFER, l9="a=rtcp:x"))
    assert str(excinfo.value) == "line 9: a=rtcp:x: expected '<port> [<nettype> <addrtype> <address>]' (RFC 3605 §2.1)"


def test_connection_attribute_tolerated_and_flagged() -> None:
    # as sent by real stacks (Asterisk, rtpengine#1622): SAVPF, a=connection:new, lower-case hex, session-level fp
    lines = (
        BASE_OFFER[:5]
        + [f"a=fingerprint:SHA-256 {FP_HEX.lower()}"]
        + [
            "m=audio 40000 UDP/TLS/RTP/SAVPF 0",
            "a=setup:actpass",
            "a=connection:new",
            "a=sendrecv",
        ]
    )
    offer = offer_of(lines)
    assert offer.proto == "UDP/TLS/RTP/SAVPF"
    assert offer.fingerprints == [Fingerprint("sha-256", b"\xab" * 32)]
    assert offer.warnings == ["a=connection present: forbidden by RFC 5763 §5"]
    assert offer.rtcp_mux is False and offer.rtcp_port == 40001


def test_first_audio_line_is_used() -> None:
    lines = BASE_OFFER[:5] + ["m=video 0 RTP/AVP 31"] + BASE_OFFER[5:] + ["m=audio 0 RTP/AVP 0"]
    assert offer_of(lines).port == 40000


def test_unknown_hash_ignored_with_warning() -> None:
    lines = BASE_OFFER[:8] + ["a=fingerprint:sha3-256 01:02"] + BASE_OFFER[8:]
    offer = offer_of(lines)
    assert offer.fingerprints == [Fingerprint("sha-256", b"\xab" * 32)]
    assert offer.warnings == ["a=fingerprint hash sha3-256 is not supported: ignored (RFC 8122 §5)"]


def test_multiple_fingerprints_and_selection() -> None:
    sha1 = sdp.certificate_fingerprint(ALICE_DER, "sha-1")
    sha384 = sdp.certificate_fingerprint(ALICE_DER, "sha-384")
    bogus384 = Fingerprint("sha-384", b"\x00" * 48)
    lines = (
        BASE_OFFER[:7] + [f"a=fingerprint:{fp}" for fp in (sha1, fp256(ALICE_DER), bogus384, sha384)] + BASE_OFFER[8:]
    )
    offer = offer_of(lines)
    assert offer.fingerprints == [sha1, fp256(ALICE_DER), bogus384, sha384]
    assert offer.warnings == [SHA1_WARNING]
    selected = sdp.select_fingerprints(offer.fingerprints)
    assert selected == [bogus384, sha384]
    assert any(fp.matches(ALICE_DER) for fp in selected)  # matching one of the set is enough


# -- rejections with exact messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, message",
    [
        (edit(BASE_OFFER, l6="m=video 40000 UDP/TLS/RTP/SAVP 31"), "no m=audio media description (RFC 5763 §5)"),
        (
            edit(BASE_OFFER, l6="m=audio 0 UDP/TLS/RTP/SAVP 0"),
            "line 6: m=audio port 0: the offered stream is disabled (RFC 3264 §5.1)",
        ),
        (
            edit(BASE_OFFER, l6="m=audio 40000 RTP/AVP 0"),
            (
                "line 6: m=audio proto RTP/AVP is not UDP/TLS/RTP/SAVP or UDP/TLS/RTP/SAVPF and no "
                "a=tcap/a=pcfg offers one (RFC 5763 §5, §6.11)"
            ),
        ),
        (edit(BASE_OFFER, l7=None), "no a=setup at media or session level (RFC 5763 §5, RFC 4145 §4)"),
        (
            edit(BASE_OFFER, l7="a=setup:both"),
            "line 7: a=setup:both is not one of active, passive, actpass, holdconn (RFC 4145 §4)",
        ),
        (
            edit(BASE_OFFER, l7="a=setup"),
            "line 7: a=setup is not one of active, passive, actpass, holdconn (RFC 4145 §4)",
        ),
        (edit(BASE_OFFER, l7="a=setup:holdconn"), "line 7: a=setup:holdconn is not allowed in an offer (RFC 5763 §5)"),
        (edit(BASE_OFFER, l8=None), "no a=fingerprint at media or session level (RFC 5763 §5)"),
        (edit(BASE_OFFER, l8="a=fingerprint"), "line 8: a=fingerprint has no value (RFC 8122 §5)"),
        (
            edit(BASE_OFFER, l8="a=fingerprint:md5 " + ":".join(["AB"] * 16)),
            "line 8: a=fingerprint hash md5 must not be used (RFC 8122 §5)",
        ),
        (
            edit(BASE_OFFER, l8="a=fingerprint:MD2 " + ":".join(["AB"] * 16)),
            "line 8: a=fingerprint hash md2 must not be used (RFC 8122 §5)",
        ),
        (
            edit(BASE_OFFER, l8="a=fingerprint:sha-256 AB:CD"),
            "line 8: a=fingerprint:sha-256 AB:CD: sha-256 fingerprint has 2 bytes, expected 32 (RFC 8122 §5)",
        ),
        (
            edit(BASE_OFFER, l8="a=fingerprint:sha-256 ABCD"),
            "line 8: a=fingerprint:sha-256 ABCD: 'ABCD' is not colon-separated pairs of hex digits (RFC 8122 §5)",
        ),
        (
            edit(BASE_OFFER, l8="a=fingerprint:foo-1 AB:CD"),
            "no a=fingerprint with a supported hash function (sha-512, sha-384, sha-256, sha-1) (RFC 8122 §5)",
        ),
        (edit(BASE_OFFER, l4=None), "line 5: no c= at media or session level (RFC 4566 §5.7)"),
        (
            edit(BASE_OFFER, l4="c=ATM NSAP 47.0005"),
            "line 4: c=ATM NSAP 47.0005: network type ATM is not IN (RFC 4566 §5.7)",
        ),
        (
            edit(BASE_OFFER, l4="c=IN IPX 1.2.3.4"),
            "line 4: c=IN IPX 1.2.3.4: address type IPX is not IP4 or IP6 (RFC 4566 §5.7)",
        ),
    ],
)
def test_offer_rejections(lines: list[str], message: str) -> None:
    with pytest.raises(SdpError) as excinfo:
        offer_of(lines)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            edit(BASE_ANSWER, l7="a=setup:holdconn"),
            "line 7: a=setup:holdconn is not allowed in an answer (RFC 5763 §5)",
        ),
        (edit(BASE_ANSWER, l7="a=setup:actpass"), "line 7: a=setup:actpass is not allowed in an answer (RFC 5763 §5)"),
        (
            edit(BASE_ANSWER, l6="m=audio 0 UDP/TLS/RTP/SAVP 0"),
            "line 6: m=audio port 0: the answerer rejected the stream (RFC 3264 §6)",
        ),
        (
            edit(BASE_ANSWER, l6="m=audio 50000 RTP/AVP 0"),
            "line 6: m=audio proto RTP/AVP in an answer: expected UDP/TLS/RTP/SAVP or UDP/TLS/RTP/SAVPF (RFC 5763 §5)",
        ),
    ],
)
def test_answer_rejections(lines: list[str], message: str) -> None:
    with pytest.raises(SdpError) as excinfo:
        answer_of(lines)
    assert str(excinfo.value) == message


def test_holdconn_in_answer_line_9() -> None:
    """The lead's example message, with a=setup on line 9."""
    lines = BASE_ANSWER[:6] + ["a=sendrecv", "a=rtcp-mux", "a=setup:holdconn", BASE_ANSWER[7]]
    with pytest.raises(SdpError) as excinfo:
        answer_of(lines)
    assert str(excinfo.value) == "line 9: a=setup:holdconn is not allowed in an answer (RFC 5763 §5)"


def test_answer_rtcp_mux_only_if_offered() -> None:
    offer = offer_of(edit(BASE_OFFER, l9=None))
    with pytest.raises(SdpError) as excinfo:
        answer_of(BASE_ANSWER, offer)
    assert str(excinfo.value) == "line 9: a=rtcp-mux in an answer to an offer without it (RFC 5761 §5.1.1)"
    assert answer_of(BASE_ANSWER).rtcp_mux  # without the offer there is nothing to check against


# -- capability negotiation (RFC 5939) ----------------------------------------------------------------


def capneg_offer(*extra: str, proto_line: str = "m=audio 40000 RTP/AVP 0") -> list[str]:
    return BASE_OFFER[:5] + [proto_line] + BASE_OFFER[6:8] + list(extra)


def test_capneg_picks_lowest_config_with_dtls_transport() -> None:
    offer = offer_of(capneg_offer("a=tcap:1 RTP/SAVP UDP/TLS/RTP/SAVPF", "a=pcfg:2 t=1", "a=pcfg:1 t=1|2"))
    assert offer.capneg and offer.proto == "UDP/TLS/RTP/SAVPF"


def test_capneg_session_level_tcap() -> None:
    lines = BASE_OFFER[:5] + ["a=tcap:5 UDP/TLS/RTP/SAVP"] + capneg_offer("a=pcfg:1 t=5")[5:]
    assert offer_of(lines).proto == "UDP/TLS/RTP/SAVP"


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ("a=tcap:x UDP/TLS/RTP/SAVP",),
            "line 9: a=tcap:x UDP/TLS/RTP/SAVP: expected '<number> <proto> ...' (RFC 5939 §3.4.2)",
        ),
        (("a=tcap:1",), "line 9: a=tcap:1: expected '<number> <proto> ...' (RFC 5939 §3.4.2)"),
        (
            ("a=tcap:1 UDP/TLS/RTP/SAVP", "a=pcfg:x t=1"),
            "line 10: a=pcfg:x t=1: expected '<config-number> <pot-cfg-list>' (RFC 5939 §3.5.1)",
        ),
        (
            ("a=tcap:1 UDP/TLS/RTP/SAVP", "a=pcfg:1 t=3"),
            "line 10: a=pcfg:1 t=3 refers to no a=tcap 3 (RFC 5939 §3.5.1)",
        ),
        (
            ("a=tcap:1 UDP/TLS/RTP/SAVP", "a=pcfg:1 t=a"),
            "line 10: a=pcfg t=a: 'a' is not a number (RFC 5939 §3.5.1)",
        ),
        (
            ("a=tcap:1 RTP/SAVP", "a=pcfg:1 t=1"),
            (
                "line 6: m=audio proto RTP/AVP is not UDP/TLS/RTP/SAVP or UDP/TLS/RTP/SAVPF and no "
                "a=tcap/a=pcfg offers one (RFC 5763 §5, §6.11)"
            ),
        ),
    ],
)
def test_capneg_rejections(extra: tuple[str, ...], message: str) -> None:
    with pytest.raises(SdpError) as excinfo:
        offer_of(capneg_offer(*extra))
    assert str(excinfo.value) == message


# -- build_offer / build_answer -----------------------------------------------------------------------


def test_build_offer_ipv6_and_options() -> None:
    offer = sdp.build_offer(
        address="2001:db8::10",
        port=5004,
        fingerprints=[fp256(ALICE_DER)],
        session_id=9,
        session_version=3,
        rtcp_mux=False,
        setup=Setup.PASSIVE,
        payload_types=(8,),
        ptime=None,
    )
    text = sdp.serialize(offer)
    assert "o=- 9 3 IN IP6 2001:db8::10\r\n" in text and "c=IN IP6 2001:db8::10\r\n" in text
    assert "a=rtcp-mux" not in text and "a=ptime" not in text and "a=setup:passive\r\n" in text
    media = sdp.read_offer(sdp.parse(text))
    assert media.rtcp_port == 5005 and media.setup is Setup.PASSIVE


def test_build_offer_errors() -> None:
    with pytest.raises(SdpError, match=r"^payload type 96 has no static audio mapping \(RFC 3551 §6\)$"):
        sdp.build_offer(address="192.0.2.1", port=1, fingerprints=[fp256(ALICE_DER)], session_id=1, payload_types=(96,))
    with pytest.raises(SdpError, match=r"^an offer needs at least one fingerprint \(RFC 5763 §5\)$"):
        sdp.build_offer(address="192.0.2.1", port=1, fingerprints=[], session_id=1)
    with pytest.raises(SdpError, match=r"^an offer needs at least one payload type \(RFC 4566 §5.14\)$"):
        sdp.build_offer(address="192.0.2.1", port=1, fingerprints=[fp256(ALICE_DER)], session_id=1, payload_types=())


def _answer(offer_lines: list[str], **kwargs: object) -> sdp.SessionDescription:
    params: dict[str, object] = {
        "address": "198.51.100.20",
        "port": 50000,
        "fingerprints": [fp256(BOB_DER)],
        "session_id": 2,
    }
    params.update(kwargs)
    return sdp.build_answer(sdp.parse(sdp_text(offer_lines)), **params)  # type: ignore[arg-type]


def test_build_answer_errors() -> None:
    for setup in (Setup.ACTPASS, Setup.HOLDCONN):
        with pytest.raises(SdpError) as excinfo:
            _answer(BASE_OFFER, setup=setup)
        assert str(excinfo.value) == f"a=setup:{setup.value} is not allowed in an answer (RFC 5763 §5)"
    with pytest.raises(SdpError) as excinfo:
        _answer(edit(BASE_OFFER, l7="a=setup:active"), setup=Setup.ACTIVE)
    assert str(excinfo.value) == "a=setup:active answers an offer of a=setup:active: expected passive (RFC 4145 §4.1)"
    with pytest.raises(SdpError) as excinfo:
        _answer(edit(BASE_OFFER, l6="m=audio 40000 UDP/TLS/RTP/SAVP 8 96"))
    assert str(excinfo.value) == "no common payload type: offer has 8 96, we support 0 (RFC 3264 §6.1)"
    with pytest.raises(SdpError, match=r"^an answer needs at least one fingerprint \(RFC 5763 §5\)$"):
        _answer(BASE_OFFER, fingerprints=[])
    with pytest.raises(SdpError, match=r"^line 7: a=setup:holdconn is not allowed in an offer"):
        _answer(edit(BASE_OFFER, l7="a=setup:holdconn"))


def test_build_answer_mirrors_direction_time_and_rejects_other_media() -> None:
    offer_lines = edit(BASE_OFFER, l5="t=100 200", l10="a=sendonly", l9=None) + ["m=video 40002 UDP/TLS/RTP/SAVP 31"]
    answer = _answer(offer_lines, setup=Setup.PASSIVE, payload_types=(8, 0))
    text = sdp.serialize(answer)
    assert "t=100 200\r\n" in text  # RFC 3264 §6: t= as in the offer
    assert "a=recvonly\r\n" in text and "a=rtcp-mux" not in text and "a=setup:passive\r\n" in text
    assert text.endswith("m=video 0 UDP/TLS/RTP/SAVP 31\r\n")
    read_back = sdp.read_answer(sdp.parse(text), offer_of(offer_lines))
    assert read_back.setup is Setup.PASSIVE and read_back.formats == ["0"]


def test_build_answer_session_level_direction() -> None:
    offer_lines = BASE_OFFER[:5] + ["a=recvonly"] + edit(BASE_OFFER, l10=None)[5:]
    assert "a=sendonly\r\n" in sdp.serialize(_answer(offer_lines))


# -- parser rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty SDP: expected v=0 (RFC 4566 §5)"),
        ("v=0\r\n", "SDP ends before the required o= line (RFC 4566 §5)"),
        ("o=- 1 1 IN IP4 x\r\n", f"line 1: expected v= but got o= ({ORDER})"),
        ("v=1\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\n", "line 1: v=1: only version 0 is defined (RFC 4566 §5.1)"),
        ("v = 0\r\n", "line 1: expected <type>=<value> with no space around '=' (RFC 4566 §5), got 'v = 0'"),
        ("V=0\r\n", "line 1: expected <type>=<value> with no space around '=' (RFC 4566 §5), got 'V=0'"),
        ("v=0\r\r\n", "line 1: stray CR or NUL inside the line (RFC 4566 §5)"),
        ("v=0\r\no=- 1 1 IN IP4\r\ns=-\r\nt=0 0\r\n", "line 2: o=: expected 6 fields, got 5 (RFC 4566 §5)"),
        ("v=0\r\no=- 1  1 IN IP4 x\r\n", "line 2: o=: fields must be separated by single spaces (RFC 4566 §5)"),
        ("v=0\r\no=- abc 1 IN IP4 x\r\ns=-\r\n", "line 2: o= sess-id: 'abc' is not a number (RFC 4566 §5)"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=\r\nt=0 0\r\n", "line 3: s= must not be empty; use s=- (RFC 4566 §5.3)"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nx=1\r\nt=0 0\r\n", "line 4: unknown type x= (RFC 4566 §5)"),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\n\r\nt=0 0\r\n",
            "line 4: empty line (RFC 4566 §5: every line is <type>=<value>)",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nc=IN IP4 x\r\n",
            f"line 5: c= is out of order or repeated ({ORDER})",
        ),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\ns=-\r\n", f"line 4: s= is not allowed here ({ORDER})"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\ni=a\r\ni=b\r\n", f"line 5: i= is out of order or repeated ({ORDER})"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\na=x\r\nt=0 0\r\n", f"line 4: a= before the required t= ({ORDER})"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nr=1 2 3\r\n", f"line 4: r= before the required t= ({ORDER})"),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n",
            "line 4: m= before any t= (RFC 4566 §5: one or more t= lines are required)",
        ),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\n", "no t= line (RFC 4566 §5: one or more time descriptions are required)"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0\r\n", "line 4: t=: expected 2 fields, got 1 (RFC 4566 §5)"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nc=IN IP4\r\n", "line 4: c=: expected 3 fields, got 2 (RFC 4566 §5)"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nb=AS\r\n", "line 4: b=AS: expected <bwtype>:<bandwidth> (RFC 4566 §5.8)"),
        ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nb=AS:x\r\n", "line 4: b=AS:x: 'x' is not a number (RFC 4566 §5)"),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\na=:x\r\n",
            "line 5: a=:x: attribute name '' is not a token (RFC 4566 §5.13)",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP\r\n",
            "line 5: m=audio 1 RTP/AVP: expected <media> <port> <proto> <fmt> ... (RFC 4566 §5.14)",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n",
            "line 5: m= port: 70000 is larger than 65535",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\na=x\r\nc=IN IP4 x\r\n",
            f"line 7: c= is out of order or repeated in a media description ({ORDER})",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\nu=http://x\r\n",
            f"line 6: u= is not allowed in a media description ({ORDER})",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\n\r\n",
            "line 5: empty line (RFC 4566 §5: every line is <type>=<value>)",
        ),
    ],
)
def test_parse_rejections(text: str, message: str) -> None:
    with pytest.raises(SdpError) as excinfo:
        sdp.parse(text)
    assert str(excinfo.value) == message


def test_parse_rejects_bad_utf8() -> None:
    with pytest.raises(SdpError, match=r"^SDP is not valid UTF-8 at byte 3 \(RFC 4566 §5\)$"):
        sdp.parse(b"v=0\xff\r\n")


def test_parse_accepts_missing_final_newline_and_space_session_name() -> None:
    sd = sdp.parse("v=0\r\no=- 1 1 IN IP4 x\r\ns= \r\nt=0 0")
    assert sd.session_name == " " and sd.media == []


# -- fingerprints (RFC 8122) --------------------------------------------------------------------------


def test_fingerprint_case_handling() -> None:
    lower = Fingerprint.parse("SHA-256 " + FP_HEX.lower().replace("ab", "a0"))
    assert lower.hash_function == "sha-256"
    assert str(lower) == "sha-256 " + ":".join(["A0"] * 32)
    assert Fingerprint.parse(str(lower)) == lower
    assert Fingerprint.parse("Sha-1 4a:ad:b9:b1:3f:82:18:3b:54:02:12:df:3e:5d:49:6b:19:e5:7c:ab") == SHA1_OFFER


def test_fingerprint_unknown_hash_any_length() -> None:
    fp = Fingerprint.parse("sha3-256 01:02")
    assert fp == Fingerprint("sha3-256", b"\x01\x02") and not fp.supported and not fp.matches(ALICE_DER)


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "empty fingerprint: expected '<hash-func> SP <hex bytes>' (RFC 8122 §5)"),
        (" sha-1 AB", "fingerprint starts with whitespace: expected '<hash-func> SP <hex bytes>' (RFC 8122 §5)"),
        ("sha-256", "no space after the hash function: expected '<hash-func> SP <hex bytes>' (RFC 8122 §5)"),
        ("sh@ AB", "hash function 'sh@' is not a token (RFC 8122 §5)"),
        ("sha-256 A:BC", "'A:BC' is not colon-separated pairs of hex digits (RFC 8122 §5)"),
        ("sha-256 AB:", "'AB:' is not colon-separated pairs of hex digits (RFC 8122 §5)"),
        ("sha-256  AB", "' AB' is not colon-separated pairs of hex digits (RFC 8122 §5)"),
        ("sha-256 AB:GG", "'AB:GG' is not colon-separated pairs of hex digits (RFC 8122 §5)"),
        ("sha-1 AB:CD", "sha-1 fingerprint has 2 bytes, expected 20 (RFC 8122 §5)"),
    ],
)
def test_fingerprint_parse_errors(value: str, message: str) -> None:
    with pytest.raises(SdpError) as excinfo:
        Fingerprint.parse(value)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    "name, algorithm",
    [
        ("sha-1", hashes.SHA1()),
        ("sha-256", hashes.SHA256()),
        ("sha-384", hashes.SHA384()),
        ("SHA-512", hashes.SHA512()),
    ],
)
def test_certificate_fingerprint_matches_cryptography(name: str, algorithm: hashes.HashAlgorithm) -> None:
    certificate = x509.load_der_x509_certificate(ALICE_DER)
    fp = sdp.certificate_fingerprint(ALICE_DER, name)
    assert fp.hash_function == name.lower()
    assert fp.value == certificate.fingerprint(algorithm)
    assert fp.matches(ALICE_DER) and not fp.matches(BOB_DER)


def test_certificate_fingerprint_sha256_golden() -> None:
    """Same value as `openssl x509 -inform der -in alice-cert.der -noout -fingerprint -sha256`."""
    assert str(fp256(ALICE_DER)) == (
        "sha-256 C8:8F:94:50:A0:93:E3:37:79:B9:39:F6:3D:05:49:77:FC:06:44:E7:C8:3F:4E:F7:98:61:D8:6A:93:E4:0F:A2"
    )


def test_certificate_fingerprint_errors() -> None:
    with pytest.raises(SdpError, match=r"^md5 must not be used for certificate fingerprints \(RFC 8122 §5\)$"):
        sdp.certificate_fingerprint(ALICE_DER, "MD5")
    with pytest.raises(
        SdpError, match=r"^unsupported hash function 'sha-224' \(supported: sha-512, sha-384, sha-256, sha-1\)$"
    ):
        sdp.certificate_fingerprint(ALICE_DER, "sha-224")


def test_md5_fingerprint_never_matches() -> None:
    import hashlib

    assert not Fingerprint("md5", hashlib.md5(ALICE_DER).digest()).matches(ALICE_DER)


def test_select_fingerprints() -> None:
    sha1 = sdp.certificate_fingerprint(ALICE_DER, "sha-1")
    a256, b256 = fp256(ALICE_DER), fp256(BOB_DER)
    sha512 = sdp.certificate_fingerprint(BOB_DER, "sha-512")
    unknown = Fingerprint("sha3-512", b"\x00")
    assert sdp.select_fingerprints([sha1, a256, unknown, b256]) == [a256, b256]
    assert sdp.select_fingerprints([a256, sha512, sha1]) == [sha512]
    assert sdp.select_fingerprints([sha1]) == [sha1]
    assert sdp.select_fingerprints([unknown]) == []
    assert sdp.select_fingerprints([]) == []
    assert sdp.select_fingerprints(iter([a256])) == [a256]


def test_setup_values() -> None:
    assert [s.value for s in Setup] == ["active", "passive", "actpass", "holdconn"]
    assert Setup("actpass") is Setup.ACTPASS and isinstance(Setup.ACTIVE, str) and Setup.ACTIVE.value == "active"


# -- found by fuzzing (python -m fuzz --target sdp): each raised ValueError, not SdpError, before ----------

HUGE_T_STOP = (  # t= stop of 70,001 digits: more than int() converts
    b"v=0\r\no=- 6418913922105372816 2105372818 IN IP4 ua2.example.com\r\ns=example2\r\nc=IN IP4 ua2.example.com\r\n"
    b"t=0 0" + b"9" * 70000 + b"\r\na=setup:active\r\n"
    b"a=fingerprint:sha-1 FF:FF:FF:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB\r\n"
    b"m=audio 12000 UDP/TLS/RTP/SAVP 0\r\na=acfg:1 t=1\r\n"
)
SUPERSCRIPT_PCFG = (  # "1²" passes str.isdigit(), not int()
    b"v=0\r\no=- 1181923068 1181923196 IN IP4 ua1.example.com\r\ns=example1\r\nc=IN IP4 ua1.example.com\r\nt=0 0\r\n"
    b"a=setup:actpass\r\na=fingerprint:sha-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB\r\n"
    b"m=audio 6056 RTP/AVP 0\r\na=sendrecv\r\na=tcap:1 UDP/TLS/RTP/SAVP RTP/AVP\r\na=pcfg:1 t=1\xc2\xb2\r\n"
)
HUGE_RTCP_PORT = (  # a=rtcp port of 70,005 digits
    b"v=0\r\no=alice 1796636604 1796636604 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n"
    b"m=audio 45645 UDP/TLS/RTP/SAVP 0\r\na=setup:actpass\r\na=fingerprint:sha-256 75:83:7D:38:1F:11:AB:97:3C:52:77:1A:"
    b"95:DA:CA:AC:62:43:E8:5F:A1:74:F7:B9:A7:B9:4C:67:7F:47:9A:B2\r\na=rtcp-mux\r\n"
    b"a=rtcp:54" + b"9" * 70000 + b"052\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
)


def test_a_number_too_long_for_int_is_an_sdp_error() -> None:
    message = "line 5: t= stop: a number of 70001 digits is too long"
    assert sdp.facts(HUGE_T_STOP).error == message
    with pytest.raises(SdpError) as excinfo:
        sdp.parse(HUGE_T_STOP)
    assert str(excinfo.value) == message


def test_a_unicode_digit_in_capneg_is_not_a_number() -> None:
    assert sdp.facts(SUPERSCRIPT_PCFG).capneg is False
    with pytest.raises(SdpError) as excinfo:
        sdp.read_offer(sdp.parse(SUPERSCRIPT_PCFG))
    assert str(excinfo.value) == "line 11: a=pcfg t=1²: '1²' is not a number (RFC 5939 §3.5.1)"


@pytest.mark.parametrize("value", ["1²", "١", "9" * 5000])
@pytest.mark.parametrize(
    "extra", [("a=tcap:{} UDP/TLS/RTP/SAVP", "a=pcfg:1 t=1"), ("a=tcap:1 UDP/TLS/RTP/SAVP", "a=pcfg:{} t=1")]
)
def test_capneg_numbers_are_ascii_digits_int_converts(extra: tuple[str, ...], value: str) -> None:
    with pytest.raises(SdpError, match=r"^line (9|10): a=(tcap|pcfg):"):
        offer_of(capneg_offer(*(line.format(value) for line in extra)))


def test_an_rtcp_port_too_long_for_int_is_an_sdp_error() -> None:
    with pytest.raises(SdpError) as excinfo:
        sdp.read_offer(sdp.parse(HUGE_RTCP_PORT))
    assert str(excinfo.value).startswith("line 10: a=rtcp:54999") and str(excinfo.value).endswith(
        "052: expected '<port> [<nettype> <addrtype> <address>]' (RFC 3605 §2.1)"
    )
