"""The RFC 5763 §7.3 flow end to end in namespaces, and its two negative controls.

Real processes, real kernel NAT, real DTLS and SRTP; short timers so the suite stays fast.
Each run is judged by the same verdict `pinhole run` prints.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pinhole.controller import from_trace
from pinhole.controller.run import run
from pinhole.controller.saved import judge_run

pytestmark = pytest.mark.lab


def _run(lab, tmp_path, scenario):
    running, _, _ = lab
    result, out_dir = run(scenario, timers_name="short", lab_name=running.name, out_root=tmp_path, progress=False)
    assert not result.broken, result.broken  # every span the services made reached the trace, the capture is whole
    # judged again from the saved run, and from the capture and key log alone: the same, message by message
    for again in (judge_run(out_dir), judge_run(out_dir / "trace.json"), judge_run(out_dir, from_capture=True)):
        assert again.outcome == result.outcome
        assert [(c.message, c.passed) for c in again.checks] == [(c.message, c.passed) for c in result.checks]
    return result, out_dir, json.loads((out_dir / "evidence.json").read_text())


def _ancestry(events, event):
    """(service, kind, method) of an event's span and all its parents, nearest first."""
    by_id = {e["span_id"]: e for e in events}
    chain = []
    while event is not None:
        chain.append((event["service"], event["kind"], event["attrs"].get("sip.method", "")))
        event = by_id.get(event["parent_span_id"])
    return chain


def _tshark(pcap, link):
    """(src, dst, DTLS handshake types, STUN type, protocol) per packet seen on `link`, as tshark decodes them."""
    fields = ["ip.src", "ip.dst", "dtls.handshake.type", "stun.type", "_ws.col.Protocol"]
    command = ["tshark", "-r", str(pcap), "-Y", f'frame.interface_name == "{link}"', "-T", "fields", "-E"]
    command += ["separator=;"] + [a for f in fields for a in ("-e", f)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split(";") for line in out.splitlines()]


def _check(result, message):
    return next(c for c in result.checks if c.message == message)


