"""SDP for RTCP without rtcp-mux (RFC 5761 §5.1.1, RFC 3605 a=rtcp) and for re-offers (RFC 3264 §8)."""

from __future__ import annotations

import pytest

from pinhole import dtls, sdp
from pinhole.sdp import Setup

FP = sdp.Fingerprint("sha-256", bytes(range(32)))


def offer(**kwargs) -> sdp.SessionDescription:
    defaults = {"address": "203.0.113.10", "port": 40000, "fingerprints": [FP], "session_id": 7}
    return sdp.build_offer(**{**defaults, **kwargs})


def attributes(sd: sdp.SessionDescription) -> list[tuple[str, str | None]]:
    return sd.media[0].attributes


def test_offer_without_rtcp_mux_names_the_rtcp_port():
    built = offer(rtcp_mux=False, rtcp=("203.0.113.10", 40007))
    assert ("rtcp-mux", None) not in attributes(built)
    assert ("rtcp", "40007") in attributes(built)  # same address as c=: the port alone (RFC 3605 §2.1)
    read = sdp.read_offer(sdp.parse(sdp.serialize(built)))
    assert not read.rtcp_mux and read.rtcp_port == 40007 and read.rtcp_address == ""
    assert read.rtcp_fallback_port is None
    assert read.rtcp_target(False) == ("203.0.113.10", 40007)


def test_rtcp_on_another_address_is_spelled_out():
    built = offer(rtcp_mux=False, rtcp=("203.0.113.99", 5001))
    assert ("rtcp", "5001 IN IP4 203.0.113.99") in attributes(built)
    read = sdp.read_offer(sdp.parse(sdp.serialize(built)))
    assert read.rtcp_target(False) == ("203.0.113.99", 5001)


def test_offer_with_rtcp_mux_and_a_fallback_port():
    """RFC 5761 §5.1.1 (and §5.1.3 for ICE): a=rtcp says where RTCP goes if the answer declines rtcp-mux."""
    built = offer(rtcp=("203.0.113.10", 40101))
    names = [name for name, _ in attributes(built)]
    assert names.index("rtcp-mux") < names.index("rtcp")
    read = sdp.read_offer(sdp.parse(sdp.serialize(built)))
    assert read.rtcp_mux and read.rtcp_port == 40000  # with rtcp-mux RTCP shares the RTP port
    assert read.rtcp_fallback_port == 40101
    assert read.rtcp_target(True) == ("203.0.113.10", 40000)  # the answer accepted rtcp-mux
    assert read.rtcp_target(False) == ("203.0.113.10", 40101)  # the answer declined it


def test_declined_rtcp_mux_without_a_fallback_means_the_port_pair():
    read = sdp.read_offer(sdp.parse(sdp.serialize(offer())))
    assert read.rtcp_mux and read.rtcp_fallback_port is None
    assert read.rtcp_target(False) == ("203.0.113.10", 40001)  # "the usual port-selection rules"


def test_answer_declining_rtcp_mux_carries_its_rtcp_port():
    answer = sdp.build_answer(
        offer(rtcp=("203.0.113.10", 40101)),
        address="198.51.100.20",
        port=50000,
        fingerprints=[FP],
        session_id=1,
        rtcp_mux=False,
        rtcp=("198.51.100.20", 50002),
    )
    assert ("rtcp-mux", None) not in attributes(answer) and ("rtcp", "50002") in attributes(answer)
    read = sdp.read_answer(sdp.parse(sdp.serialize(answer)), sdp.read_offer(offer(rtcp=("203.0.113.10", 40101))))
    assert not read.rtcp_mux and read.rtcp_target(False) == ("198.51.100.20", 50002)


def test_answer_accepting_rtcp_mux_leaves_a_rtcp_out():
    answer = sdp.build_answer(
        offer(), address="198.51.100.20", port=50000, fingerprints=[FP], session_id=1, rtcp=("198.51.100.20", 50002)
    )
    names = [name for name, _ in attributes(answer)]
    assert "rtcp-mux" in names and "rtcp" not in names


def test_answer_to_an_offer_without_rtcp_mux_never_multiplexes():
    no_mux = offer(rtcp_mux=False, rtcp=("203.0.113.10", 40001))
    answer = sdp.build_answer(
        no_mux, address="198.51.100.20", port=50000, fingerprints=[FP], session_id=1, rtcp=("198.51.100.20", 50001)
    )
    assert not sdp.read_answer(sdp.parse(sdp.serialize(answer)), sdp.read_offer(no_mux)).rtcp_mux


@pytest.mark.parametrize(
    "value",
    ["", "x", "70000", "5000 IN", "5000 IN IP4", "5000 OUT IP4 1.2.3.4", "5000 IN IPX 1.2.3.4", "5000 IN IP4 1 2"],
)
def test_bad_a_rtcp_is_refused_naming_rfc_3605(value):
    text = sdp.serialize(offer(rtcp_mux=False)).replace("a=rtpmap", f"a=rtcp:{value}\r\na=rtpmap", 1)
    with pytest.raises(sdp.SdpError, match="RFC 3605"):
        sdp.read_offer(sdp.parse(text))


def test_re_offer_keeps_the_session_id_and_bumps_the_version():
    first = offer(session_id=100, session_version=100)
    second = offer(session_id=100, session_version=101, setup=Setup.PASSIVE)
    assert (second.session_id, second.session_version) == (first.session_id, first.session_version + 1)
    read = sdp.read_offer(sdp.parse(sdp.serialize(second)))
    assert read.setup is Setup.PASSIVE and read.warnings  # active/passive in an offer: 5763 says actpass (8842)


def test_client_hello_random_tells_a_new_handshake_from_a_retransmission():
    certificate = dtls.Certificate.generate("t")
    first = dtls.DtlsEndpoint(dtls.Role.CLIENT, certificate).start(0.0)
    again = dtls.DtlsEndpoint(dtls.Role.CLIENT, certificate).start(0.0)
    random = dtls.client_hello_random(first[0])
    assert random is not None and len(random) == 32
    assert dtls.client_hello_random(again[0]) != random
    assert dtls.client_hello_random(b"\x16\xfe\xfd") is None  # truncated: not readable, no exception
    assert dtls.client_hello_random(b"\x17" + first[0][1:]) is None  # not a handshake record
