"""The verdict of a call against an RFC 5763 figure: a pure function of the evidence a run collected.

Evidence is what the services reported (their events, the NAT's drops and mappings, the final
call statistics) plus what the captures on both sides of the NAT saw. Each numbered message of
a figure is one check. Two figures are judged:

- §7.3 (`rfc5763-7.3`, the default): the spec digest's table §1.1; "(11)" is used twice in the
  RFC, so 11a and 11b here. The checks deliberately leave alone what the RFC does not require:
  the order of media (10) and Finished (11a), and the ACK (12) coming last.
- §7.1 (`rfc5763-7.1`): no NAT, so Bob's first ClientHello reaches Alice and the handshake ends
  before his 200 OK; Alice holds his early media (6) until the answer's fingerprint vouches for his
  certificate (9). TLS transport and SIP Identity are not staged (notes say so), and message 4/5/7
  are judged as the DTLS flights they stand for (the digest's §3 item 2 on the RFC's numbering).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

Event = dict[str, Any]  # {"t": seconds, "service", "kind", "call_id", "attrs": {...}}
DEFAULT_FLOW = "rfc5763-7.3"  # the figure a run is judged against unless its scenario names another


@dataclass
class Check:
    message: str
    title: str
    rfc: str
    passed: bool
    detail: str
    time: float | None = None


@dataclass
class Verdict:
    scenario: str
    passed: bool
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    broken: str = ""  # the lab could not run the scenario (a service down, no evidence from one)
    flow: str = DEFAULT_FLOW  # the figure it was judged against

    @property
    def outcome(self) -> str:
        """pass, fail (a requirement was broken, named with its RFC section) or broken (the lab was)."""
        return "broken" if self.broken else "pass" if self.passed else "fail"

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "flow": self.flow,
            "verdict": self.outcome,
            "broken": self.broken,
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes,
        }

    def render(self) -> str:
        lines = []
        for c in self.checks:
            mark = "PASS" if c.passed else "FAIL"
            lines.append(f"  {mark}  ({c.message:>3}) {c.title} [{c.rfc}]")
            lines.append(f"              {c.detail}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.broken:
            lines.append(f"  broken: {self.broken}")
        lines.append(f"verdict: {self.outcome.upper()} ({self.scenario}; {FLOW_TITLES.get(self.flow, self.flow)})")
        return "\n".join(lines)


class Evidence:
    """Indexed view of a run's evidence for the checks."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.events: list[Event] = sorted(data.get("events", []), key=lambda e: e["t"])
        self.call_id: str = data.get("call_id", "")
        self.calls: dict[str, dict[str, Any]] = data.get("calls", {})
        self.captures: dict[str, list[dict[str, Any]]] = data.get("captures", {})
        self.mappings: list[dict[str, Any]] = data.get("mappings") or [
            e["attrs"] for e in self.events if e["kind"] == "nat.mapping"
        ]
        opened = self.first("alice", "media.open")
        self.alice_media_local: str = opened["attrs"].get("local", "") if opened else ""

    def find(self, service: str | None = None, kind: str | None = None, **attrs: str) -> list[Event]:
        found = []
        for e in self.events:
            if service is not None and e["service"] != service:
                continue
            if kind is not None and e["kind"] != kind:
                continue
            a = e.get("attrs", {})
            if all(_matches(a.get(k.replace("__", ".")), v) for k, v in attrs.items()):
                found.append(e)
        return found

    def first(self, service: str | None = None, kind: str | None = None, **attrs: str) -> Event | None:
        found = self.find(service, kind, **attrs)
        return found[0] if found else None

    def ancestry(self, event: Event) -> list[Event]:
        """The event and its parent spans' events, nearest first (trace-derived evidence only)."""
        by_span = {e["span_id"]: e for e in self.events if e.get("span_id")}
        chain = []
        while event is not None and len(chain) < 100:
            chain.append(event)
            event = by_span.get(event.get("parent_span_id", ""))
        return chain

    def media(self, service: str) -> dict[str, Any]:
        """Final media statistics: the call status the controller asked for, else the trace's media.closed."""
        if service in self.calls:
            return self.calls[service].get("media", {})
        closed = self.first(service, "media.closed")
        return closed["attrs"] if closed else {}


def _matches(value: str | None, wanted: str) -> bool:
    if value is None:
        return False
    if wanted.startswith("~"):
        return wanted[1:] in value.split(",")
    return value == wanted


