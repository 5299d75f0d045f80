"""The NAT gateway's fault engine: rules and their validation, predicates over real STUN / DTLS / SIP
datagrams, decisions (pure); the NFQUEUE codec (pure); and every action on real packets through a
router namespace of our own (root, namespaces "ph-f*": Alice's host, the router, Bob's host)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from netns.lab import NetnsLab, pids_in_netns
from pinhole import dtls, stun
from pinhole.faults import nfqueue
from pinhole.faults.engine import (
    DUP_MARK_MASK,
    BridgePorts,
    Bypassed,
    Decision,
    Delay,
    Direction,
    Drop,
    Duplicate,
    ExpireMapping,
    FaultEngine,
    FaultError,
    FaultInjector,
    FaultPlan,
    FaultRule,
    Injected,
    Match,
    Reorder,
    RoutedLinks,
    What,
    check_plan,
    dup_mark,
    render_dup_table,
    view_of,
)
from pinhole.faults.nfqueue import NfQueue, NfqueueError, QueuedPacket
from pinhole.lab import parse_topology
from pinhole.nat import Filtering, NatBehaviour
from pinhole.nsenter import in_netns
from services.natgw import conntrack, ruleset

ALICE = ("10.99.1.10", 40000)
BOB = ("198.51.100.40", 5000)
STUN_SERVER = ("198.51.100.30", 3478)
GATEWAY = RoutedLinks("lan", 1, "wan", 2)  # the ifindexes of _queued's packets


def _invite(branch: str = "z9hG4bK1", cseq: str = "1 INVITE") -> bytes:
    return (
        "INVITE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.99.1.10:5060;branch={branch}\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: call-1\r\nCSeq: {cseq}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _response(code: int, reason: str, method: str = "INVITE") -> bytes:
    return (
        f"SIP/2.0 {code} {reason}\r\n"
        "Via: SIP/2.0/UDP 10.99.1.10:5060;branch=z9hG4bK1\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1\r\n"
        f"Call-ID: call-1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _stun_request(tid: bytes = b"\x01" * 12) -> bytes:
    return stun.encode(stun.binding_request(tid))


def _stun_response(tid: bytes = b"\x01" * 12) -> bytes:
    return stun.encode(stun.binding_success(stun.binding_request(tid), ALICE))


def _client_hellos(count: int) -> list[bytes]:
    """A real ClientHello and its timer retransmissions (new record numbers, same message_seq)."""
    endpoint = dtls.DtlsEndpoint(dtls.Role.CLIENT, dtls.Certificate.generate(), timer=dtls.RetransmitTimer(initial=0.1))
    out = list(endpoint.start(0.0))
    now = 0.0
    while len(out) < count:
        now += 10.0
        out += endpoint.on_deadline(now)
    return out[:count]


RTP = bytes([0x80, 0x00, 0x00, 0x01]) + b"\x00" * 8 + b"payload"


def out(payload: bytes, peer=BOB):  # noqa: ANN001, ANN202
    return view_of(ALICE, peer, payload, [("lan", Direction.OUTBOUND), ("wan", Direction.OUTBOUND)])


def inbound(payload: bytes, peer=BOB):  # noqa: ANN001, ANN202
    return view_of(peer, ALICE, payload, [("wan", Direction.INBOUND), ("lan", Direction.INBOUND)])


def engine(*rules: dict, seed: int = 0) -> FaultEngine:
    return FaultEngine(FaultPlan.from_dict({"seed": seed, "rules": list(rules)}), GATEWAY)


def fired(e: FaultEngine, view) -> list[str]:  # noqa: ANN001
    return [f.rule.name for f in e.decide(view).fired]


# --------------------------------------------------------------------------- predicates


@pytest.mark.parametrize(
    ("text", "family", "detail"),
    [
        ("any", "any", ""),
        ("rtp", "rtp", ""),
        ("stun-request", "stun", ""),
        ("dtls", "dtls", ""),
        ("dtls:client_hello", "dtls", "client_hello"),
        ("dtls:client_hello#retransmission", "dtls", "client_hello"),
        ("dtls:alert", "dtls", "alert"),
        ("sip", "sip", ""),
        ("sip:INVITE", "sip", "INVITE"),
        ("sip:200/INVITE", "sip", "200/INVITE"),
        ("sip:2xx", "sip", "2xx/"),
    ],
)
def test_what_parses(text: str, family: str, detail: str) -> None:
    what = What.parse(text)
    assert what.family == family and str(what) == text
    if family == "dtls":
        assert what.dtls_name == detail
    if family == "sip" and "/" in detail:
        assert f"{what.sip_status}/{what.sip_method}" == detail
    elif family == "sip":
        assert what.sip_method == detail
    assert what.retransmission == text.endswith("#retransmission")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("stun-requests", "'stun-requests' is not a packet predicate; expected one of: any, rtp"),
        ("dtls:clienthello", "'dtls:clienthello': unknown DTLS message 'clienthello' (one of hello_request"),
        ("dtls:finished", "Finished is encrypted (epoch 1)"),
        ("dtls:alert#retransmission", "#retransmission needs a handshake message, not a alert record"),
        ("rtp#retransmission", "#retransmission applies to stun*, dtls* and sip* messages only"),
        ("dtls:client_hello#resent", "unknown suffix #resent (only #retransmission)"),
        ("sip:invite", "'invite' is neither a SIP method (upper case, like INVITE) nor a status"),
        ("sip:200/invite", "'invite' is not a SIP method"),
        ("sip:700/INVITE", "'700' is not a SIP status (100..699, or a class like 2xx)"),
    ],
)
def test_what_errors_are_precise(text: str, error: str) -> None:
    with pytest.raises(FaultError) as raised:
        What.parse(text)
    assert error in str(raised.value)


def test_stun_predicates_tell_requests_from_responses() -> None:
    e = engine(
        {"name": "req", "what": "stun-request", "action": "drop"},
        {"name": "resp", "what": "stun-response", "action": "drop"},
        {"name": "any-stun", "what": "stun", "action": "delay", "seconds": 1},
    )
    assert fired(e, out(_stun_request())) == ["req"]
    assert e.matched == [1, 0, 1] and e.fired == [1, 0, 0]  # counted by every rule, fired by the drop only
    assert fired(e, inbound(_stun_response())) == ["resp"]
    assert fired(e, out(RTP)) == []


def test_dtls_retransmission_by_memory_and_by_record_number() -> None:
    first, again, third = _client_hellos(3)
    assert dtls.describe(again)["dtls.record_sequence"] == "1"
    e = engine({"name": "re", "what": "dtls:client_hello#retransmission", "action": "drop"})
    assert fired(e, out(first)) == []
    assert fired(e, out(again)) == ["re"]
    assert fired(e, out(first)) == ["re"]  # the same bytes again: seen before in this flow
    # a gateway that never saw the first copy (it died at the NAT before the queue) still knows
    fresh = engine({"name": "re", "what": "dtls:client_hello#retransmission", "action": "drop", "count": 1})
    assert fired(fresh, inbound(third)) == ["re"]
    # the plain predicate matches every copy; another flow has its own memory
    plain = engine({"name": "ch", "what": "dtls:client_hello", "action": "drop"})
    assert [fired(plain, out(d)) for d in (first, again)] == [["ch"], ["ch"]]
    other = engine({"name": "re", "what": "dtls:client_hello#retransmission", "action": "drop"})
    assert fired(other, out(first, peer=BOB)) == []
    assert fired(other, out(first, peer=STUN_SERVER)) == []


def test_sip_predicates() -> None:
    e = engine(
        {"name": "ok-invite", "what": "sip:200/INVITE", "action": "drop"},
        {"name": "invite", "what": "sip:INVITE", "action": "drop"},
        {"name": "any-2xx", "what": "sip:2xx", "action": "delay", "seconds": 1},
        {"name": "resent", "what": "sip#retransmission", "action": "delay", "seconds": 2},
    )
    assert fired(e, inbound(_response(200, "OK"))) == ["ok-invite"]
    assert fired(e, inbound(_response(200, "OK", "BYE"))) == ["any-2xx"]
    assert fired(e, inbound(_response(180, "Ringing"))) == []
    assert fired(e, out(_invite())) == ["invite"]
    assert fired(e, out(_invite(branch="z9hG4bK2", cseq="2 INVITE"))) == ["invite"]
    assert e.matched == [1, 2, 2, 0]
    later = e.decide(inbound(_response(200, "OK", "BYE")))  # the same response again: a retransmission
    assert [f.rule.name for f in later.fired] == ["any-2xx", "resent"] and later.delay == 3
    view = inbound(_response(200, "OK"))
    assert view.summary() == "SIP/2.0 200 OK"
    assert view.description()["sip.call_id"] == "call-1"


def test_direction_link_and_peer() -> None:
    e = engine(
        {"name": "in", "direction": "inbound", "what": "rtp", "action": "drop"},
        {"name": "to-bob", "direction": "outbound", "peer": "198.51.100.40", "what": "stun-request", "action": "drop"},
        {"name": "to-port", "peer": "198.51.100.30:3478", "action": "delay", "seconds": 1},
        {"name": "lan", "link": "lan", "what": "rtcp", "action": "delay", "seconds": 1},
    )
    assert fired(e, out(RTP)) == []
    assert fired(e, inbound(RTP)) == ["in"]
    assert fired(e, out(_stun_request(), peer=STUN_SERVER)) == ["to-port"]
    assert fired(e, out(_stun_request(b"\x02" * 12))) == ["to-bob"]
    rtcp = bytes([0x80, 201, 0, 1]) + b"\x00" * 4
    local = view_of(ALICE, BOB, rtcp, [("wan", None)])  # not forwarded from/to the LAN
    assert fired(e, local) == [] and fired(e, out(rtcp)) == ["lan"]


def test_bridge_ports_name_the_link_and_direction_of_a_bridged_packet() -> None:
    """On the switch a packet leaves its sender's port (outbound) and enters its receiver's (inbound);
    `peer` is the far end of the link the rule matched."""
    ports = BridgePorts({7: "bob", 8: "proxy-b"})
    plan = FaultPlan.from_dict(
        {
            "rules": [
                {"name": "to-bob", "link": "bob", "direction": "inbound", "what": "sip:INVITE", "action": "drop"},
                {
                    "name": "from-bob",
                    "link": "bob",
                    "direction": "outbound",
                    "peer": "203.0.113.20",
                    "action": "delay",
                    "seconds": 0.5,
                },
            ]
        }
    )
    e = FaultEngine(plan, ports)
    proxy_b, bob = ("203.0.113.20", 5060), ("203.0.113.40", 5060)
    to_bob = QueuedPacket(1, 2, 3, 3, _ip_udp(proxy_b, bob, _invite()), physindev=8, physoutdev=7)
    view = e.view(to_bob)
    assert view is not None and view.crossings == (("proxy-b", Direction.OUTBOUND), ("bob", Direction.INBOUND))
    decision = e.decide(view)
    assert decision.drop and decision.fired[0].crossing == ("bob", Direction.INBOUND)
    from_bob = e.view(QueuedPacket(2, 2, 3, 3, _ip_udp(bob, proxy_b, RTP), physindev=7, physoutdev=8))
    assert from_bob is not None and [f.rule.name for f in e.decide(from_bob).fired] == ["from-bob"]
    routed = e.view(QueuedPacket(3, 2, 3, 3, _ip_udp(bob, proxy_b, RTP)))  # not bridged: no port, no link
    assert routed is not None and routed.crossings == () and e.decide(routed).untouched


def test_a_service_refuses_links_and_actions_it_does_not_have() -> None:
    switch = BridgePorts({7: "bob"})
    with pytest.raises(FaultError, match=r"^rules\[0\]\.link: 'lan' is not a link here \(one of bob\)$"):
        check_plan(FaultPlan.from_dict({"rules": [{"link": "lan", "action": "drop"}]}), switch)
    with pytest.raises(FaultError, match=r"^rules\[0\]\.action: expire-mapping is not carried out here"):
        FaultEngine(FaultPlan.from_dict({"rules": [{"link": "bob", "action": "expire-mapping"}]}), switch)
    with pytest.raises(FaultError, match=r"^rules\[0\]\.link: 'bob' is not a link here \(one of lan, wan\)$"):
        check_plan(FaultPlan.from_dict({"rules": [{"link": "bob", "action": "drop"}]}), GATEWAY)
    check_plan(FaultPlan.from_dict({"rules": [{"link": "wan", "action": "expire-mapping"}]}), GATEWAY)


def test_occurrence_window_and_drop_precedence() -> None:
    e = engine(
        {"name": "third", "what": "rtp", "nth": 3, "count": 2, "action": "drop"},
        {"name": "slow", "what": "rtp", "action": "delay", "seconds": 0.5},
    )
    decisions = [e.decide(out(RTP)) for _ in range(6)]
    assert [d.drop for d in decisions] == [False, False, True, True, False, False]
    assert [d.delay for d in decisions] == [0.5, 0.5, 0, 0, 0.5, 0.5]
    assert e.matched == [6, 6] and e.fired == [2, 4]


def test_probability_is_seeded_and_reproducible() -> None:
    def losses(seed: int) -> list[bool]:
        e = engine({"name": "loss", "what": "rtp", "probability": 0.25, "action": "drop"}, seed=seed)
        return [e.decide(out(RTP)).drop for _ in range(400)]

    assert losses(7) == losses(7)
    assert losses(7) != losses(8)
    assert 60 <= sum(losses(7)) <= 140


def test_actions_combine() -> None:
    e = engine(
        {"name": "two", "action": "duplicate", "copies": 2},
        {"name": "one-more", "action": "duplicate"},
        {"name": "late", "action": "delay", "seconds": 0.2},
        {"name": "later", "action": "delay", "seconds": 0.3},
        {"name": "swap", "action": "reorder", "max_hold": 2},
        {"name": "expire", "action": "expire-mapping"},
    )
    d = e.decide(out(RTP))
    assert (d.copies, d.delay, d.hold, d.expire, d.drop) == (3, 0.5, 2, True, False)
    assert dup_mark(3) & DUP_MARK_MASK == dup_mark(3) == 0x03000000


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (
            {"rules": [{"what": "rtp"}]},
            "rules[0].action: missing (one of drop, delay, duplicate, reorder, expire-mapping)",
        ),
        ({"rules": [{"action": "lose"}]}, "rules[0].action: 'lose' is not one of drop, delay"),
        ({"rules": [{"action": "delay"}]}, "rules[0].seconds: missing (a delay needs seconds)"),
        ({"rules": [{"action": "delay", "seconds": 0}]}, "rules[0].seconds: 0 is not a number of seconds in (0, 60]"),
        ({"rules": [{"action": "delay", "seconds": "1"}]}, "rules[0].seconds: '1' is not a number"),
        (
            {"rules": [{"action": "drop", "copies": 2}]},
            "rules[0].copies: unknown field (a parameter of duplicate, not of drop)",
        ),
        ({"rules": [{"action": "duplicate", "copies": 9}]}, "rules[0].copies: 9 is not an integer in 1..8"),
        ({"rules": [{"action": "reorder", "max_hold": -1}]}, "rules[0].max_hold: -1 is not a number of seconds"),
        ({"rules": [{"action": "drop", "probability": 0}]}, "rules[0].probability: 0 is not a number in (0, 1]"),
        ({"rules": [{"action": "drop", "probability": 1.5}]}, "rules[0].probability: 1.5 is not a number in (0, 1]"),
        ({"rules": [{"action": "drop", "nth": 0}]}, "rules[0].nth: 0 is not an integer >= 1"),
        ({"rules": [{"action": "drop", "count": -1}]}, "rules[0].count: -1 is not an integer >= 0 (0 = no limit)"),
        ({"rules": [{"action": "drop", "link": "DMZ!"}]}, "rules[0].link: 'DMZ!' is not a link name (lan, wan,"),
        (
            {"rules": [{"action": "drop", "direction": "in"}]},
            "rules[0].direction: 'in' is not inbound (toward the link's host",
        ),
        ({"rules": [{"action": "drop", "what": "dtls:hello"}]}, "rules[0].what: 'dtls:hello': unknown DTLS message"),
        ({"rules": [{"action": "drop", "peer": "bob"}]}, "rules[0].peer: 'bob': 'bob' is not an IPv4 address"),
        (
            {"rules": [{"action": "drop", "peer": "1.2.3.4:0"}]},
            "rules[0].peer: '1.2.3.4:0': port '0' is not in 1..65535",
        ),
        ({"rules": [{"action": "drop", "name": "a b"}]}, "rules[0].name: 'a b' is not 1-64 of [A-Za-z0-9_.-]"),
        ({"rules": [{"action": "drop", "nmae": "x"}]}, "rules[0].nmae: unknown field"),
        (
            {"rules": [{"action": "drop", "name": "x"}, {"action": "drop", "name": "x"}]},
            "rules[1].name: 'x' is already the name of rules[0]",
        ),
        ({"rules": [{"action": "drop"}], "sead": 1}, "sead: unknown field of a fault plan (expected rules, seed)"),
        ({"rules": {"action": "drop"}}, "rules: expected a list of rules, not dict"),
        ({"rules": [], "seed": -1}, "seed: -1 is not an integer in 0..2^64-1"),
        ({"rules": ["drop"]}, "rules[0]: a rule is a table, not str"),
    ],
)
def test_plan_errors_name_the_field(doc: dict, error: str) -> None:
    with pytest.raises(FaultError) as raised:
        FaultPlan.from_dict(doc)
    assert error in str(raised.value), str(raised.value)


def test_plan_round_trip_and_defaults() -> None:
    doc = {
        "seed": 3,
        "rules": [
            {"direction": "outbound", "what": "stun-request", "peer": "198.51.100.40", "count": 1, "action": "drop"},
            {"name": "late-200", "what": "sip:200/INVITE", "action": "delay", "seconds": 2.5},
            {"name": "twice", "link": "wan", "what": "rtp", "action": "duplicate", "copies": 2, "probability": 0.1},
            {"name": "swap", "what": "dtls", "action": "reorder"},
            {"name": "expire", "what": "stun-response", "action": "expire-mapping", "nth": 2},
        ],
    }
    plan = FaultPlan.from_dict(doc)
    assert [r.name for r in plan.rules] == ["rule1", "late-200", "twice", "swap", "expire"]
    assert plan.rules[0].match.peer == ("198.51.100.40", None) and plan.rules[0].nth == 1
    assert plan.rules[3].action == Reorder(1.0) and plan.rules[2].action == Duplicate(2)
    assert FaultPlan.from_dict(plan.to_dict()) == plan
    assert plan.directions() == {Direction.INBOUND, Direction.OUTBOUND}
    assert FaultPlan.from_dict({"rules": [{"direction": "inbound", "action": "drop"}]}).directions() == {
        Direction.INBOUND
    }
    # the dataclasses validate on their own too
    with pytest.raises(FaultError, match="seconds: -1"):
        Delay(-1)
    with pytest.raises(FaultError, match="what: "):
        Match(what="nothing")
    rule = FaultRule("r", Match(direction="inbound", what="rtp"), Drop())
    assert rule.match.direction is Direction.INBOUND and isinstance(rule.match.what, What)
    assert isinstance(FaultRule("e", Match(), ExpireMapping()).action, ExpireMapping)


def test_dup_table_script() -> None:
    script = render_dup_table(2)
    assert script.splitlines() == [
        "table ip pinhole_faults",
        "delete table ip pinhole_faults",
        "table ip pinhole_faults {",
        "\tchain duplicate {",
        "\t\ttype filter hook postrouting priority 300; policy accept;",
        "\t\tmeta mark & 0x0f000000 == 0x01000000 dup to ip daddr device oif",
        "\t\tmeta mark & 0x0f000000 == 0x02000000 dup to ip daddr device oif dup to ip daddr device oif",
        "\t}",
        "}",
    ]


# --------------------------------------------------------------------------- NFQUEUE codec (pure)


def test_verdict_message_layout() -> None:
    message = nfqueue.build_verdict(5, 0x01020304, nfqueue.ACCEPT, mark=0x03000000, seq=9)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, seq, pid) == (len(message), (3 << 8) | 1, 1, 9, 0)
    assert message[16:20] == bytes([socket.AF_UNSPEC, 0, 0, 5])
    assert message[20:32] == struct.pack("=HH", 12, 2) + struct.pack("!II", 1, 0x01020304)
    assert message[32:40] == struct.pack("=HH", 8, 3) + struct.pack("!I", 0x03000000)
    drop = nfqueue.build_verdict(5, 7, nfqueue.DROP)
    assert len(drop) == 32 and drop[24:32] == struct.pack("!II", 0, 7)
    with pytest.raises(NfqueueError, match="verdict 4 is not accept"):
        nfqueue.build_verdict(5, 1, 4)
    with pytest.raises(NfqueueError, match="queue number 70000 is out of range"):
        nfqueue.build_verdict(70000, 1, 1)


def test_config_message_layout() -> None:
    message = nfqueue.config_params(3, 1, 4096, fail_open=True)
    _, kind, flags, _, _ = struct.unpack_from("=IHHII", message)
    assert kind == (3 << 8) | 2 and flags == 0x5  # request + ack
    attrs = message[20:]
    assert attrs[:12] == struct.pack("=HH", 9, 2) + struct.pack("!IB", 0xFFFF, 2) + b"\0\0\0"
    assert attrs[12:20] == struct.pack("=HH", 8, 3) + struct.pack("!I", 4096)
    assert attrs[20:36] == struct.pack("=HH", 8, 5) + struct.pack("!I", 1) + struct.pack("=HH", 8, 4) + b"\0\0\0\1"
    closed = nfqueue.config_params(3, 1, 10, fail_open=False)
    assert closed[20 + 20 + 4 : 20 + 20 + 8] == b"\0\0\0\0"
    with pytest.raises(NfqueueError, match="queue max length 0"):
        nfqueue.config_params(3, 1, 0, fail_open=True)


def _packet_message(packet_id: int, payload: bytes, *, indev: int = 4, outdev: int = 5, hook: int = 2) -> bytes:
    def attr(kind: int, value: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)

    body = struct.pack("!BBH", 2, 0, 3)
    body += attr(1, struct.pack("!IHB", packet_id, 0x0800, hook))
    body += attr(5, struct.pack("!I", indev)) + attr(6, struct.pack("!I", outdev))
    body += attr(4, struct.pack("!QQ", 1700000000, 250000)) + attr(10, payload)
    return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body


def test_packet_messages_parse_and_odd_ones_are_counted() -> None:
    data = _packet_message(42, b"\x45abc") + _packet_message(43, b"x", indev=0)
    batch = nfqueue.parse_messages(data, 5.0)
    assert batch.odd == 0
    first, second = batch.packets
    assert (first.packet_id, first.hook, first.indev, first.outdev, first.payload) == (42, 2, 4, 5, b"\x45abc")
    assert first.timestamp == pytest.approx(1700000000.25) and first.received == 5.0
    assert (second.packet_id, second.indev) == (43, 0)
    no_header = struct.pack("=IHHII", 20, 3 << 8, 0, 0, 0) + struct.pack("!BBH", 2, 0, 3)
    assert nfqueue.parse_messages(no_header).odd == 1
    error = struct.pack("=IHHII", 36, 2, 0, 7, 0) + struct.pack("=i", -2) + b"\0" * 16
    assert nfqueue.parse_messages(error).acks == {7: 2}
    assert nfqueue.parse_messages(b"\x01\x02").odd == 1
    with pytest.raises(NfqueueError, match="no NFQA_PACKET_HDR"):
        nfqueue.parse_packet(struct.pack("!BBH", 2, 0, 3))


QUEUE_CHAIN = "PINHOLE_FAULTS_NFQUEUE"
QUEUE_RULE = ["-t", "mangle", "-A", QUEUE_CHAIN, "-j", "NFQUEUE", "--queue-num"]


def test_queue_rules_render() -> None:
    """The queue rule alone in a chain of its own (its counter: every packet sent to the queue),
    then the rules choosing what jumps there."""
    assert nfqueue.render_queue_rules(9, [("lan0", "wan0")]) == [
        [*QUEUE_RULE, "9", "--queue-bypass"],
        ["-t", "mangle", "-A", "PINHOLE_FAULTS", "-i", "lan0", "-o", "wan0", "-p", "udp", "-j", QUEUE_CHAIN],
    ]
    with pytest.raises(nfqueue.QueueRuleError, match="'lan 0' is not an interface name"):
        nfqueue.render_queue_rules(9, [("lan 0", "wan0")])


def test_bridged_packets_carry_their_ports_and_bridged_queue_rules_render() -> None:
    """br_netfilter queues a bridged packet with its bridge ports as NFQA_IFINDEX_PHYSINDEV/PHYSOUTDEV (7, 8)."""
    message = _packet_message(44, b"\x45", indev=3, outdev=3)
    ports = struct.pack("=HH", 8, 7) + struct.pack("!I", 11) + struct.pack("=HH", 8, 8) + struct.pack("!I", 12)
    body = message[16:] + ports
    [packet] = nfqueue.parse_messages(struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body).packets
    assert (packet.indev, packet.outdev, packet.physindev, packet.physoutdev) == (3, 3, 11, 12)
    assert nfqueue.parse_packet(_packet_message(45, b"x")[16:]).physindev == 0  # routed: no port
    assert nfqueue.render_queue_rules(2, [("", ""), ("p-bob", "")], bridged=True) == [
        [*QUEUE_RULE, "2", "--queue-bypass"],
        ["-t", "mangle", "-A", "PINHOLE_FAULTS", "-m", "physdev", "--physdev-is-bridged", "-p", "udp"]
        + ["-j", QUEUE_CHAIN],
        ["-t", "mangle", "-A", "PINHOLE_FAULTS", "-m", "physdev", "--physdev-is-bridged", "--physdev-in", "p-bob"]
        + ["-p", "udp", "-j", "PINHOLE_FAULTS_NFQUEUE"],
    ]
    with pytest.raises(nfqueue.QueueRuleError, match="'' is not an interface name"):
        nfqueue.render_queue_rules(2, [("", "wan0")])  # only bridge ports may be left open


# --------------------------------------------------------------------------- the driver, on a fake queue


class FakeQueue:
    queue = 0
    max_length = nfqueue.DEFAULT_MAX_LENGTH

    def __init__(self) -> None:
        self.verdicts: list[tuple[int, str, int | None, float]] = []
        self.pending: dict[int, float] = {}
        self.received = self.missed = self.overruns = self.verdict_errors = self.odd = 0

    def accept(self, packet_id: int, *, mark: int | None = None) -> None:
        self.pending.pop(packet_id, None)
        self.verdicts.append((packet_id, "accept", mark, asyncio.get_running_loop().time()))

    def drop(self, packet_id: int) -> None:
        self.pending.pop(packet_id, None)
        self.verdicts.append((packet_id, "drop", None, asyncio.get_running_loop().time()))

    def close(self) -> None:
        for packet_id in list(self.pending):
            self.accept(packet_id)


def _ip_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    )
    return header + udp


def _queued(packet_id: int, payload: bytes, *, outbound: bool = True) -> QueuedPacket:
    src, dst = (ALICE, BOB) if outbound else (BOB, ALICE)
    indev, outdev = (1, 2) if outbound else (2, 1)
    return QueuedPacket(packet_id, 2, indev, outdev, _ip_udp(src, dst, payload), received=time.time())


def test_injector_schedules_verdicts() -> None:
    async def scenario() -> tuple[FakeQueue, list[Injected], list[tuple[str, int]], FaultInjector]:
        queue = FakeQueue()
        events: list[Injected] = []
        expired: list[tuple[str, int]] = []

        async def expire(internal: tuple[str, int]) -> int:
            expired.append(internal)
            return 1

        plan = FaultPlan.from_dict(
            {
                "rules": [
                    {"name": "lose", "what": "rtp", "nth": 2, "count": 1, "action": "drop"},
                    {"name": "late", "what": "stun-request", "action": "delay", "seconds": 0.05},
                    {"name": "swap", "what": "dtls", "count": 1, "action": "reorder", "max_hold": 5},
                    {"name": "twice", "what": "sip:INVITE", "action": "duplicate", "copies": 2},
                    {"name": "gone", "what": "stun-response", "action": "expire-mapping"},
                ]
            }
        )
        injector = FaultInjector(queue, FaultEngine(plan, GATEWAY), on_fault=events.append, expire=expire)  # type: ignore[arg-type]
        hello, again = _client_hellos(2)
        for number, payload, outbound in [
            (1, RTP, True),
            (2, RTP, True),
            (3, _stun_request(), True),
            (4, hello, True),
            (5, again, True),
            (6, _invite(), True),
            (7, _stun_response(), False),
            (8, b"\xff not udp we know", True),
        ]:
            queue.pending[number] = 0.0
            injector.handle(_queued(number, payload, outbound=outbound))
        await asyncio.sleep(0.1)
        return queue, events, expired, injector

    queue, events, expired, injector = asyncio.run(scenario())
    order = [(pid, verdict, mark) for pid, verdict, mark, _ in queue.verdicts]
    assert order[:2] == [(1, "accept", None), (2, "drop", None)]
    assert order.index((5, "accept", None)) < order.index((4, "accept", None))  # 4 held until 5 passed
    assert (6, "accept", 0x02000000) in order
    assert (7, "accept", None) in order and expired == [ALICE]
    assert order[-1] == (3, "accept", None)  # the delayed request goes last
    when = {pid: t for pid, _, _, t in queue.verdicts}
    assert when[3] - when[1] >= 0.05
    assert [(e.rule, e.action, e.direction, e.link) for e in events] == [
        ("lose", "drop", "outbound", "lan"),
        ("late", "delay", "outbound", "lan"),
        ("swap", "reorder", "outbound", "lan"),
        ("twice", "duplicate", "outbound", "lan"),
        ("gone", "expire-mapping", "inbound", "wan"),
    ]
    attrs = events[3].event_attributes()
    assert attrs["summary"] == "INVITE sip:bob@example.com SIP/2.0" and attrs["copies"] == "2"
    assert attrs["source"] == "10.99.1.10:40000" and attrs["peer"] == "198.51.100.40:5000"
    assert events[0].event_attributes()["summary"].startswith("RTP ssrc=")
    assert events[1].event_attributes()["stun.class"] == "request"
    stats = injector.stats()
    assert stats["faults_injected"] == 5 and stats["faults_injected_expire_mapping"] == 1
    assert stats["faults_reordered"] == 1 and stats["faults_mappings_expired"] == 1 and stats["fault_rule_lose"] == 1
    assert stats["faults_queued"] == 8 and stats["faults_untouched"] == 3  # 1, 5 and 8


# --------------------------------------------------------------------------- real packets

needs_kernel = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("ip", "nft", "conntrack"))
    or not any(shutil.which(t) for t in ("iptables-nft", "iptables", "iptables-legacy")),
    reason="needs root, iproute2, nft, conntrack and iptables",
)
LAB_NAME = f"ph-f{os.getpid() % 100000:05d}"
QUEUE = 31
TOPOLOGY = {
    "lab": {"ipv6": False},
    "nodes": {
        "alice": {
            "kind": "host",
            "interfaces": {"eth0": ["10.99.1.10/24"]},
            "routes": [{"to": "default", "via": "10.99.1.1"}],
        },
        "router": {
            "kind": "router",
            "interfaces": {"lan0": ["10.99.1.1/24"], "wan0": ["198.51.100.1/24"]},
            "sysctls": {"net.ipv4.ip_forward": "1"},
        },
        "bob": {"kind": "host", "interfaces": {"eth0": ["198.51.100.40/24"]}},
    },
    "links": [{"endpoints": ["alice:eth0", "router:lan0"]}, {"endpoints": ["router:wan0", "bob:eth0"]}],
}
NAT = """\
table inet ph_fault_nat
delete table inet ph_fault_nat
table inet ph_fault_nat {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "wan0" ip saddr 10.99.1.0/24 masquerade
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "wan0" ct state new drop
\t}
}
"""
WAN = "198.51.100.1"
SO_TIMESTAMPNS = 35


@pytest.fixture(scope="module")
def router_lab() -> Iterator[NetnsLab]:
    """Alice's host, a masquerading router, Bob's host; deleted whatever happens. Like the gateway, the
    router drops what arrives unsolicited at its outside address (so it leaves no conntrack entry)."""
    lab = NetnsLab(parse_topology(TOPOLOGY, source="test_faults"), name=LAB_NAME)
    try:
        lab.up()
        ns = lab.ns("router")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=NAT, text=True, check=True)
        yield lab
    finally:
        pids = [pid for ns in lab.namespaces() for pid in pids_in_netns(ns)]
        lab.down()
        assert not lab.exists()
        assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []


@dataclass
class Path_:
    lab: NetnsLab
    ns: str
    events: list[Injected]
    injector: FaultInjector | None = None
    bypasses: list[Bypassed] = field(default_factory=list)
    bypass_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def udp(self, node: str, port: int) -> socket.socket:
        with in_netns(self.lab.ns(node)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.lab.address(node), port))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        return sock

    def ifindex(self, name: str) -> int:
        with in_netns(self.ns):
            return socket.if_nametoindex(name)

    def start(self, *rules: dict) -> FaultInjector:
        plan = FaultPlan.from_dict({"rules": list(rules)})
        directions = {d.value for d in plan.directions()}
        ruleset.apply_faults(ruleset.FaultPath(QUEUE, directions), lan_if="lan0", wan_if="wan0", netns=self.ns)
        queue = NfQueue(QUEUE, netns=self.ns)
        engine = FaultEngine(plan, RoutedLinks("lan", self.ifindex("lan0"), "wan", self.ifindex("wan0")))
        ns = self.ns
        self.injector = FaultInjector(
            queue,
            engine,
            on_fault=self.events.append,
            expire=lambda internal: asyncio.to_thread(_expire_in, internal, ns),
            rule_hits=lambda: nfqueue.queue_rule_hits(netns=ns),
            on_bypass=self._bypassed,
        )
        self.injector.start()
        return self.injector

    def _bypassed(self, bypassed: Bypassed) -> None:
        self.bypasses.append(bypassed)
        self.bypass_seen.set()

    def flood(self, count: int, rate: float, port: int) -> subprocess.Popen[bytes]:
        """A process of its own sending `count` RTP-sized datagrams from Alice to Bob's `port`, `rate`
        a second (0: as fast as it can); it stops by itself, or early once its stdin is closed."""
        argv = [sys.executable, "-c", FLOOD, str(count), str(rate), self.lab.address("bob"), str(port)]
        return subprocess.Popen(["ip", "netns", "exec", self.lab.ns("alice"), *argv], stdin=subprocess.PIPE)

    async def clear(self, injector: FaultInjector) -> int:
        """As a service clears its plan: the queue rules go (their final count), the engine judges
        what is queued and stops, then the tables go. Returns the rule's count."""
        rule_hits = await asyncio.to_thread(ruleset.remove_faults, netns=self.ns, hooks=False)
        assert rule_hits is not None
        injector.stop(rule_hits)
        self.injector = None
        await asyncio.to_thread(ruleset.remove_faults, netns=self.ns)
        return rule_hits


