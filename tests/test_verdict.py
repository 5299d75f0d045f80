"""The verdict as a pure function of the wire: saved captures of real runs (tests/data/runs), edited.

Every check is shown failing on a capture edited to hold the deviation it exists to catch: a check that
no input can fail would be a defect. The edits work on the capture itself (a datagram removed, a SIP
body or a STUN message rewritten on every link it crossed, SRTP re-protected with the wrong keys), so
what is tested is what the verdict reads in a real run.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from pinhole import dtls, keylog, pcapng, stun, wire
from pinhole.controller.verdict import FIGURE, RFC, evidence_of, judge, messages
from pinhole.pcap import decode_udp
from pinhole.sip.message import Request, Response, parse_message

RUNS = Path(__file__).parent / "data" / "runs"


def load(name: str) -> tuple[pcapng.Capture, list[dict]]:
    return pcapng.read_pcapng(RUNS / name / "capture.pcapng"), json.loads((RUNS / name / "reports.json").read_text())


def verdict_of(capture: pcapng.Capture, reports: list[dict] | None = None, **kwargs):
    return judge(wire.decode(capture), reports=reports, **kwargs)


def failing(capture: pcapng.Capture, reports: list[dict] | None = None, **kwargs) -> dict[str, str]:
    return {c.message: c.detail for c in verdict_of(capture, reports, **kwargs).checks if not c.passed}


# --------------------------------------------------------------------------- editing a capture


def reframe(frame: bytes, payload: bytes | None = None, src: tuple | None = None, dst: tuple | None = None) -> bytes:
    """The Ethernet frame with another UDP payload or addresses (lengths recomputed; checksums are not read)."""
    udp = decode_udp(frame)
    assert udp is not None
    payload = udp.payload if payload is None else payload
    (sip, sport), (dip, dport) = src or udp.src, dst or udp.dst
    ip = bytes(frame[14:34])
    header = bytearray(ip)
    struct.pack_into("!H", header, 2, 28 + len(payload))
    header[12:16] = bytes(map(int, sip.split(".")))
    header[16:20] = bytes(map(int, dip.split(".")))
    return frame[:14] + bytes(header) + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def edit(capture: pcapng.Capture, change: Callable[[bytes, tuple, tuple], bytes | None]) -> pcapng.Capture:
    """`change(payload, src, dst)` -> a new payload, None to drop the frame, or the same payload to keep it."""
    packets = []
    for p in capture.packets:
        udp = decode_udp(p.data)
        if udp is None:
            packets.append(p)
            continue
        new = change(udp.payload, udp.src, udp.dst)
        if new is None:
            continue
        data = p.data if new == udp.payload else reframe(p.data, new)
        packets.append(pcapng.Packet(p.interface, p.t, data, len(data), p.direction))
    return pcapng.Capture(capture.comments, capture.interfaces, packets, capture.statistics, capture.secrets)


def sip_edit(match: Callable[[Request | Response], bool], rewrite: Callable[[Request | Response], None]):
    """A change() that rewrites every SIP message `match` picks (on every link it crossed)."""

    def change(payload: bytes, src: tuple, dst: tuple) -> bytes | None:
        if not payload[:1].isalpha():
            return payload
        message = parse_message(payload)
        if not match(message):
            return payload
        rewrite(message)
        return message.encode()

    return change


def is_invite(m: Request | Response) -> bool:
    return isinstance(m, Request) and m.method == "INVITE"


def is_ok(m: Request | Response) -> bool:
    return isinstance(m, Response) and m.status_code == 200 and m.cseq.method == "INVITE"


def body_replace(old: bytes, new: bytes) -> Callable[[Request | Response], None]:
    def rewrite(m: Request | Response) -> None:
        assert old in m.body, m.body
        m.body = m.body.replace(old, new)

    return rewrite


# --------------------------------------------------------------------------- the saved runs


def test_saved_section_7_3_run_passes_every_message_from_the_wire():
    capture, reports = load("rfc5763-7.3")
    result = verdict_of(capture, reports)
    assert result.passed, result.render()
    assert [c.message for c in result.checks] == list(messages())
    assert all(c.rfc.startswith("RFC") for c in result.checks)
    details = {c.message: c.detail for c in result.checks}
    assert "seen on bob:eth0, natgw:wan0, not inside the NAT" in details["3"]
    assert "each authenticated with the client_write keys" in details["10"]
    assert "decrypted with the key log" in details["11a"]
    # the capture alone gives the same outcome, check by check: the trace adds words, never a decision
    alone = verdict_of(capture)
    assert [(c.message, c.passed) for c in alone.checks] == [(c.message, c.passed) for c in result.checks]


def test_without_stun_check_the_call_fails_at_message_5_and_what_follows():
    capture, reports = load("no-stun-check")
    failures = failing(capture, reports)
    assert set(failures) == {"5", "6", "7", "8", "9", "10", "11a", "11b"}
    assert "sent no STUN check" in failures["5"]
    assert "none past natgw:wan0" in failures["7"]


def test_a_lying_answer_fails_message_4_and_alice_tearing_down_passes_message_9():
    capture, reports = load("bad-fingerprint")
    result = verdict_of(capture, reports)
    failures = {c.message: c for c in result.checks if not c.passed}
    assert set(failures) == {"4", "10", "11a", "11b"}
    assert "matches no a=fingerprint of the answer" in failures["4"].detail and failures["4"].kind == RFC
    nine = next(c for c in result.checks if c.message == "9")
    assert nine.passed and "tore the session down" in nine.detail and "fatal alert" in nine.detail


def test_every_check_says_which_evidence_it_reads():
    assert set(evidence_of().values()) == {"wire"}
    assert evidence_of("rfc5763-7.1")["6"] == "wire + self-reported"


def test_a_capture_that_lost_frames_makes_the_run_broken():
    capture, _ = load("rfc5763-7.3")
    capture.statistics = [pcapng.InterfaceStatistics(1, 400, 3)]
    result = verdict_of(capture)
    assert result.outcome == "broken" and "natgw:wan0 lost 3 frame(s)" in result.broken


def test_no_call_on_the_wire_is_broken_not_a_failure():
    capture, _ = load("rfc5763-7.3")
    result = verdict_of(edit(capture, lambda p, s, d: None if p[:1].isalpha() else p))
    assert result.outcome == "broken" and "no call on the wire" in result.broken


def test_a_caller_that_gave_up_before_its_invite_fails_message_1_not_broken():
    """Under loss every STUN request of Alice's can be lost before she could write her offer: the call was
    tried and failed (her word, since nothing of the call is on the wire), the lab did its part."""
    capture, reports = load("rfc5763-7.3")
    call_id = wire.decode(capture).info.get("call_id")
    gave_up = {"service": "alice", "kind": "call.failed", "call_id": call_id, "t": 1.0, "attrs": {}}
    gave_up["attrs"]["reason"] = "could not prepare the call: STUN Binding to 203.0.113.30:3478 timed out"
    no_sip = edit(capture, lambda p, s, d: None if p[:1].isalpha() else p)
    result = verdict_of(no_sip, [gave_up])
    assert result.outcome == "fail" and not result.broken
    (check,) = result.checks
    assert (check.message, check.evidence) == ("1", "wire + self-reported")
    assert "alice gave up before sending it (self-reported: could not prepare the call" in check.detail
    assert verdict_of(no_sip, [{**gave_up, "service": "bob"}]).outcome == "broken"  # the caller's word only


# --------------------------------------------------------------------------- each check fails


def test_message_1_an_offer_with_a_connection_or_setup_active_fails():
    capture, _ = load("rfc5763-7.3")
    with_connection = edit(
        capture, sip_edit(is_invite, body_replace(b"a=setup:actpass\r\n", b"a=setup:actpass\r\na=connection:new\r\n"))
    )
    assert "a=connection:new (media level) (RFC 5763 §5: MUST NOT)" in failing(with_connection)["1"]
    active = edit(capture, sip_edit(is_invite, body_replace(b"a=setup:actpass", b"a=setup:active")))
    assert "not actpass (RFC 5763 §5" in failing(active)["1"]


def test_message_1_an_offer_fingerprint_that_is_not_alices_certificate_fails():
    capture, _ = load("rfc5763-7.3")
    lie = edit(capture, sip_edit(is_invite, lambda m: setattr(m, "body", _other_fingerprint(m.body))))
    failures = failing(lie)
    assert "the certificate alice presented on the wire" in failures["1"]
    assert "bob accepted alice's certificate" in failures["11a"], "Bob went on although it did not match"


def _other_fingerprint(body: bytes) -> bytes:
    lines = body.split(b"\r\n")
    return b"\r\n".join(
        b"a=fingerprint:sha-256 " + b":".join([b"AB"] * 32) if line.startswith(b"a=fingerprint:") else line
        for line in lines
    )


def test_message_2_a_proxy_that_keeps_max_forwards_or_changes_the_body_fails():
    capture, _ = load("rfc5763-7.3")
    keep = edit(
        capture,
        sip_edit(lambda m: is_invite(m) and m.max_forwards == 68, lambda m: m.headers.set("Max-Forwards", "69")),
    )
    assert "proxy-b forwarded Max-Forwards 69 of 69 (RFC 3261 §16.6 step 3" in failing(keep)["2"]
    rewritten = edit(capture, sip_edit(lambda m: is_invite(m) and m.max_forwards == 68, body_replace(b"s=-", b"s=x")))
    assert "proxy-b changed the SDP body" in failing(rewritten)["2"]


def test_message_2_a_proxy_that_does_not_record_route_fails_the_figure_only():
    capture, _ = load("rfc5763-7.3")
    no_rr = edit(
        capture,
        sip_edit(lambda m: is_invite(m) and m.max_forwards == 68, lambda m: m.headers.remove_first("Record-Route")),
    )
    result = verdict_of(no_rr)
    two = next(c for c in result.checks if c.message == "2")
    assert not two.passed and two.kind == FIGURE and "1 Record-Route entries for 2 proxies" in two.detail


def test_message_3_and_7_a_call_without_a_nat_is_not_the_section_7_3_flow():
    capture, reports = load("rfc5763-7.1-early-media")
    result = verdict_of(capture, reports, flow="rfc5763-7.3")
    failures = {c.message: c for c in result.checks if not c.passed}
    assert {"3", "7"} <= set(failures)
    assert failures["3"].kind == FIGURE and "nothing dropped it" in failures["3"].detail


def test_message_4_an_answer_with_actpass_or_a_connection_fails_and_passive_fails_the_figure():
    capture, _ = load("rfc5763-7.3")
    actpass = edit(capture, sip_edit(is_ok, body_replace(b"a=setup:active", b"a=setup:actpass")))
    assert "a=setup:actpass in the answer (RFC 5763 §5" in failing(actpass)["4"]
    connection = edit(
        capture, sip_edit(is_ok, body_replace(b"a=setup:active\r\n", b"a=setup:active\r\na=connection:new\r\n"))
    )
    assert "a=connection:new" in failing(connection)["4"]
    passive = verdict_of(edit(capture, sip_edit(is_ok, body_replace(b"a=setup:active", b"a=setup:passive"))))
    four = next(c for c in passive.checks if c.message == "4")
    assert not four.passed and four.kind == FIGURE and "§7.3 has Bob active" in four.detail


def test_messages_4_and_9_alice_accepting_a_lying_answer_fails_both():
    """The answer's fingerprint is not Bob's certificate (his fault, 4), and Alice goes on (hers, 9)."""
    capture, _ = load("rfc5763-7.3")
    lie = edit(capture, sip_edit(is_ok, lambda m: setattr(m, "body", _other_fingerprint(m.body))))
    failures = failing(lie)
    assert set(failures) == {"4", "9"}
    assert "alice accepted bob's certificate" in failures["9"] and "tear the media session down" in failures["9"]


def _stun_edit(rewrite: Callable[[stun.Message], stun.Message | None], klass: stun.MessageClass):
    def change(payload: bytes, src: tuple, dst: tuple) -> bytes | None:
        if not payload or payload[0] > 3 or dst[1] == 3478 or src[1] == 3478:
            return payload
        message = stun.decode(payload)
        if message.message_class != klass:
            return payload
        new = rewrite(message)
        return None if new is None else stun.encode(new)

    return change


def test_message_5_an_authenticated_check_fails():
    capture, _ = load("rfc5763-7.3")

    def authenticate(m: stun.Message) -> stun.Message:
        return stun.Message(
            m.method, m.message_class, m.transaction_id, [*m.attributes, (stun.AttributeType.USERNAME, b"bob:alice")]
        )

    failures = failing(edit(capture, _stun_edit(authenticate, stun.MessageClass.REQUEST)))
    assert set(failures) == {"5"} and "USERNAME/MESSAGE-INTEGRITY" in failures["5"]


def test_message_6_bob_not_answering_the_check_fails_message_6_only():
    capture, _ = load("rfc5763-7.3")
    failures = failing(edit(capture, _stun_edit(lambda m: None, stun.MessageClass.SUCCESS_RESPONSE)))
    assert set(failures) == {"6"}
    assert "did not answer transaction" in failures["6"] and "RFC 5763 §6.7.2" in failures["6"]


def test_message_6_a_wrong_xor_mapped_address_fails():
    capture, _ = load("rfc5763-7.3")

    def lie(m: stun.Message) -> stun.Message:
        return stun.binding_success(stun.binding_request(m.transaction_id), ("192.0.2.9", 1))

    assert "is not the source" in failing(edit(capture, _stun_edit(lie, stun.MessageClass.SUCCESS_RESPONSE)))["6"]


def _hellos(capture: pcapng.Capture) -> list[bytes]:
    """Bob's ClientHello payloads, each once, in order."""
    out: list[bytes] = []
    for p in capture.packets:
        udp = decode_udp(p.data)
        if udp and udp.payload[:1] == b"\x16" and dtls.client_hello_random(udp.payload) and udp.payload not in out:
            out.append(udp.payload)
    return out