def test_section_7_3_passes(lab, tmp_path):
    result, out_dir, evidence = _run(lab, tmp_path, "rfc5763-7.3")
    assert result.passed, result.render()
    messages = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11a", "11b", "12", "e2e"]  # e2e: RFC 5763 §8
    assert [c.message for c in result.checks] == messages
    # the wire: the first ClientHello crossed Bob's link and the NAT's outside only, a later one every link
    hellos = [d for d in evidence["wire"] if "ClientHello" in d.get("summary", "")]
    assert [link.split()[0] for link in hellos[0]["links"]] == ["bob:eth0", "natgw:wan0"]
    assert any([link.split()[0] for link in d["links"]] == ["bob:eth0", "natgw:wan0", "natgw:lan0"] for d in hellos)
    for name in ("evidence.json", "verdict.json", "ladder.txt", "events.jsonl", "capture.pcapng"):
        assert (out_dir / name).exists(), name
    assert (tmp_path / "last").resolve() == out_dir.resolve()
    ladder = (out_dir / "ladder.txt").read_text()
    assert "X" in ladder and "INVITE" in ladder and "STUN Binding request" in ladder
    # what tshark decodes from the capture, on both sides of the NAT
    drops = [
        e
        for e in evidence["events"]
        if e["kind"] == "nat.drop" and "client_hello" in e["attrs"].get("dtls.handshake_types", "")
    ]
    if shutil.which("tshark"):
        capture = out_dir / "capture.pcapng"
        out_rows, in_rows = _tshark(capture, "natgw:wan0"), _tshark(capture, "natgw:lan0")
        bob_ip = next(ip for ip, node in evidence["address_map"].items() if node == "bob")
        hellos_out = [r for r in out_rows if r[0] == bob_ip and r[2] == "1"]
        hellos_in = [r for r in in_rows if r[0] == bob_ip and r[2] == "1"]
        # the first passes after the check; a loaded machine may let a later retransmission through too
        assert len(hellos_in) >= 1 and len(hellos_out) == len(hellos_in) + len(drops) >= 2
        assert any(r[1] == bob_ip and r[3] == "0x0001" for r in out_rows), "STUN check outside"
        assert any(r[0] == bob_ip and r[3] == "0x0101" for r in in_rows), "STUN response inside"
        for rows in (out_rows, in_rows):
            assert any(r[4] == "SRTP" and r[0] == bob_ip for r in rows), "SRTP from Bob"
            assert any(r[4] == "SRTP" and r[1] == bob_ip for r in rows), "SRTP to Bob"
    # one trace holds the call: the INVITE's spans chain alice -> proxy-a -> proxy-b -> bob
    trace = from_trace.evidence_from_trace(from_trace.load(out_dir), evidence["call_id"])
    events = trace["events"]
    invite_at_bob = next(e for e in events if e["service"] == "bob" and e["attrs"].get("sip.method") == "INVITE")
    hops = [(service, kind) for service, kind, method in _ancestry(events, invite_at_bob) if method == "INVITE"]
    assert hops == [
        ("bob", "sip.recv"),
        ("proxy-b", "sip.send"),
        ("proxy-b", "sip.recv"),
        ("proxy-a", "sip.send"),
        ("proxy-a", "sip.recv"),
        ("alice", "sip.send"),
    ]
    # media and the NAT's decisions are in the same trace: the drop of the first ClientHello, then the check
    drop = next(e for e in events if e["kind"] == "nat.drop")
    check = next(e for e in events if e["kind"] == "stun.send" and e["attrs"].get("purpose") == "connectivity-check")
    assert drop["t"] < check["t"] and "client_hello" in drop["attrs"]["dtls.handshake_types"]
    assert any(e["kind"] == "nat.mapping" and e["attrs"]["remote"] == check["attrs"]["peer"] for e in events)
    translated = [e for e in events if e["kind"] == "nat.translated" and e["attrs"]["remote"] == check["attrs"]["peer"]]
    assert translated and int(translated[0]["attrs"]["outbound_packets"]) >= 50
    assert int(translated[0]["attrs"]["inbound_packets"]) >= 50, "the NAT translated the media both ways"
    assert {"dtls.send", "dtls.recv", "dtls.connected", "srtp.first_received", "media.closed"} <= {
        e["kind"] for e in events
    }
    assert (out_dir / "ladder.html").exists() and (out_dir / "trace.json").exists()
    # the key log: one NSS line for the one association, written beside the capture and inside it (a DSB)
    key_log = (out_dir / "keys.log").read_text().splitlines()
    assert len(key_log) == 1 and key_log[0].startswith("CLIENT_RANDOM ")
    if shutil.which("tshark"):
        # both Finished messages decrypted on each link the handshake crossed (Wireshark 4.0 needs the SDP
        # conversations off: its DTLS-SRTP setup at the ServerHello otherwise cuts the DTLS session in two)
        finished = subprocess.run(
            ["tshark", "-r", str(out_dir / "capture.pcapng"), "-o", "sdp.establish_conversation:FALSE",
             "-o", f"tls.keylog_file:{out_dir / 'keys.log'}", "-Y", "dtls.handshake.type==20",
             "-T", "fields", "-e", "frame.interface_name"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
        assert sorted(finished) == sorted(["natgw:lan0", "natgw:wan0", "bob:eth0"] * 2)
    # the verdict is a pure function of the saved run
    assert judge_run(out_dir).to_dict() == json.loads((out_dir / "verdict.json").read_text())


def test_without_stun_check_fails_naming_message_5(lab, tmp_path):
    result, _, evidence = _run(lab, tmp_path, "no-stun-check")
    assert not result.passed
    assert not _check(result, "5").passed
    assert "no STUN check" in _check(result, "5").detail
    assert not _check(result, "7").passed and "none past natgw:wan0" in _check(result, "7").detail
    assert not _check(result, "10").passed and not _check(result, "11b").passed
    drops = [
        e
        for e in evidence["events"]
        if e["kind"] == "nat.drop" and "client_hello" in e["attrs"].get("dtls.handshake_types", "")
    ]
    assert len(drops) >= 3, "Bob's ClientHello retransmissions keep dying at the NAT"


def test_tampered_answer_fingerprint_fails_message_4_and_alice_tears_down(lab, tmp_path):
    result, _, evidence = _run(lab, tmp_path, "bad-fingerprint")
    assert not result.passed
    check4, check9 = _check(result, "4"), _check(result, "9")
    assert not check4.passed and "matches no a=fingerprint of the answer" in check4.detail
    assert check9.passed and "tore the session down" in check9.detail, "Alice did what RFC 5763 §5 asks"
    alice = evidence["calls"]["alice"]["media"]
    assert int(alice.get("srtp_received", 0)) == 0, "no media accepted after the mismatch"
    assert evidence["calls"]["alice"]["state"] == "failed"