FLOOD = """\
import select, socket, sys, time
count, rate, address = int(sys.argv[1]), float(sys.argv[2]), (sys.argv[3], int(sys.argv[4]))
sock, payload, start = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), bytes([0x80, 0]) + bytes(170), time.monotonic()
for n in range(count):
    if rate:
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
    sock.sendto(payload, address)
    if n % 1000 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break
"""


def _expire_in(internal: tuple[str, int], ns: str) -> int:
    from pinhole.faults.engine import expire_mapping

    return expire_mapping(internal, netns=ns)


@pytest.fixture
def path(router_lab: NetnsLab) -> Iterator[Path_]:
    ns = router_lab.ns("router")
    conntrack.flush(netns=ns)
    p = Path_(router_lab, ns, [])
    try:
        yield p
    finally:
        if p.injector is not None:
            p.injector.stop()
        ruleset.remove_faults(netns=ns)
        conntrack.flush(netns=ns)


async def _recv(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple[str, int], float]:
    """One datagram, its source and the kernel's receive time (SO_TIMESTAMPNS)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(sock.fileno())
    data, ancillary, _flags, source = sock.recvmsg(4096, socket.CMSG_SPACE(16))
    stamp = 0.0
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", value[:16])
            stamp = sec + nsec / 1e9
    return data, source, stamp


async def _recv_all(sock: socket.socket, until: bytes) -> list[bytes]:
    got: list[bytes] = []
    while not got or got[-1] != until:
        got.append((await _recv(sock))[0])
    return got


def _run(coro, timeout: float = 20):  # noqa: ANN001, ANN202
    return asyncio.run(asyncio.wait_for(coro, timeout))


@needs_kernel
def test_drop_exactly_the_nth_outbound_packet(path: Path_) -> None:
    async def go() -> list[bytes]:
        path.start({"name": "third", "direction": "outbound", "what": "any", "nth": 3, "count": 1, "action": "drop"})
        alice, bob = path.udp("alice", 40001), path.udp("bob", 5001)
        with alice, bob:
            for n in range(1, 7):
                alice.sendto(b"p%d" % n, ("198.51.100.40", 5001))
            return await _recv_all(bob, b"p6")

    assert _run(go()) == [b"p1", b"p2", b"p4", b"p5", b"p6"]
    assert [(e.rule, e.action, e.direction, e.occurrence) for e in path.events] == [("third", "drop", "outbound", 3)]
    assert path.events[0].source == ("10.99.1.10", 40001)  # the queue sees Alice's inside address
    assert path.injector is not None and path.injector.stats()["faults_untouched"] == 5


@needs_kernel
def test_delay_holds_at_least_the_delay(path: Path_) -> None:
    async def go() -> tuple[float, float]:
        path.start(
            {"name": "slow", "direction": "inbound", "what": "any", "count": 1, "action": "delay", "seconds": 0.3}
        )
        alice, bob = path.udp("alice", 40002), path.udp("bob", 5002)
        with alice, bob:
            alice.sendto(b"open", ("198.51.100.40", 5002))  # outbound: not queued (inbound only)
            _, source, _ = await _recv(bob)
            assert source == (WAN, 40002)
            bob.sendto(b"late", (WAN, 40002))
            sent_late = time.time()  # after sendto returned: the packet left no later than this
            data, _, arrived_late = await _recv(alice)
            assert data == b"late"
            bob.sendto(b"prompt", (WAN, 40002))
            sent_prompt = time.time()
            data, _, arrived_prompt = await _recv(alice)
            assert data == b"prompt"
            return arrived_late - sent_late, arrived_prompt - sent_prompt

    held, prompt = _run(go())
    assert held >= 0.3, held
    assert prompt < 0.3, prompt  # the rule fired once: the next packet is not held
    assert [(e.rule, e.action, e.parameters) for e in path.events] == [("slow", "delay", {"delay_seconds": "0.3"})]


@needs_kernel
def test_duplicate_gives_n_copies_after_the_nat_both_ways(path: Path_) -> None:
    async def go() -> tuple[list[tuple[bytes, tuple[str, int]]], list[bytes]]:
        path.start(
            {"name": "out", "direction": "outbound", "count": 1, "action": "duplicate", "copies": 2},
            {"name": "in", "direction": "inbound", "count": 1, "action": "duplicate", "copies": 2},
        )
        alice, bob = path.udp("alice", 40003), path.udp("bob", 5003)
        with alice, bob:
            alice.sendto(b"dup-out", ("198.51.100.40", 5003))
            alice.sendto(b"marker", ("198.51.100.40", 5003))
            at_bob = [(await _recv(bob))[:2] for _ in range(4)]
            bob.sendto(b"dup-in", (WAN, 40003))
            bob.sendto(b"marker", (WAN, 40003))
            return at_bob, await _recv_all(alice, b"marker")

    at_bob, at_alice = _run(go())
    # every copy was translated like the original (copied in postrouting, after the NAT)
    assert at_bob == [(b"dup-out", (WAN, 40003))] * 3 + [(b"marker", (WAN, 40003))]
    assert at_alice == [b"dup-in"] * 3 + [b"marker"]
    assert [(e.action, e.direction) for e in path.events] == [("duplicate", "outbound"), ("duplicate", "inbound")]


@needs_kernel
def test_reorder_swaps_a_packet_with_the_next_of_its_flow(path: Path_) -> None:
    async def go() -> list[bytes]:
        path.start(
            {"name": "swap", "direction": "outbound", "what": "rtp", "count": 1, "action": "reorder", "max_hold": 5}
        )
        alice, bob = path.udp("alice", 40004), path.udp("bob", 5004)
        with alice, bob:
            for n in range(3):
                alice.sendto(RTP[:3] + bytes([n]) + RTP[4:], ("198.51.100.40", 5004))
            received = [(await _recv(bob))[:2] for _ in range(3)]
            return [(data[3], source) for data, source in received]

    # the held packet was the flow's first (its conntrack entry still unconfirmed while the next one
    # made the mapping): it still leaves through the same mapping
    assert _run(go()) == [(1, (WAN, 40004)), (0, (WAN, 40004)), (2, (WAN, 40004))]
    assert path.injector is not None and path.injector.stats()["faults_reordered"] == 1
    assert path.injector.stats()["faults_reorder_timeouts"] == 0
    assert path.events[0].summary.startswith("RTP ssrc=0x00000000 seq=0")


@needs_kernel
def test_expire_mapping_deletes_the_conntrack_entry(path: Path_) -> None:
    async def go() -> list[bytes]:
        path.start(
            {"name": "expire", "direction": "outbound", "what": "any", "nth": 2, "count": 1, "action": "expire-mapping"}
        )
        alice, bob = path.udp("alice", 40005), path.udp("bob", 5005)
        with alice, bob:
            alice.sendto(b"first", ("198.51.100.40", 5005))
            await _recv(bob)
            assert [m.internal for m in conntrack.list_udp_mappings(WAN, netns=path.ns)] == [("10.99.1.10", 40005)]
            alice.sendto(b"second", ("198.51.100.40", 5005))  # expires the mapping, then passes
            data, source, _ = await _recv(bob)
            assert (data, source) == (b"second", (WAN, 40005))  # translated with the mapping it met
            assert conntrack.list_udp_mappings(WAN, netns=path.ns) == []  # deleted before the verdict
            bob.sendto(b"after expiry", (WAN, 40005))  # no mapping: never reaches Alice
            alice.sendto(b"third", ("198.51.100.40", 5005))  # a new mapping
            await _recv(bob)
            bob.sendto(b"through the new mapping", (WAN, 40005))
            return [(await _recv(alice))[0]]

    assert _run(go()) == [b"through the new mapping"]
    assert [(e.rule, e.action, e.internal) for e in path.events] == [
        ("expire", "expire-mapping", ("10.99.1.10", 40005))
    ]
    assert path.injector is not None and path.injector.stats()["faults_mappings_expired"] == 1


@needs_kernel
def test_a_stopped_engine_never_blackholes_the_path(path: Path_) -> None:
    """--queue-bypass: with the rules in place but no socket bound, packets pass untouched."""

    async def go() -> list[bytes]:
        injector = path.start({"name": "all", "what": "any", "action": "drop"})
        injector.stop()
        path.injector = None
        alice, bob = path.udp("alice", 40006), path.udp("bob", 5006)
        with alice, bob:
            alice.sendto(b"still here", ("198.51.100.40", 5006))
            return [(await _recv(bob))[0]]

    assert _run(go()) == [b"still here"]
    assert path.events == []
    rules = subprocess.run(
        ["ip", "netns", "exec", path.ns, nfqueue.iptables_tool(), "-t", "mangle", "-S", "PINHOLE_FAULTS_NFQUEUE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--queue-bypass" in rules


async def _one_held(path: Path_, alice: socket.socket, port: int) -> FaultInjector:
    """A plan that holds every packet 30 s, and one datagram from Alice to Bob's `port` held by it."""
    injector = path.start({"name": "forever", "what": "any", "action": "delay", "seconds": 30})
    alice.sendto(b"held", ("198.51.100.40", port))
    while injector.stats()["faults_injected"] == 0:
        await asyncio.sleep(0.01)
    return injector