def _t(e: Event | None) -> float | None:
    return None if e is None else e["t"]


CheckFn = Callable[[Evidence], tuple[bool, str, float | None]]
FLOW_TITLES = {
    "rfc5763-7.3": "RFC 5763 §7.3, basic message flow with STUN check for NAT case",
    "rfc5763-7.1": "RFC 5763 §7.1, basic message flow with early media (no NAT)",
}
FLOWS: dict[str, list[tuple[str, str, str, CheckFn]]] = {flow: [] for flow in FLOW_TITLES}


def check(message: str, title: str, rfc: str, *, flow: str = DEFAULT_FLOW) -> Callable[[CheckFn], CheckFn]:
    """Register a check of one message of one figure; checks run in the order they are registered."""

    def register(fn: CheckFn) -> CheckFn:
        FLOWS[flow].append((message, title, rfc, fn))
        return fn

    return register


def messages(flow: str = DEFAULT_FLOW) -> tuple[str, ...]:
    """The figure's message numbers, as its checks name them."""
    return tuple(message for message, *_ in FLOWS[flow])


def _invite(ev: Evidence, service: str, kind: str) -> Event | None:
    return ev.first(service, kind, **{"sip__method": "INVITE"})


def _ok_to_invite(ev: Evidence, service: str, kind: str) -> Event | None:
    return ev.first(service, kind, **{"sip__status_code": "200", "sip__cseq_method": "INVITE"})


def _connectivity_checks(ev: Evidence) -> list[Event]:
    """Alice's checks on the RTP component (without rtcp-mux RTCP has its own check, RFC 5763 §6.7)."""
    checks = ev.find("alice", "stun.send", purpose="connectivity-check")
    return [e for e in checks if e["attrs"].get("component", "rtp") == "rtp"]


def _offer_problems(a: dict[str, Any]) -> list[str]:
    """What RFC 5763 §5 asks of every offer: actpass, a fingerprint, DTLS-SRTP, no a=connection."""
    problems = []
    if a.get("sdp.setup") != "actpass":
        problems.append(f"a=setup is {a.get('sdp.setup')!r}, not actpass")
    if not a.get("sdp.fingerprint"):
        problems.append("no a=fingerprint")
    if not a.get("sdp.proto", "").startswith("UDP/TLS/RTP/SAVP") and a.get("sdp.capneg") != "True":
        problems.append(f"proto {a.get('sdp.proto')!r} and no RFC 5939 capability negotiation")
    if a.get("sdp.a_connection"):
        problems.append(f"a=connection:{a['sdp.a_connection']} is present (forbidden by RFC 5763 §5)")
    return problems


@check("1", "INVITE with the offer: a=setup:actpass, a=fingerprint, Alice's NAT address", "RFC 5763 §5, §7.3")
def _m1(ev: Evidence) -> tuple[bool, str, float | None]:
    invite = _invite(ev, "alice", "sip.send")
    if invite is None:
        return False, "Alice sent no INVITE", None
    a = invite["attrs"]
    problems = _offer_problems(a)
    advertised = a.get("sdp.media", "")
    mapping = next((m for m in ev.mappings if m.get("internal") == ev.alice_media_local), None)
    if mapping is not None and mapping.get("external") != advertised:
        problems.append(f"advertised {advertised} but the NAT maps Alice's media port to {mapping.get('external')}")
    if problems:
        return False, "; ".join(problems), _t(invite)
    if mapping is None:
        return False, f"the NAT has no mapping for Alice's media socket {ev.alice_media_local}", _t(invite)
    where = f"NAT mapping {mapping['internal']} -> {mapping['external']}"
    return True, f"offer {advertised} ({where}), setup actpass, fingerprint {a['sdp.fingerprint'][:23]}...", _t(invite)