def test_message_7_a_retransmission_sent_on_the_check_is_not_timer_driven():
    capture, _ = load("rfc5763-7.3")
    first, second = _hellos(capture)[:2]
    t0 = min(p.t for p in capture.packets if decode_udp(p.data) and decode_udp(p.data).payload == first)
    t1 = min(p.t for p in capture.packets if decode_udp(p.data) and decode_udp(p.data).payload == second)
    early = [  # the retransmission moved to 20 ms after the first ClientHello: what resending on the check looks like
        pcapng.Packet(
            p.interface,
            p.t - (t1 - t0) + 0.02 if decode_udp(p.data) and decode_udp(p.data).payload == second else p.t,
            p.data,
            p.original_length,
            p.direction,
        )
        for p in capture.packets
    ]
    capture.packets = sorted(early, key=lambda p: p.t)
    assert "sooner than the 0.1s timer allows" in failing(capture)["7"]


def test_message_7_a_byte_identical_retransmission_fails():
    capture, _ = load("rfc5763-7.3")
    first, second = _hellos(capture)[:2]
    same = second[:5] + first[5:11] + second[11:]  # the first one's record sequence number
    failures = failing(edit(capture, lambda p, s, d: same if p == second else p))
    assert "reuse record sequence number" in failures["7"] and "RFC 6347 §4.2.2" in failures["7"]