@needs_kernel
def test_held_packets_are_released_on_stop_and_the_path_is_removed(path: Path_) -> None:
    async def go() -> tuple[bytes, float]:
        alice, bob = path.udp("alice", 40007), path.udp("bob", 5007)
        with alice, bob:
            injector = await _one_held(path, alice, 5007)
            assert len(injector.queue.pending) == 1
            stats = nfqueue.kernel_stats(QUEUE, netns=path.ns)
            assert stats is not None and stats["held"] == 1
            started = time.time()
            injector.stop()
            path.injector = None
            data, _, arrived = await _recv(bob)
            return data, arrived - started

    data, after = _run(go())
    assert data == b"held" and after < 1.0
    ruleset.remove_faults(netns=path.ns)
    listing = subprocess.run(
        ["ip", "netns", "exec", path.ns, "nft", "list", "tables"], capture_output=True, text=True
    ).stdout
    assert "pinhole_faults" not in listing and "mangle" not in listing  # no hook left behind
    mangle = subprocess.run(
        ["ip", "netns", "exec", path.ns, nfqueue.iptables_tool(), "-t", "mangle", "-S"], capture_output=True, text=True
    ).stdout
    assert "PINHOLE_FAULTS" not in mangle and "NFQUEUE" not in mangle


@needs_kernel
def test_a_held_packet_outlives_a_new_plan_and_is_let_go_when_cleared(path: Path_) -> None:
    """Deleting or reloading a table with a hook makes the kernel drop every queued packet (checked):
    a new plan keeps the dup table, and clearing deletes the tables only once the engine let go."""

    async def go() -> tuple[bytes, FaultInjector]:
        alice, bob = path.udp("alice", 40008), path.udp("bob", 5008)
        with alice, bob:
            injector = await _one_held(path, alice, 5008)
            both = ruleset.FaultPath(QUEUE, {"inbound", "outbound"})
            await asyncio.to_thread(ruleset.apply_faults, both, lan_if="lan0", wan_if="wan0", netns=path.ns)
            assert (nfqueue.kernel_stats(QUEUE, netns=path.ns) or {}).get("held") == 1
            await path.clear(injector)
            return (await _recv(bob))[0], injector

    data, injector = _run(go())
    assert data == b"held" and injector.queue.verdict_errors == 0


