"""The §7.3 verdict and ladder as pure functions of saved evidence (real runs, tests/data/evidence)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pinhole.controller import ladder
from pinhole.controller.verdict import judge

DATA = Path(__file__).parent / "data" / "evidence"


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def failed(evidence: dict) -> dict[str, str]:
    return {c.message: c.detail for c in judge(evidence).checks if not c.passed}


def without(evidence: dict, predicate) -> dict:
    changed = copy.deepcopy(evidence)
    changed["events"] = [e for e in changed["events"] if not predicate(e)]
    return changed


def test_saved_section_7_3_run_passes_every_message():
    result = judge(load("rfc5763-7.3"))
    assert result.passed, result.render()
    assert [c.message for c in result.checks] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11a", "11b", "12"]
    assert all(c.rfc.startswith("RFC") for c in result.checks)


def test_no_stun_check_fails_on_the_missing_check_and_what_follows():
    failures = failed(load("no-stun-check"))
    assert "Alice sent no STUN check" in failures["5"]
    assert "dropped at the NAT" in failures["7"]
    assert {"5", "6", "7", "10", "11b"} <= set(failures)
    assert "1" not in failures and "3" not in failures, "the offer and the first drop were fine"


def test_bad_fingerprint_fails_on_message_9():
    failures = failed(load("bad-fingerprint"))
    assert failures["9"].startswith("Alice tore the media session down")
    assert "fingerprint" in failures["9"]
    assert "10" in failures and "11b" in failures


def test_nothing_dropped_is_not_the_section_7_3_flow():
    evidence = without(load("rfc5763-7.3"), lambda e: e["kind"] == "nat.drop")
    assert failed(evidence)["3"] == "the NAT dropped no ClientHello"


def test_answer_with_actpass_is_rejected():
    evidence = load("rfc5763-7.3")
    for event in evidence["events"]:
        if (
            event["service"] == "alice"
            and event["kind"] == "sip.recv"
            and event["attrs"].get("sip.status_code") == "200"
        ):
            event["attrs"]["sdp.setup"] = "actpass"
    assert "must be active or passive" in failed(evidence)["4"]


def test_two_check_transactions_are_not_a_single_check():
    evidence = load("rfc5763-7.3")
    check = next(
        e for e in evidence["events"] if e["kind"] == "stun.send" and e["attrs"].get("purpose") == "connectivity-check"
    )
    second = copy.deepcopy(check)
    second["attrs"]["stun.transaction_id"] = "00" * 12
    second["t"] += 0.001
    evidence["events"].append(second)
    assert "2 transactions" in failed(evidence)["5"]


@pytest.mark.parametrize("receiver, message", [("alice", "10"), ("bob", "11b")])
def test_authentication_failures_fail_the_media_direction(receiver, message):
    evidence = load("rfc5763-7.3")
    evidence["calls"][receiver]["media"]["srtp_auth_failed"] = "3"  # the user agent's own statistics
    assert "failed authentication" in failed(evidence)[message]
    del evidence["calls"]  # evidence read from a trace alone: the media.closed span's counts
    _edit(evidence, receiver, "media.closed", lambda a: True, srtp_auth_failed="3")
    assert "failed authentication" in failed(evidence)[message]


def test_missing_ack_at_bob_fails_message_12_only():
    evidence = without(load("rfc5763-7.3"), lambda e: e["service"] == "bob" and e["attrs"].get("sip.method") == "ACK")
    assert set(failed(evidence)) == {"12"}


def test_media_before_finished_is_not_judged():
    """RFC 5763's figure puts media (10) before Finished (11a); the verdict must not require either order."""
    evidence = load("rfc5763-7.3")
    for event in evidence["events"]:
        if event["kind"] == "srtp.first_received":
            event["t"] -= 10
    assert judge(evidence).passed


def test_ladder_draws_the_drop_and_every_actor():
    drawing = ladder.render(load("rfc5763-7.3"))
    header = drawing.splitlines()[0]
    for title in ("Alice", "NAT", "Proxy A", "Proxy B", "Bob"):
        assert title in header
    assert "X" in drawing and "ClientHello (re)" in drawing and "INVITE + SDP" in drawing
    assert ladder.render({"events": []}) == "(no messages)"


def _edit(evidence: dict, service: str, kind: str, predicate, **attrs) -> dict:
    for event in evidence["events"]:
        if event["service"] == service and event["kind"] == kind and predicate(event["attrs"]):
            event["attrs"].update(attrs)
    return evidence