def test_message_8_a_profile_bob_did_not_offer_fails():
    capture, _ = load("rfc5763-7.3")

    def other_profile(payload: bytes, src: tuple, dst: tuple) -> bytes:
        marker = b"\x00\x0e\x00\x05\x00\x02\x00\x07\x00"  # use_srtp: one profile, SRTP_AEAD_AES_128_GCM
        return payload.replace(marker, b"\x00\x0e\x00\x05\x00\x02\x00\x05\x00") if payload[:1] == b"\x16" else payload

    assert "which the ClientHello did not offer" in failing(edit(capture, other_profile))["8"]


def _keys(capture: pcapng.Capture) -> wire.Association:
    return wire.decode(capture).call().associations[0]


def test_messages_10_and_11b_srtp_under_swapped_keys_fails():
    capture, _ = load("rfc5763-7.3")
    association = _keys(capture)
    client, server = association.srtp_keys
    bob = association.client
    right, wrong = client.session(), dtls_session(server)
    reprotected = {}
    for d in association.srtp_from(bob):
        reprotected[d.payload] = wrong.protect(right.unprotect(d.payload))
    failures = failing(edit(capture, lambda p, s, d: reprotected.get(p, p)))
    assert set(failures) == {"10"}
    assert "authenticate with the other side's keys: swapped" in failures["10"]