@needs_kernel
def test_queue_bind_conflict_and_unknown_verdicts(path: Path_) -> None:
    with NfQueue(QUEUE + 1, netns=path.ns) as first:
        with pytest.raises(NfqueueError, match=f"NFQUEUE {QUEUE + 1}: bind refused"):
            NfQueue(QUEUE + 1, netns=path.ns)
        first.accept(123456)  # no such packet: the kernel says so, and it is counted
        first.wait(0.5)
        assert first.verdict_errors == 1


def test_decision_defaults() -> None:
    assert Decision().untouched and not Decision(fired=[]).drop


@needs_kernel
@pytest.mark.parametrize("fail_open", [True, False])
def test_a_full_queue_fails_open_or_closed(path: Path_, fail_open: bool) -> None:
    """The queue holds one packet at most: a second one is accepted past the engine (fail-open, the
    gateway's choice: counted by the queue rule's counter only, the kernel gives it no id) or dropped
    by the kernel and counted (fail-closed)."""

    async def go() -> list[bytes]:
        outbound = ruleset.FaultPath(QUEUE, {"outbound"})
        ruleset.apply_faults(outbound, lan_if="lan0", wan_if="wan0", netns=path.ns)
        with NfQueue(QUEUE, netns=path.ns, max_length=1, fail_open=fail_open) as queue:
            alice, bob = path.udp("alice", 40010 + fail_open), path.udp("bob", 5010)
            with alice, bob:
                alice.sendto(b"held", ("198.51.100.40", 5010))
                [held] = queue.wait(2.0)  # parked in the kernel: the queue is full now
                alice.sendto(b"overflow", ("198.51.100.40", 5010))
                got = []
                if fail_open:
                    got.append((await _recv(bob))[0])  # passed while the first is still held
                else:
                    deadline = time.monotonic() + 2
                    while (nfqueue.kernel_stats(QUEUE, netns=path.ns) or {}).get("queue_dropped") != 1:
                        assert time.monotonic() < deadline, nfqueue.kernel_stats(QUEUE, netns=path.ns)
                        await asyncio.sleep(0.01)
                assert queue.read() == []  # the engine never saw the second one
                if fail_open:
                    assert nfqueue.kernel_stats(QUEUE, netns=path.ns) == {
                        "held": 1,
                        "queue_dropped": 0,
                        "user_dropped": 0,
                        "id_sequence": 1,
                    }
                    assert queue.bypassed(nfqueue.queue_rule_hits(netns=path.ns) or 0) == 1
                queue.accept(held.packet_id)
                got.append((await _recv(bob))[0])
                return got

    expected = [b"overflow", b"held"] if fail_open else [b"held"]
    assert _run(go()) == expected