@check("2", "INVITE reaches Bob through both proxies, body unchanged", "RFC 3261 §16.6, RFC 5763 §7.3")
def _m2(ev: Evidence) -> tuple[bool, str, float | None]:
    sent, got = _invite(ev, "alice", "sip.send"), _invite(ev, "bob", "sip.recv")
    if got is None:
        return False, "Bob received no INVITE", None
    proxies = [p for p in ("proxy-a", "proxy-b") if _invite(ev, p, "sip.recv")]
    a = got["attrs"]
    problems = []
    if sent is not None and a.get("sdp.sha256") != sent["attrs"].get("sdp.sha256"):
        problems.append("SDP body changed on the way")
    if a.get("sip.record_route_count") != "2":
        problems.append(f"{a.get('sip.record_route_count', '0')} Record-Route entries, expected 2")
    sent_mf = (sent or {"attrs": {}})["attrs"].get("sip.max_forwards", "70")
    expected_mf = str(int(sent_mf) - 2) if sent_mf.isdigit() else "?"
    if a.get("sip.max_forwards") != expected_mf:
        problems.append(f"Max-Forwards {a.get('sip.max_forwards')}, expected {expected_mf} after two proxies")
    if len(proxies) != 2:
        problems.append(f"seen by {proxies or 'no proxy'}")
    edges = ""
    if "parent_span_id" in got:  # evidence read from a trace: the spans must chain hop by hop
        hops = [e["service"] for e in ev.ancestry(got) if e["attrs"].get("sip.method") == "INVITE"]
        path = [h for i, h in enumerate(hops) if i == 0 or hops[i - 1] != h][::-1]
        if path != ["alice", "proxy-a", "proxy-b", "bob"]:
            problems.append(f"the INVITE's spans chain {' -> '.join(path) or 'nowhere'}, not alice -> proxy-a -> ...")
        edges = "; span edges alice -> proxy-a -> proxy-b -> bob"
    if problems:
        return False, "; ".join(problems), _t(got)
    return (
        True,
        f"via proxy-a, proxy-b; Record-Route x2; Max-Forwards {expected_mf}; body byte-identical{edges}",
        _t(got),
    )


@check("3", "Bob's first ClientHello is dropped by Alice's NAT", "RFC 5763 §7.3, §6.7.2")
def _m3(ev: Evidence) -> tuple[bool, str, float | None]:
    first = ev.first("bob", "dtls.send", cause="start", **{"dtls__handshake_types": "~client_hello"})
    if first is None:
        return False, "Bob sent no ClientHello", None
    drops = ev.find("natgw", "nat.drop", **{"dtls__handshake_types": "~client_hello"})
    checks = _connectivity_checks(ev)
    if not drops:
        return False, "the NAT dropped no ClientHello", _t(first)
    seq = first["attrs"].get("dtls.record_sequence")
    drop = next((d for d in drops if d["attrs"].get("dtls.record_sequence") == seq), None)
    if drop is None:
        return False, f"the first ClientHello (record seq {seq}) was not among the NAT's drops", _t(first)
    if checks and drop["t"] > checks[0]["t"]:  # the drop's time is the kernel's (NFLOG)
        return False, "the first ClientHello was dropped after Alice's STUN check", _t(drop)
    # Bob's ClientHellos only: after a re-INVITE that swaps roles Alice sends her own (RFC 5763 §6.6)
    toward_alice = first["attrs"].get("peer")
    outside = [
        p
        for p in ev.captures.get("outside", [])
        if "client_hello" in p.get("dtls.handshake_types", "") and p.get("dst") in (toward_alice, None)
    ]
    inside = [
        p
        for p in ev.captures.get("inside", [])
        if "client_hello" in p.get("dtls.handshake_types", "") and p.get("dst") in (ev.alice_media_local, None)
    ]
    detail = f"record seq {seq}; {len(drops)} ClientHello drop(s) at the NAT ({drop['attrs'].get('hook')} hook)"
    if ev.captures:
        if not any(p.get("dtls.record_sequence") == seq for p in outside):
            return False, f"first ClientHello (record seq {seq}) not seen outside the NAT", _t(drop)
        if any(p.get("dtls.record_sequence") == seq for p in inside):
            return False, f"first ClientHello (record seq {seq}) passed the NAT", _t(drop)
        detail += f"; capture: {len(outside)} ClientHello outside, {len(inside)} inside"
    stun_at_bob = ev.first("bob", "stun.recv", **{"stun__class": "request"})
    if stun_at_bob is not None and stun_at_bob["t"] < first["t"]:
        return False, "Bob waited for the STUN check before his ClientHello (§6.7.2 says go on)", _t(first)
    return True, detail, _t(drop)