def dtls_session(direction: keylog.SrtpDirection):
    from pinhole import srtp

    return srtp.SrtpSession(
        srtp.SrtpKeys(direction.profile, direction.key, direction.salt, direction.key, direction.salt)
    )


def test_message_11a_a_missing_finished_fails():
    capture, _ = load("rfc5763-7.3")
    association = _keys(capture)
    finished = association.finished(association.server)[0].payload
    failures = failing(edit(capture, lambda p, s, d: None if p == finished else p))
    assert "no Finished from alice" in failures["11a"]


def test_message_12_an_ack_that_bypasses_a_record_routing_proxy_fails():
    capture, _ = load("rfc5763-7.3")

    def bypass(payload: bytes, src: tuple, dst: tuple) -> bytes | None:
        if payload.startswith(b"ACK ") and src[0] == "203.0.113.20":
            return None  # proxy-b never forwarded it
        return payload

    edited = edit(capture, bypass)
    packets = []
    for p in edited.packets:  # proxy-a sends it straight to Bob instead
        udp = decode_udp(p.data)
        if udp and udp.payload.startswith(b"ACK ") and udp.src[0] == "203.0.113.10":
            if edited.interfaces[p.interface].name == "proxy-b:eth0":
                continue
            p = pcapng.Packet(
                p.interface, p.t, reframe(p.data, dst=("203.0.113.40", 5060)), p.original_length, p.direction
            )
            if edited.interfaces[p.interface].name == "proxy-a:eth0":
                packets.append(pcapng.Packet(5, p.t + 0.0001, p.data, p.original_length, pcapng.DIRECTION_INBOUND))
        packets.append(p)
    edited.packets = sorted(packets, key=lambda p: p.t)
    failures = failing(edited)
    assert set(failures) == {"12"} and "bypassing proxy-b" in failures["12"]