@needs_kernel
def test_a_full_receive_buffer_fails_open_and_is_counted(path: Path_) -> None:
    """Messages the socket has no room for: fail-open accepts their packets, which had ids (a gap in
    the ids the engine reads next), and the kernel's user_dropped stays 0."""

    async def go() -> tuple[NfQueue, list[bytes], list[int]]:
        ruleset.apply_faults(ruleset.FaultPath(QUEUE, {"outbound"}), lan_if="lan0", wan_if="wan0", netns=path.ns)
        with NfQueue(QUEUE, netns=path.ns) as queue:
            queue._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the least the kernel allows
            alice, bob = path.udp("alice", 40012), path.udp("bob", 5012)
            with alice, bob:
                for n in range(5):
                    alice.sendto(b"p%d" % n, ("198.51.100.40", 5012))
                deadline = time.monotonic() + 5
                while nfqueue.queue_rule_hits(netns=path.ns) != 5:  # all five met the rule: queued or passed
                    assert time.monotonic() < deadline
                queued = queue.read()
                assert 0 < len(queued) < 5
                passed = [(await _recv(bob))[0] for _ in range(5 - len(queued))]
                alice.sendto(b"after", ("198.51.100.40", 5012))
                later = await asyncio.to_thread(queue.wait, 2.0)
                for packet in queued + later:
                    queue.accept(packet.packet_id)
                assert (nfqueue.kernel_stats(QUEUE, netns=path.ns) or {}).get("user_dropped") == 0
                rule_hits = nfqueue.queue_rule_hits(netns=path.ns)
                assert rule_hits == 6 and queue.bypassed(rule_hits) == rule_hits - queue.received == len(passed)
                return queue, passed, [p.packet_id for p in queued + later]

    queue, passed, ids = _run(go())
    assert ids == [*range(1, 6 - len(passed)), 6] and queue.overruns >= 1  # ids given to the lost ones too
    assert passed == [b"p%d" % n for n in range(5 - len(passed), 5)]