@check("4", "200 OK with a=setup:active and Bob's fingerprint", "RFC 5763 §5, RFC 4145")
def _m4(ev: Evidence) -> tuple[bool, str, float | None]:
    ok = _ok_to_invite(ev, "alice", "sip.recv")
    if ok is None:
        return False, "Alice received no 200 OK to her INVITE", None
    a = ok["attrs"]
    if a.get("sdp.setup") not in ("active", "passive"):
        return False, f"answer a=setup:{a.get('sdp.setup')} (must be active or passive)", _t(ok)
    if a.get("sdp.setup") != "active":
        return False, "answer a=setup:passive; §7.3 has Bob active", _t(ok)
    start = ev.first("bob", "dtls.start")
    bob_fp = start["attrs"].get("local_fingerprint") if start else None
    answered = a.get("sdp.fingerprint", "")
    if bob_fp and answered.split(" ")[-1] != bob_fp:
        return True, f"answer fingerprint {answered[:30]}... is NOT Bob's certificate (checked at message 9)", _t(ok)
    return True, f"setup active, fingerprint {answered[:30]}..., media {a.get('sdp.media')}", _t(ok)


@check("5", "Alice's single unauthenticated STUN check to Bob's media address", "RFC 5763 §6.7.2")
def _m5(ev: Evidence) -> tuple[bool, str, float | None]:
    sends = _connectivity_checks(ev)
    ok = _ok_to_invite(ev, "alice", "sip.recv")
    if not sends:
        return False, "Alice sent no STUN check after the answer, so the NAT never opened a pinhole", None
    tids = {e["attrs"].get("stun.transaction_id") for e in sends}
    first = sends[0]
    a = first["attrs"]
    problems = []
    if len(tids) != 1:
        problems.append(f"{len(tids)} transactions, expected a single one")
    if ok is not None and first["t"] < ok["t"]:
        problems.append("sent before the answer arrived")
    if ok is not None and a.get("peer") != ok["attrs"].get("sdp.media"):
        problems.append(f"sent to {a.get('peer')}, the answer says {ok['attrs'].get('sdp.media')}")
    if a.get("local") != ev.alice_media_local:
        problems.append(f"sent from {a.get('local')}, not the media port")
    if a.get("authenticated") != "False":
        problems.append("carries USERNAME/MESSAGE-INTEGRITY")
    answered = ev.first("alice", "stun.recv", **{"stun__transaction_id": a.get("stun.transaction_id", "")})
    if answered is not None and any(e["t"] > answered["t"] for e in sends):
        problems.append("retransmitted after the response arrived (RFC 5389 §7.2.1)")
    if problems:
        return False, "; ".join(problems), _t(first)
    return (
        True,
        f"transaction {a['stun.transaction_id']} from {a['local']} to {a['peer']}, {len(sends)} send(s)",
        _t(first),
    )


@check("6", "Bob answers the check; Alice gets the response", "RFC 5763 §6.7.2, RFC 5389 §7.3")
def _m6(ev: Evidence) -> tuple[bool, str, float | None]:
    sends = _connectivity_checks(ev)
    if not sends:
        return False, "no STUN check to answer (message 5 missing)", None
    tid = sends[0]["attrs"].get("stun.transaction_id", "")
    answered = ev.first("bob", "stun.send", **{"stun__transaction_id": tid, "stun__class": "success_response"})
    got = ev.first("alice", "stun.recv", **{"stun__transaction_id": tid, "stun__class": "success_response"})
    if answered is None:
        return False, f"Bob did not answer transaction {tid}", None
    if got is None:
        return False, f"Alice did not receive the response to {tid}", _t(answered)
    mapped = got["attrs"].get("stun.xor_mapped_address")
    seen = (ev.first("bob", "stun.recv", **{"stun__transaction_id": tid}) or {"attrs": {}})["attrs"].get("peer")
    if seen and mapped != seen:
        return False, f"XOR-MAPPED-ADDRESS {mapped} is not the source {seen} Bob saw (RFC 5389 §15.2)", _t(got)
    advertised = (_invite(ev, "alice", "sip.send") or {"attrs": {}})["attrs"].get("sdp.media")
    note = "equals" if mapped == advertised else "differs from"
    return True, f"XOR-MAPPED-ADDRESS {mapped}, the source Bob saw ({note} the advertised {advertised})", _t(got)