def test_a_strangers_client_hello_is_reported_and_not_blamed_on_bob():
    capture, reports = load("rfc5763-7.3")
    hello = _hellos(capture)[0]
    alice = next(d for d in wire.decode(capture).call().associations)
    stranger = pcapng.Packet(
        1,
        capture.packets[0].t + 0.01,
        reframe(
            next(p.data for p in capture.packets if decode_udp(p.data) and decode_udp(p.data).payload == hello),
            hello[:20] + bytes(32) + hello[52:],
            src=("203.0.113.99", 4444),
            dst=("203.0.113.1", alice.server[1]),
        ),
        0,
        pcapng.DIRECTION_INBOUND,
    )
    capture.packets = sorted([*capture.packets, stranger], key=lambda p: p.t)
    result = verdict_of(capture, reports)
    assert result.passed, result.render()
    assert any("203.0.113.99:4444, no party of the call" in n for n in result.notes)


# --------------------------------------------------------------------------- §7.1


def test_saved_section_7_1_run_passes_every_message_of_its_own_figure():
    capture, reports = load("rfc5763-7.1-early-media")
    result = verdict_of(capture, reports)
    assert (result.flow, result.passed) == ("rfc5763-7.1", True), result.render()
    assert [c.message for c in result.checks] == [*(str(n) for n in range(1, 12)), "e2e"]  # and RFC 5763 §8
    six = result.checks[5]
    assert "self-reported: held" in six.detail and "reached alice before his answer" in six.detail
    assert [c.passed for c in verdict_of(capture).checks] == [c.passed for c in result.checks]


def test_section_7_1_early_media_played_before_verification_fails_message_6_on_the_services_word():
    capture, reports = load("rfc5763-7.1-early-media")
    answer = next(
        e
        for e in reports
        if e["service"] == "alice" and e["kind"] == "sip.recv" and e["attrs"].get("sip.status_code") == "200"
    )
    played = [dict(e) for e in reports if not (e["service"] == "alice" and e["kind"] in ("srtp.held", "srtp.released"))]
    for e in played:
        if e["service"] == "alice" and e["kind"] == "srtp.first_received":
            e["t"] = answer["t"] - 0.1
    failures = failing(capture, played)
    assert set(failures) == {"6"} and failures["6"].startswith("self-reported: alice decrypted bob's SRTP")


def test_section_7_3_run_is_not_a_section_7_1_flow():
    capture, reports = load("rfc5763-7.3")
    failures = failing(capture, reports, flow="rfc5763-7.1")
    assert "never reached alice" in failures["3"]
    assert "after the answer reached her" in failures["7"]


def test_unknown_flow_is_refused():
    capture, _ = load("rfc5763-7.3")
    with pytest.raises(ValueError, match="no checks for flow 'rfc5763-7.2'"):
        verdict_of(capture, flow="rfc5763-7.2")