def test_bypass_reports_only_growth_once_per_check() -> None:
    """Each check is one sample of the rule's counter; a report (and an event) only when the count grew."""

    async def scenario() -> tuple[list[Bypassed], int]:
        queue = FakeQueue()
        queue.received = 100
        queue.bypassed = lambda hits: hits - 100  # type: ignore[attr-defined]
        samples = iter([100, 105, 105, 103, 120])
        reports: list[Bypassed] = []
        injector = FaultInjector(
            queue,  # type: ignore[arg-type]
            engine(),
            on_fault=lambda _: None,
            rule_hits=lambda: next(samples),
            on_bypass=reports.append,
        )
        for _ in range(5):
            await injector.check_bypass()
        return reports, injector.stats()["faults_queue_bypassed"]

    reports, counted = asyncio.run(scenario())
    assert [(r.bypassed, r.new, r.received) for r in reports] == [(5, 5, 100), (20, 15, 100)] and counted == 20
    assert reports[0].event_attributes()["summary"].startswith("5 more packets passed the fault engine unjudged")


@needs_kernel
def test_a_flood_above_the_engines_rate_is_counted_not_silent(path: Path_) -> None:
    """Far above the rate the engine judges (nfqueue.py), fail-open lets packets by: each is counted
    (rule counter minus what the engine received), reported while the flood goes on, and nowhere in
    the kernel's own queue counters."""

    async def go() -> tuple[FaultInjector, int, dict[str, int]]:
        injector = path.start({"name": "lose-checks", "what": "stun-request", "action": "drop"})
        with path.udp("bob", 5030):  # a sink: no ICMP back
            flood = path.flood(1_000_000, 0, 5030)
            try:
                await asyncio.wait_for(path.bypass_seen.wait(), 60)
            finally:
                assert flood.stdin is not None
                flood.stdin.close()
                await asyncio.to_thread(flood.wait, 20)
            kernel = nfqueue.kernel_stats(QUEUE, netns=path.ns)
            assert kernel is not None
            return injector, await path.clear(injector), kernel

    injector, rule_hits, kernel = _run(go(), 90)
    stats = injector.stats()
    assert stats["faults_queue_bypassed"] == rule_hits - stats["faults_queue_received"] > 0
    assert path.bypasses[0].new == path.bypasses[0].bypassed > 0  # first seen during the flood
    assert path.bypasses[-1].bypassed == stats["faults_queue_bypassed"]
    assert stats["faults_untouched"] == stats["faults_queue_received"]  # every packet received was judged
    assert kernel["queue_dropped"] == kernel["user_dropped"] == 0  # the kernel counts none of them