@check("7", "Bob's timer-driven ClientHello retransmission passes the NAT", "RFC 6347 §4.2.4, RFC 5763 §7.3")
def _m7(ev: Evidence) -> tuple[bool, str, float | None]:
    first = ev.first("bob", "dtls.send", cause="start", **{"dtls__handshake_types": "~client_hello"})
    arrived = ev.first("alice", "dtls.recv", **{"dtls__handshake_types": "~client_hello"})
    retransmissions = ev.find("bob", "dtls.send", cause="timer", **{"dtls__handshake_types": "~client_hello"})
    drops = ev.find("natgw", "nat.drop", **{"dtls__handshake_types": "~client_hello"})
    if arrived is None:
        return False, f"no ClientHello reached Alice ({len(drops)} dropped at the NAT)", None
    if first is None:
        return False, "Bob's first ClientHello is missing", _t(arrived)
    seq = arrived["attrs"].get("dtls.record_sequence")
    if seq == first["attrs"].get("dtls.record_sequence"):
        return False, "the ClientHello Alice got is the first one: nothing was dropped (not the §7.3 flow)", _t(arrived)
    sent = next((e for e in retransmissions if e["attrs"].get("dtls.record_sequence") == seq), None)
    if sent is None:
        return False, f"the ClientHello Alice got (record seq {seq}) is not a timer-driven retransmission", _t(arrived)
    if sent["attrs"].get("dtls.message_seq") != first["attrs"].get("dtls.message_seq"):
        return False, "the retransmission changed the handshake message_seq", _t(arrived)
    check_at_bob = ev.first("bob", "stun.recv", **{"stun__class": "request"})
    after = f", {sent['t'] - check_at_bob['t']:.3f}s after the check reached Bob" if check_at_bob else ""
    return (
        True,
        (
            f"retransmission #{retransmissions.index(sent) + 1} (record seq {seq}, message_seq "
            f"{sent['attrs'].get('dtls.message_seq')}){after}"
        ),
        _t(arrived),
    )


@check(
    "8", "Alice's flight 4: ServerHello with use_srtp, Certificate, CertificateRequest", "RFC 5764 §4.1.1, RFC 5763 §5"
)
def _m8(ev: Evidence) -> tuple[bool, str, float | None]:
    flight = ev.first("alice", "dtls.send", **{"dtls__handshake_types": "~server_hello"})
    if flight is None:
        return False, "Alice sent no ServerHello", None
    # flight 4 may span datagrams: the ServerHello's and those sent with it before Bob's flight 5 came
    flight5 = ev.first("alice", "dtls.recv", **{"dtls__handshake_types": "~client_key_exchange"})
    types: set[str] = set()
    for e in ev.find("alice", "dtls.send"):
        if e["t"] >= flight["t"] and (flight5 is None or e["t"] < flight5["t"]):
            types.update(e["attrs"].get("dtls.handshake_types", "").split(","))
    missing = [t for t in ("server_hello", "certificate", "certificate_request", "server_hello_done") if t not in types]
    if missing:
        return False, f"flight 4 lacks {', '.join(missing)}", _t(flight)
    chosen = [p for p in flight["attrs"].get("dtls.use_srtp", "").split(",") if p]
    hello = ev.first("bob", "dtls.send", **{"dtls__handshake_types": "~client_hello"})
    offered = hello["attrs"].get("dtls.use_srtp", "").split(",") if hello else []
    if len(chosen) != 1:
        return (
            False,
            f"ServerHello use_srtp lists {len(chosen)} profiles, RFC 5764 §4.1.1 wants exactly one",
            _t(flight),
        )
    if chosen[0] not in offered:
        return False, f"ServerHello chose {chosen[0]}, which Bob did not offer ({', '.join(offered)})", _t(flight)
    return (
        True,
        f"ServerHello (use_srtp {chosen[0]}, offered by Bob), Certificate, CertificateRequest, ServerHelloDone",
        _t(flight),
    )


@check("9", "Bob's certificate matches the answer's a=fingerprint (checked by Alice)", "RFC 5763 §5")
def _m9(ev: Evidence) -> tuple[bool, str, float | None]:
    failed = ev.first("alice", "dtls.failed")
    if failed is not None:
        return False, f"Alice tore the media session down: {failed['attrs'].get('reason')}", _t(failed)
    connected = ev.first("alice", "dtls.connected")
    if connected is None:
        return False, "Alice's handshake never completed", None
    if connected["attrs"].get("peer_fingerprint_verified") != "True":
        return False, "Alice did not verify Bob's certificate", _t(connected)
    return True, f"Bob's certificate {connected['attrs'].get('peer_fingerprint', '')[:23]}... verified", _t(connected)