def test_a_connection_in_the_offer_fails_message_1():
    evidence = _edit(
        load("rfc5763-7.3"),
        "alice",
        "sip.send",
        lambda a: a.get("sip.method") == "INVITE",
        **{"sdp.a_connection": "new"},
    )
    assert "forbidden by RFC 5763 §5" in failed(evidence)["1"]


def test_ack_that_bypasses_a_record_routing_proxy_fails_message_12():
    evidence = without(
        load("rfc5763-7.3"), lambda e: e["service"] == "proxy-b" and e["attrs"].get("sip.method") == "ACK"
    )
    assert failed(evidence)["12"] == "the ACK bypassed proxy-b, which Record-Routed the INVITE"


def test_server_hello_with_a_profile_bob_did_not_offer_fails_message_8():
    evidence = _edit(
        load("rfc5763-7.3"),
        "alice",
        "dtls.send",
        lambda a: "server_hello" in a.get("dtls.handshake_types", ""),
        **{"dtls.use_srtp": "SRTP_NULL_HMAC_SHA1_80"},
    )
    assert "which Bob did not offer" in failed(evidence)["8"]


def test_xor_mapped_address_must_be_the_source_bob_saw():
    evidence = _edit(
        load("rfc5763-7.3"),
        "alice",
        "stun.recv",
        lambda a: a.get("stun.class") == "success_response",
        **{"stun.xor_mapped_address": "192.0.2.9:1"},
    )
    assert "is not the source" in failed(evidence)["6"]


def test_saved_trace_alone_passes_and_a_silent_service_makes_it_broken():
    from pinhole.controller import from_trace

    request = from_trace.load(DATA.parent / "traces" / "rfc5763-7.3.json")
    result = from_trace.judge_trace(request)
    assert result.outcome == "pass", result.render()
    assert [c.passed for c in result.checks] == [c.passed for c in judge(load("rfc5763-7.3")).checks]
    bob_silent = type(request)()
    bob_silent.resource_spans.extend(rs for rs in request.resource_spans if from_trace.service_name(rs) != "bob")
    broken = from_trace.judge_trace(bob_silent)
    assert broken.outcome == "broken" and "bob" in broken.broken


def test_an_invite_whose_spans_do_not_chain_through_the_proxies_fails_message_2():
    evidence = load("rfc5763-7.3")
    for event in evidence["events"]:
        if event["service"] == "bob" and event["kind"] == "sip.recv" and event["attrs"].get("sip.method") == "INVITE":
            event["parent_span_id"] = ""
    assert "the INVITE's spans chain bob" in failed(evidence)["2"]


def test_saved_section_7_1_run_passes_every_message_of_its_own_figure():
    """§7.1 (no NAT, early media held until the answer) is judged against §7.1's figure, not §7.3's."""
    evidence = load("rfc5763-7.1-early-media")
    result = judge(evidence)
    assert (result.flow, result.passed) == ("rfc5763-7.1", True), result.render()
    assert [c.message for c in result.checks] == [str(n) for n in range(1, 12)]
    assert "held 25 early packet(s)" in result.checks[5].detail
    assert result.to_dict()["flow"] == "rfc5763-7.1" and "RFC 5763 §7.1" in result.render()
    # the same call read as §7.3: nothing was dropped and no check was needed
    as_7_3 = {c.message for c in judge(evidence, flow="rfc5763-7.3").checks if not c.passed}
    assert {"3", "7"} <= as_7_3


def test_section_7_3_run_is_not_a_section_7_1_flow():
    failures = {c.message: c.detail for c in judge(load("rfc5763-7.3"), flow="rfc5763-7.1").checks if not c.passed}
    assert "the gateway dropped" in failures["3"]
    assert "after the answer" in failures["7"]


def test_section_7_1_early_media_played_before_verification_fails_message_6():
    evidence = load("rfc5763-7.1-early-media")
    connected = next(e for e in evidence["events"] if e["service"] == "alice" and e["kind"] == "dtls.connected")
    for e in evidence["events"]:
        if e["service"] == "alice" and e["kind"] == "srtp.first_received":
            e["t"] = connected["t"] - 0.1
    failures = {c.message: c.detail for c in judge(evidence).checks if not c.passed}
    assert failures == {"6": "Alice decrypted Bob's SRTP before she verified his certificate"}


def test_unknown_flow_is_refused():
    with pytest.raises(ValueError, match="no checks for flow 'rfc5763-7.2'"):
        judge(load("rfc5763-7.3"), flow="rfc5763-7.2")