@needs_kernel
def test_a_flow_below_the_engines_rate_is_judged_whole(path: Path_) -> None:
    """1,500 packets/s, far below the rate: every packet judged, none bypassed. Fewer packets than
    the queue holds, so not even a machine that stalls the engine meanwhile can make one pass."""

    async def go() -> tuple[FaultInjector, int]:
        injector = path.start({"name": "lose-checks", "what": "stun-request", "action": "drop"})
        with path.udp("bob", 5031):
            flood = path.flood(3000, 1500, 5031)
            await asyncio.to_thread(flood.wait, 30)
            assert flood.returncode == 0
            return injector, await path.clear(injector)

    injector, rule_hits = _run(go(), 60)
    stats = injector.stats()
    assert rule_hits == stats["faults_queue_received"] == stats["faults_untouched"] == 3000
    assert stats["faults_queue_bypassed"] == 0 and path.bypasses == []


# --------------------------------------------------------------------------- the gRPC contract (pure)


def _proto_error(plan) -> str:  # noqa: ANN001
    from pinhole.faults.wire import fault_plan

    with pytest.raises(FaultError) as raised:
        fault_plan(plan)
    return str(raised.value)


def test_grpc_plans_are_validated_with_the_proto_field_names() -> None:
    from pinhole.rpc.v1 import natgw_pb2 as pb

    def rule(**fields) -> pb.FaultPlan:  # noqa: ANN003
        return pb.FaultPlan(rules=[pb.FaultRule(**fields)])

    assert _proto_error(rule(delay=pb.FaultDelay(seconds=0))).startswith(
        "rules[0].delay.seconds: 0.0 is not a number of seconds in (0, 60]"
    )
    assert _proto_error(rule(match=pb.FaultMatch(what="stun-req"), drop=pb.FaultDrop())).startswith(
        "rules[0].match.what: 'stun-req' is not a packet predicate"
    )
    assert _proto_error(rule(match=pb.FaultMatch(peer="bob"), drop=pb.FaultDrop())).startswith(
        "rules[0].match.peer: 'bob': 'bob' is not an IPv4 address"
    )
    assert _proto_error(rule(match=pb.FaultMatch(link=9), drop=pb.FaultDrop())) == (
        "rules[0].match.link: unknown value 9"
    )
    assert _proto_error(rule(duplicate=pb.FaultDuplicate(copies=20))).startswith(
        "rules[0].duplicate.copies: 20 is not an integer in 1..8"
    )
    assert _proto_error(rule(reorder=pb.FaultReorder(max_hold_seconds=99))).startswith(
        "rules[0].reorder.max_hold_seconds: 99.0 is not a number of seconds in (0, 30]"
    )
    assert _proto_error(rule(name="x")).startswith("rules[0].action: missing")
    assert _proto_error(rule(drop=pb.FaultDrop(), probability=0)).startswith("rules[0].probability: 0.0 is not")
    two = pb.FaultPlan(rules=[pb.FaultRule(name="a", drop=pb.FaultDrop()), pb.FaultRule(name="a", drop=pb.FaultDrop())])
    assert _proto_error(two) == "rules[1].name: 'a' is already the name of rules[0]"