@check("10", "SRTP from Bob decrypted by Alice (client_write keys)", "RFC 5764 §4.2")
def _m10(ev: Evidence) -> tuple[bool, str, float | None]:
    return _media_direction(ev, sender="bob", receiver="alice")


@check("11a", "Handshake complete on both sides, same exporter keys", "RFC 6347, RFC 5764 §4.2")
def _m11a(ev: Evidence) -> tuple[bool, str, float | None]:
    a, b = ev.first("alice", "dtls.connected"), ev.first("bob", "dtls.connected")
    if a is None or b is None:
        missing = [n for n, e in (("Alice", a), ("Bob", b)) if e is None]
        return False, f"no completed handshake at {' and '.join(missing)}", None
    if a["attrs"].get("exporter_digest") != b["attrs"].get("exporter_digest"):
        return False, "the two sides exported different keying material", _t(b)
    if b["attrs"].get("peer_fingerprint_verified") != "True":
        return False, "Bob did not verify Alice's certificate against the offer", _t(b)
    return (
        True,
        (
            f"profile {a['attrs'].get('profile')}; exporter digests agree; "
            "Bob verified Alice's certificate against the offer"
        ),
        max(a["t"], b["t"]),
    )


@check("11b", "SRTP from Alice decrypted by Bob (server_write keys)", "RFC 5764 §4.2")
def _m11b(ev: Evidence) -> tuple[bool, str, float | None]:
    return _media_direction(ev, sender="alice", receiver="bob")


@check("12", "ACK for the 200 OK reaches Bob along the route set", "RFC 3261 §13.2.2.4, §12.2.1.1")
def _m12(ev: Evidence) -> tuple[bool, str, float | None]:
    sent = ev.first("alice", "sip.send", **{"sip__method": "ACK"})
    got = ev.first("bob", "sip.recv", **{"sip__method": "ACK"})
    if sent is None:
        return False, "Alice sent no ACK", None
    if got is None:
        return False, "the ACK did not reach Bob", _t(sent)
    # every proxy that Record-Routed the INVITE is in the route set the ACK must follow (§12.2.1.1)
    routed = [p for p in ("proxy-a", "proxy-b") if _invite(ev, p, "sip.recv")]
    via = [p for p in routed if ev.first(p, "sip.recv", **{"sip__method": "ACK"})]
    skipped = [p for p in routed if p not in via]
    if skipped:
        return False, f"the ACK bypassed {', '.join(skipped)}, which Record-Routed the INVITE", _t(got)
    return True, f"via {', '.join(via)}", _t(got)


def _media_direction(ev: Evidence, *, sender: str, receiver: str) -> tuple[bool, str, float | None]:
    rx, tx = ev.media(receiver), ev.media(sender)
    received, failed = int(rx.get("srtp_received", 0)), int(rx.get("srtp_auth_failed", 0))
    first = ev.first(receiver, "srtp.first_received")
    if received == 0:
        return False, f"{receiver} decrypted no SRTP from {sender} ({tx.get('srtp_sent', 0)} sent)", None
    if failed:
        return False, f"{failed} SRTP packets failed authentication at {receiver}", _t(first)
    return True, f"{received}/{tx.get('srtp_sent', '?')} packets decrypted, 0 authentication failures", _t(first)


# --------------------------------------------------------------------------- RFC 5763 §7.1

FLOW_7_1 = "rfc5763-7.1"


@check(
    "1",
    "INVITE with the offer: a=setup:actpass, a=fingerprint, Alice's own address",
    "RFC 5763 §5, §7.1",
    flow=FLOW_7_1,
)
def _s71_m1(ev: Evidence) -> tuple[bool, str, float | None]:
    invite = _invite(ev, "alice", "sip.send")
    if invite is None:
        return False, "Alice sent no INVITE", None
    a = invite["attrs"]
    problems = _offer_problems(a)
    advertised = a.get("sdp.media", "")
    if ev.alice_media_local and advertised != ev.alice_media_local:  # no NAT: what she offers is her socket
        problems.append(f"advertised {advertised}, not her media socket {ev.alice_media_local} (a NAT in the way?)")
    if problems:
        return False, "; ".join(problems), _t(invite)
    return True, f"offer {advertised}, setup actpass, fingerprint {a['sdp.fingerprint'][:23]}...", _t(invite)


check("2", "INVITE reaches Bob through both proxies, body unchanged", "RFC 3261 §16.6, RFC 5763 §7.1", flow=FLOW_7_1)(
    _m2
)