# --------------------------------------------------------------------------- a cluster's partial capture


def test_only_the_nats_links_captured_judges_the_rest_on_the_services_word_and_says_so():
    capture, reports = load("rfc5763-7.3")
    keep = [i for i, interface in enumerate(capture.interfaces) if interface.name.startswith("natgw:")]
    index = {old: new for new, old in enumerate(keep)}
    capture.packets = [
        pcapng.Packet(index[p.interface], p.t, p.data, p.original_length, p.direction)
        for p in capture.packets
        if p.interface in index
    ]
    capture.interfaces = [capture.interfaces[i] for i in keep]
    result = verdict_of(capture, reports)
    assert result.passed, result.render()
    two = next(c for c in result.checks if c.message == "2")
    assert "self-reported past the captured links: proxy-b, bob" in two.detail


@pytest.mark.parametrize(
    ("run", "works", "reason"),
    [
        ("rfc5763-7.3", True, "DTLS (bob active); SRTP both ways on the wire (50 bob -> alice, 50 alice -> bob)"),
        ("rfc5763-7.1-early-media", True, "DTLS (bob active); SRTP both ways on the wire"),
        ("no-stun-check", False, "DTLS never completed: no Finished from bob and alice"),
        ("bad-fingerprint", False, "bob's certificate on the wire matches no a=fingerprint of the answer"),
    ],
)
def test_the_outcome_on_the_wire_is_the_outcome_these_runs_had(run, works, reason):
    """outcome_on_wire (what a call with an external party is judged by) on saved runs whose outcome pinhole's
    agents reported when they ran: two worked, two failed, each for the reason the wire shows."""
    from pinhole.controller.outcome import outcome_on_wire
    from pinhole.controller.saved import load_wire

    on_the_wire = load_wire(RUNS / run)
    outcome = outcome_on_wire(on_the_wire, on_the_wire.info.get("call_id"))
    assert (outcome.works, outcome.reason.startswith(reason)) == (works, True), outcome.reason


# --------------------------------------------------------------------------- e2e (RFC 5763 §8)


def rewritten_at_proxy_b(new_fingerprint: Callable[[bytes], bytes]):
    """A change() making proxy-b forward the INVITE with its a=fingerprint line rewritten (what Bob got)."""

    def change(payload: bytes, src: tuple, dst: tuple) -> bytes | None:
        if not payload.startswith(b"INVITE ") or src[0] != "203.0.113.20":
            return payload
        message = parse_message(payload)
        lines = message.body.split(b"\r\n")
        message.body = b"\r\n".join(new_fingerprint(x) if x.startswith(b"a=fingerprint:") else x for x in lines)
        return message.encode()

    return change


def test_e2e_names_the_node_that_rewrote_the_offers_fingerprint():
    capture, reports = load("rfc5763-7.3")
    other = b"a=fingerprint:sha-256 " + b":".join(b"AB" for _ in range(32))
    result = verdict_of(edit(capture, rewritten_at_proxy_b(lambda line: other)), reports)
    detail = {c.message: c.detail for c in result.checks if not c.passed}["e2e"]
    assert detail.startswith("a man in the middle: the offer's a=fingerprint") and "rewritten by proxy-b" in detail


def test_e2e_reads_the_fingerprint_values_not_how_they_are_written():
    """A proxy that only lower-cases the hex changed the body (check 2 says so), not the fingerprint."""
    capture, reports = load("rfc5763-7.3")
    result = verdict_of(edit(capture, rewritten_at_proxy_b(lambda line: line[:22] + line[22:].lower())), reports)
    failed = {c.message for c in result.checks if not c.passed}
    assert "2" in failed and "e2e" not in failed, result.render()


def test_e2e_cannot_pass_when_the_offer_is_not_seen_at_the_callee():
    capture, reports = load("rfc5763-7.3")
    lost_at_proxy_b = lambda p, s, d: None if p.startswith(b"INVITE ") and s[0] == "203.0.113.20" else p  # noqa: E731
    result = verdict_of(edit(capture, lost_at_proxy_b))
    e2e = next(c for c in result.checks if c.message == "e2e")
    assert not e2e.passed and "the INVITE was not seen reaching bob" in e2e.detail