def test_grpc_plans_name_any_link_by_link_name() -> None:
    from pinhole.faults.wire import fault_plan, fault_plan_proto
    from pinhole.rpc.v1 import faults_pb2 as pb

    def rule(**match) -> pb.FaultPlan:
        return pb.FaultPlan(rules=[pb.FaultRule(name="r", match=pb.FaultMatch(**match), drop=pb.FaultDrop())])

    plan = fault_plan(rule(link_name="bob", direction=pb.FAULT_DIRECTION_INBOUND))
    assert plan.rules[0].match.link == "bob"
    assert fault_plan(rule(link=pb.FAULT_LINK_LAN, link_name="lan")).rules[0].match.link == "lan"
    back = fault_plan_proto(plan).rules[0].match
    assert (back.link_name, back.link) == ("bob", pb.FAULT_LINK_ANY)
    with pytest.raises(FaultError, match=r"^rules\[0\]\.match\.link_name: 'bob' contradicts match\.link 'wan'"):
        fault_plan(rule(link=pb.FAULT_LINK_WAN, link_name="bob"))
    with pytest.raises(FaultError, match=r"rules\[0\]\.match\.link_name: 'bob' is not a link here \(one of lan, wan\)"):
        fault_plan(rule(link_name="bob"), GATEWAY)


def test_grpc_plans_round_trip_with_defaults_filled_in() -> None:
    from pinhole.faults.wire import fault_plan, fault_plan_proto
    from pinhole.rpc.v1 import natgw_pb2 as pb

    request = pb.FaultPlan(
        seed=5,
        rules=[
            pb.FaultRule(
                match=pb.FaultMatch(direction=pb.FAULT_DIRECTION_OUTBOUND, what="stun-request", peer="203.0.113.40"),
                count=1,
                drop=pb.FaultDrop(),
            ),
            pb.FaultRule(name="late", match=pb.FaultMatch(what="sip:200/INVITE"), delay=pb.FaultDelay(seconds=0.5)),
            pb.FaultRule(name="twice", match=pb.FaultMatch(link=pb.FAULT_LINK_WAN), duplicate=pb.FaultDuplicate()),
            pb.FaultRule(name="swap", reorder=pb.FaultReorder(), probability=0.5),
            pb.FaultRule(name="gone", expire_mapping=pb.FaultExpireMapping()),
        ],
    )
    plan = fault_plan(request)
    assert [r.name for r in plan.rules] == ["rule1", "late", "twice", "swap", "gone"]
    assert plan.rules[0].match.direction is Direction.OUTBOUND and plan.rules[0].count == 1
    assert plan.rules[2].action == Duplicate(1) and plan.rules[3].action == Reorder(1.0)
    assert isinstance(plan.rules[4].action, ExpireMapping) and plan.seed == 5
    effective = fault_plan_proto(plan)
    assert effective.rules[0].name == "rule1" and effective.rules[0].nth == 1
    assert effective.rules[0].match.peer == "203.0.113.40" and effective.rules[0].probability == 1.0
    assert effective.rules[1].WhichOneof("action") == "delay" and effective.rules[1].delay.seconds == 0.5
    assert effective.rules[2].duplicate.copies == 1 and effective.rules[2].match.link == pb.FAULT_LINK_WAN
    assert effective.rules[3].reorder.max_hold_seconds == 1.0 and effective.rules[3].probability == 0.5
    assert effective.rules[4].WhichOneof("action") == "expire_mapping"
    assert effective.rules[1].match.what == "sip:200/INVITE" and effective.rules[2].match.what == "any"
    assert fault_plan(effective) == plan


def test_render_faults() -> None:
    script, rules = ruleset.render_faults(ruleset.FaultPath(3, {"inbound"}), lan_if="lan0", wan_if="wan0")
    assert script == render_dup_table()
    assert rules == [
        [*QUEUE_RULE, "3", "--queue-bypass"],
        ["-t", "mangle", "-A", "PINHOLE_FAULTS", "-i", "wan0", "-o", "lan0", "-p", "udp", "-j", QUEUE_CHAIN],
    ]
    _, both = ruleset.render_faults(ruleset.FaultPath(3, {"inbound", "outbound"}))
    assert [rule[4:8] for rule in both[1:]] == [["-i", "lan0", "-o", "wan0"], ["-i", "wan0", "-o", "lan0"]]
    with pytest.raises(ruleset.RulesetError, match="fault directions"):
        ruleset.FaultPath(3, set())
    with pytest.raises(ruleset.RulesetError, match="fault queue 70000"):
        ruleset.FaultPath(70000, {"inbound"})


@needs_kernel
def test_expire_mapping_also_forgets_what_endpoint_independent_filtering_admits(path: Path_) -> None:
    """With the gateway's own ruleset (EIF: an nft map external port -> inside endpoint admits anyone),
    expiring the mapping must empty that map too, or the mapping would live on in it."""
    behaviour = NatBehaviour(filtering=Filtering.ENDPOINT_INDEPENDENT)
    script = ruleset.render(behaviour, lan_if="lan0", wan_if="wan0", wan_address=WAN, lan_prefix="10.99.1.0/24")
    subprocess.run(["ip", "netns", "exec", path.ns, "nft", "delete", "table", "inet", "ph_fault_nat"], check=True)
    ruleset.apply(script, netns=path.ns)

    async def expire(internal: tuple[str, int]) -> int:
        from pinhole.faults.engine import expire_mapping

        deleted = await asyncio.to_thread(expire_mapping, internal, netns=path.ns)
        return deleted + await settle(internal)

    async def settle(internal: tuple[str, int]) -> int:
        return await asyncio.to_thread(ruleset.forget_mapping, internal, behaviour, netns=path.ns)

    async def go() -> list[bytes]:
        injector = path.start(
            {"name": "expire", "direction": "outbound", "nth": 2, "count": 1, "action": "expire-mapping"}
        )
        injector.expire, injector.settle = expire, settle
        alice, bob, stranger = path.udp("alice", 40020), path.udp("bob", 5020), path.udp("bob", 5021)
        with alice, bob, stranger:
            alice.sendto(b"first", ("198.51.100.40", 5020))
            await _recv(bob)
            inbound = ruleset.read_elements(ruleset.SET_INBOUND, netns=path.ns)
            assert [(e.key, e.data) for e in inbound] == [((40020,), ("10.99.1.10", 40020))]
            stranger.sendto(b"admitted by EIF", (WAN, 40020))
            got = [(await _recv(alice))[0]]
            alice.sendto(b"second", ("198.51.100.40", 5020))  # expires the mapping
            await _recv(bob)
            while injector._tasks:  # the packet renewed the map on its way out: settled after it passed
                await asyncio.sleep(0.01)
            assert ruleset.read_elements(ruleset.SET_INBOUND, netns=path.ns) == []
            assert conntrack.list_udp_mappings(WAN, netns=path.ns) == []
            stranger.sendto(b"after expiry", (WAN, 40020))  # nothing admits it any more
            alice.sendto(b"third", ("198.51.100.40", 5020))  # a new mapping (the same port: preserved)
            await _recv(bob)
            stranger.sendto(b"through the new mapping", (WAN, 40020))
            got.append((await _recv(alice))[0])
            return got

    try:
        assert _run(go()) == [b"admitted by EIF", b"through the new mapping"]
        assert path.injector is not None and path.injector.stats()["faults_mappings_expired"] >= 3
    finally:
        ruleset.remove(netns=path.ns)
        subprocess.run(["ip", "netns", "exec", path.ns, "nft", "-f", "-"], input=NAT, text=True, check=True)


def test_a_run_whose_fault_engine_let_packets_through_unjudged_is_broken() -> None:
    """Its faults reached only part of the traffic: the verdict would be another run's (judge_call's `broken`)."""
    from pinhole.controller.run import faults_bypassed

    assert faults_bypassed({"natgw": {"faults_queue_bypassed": 0, "faults_queue_received": 9}, "alice": {}}) == ""
    why = faults_bypassed({"natgw": {"faults_queue_bypassed": 12}, "public": {"faults_queue_bypassed": 3}})
    assert "natgw 12, public 3" in why and "not applied" in why