@check("3", "Bob's first ClientHello reaches Alice: nothing drops it", "RFC 5763 §7.1", flow=FLOW_7_1)
def _s71_m3(ev: Evidence) -> tuple[bool, str, float | None]:
    first = ev.first("bob", "dtls.send", cause="start", **{"dtls__handshake_types": "~client_hello"})
    if first is None:
        return False, "Bob sent no ClientHello", None
    seq = first["attrs"].get("dtls.record_sequence")
    arrived = ev.first("alice", "dtls.recv", **{"dtls__handshake_types": "~client_hello"})
    drops = ev.find("natgw", "nat.drop", **{"dtls__handshake_types": "~client_hello"})
    if drops:
        return False, f"the gateway dropped {len(drops)} ClientHello (a NAT in the way: that is §7.3)", _t(drops[0])
    if arrived is None:
        return False, f"Bob's ClientHello (record seq {seq}) never reached Alice", _t(first)
    if arrived["attrs"].get("dtls.record_sequence") != seq:
        got = arrived["attrs"].get("dtls.record_sequence")
        return False, f"the first ClientHello Alice got is record seq {got}, not Bob's first ({seq})", _t(arrived)
    return True, f"record seq {seq}, {arrived['t'] - first['t']:.3f}s after Bob sent it", _t(arrived)


check(
    "4",
    "Alice's flight: ServerHello with use_srtp, Certificate, CertificateRequest",
    "RFC 5764 §4.1.1, RFC 5763 §7.1",
    flow=FLOW_7_1,
)(_m8)


@check(
    "5",
    "Bob's flight: Certificate, ClientKeyExchange, CertificateVerify, Finished",
    "RFC 6347, RFC 5763 §7.1",
    flow=FLOW_7_1,
)
def _s71_m5(ev: Evidence) -> tuple[bool, str, float | None]:
    key_exchange = ev.first("alice", "dtls.recv", **{"dtls__handshake_types": "~client_key_exchange"})
    if key_exchange is None:
        return False, "Alice received no ClientKeyExchange from Bob", None
    types: set[str] = set()
    for e in ev.find("alice", "dtls.recv"):
        if abs(e["t"] - key_exchange["t"]) <= 0.5:  # the flight's datagrams, sent together (not a later close)
            types.update(e["attrs"].get("dtls.handshake_types", "").split(","))
    missing = [t for t in ("certificate", "client_key_exchange", "certificate_verify", "encrypted") if t not in types]
    if missing:
        return False, f"Bob's flight lacks {', '.join(missing)} (encrypted = his Finished)", _t(key_exchange)
    return True, "Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished", _t(key_exchange)


@check("6", "Bob's early media is not trusted before his fingerprint arrives", "RFC 5763 §7.1, §6.2", flow=FLOW_7_1)
def _s71_m6(ev: Evidence) -> tuple[bool, str, float | None]:
    ok = _ok_to_invite(ev, "alice", "sip.recv")
    verified = ev.first("alice", "dtls.connected")
    played = ev.first("alice", "srtp.first_received")
    held = ev.first("alice", "srtp.held")
    if played is not None and (verified is None or played["t"] < verified["t"]):
        return False, "Alice decrypted Bob's SRTP before she verified his certificate", _t(played)
    if held is None:
        when = "before" if played is None or ok is None or played["t"] >= ok["t"] else "after"
        return True, f"no SRTP from Bob arrived before his answer ({when} it: nothing to hold)", _t(played)
    released = ev.first("alice", "srtp.released")
    if released is None:
        return False, "Alice held Bob's early SRTP and never released it", _t(held)
    if ok is not None and held["t"] > ok["t"]:
        return False, "Alice held SRTP that arrived after the answer", _t(held)
    return (
        True,
        f"held {released['attrs'].get('packets', '?')} early packet(s), released when his "
        f"certificate matched, {released['t'] - held['t']:.3f}s later",
        _t(held),
    )


@check("7", "Alice's Finished: the handshake completes before the 200 OK reaches her", "RFC 5763 §7.1", flow=FLOW_7_1)
def _s71_m7(ev: Evidence) -> tuple[bool, str, float | None]:
    complete = ev.first("alice", "dtls.handshake_complete") or ev.first("alice", "dtls.connected")
    bob = ev.first("bob", "dtls.connected")
    ok = _ok_to_invite(ev, "alice", "sip.recv")
    if complete is None or bob is None:
        missing = [n for n, e in (("Alice", complete), ("Bob", bob)) if e is None]
        return False, f"no completed handshake at {' and '.join(missing)}", None
    if ok is not None and complete["t"] > ok["t"]:
        return (
            False,
            f"the handshake completed {complete['t'] - ok['t']:.3f}s after the answer (§7.3's order)",
            _t(complete),
        )
    connected = ev.first("alice", "dtls.connected")
    if connected is not None and connected["attrs"].get("exporter_digest") != bob["attrs"].get("exporter_digest"):
        return False, "the two sides exported different keying material", _t(bob)
    if bob["attrs"].get("peer_fingerprint_verified") != "True":
        return False, "Bob did not verify Alice's certificate against the offer", _t(bob)
    ahead = f", {ok['t'] - complete['t']:.3f}s before the answer" if ok is not None else ""
    return True, f"profile {bob['attrs'].get('profile')}; Bob verified Alice's certificate{ahead}", _t(complete)


check("8", "Bob's 200 OK with a=setup:active and his fingerprint", "RFC 5763 §5, RFC 4145", flow=FLOW_7_1)(_m4)


@check(
    "9", "On the 200 OK Alice checks Bob's certificate against its a=fingerprint", "RFC 5763 §5, §7.1", flow=FLOW_7_1
)
def _s71_m9(ev: Evidence) -> tuple[bool, str, float | None]:
    ok = _ok_to_invite(ev, "alice", "sip.recv")
    if ok is None:
        return False, "Alice received no 200 OK to her INVITE", None
    ok_via = [p for p in ("proxy-b", "proxy-a") if _ok_to_invite(ev, p, "sip.recv")]
    if len(ok_via) != 2:
        return False, f"the 200 OK came through {ok_via or 'no proxy'}, not back along the Via path", _t(ok)
    passed, detail, when = _m9(ev)
    if not passed:
        return passed, detail, when
    connected = ev.first("alice", "dtls.connected")
    assert connected is not None  # _m9 passed
    if connected["t"] < ok["t"]:
        return False, "Alice trusted Bob's certificate before his answer said what it must be", _t(connected)
    return True, f"{detail} when the answer arrived (via proxy-b, proxy-a)", _t(connected)


@check("10", "Two-way SRTP: each side decrypts the other's", "RFC 5764 §4.2, RFC 5763 §7.1", flow=FLOW_7_1)
def _s71_m10(ev: Evidence) -> tuple[bool, str, float | None]:
    results = {r: _media_direction(ev, sender=s, receiver=r) for s, r in (("bob", "alice"), ("alice", "bob"))}
    failed = [f"at {r}: {d}" for r, (ok, d, _) in results.items() if not ok]
    if failed:
        return False, "; ".join(failed), None
    times = [w for _, _, w in results.values() if w is not None]
    return True, "; ".join(f"{r}: {d}" for r, (_, d, _) in results.items()), max(times) if times else None


check("11", "ACK for the 200 OK reaches Bob along the route set", "RFC 3261 §13.2.2.4, §12.2.1.1", flow=FLOW_7_1)(_m12)


def judge(data: dict[str, Any], scenario: str = "", flow: str | None = None) -> Verdict:
    """Run every check of the figure (`flow`, else the evidence's, else §7.3); the run passes only if all pass."""
    flow = flow or data.get("flow") or DEFAULT_FLOW
    if flow not in FLOWS:
        raise ValueError(f"no checks for flow {flow!r}; known: {', '.join(FLOWS)}")
    ev = Evidence(data)
    checks = []
    for message, title, rfc, fn in FLOWS[flow]:
        try:
            passed, detail, when = fn(ev)
        except Exception as error:  # a check must report, not crash the judge
            passed, detail, when = False, f"check could not be evaluated: {type(error).__name__}: {error}", None
        checks.append(Check(message, title, rfc, passed, detail, when))
    notes = list(_notes(ev))
    return Verdict(scenario or data.get("scenario", ""), all(c.passed for c in checks), checks, notes, flow=flow)


def _notes(ev: Evidence) -> Iterable[str]:
    yield "SIP runs over UDP: the signalling is not integrity-protected (RFC 5763 §5 SHOULD use TLS)"
    yield "no Identity header: the authentication service of RFC 4474/8224 is not staged"
