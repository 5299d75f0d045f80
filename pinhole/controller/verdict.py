"""The verdict of a call against an RFC 5763 figure, read from the wire: a pure function of the evidence.

The evidence is what crossed the links (`pinhole.wire`: the capture of every link, and the key log
that decrypts the handshakes and authenticates the SRTP), plus, only for what no packet can show, what
pinhole's own services said about themselves (their spans). Every check reads the packets first; a
check that also rests on a service's own word says so ("self-reported"). So a node pinhole did not
write is judged by the same evidence as pinhole's own, and a service cannot pass a check by saying so.

Each numbered message of a figure is one check. A failure is either against an RFC (its section is
named) or against the figure where the RFC allows what happened (Bob answering a=setup:passive, a
proxy that does not Record-Route, a NAT that lets the first ClientHello through): `Check.kind` says
which. Two figures are judged:

- §7.3 (`rfc5763-7.3`, the default): the spec digest's table §1.1; "(11)" is used twice in the RFC,
  so 11a and 11b here. The order of media (10) and Finished (11a), and the ACK (12) coming last, are
  not judged: the RFC does not require them.
- §7.1 (`rfc5763-7.1`): no NAT, so Bob's first ClientHello reaches Alice and the handshake ends
  before his 200 OK; Alice may trust Bob's early media (6) only once the answer's fingerprint vouches
  for his certificate (9). Messages 4/5/7 are the DTLS flights they stand for (the digest's §3 item 2).

The caller and callee, the NAT and its links, the proxies of the figure and the lab's timers come
from the run's description in the capture (`wire.RunInfo`); the call is found by its Call-ID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from pinhole import dtls, rtp, sdp, stun
from pinhole.address import Address, fmt
from pinhole.sip.message import Request, Response, SipParseError, parse_uri
from pinhole.wire import Association, Call, Datagram, RunInfo, Sighting, Wire

Event = dict[str, Any]  # a self-report: {"t", "service", "kind", "call_id", "attrs": {...}} (from the trace)
DEFAULT_FLOW = "rfc5763-7.3"  # the figure a run is judged against unless its scenario names another
RFC, FIGURE = "rfc", "figure"  # what a failing check broke: an RFC requirement, or the figure's expectation
WIRE, SELF_REPORTED = "wire", "wire + self-reported"  # what a check reads
BEFORE_INVITE = "could not prepare the call"  # how a user agent's call.failed says it gave up before its INVITE

#: RFC 6347 §4.2.4.1 timer judgement of a retransmission: no sooner than the timer (less this share,
#: and this much for the capture's and the scheduler's jitter); later than twice the timer is noted only
TIMER_TOLERANCE = 0.10
TIMER_SLACK = 0.02
RFC_DTLS_INITIAL, RFC_DTLS_MAXIMUM = 1.0, 60.0


@dataclass
class Check:
    message: str
    title: str
    rfc: str
    passed: bool
    detail: str
    time: float | None = None
    kind: str = ""  # of a failure: "rfc" or "figure"
    evidence: str = WIRE


@dataclass
class Verdict:
    scenario: str
    passed: bool
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    broken: str = ""  # the lab could not run the scenario, or its capture is not the whole wire
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
            against = f" ({'against the figure' if c.kind == FIGURE else 'RFC'})" if not c.passed else ""
            lines.append(f"  {mark}  ({c.message:>3}) {c.title} [{c.rfc}]{against}")
            lines.append(f"              {c.detail}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.broken:
            lines.append(f"  broken: {self.broken}")
        lines.append(f"verdict: {self.outcome.upper()} ({self.scenario}; {FLOW_TITLES.get(self.flow, self.flow)})")
        return "\n".join(lines)


class Failure(Exception):
    """A check's failure: what went wrong, and whether the RFC or only the figure asks otherwise."""

    def __init__(self, detail: str, when: float | None = None, kind: str = RFC) -> None:
        super().__init__(detail)
        self.detail, self.when, self.kind = detail, when, kind


# --------------------------------------------------------------------------- the evidence


def _sip(d: Datagram | None) -> Request | Response | None:
    return d.sip if d is not None else None


def _invite_key(d: Datagram) -> tuple[str, int] | None:
    m = d.sip
    try:
        return (m.method if isinstance(m, Request) else "", m.cseq.number) if m is not None else None
    except (SipParseError, ValueError):
        return None


class Evidence:
    """The call as the wire shows it, with the run's description and, optionally, the services' own reports."""

    def __init__(self, wire: Wire, call_id: str | None = None, reports: list[Event] | None = None) -> None:
        self.wire = wire
        self.info: RunInfo = wire.info
        self.call: Call | None = wire.call(call_id or self.info.get("call_id"))
        self.reports = sorted(reports or [], key=lambda e: e["t"])
        roles = self.info.get("roles", {})
        self.caller: str = roles.get("caller") or self._node_of_first("INVITE", sender=True) or "alice"
        self.callee: str = roles.get("callee") or self._node_of_first("INVITE", sender=False) or "bob"
        self.plain_rtcp: dict[Address, int] = {}  # RTCP a media socket sent in the clear (srtp_check)
        # pinhole's timers are its own agents'; a third party's DTLS client keeps RFC 6347's, as far as we know
        timers = {} if self.callee in self.info.get("external", {}) else self.info.get("timers", {})
        self.dtls_initial = float(timers.get("dtls_initial") or RFC_DTLS_INITIAL)
        self.dtls_maximum = float(timers.get("dtls_maximum") or RFC_DTLS_MAXIMUM)

    def _node_of_first(self, method: str, *, sender: bool) -> str:
        if self.call is None:
            return ""
        for d in self.call.messages(method=method):
            node = self.wire.node(d.src if sender else d.dst)
            if node:
                return node
        return ""

    # -- where a datagram went, as far as the capture shows

    def reached(self, d: Datagram, node: str) -> Sighting | None:
        """`d`'s sighting on the way into `node`; where no link of `node` was captured (a cluster), its last
        sighting if it was addressed to `node` (as far as the capture shows)."""
        if self.wire.covers(node):
            return d.delivered_to(node)
        return d.last if self.wire.node(d.own_dst) == node else None

    def left(self, d: Datagram, node: str) -> Sighting | None:
        """`d`'s sighting on the way out of `node` (its first, where no link of `node` was captured)."""
        if self.wire.covers(node):
            return d.sent_by(node)
        return d.first if self.wire.node(d.own_src) == node else None

    # -- SIP

    @cached_property
    def invite_sent(self) -> Datagram | None:
        """The initial INVITE as the caller sent it (no To tag), the first transmission."""
        if self.call is None:
            return None
        for d in self.call.messages(method="INVITE"):
            m = d.sip
            if isinstance(m, Request) and m.to.tag is None and self.left(d, self.caller) is not None:
                return d
        return None

    @property
    def invite_cseq(self) -> int | None:
        m = _sip(self.invite_sent)
        return m.cseq.number if m is not None else None

    def hops(self, first: Datagram | None, method: str) -> list[Datagram]:
        """The datagrams that carried one request from the caller on: each sent by the node the previous went to."""
        if first is None or self.call is None:
            return []
        key = _invite_key(first)
        chain = [first]
        candidates = [d for d in self.call.messages(method=method) if _invite_key(d) == key and d is not first]
        while len(chain) < 10:
            at = self.wire.node(chain[-1].own_dst)
            if not at or at == self.callee:
                break
            following = next((d for d in candidates if self.wire.node(d.own_src) == at and d.t >= chain[-1].t), None)
            if following is None:
                break
            chain.append(following)
            candidates.remove(following)
        return chain

    @cached_property
    def invite_hops(self) -> list[Datagram]:
        return self.hops(self.invite_sent, "INVITE")

    @cached_property
    def invite_at_callee(self) -> Datagram | None:
        last = self.invite_hops[-1] if self.invite_hops else None
        return last if last is not None and self.reached(last, self.callee) else None

    def _ok(self, at: str, *, sent: bool) -> Datagram | None:
        if self.call is None or self.invite_cseq is None:
            return None
        for d in self.call.messages(status=200, cseq_method="INVITE", cseq=self.invite_cseq):
            if (self.left(d, at) if sent else self.reached(d, at)) is not None:
                return d
        return None

    @cached_property
    def ok_sent(self) -> Datagram | None:
        """Bob's 200 OK to the INVITE, as he sent it."""
        return self._ok(self.callee, sent=True)

    @cached_property
    def ok_at_caller(self) -> Datagram | None:
        """The 200 OK to the INVITE as it reached Alice."""
        return self._ok(self.caller, sent=False)

    def facts(self, d: Datagram | None) -> sdp.Facts:
        m = _sip(d)
        return sdp.facts(m.body) if m is not None and m.body else sdp.Facts(error="no SDP body")

    @cached_property
    def offer(self) -> sdp.Facts:
        return self.facts(self.invite_sent)

    @cached_property
    def answer(self) -> sdp.Facts:
        return self.facts(self.ok_at_caller)

    # -- media

    @cached_property
    def caller_media(self) -> Address | None:
        """Alice's media socket as she owns it: the inside of the NAT mapping her offer advertises."""
        if not self.offer.address:
            return None
        return self.wire.own((self.offer.address, self.offer.port))

    @cached_property
    def callee_media(self) -> Address | None:
        facts = self.answer if self.answer.address else self.facts(self.ok_sent)
        if not facts.address:
            return None
        return self.wire.own((facts.address, facts.port))

    @cached_property
    def association(self) -> Association | None:
        """The first DTLS association between the two media sockets (whoever is its client)."""
        if self.call is None:
            return None
        pair = {self.caller_media, self.callee_media}
        return next((a for a in self.call.associations if {a.client, a.server} == pair), None)

    def checks(self, sender: Address | None, receiver: Address | None) -> list[Datagram]:
        """STUN Binding requests from `sender` to `receiver` (own addresses), every transmission."""
        if self.call is None:
            return []
        return [
            d
            for d in self.call.media
            if d.kind == "stun"
            and d.stun is not None
            and d.stun.message_class == stun.MessageClass.REQUEST
            and d.own_src == sender
            and d.own_dst == receiver
        ]

    def srtp_check(self, sender: Address | None) -> tuple[int, int, int, int, str]:
        """SRTP/SRTCP `sender` sent in the association, authenticated with the keys the handshake exported
        for it: (authenticated, authenticated and delivered to the other side, failed, failed but
        authenticating with the other side's keys, what was wrong). `plain_rtcp` counts, of the failed,
        the RTCP packets sent in the clear."""
        a = self.association
        if a is None or sender is None:
            return 0, 0, 0, 0, "no DTLS association between the two media sockets"
        keys = a.srtp_keys
        packets = a.srtp_from(sender)
        if keys is None:
            why = "no key log line for this association" if a.master_secret is None else "no SRTP profile negotiated"
            return 0, 0, 0, 0, f"cannot authenticate {len(packets)} packet(s): {why}"
        own, other = (keys[0], keys[1]) if sender == a.client else (keys[1], keys[0])
        session, wrong = own.session(), other.session()
        receiver = self.callee if sender == self.caller_media else self.caller
        ok = delivered = failed = swapped = 0
        self.plain_rtcp[sender] = 0
        seen: set[bytes] = set()
        for d in packets:
            if d.payload in seen:  # a duplicate (injected or retransmitted) is the same packet
                continue
            seen.add(d.payload)
            unprotect = session.unprotect_rtcp if d.kind == "rtcp" else session.unprotect
            try:
                unprotect(d.payload)
            except Exception:  # noqa: BLE001 - libsrtp's refusal, whatever its reason
                failed += 1
                if d.kind == "rtcp" and rtp.is_plain_rtcp(d.payload):
                    self.plain_rtcp[sender] = self.plain_rtcp.get(sender, 0) + 1
                    continue
                check = wrong.unprotect_rtcp if d.kind == "rtcp" else wrong.unprotect
                try:
                    check(d.payload)
                    swapped += 1
                except Exception:  # noqa: BLE001
                    pass
                continue
            ok += 1
            delivered += self.reached(d, receiver) is not None
        return ok, delivered, failed, swapped, ""

    # -- self-reports

    def reported(self, service: str, kind: str, **attrs: str) -> list[Event]:
        return [
            e
            for e in self.reports
            if e["service"] == service
            and e["kind"] == kind
            and all(e.get("attrs", {}).get(k.replace("__", ".")) == v for k, v in attrs.items())
        ]


CheckFn = Callable[[Evidence], tuple[str, float | None]]
FLOW_TITLES = {
    "rfc5763-7.3": "RFC 5763 §7.3, basic message flow with STUN check for NAT case",
    "rfc5763-7.1": "RFC 5763 §7.1, basic message flow with early media (no NAT)",
}
FLOWS: dict[str, list[tuple[str, str, str, str, CheckFn]]] = {flow: [] for flow in FLOW_TITLES}


def check(
    message: str, title: str, rfc: str, *, flow: str = DEFAULT_FLOW, evidence: str = WIRE
) -> Callable[[CheckFn], CheckFn]:
    """Register a check of one message of one figure; it returns (detail, time) or raises Failure."""

    def register(fn: CheckFn) -> CheckFn:
        FLOWS[flow].append((message, title, rfc, evidence, fn))
        return fn

    return register


def messages(flow: str = DEFAULT_FLOW) -> tuple[str, ...]:
    """The figure's message numbers, as its checks name them."""
    return tuple(message for message, *_ in FLOWS[flow])


def evidence_of(flow: str = DEFAULT_FLOW) -> dict[str, str]:
    """message -> what its check reads (wire, or wire + self-reported)."""
    return {message: evidence for message, _, _, evidence, _ in FLOWS[flow]}


# --------------------------------------------------------------------------- shared pieces


def _when(d: Datagram | None) -> float | None:
    return None if d is None else d.t


def _fingerprint_text(facts: sdp.Facts) -> str:
    return facts.fingerprints[0][:30] + "..." if facts.fingerprints else "none"


def _offer_problems(offer: sdp.Facts, flow_setup_note: str = "") -> list[str]:
    """What RFC 5763 §5 asks of every offer: actpass, a fingerprint, DTLS-SRTP, no a=connection."""
    problems = []
    if offer.error:
        return [f"the offer's SDP does not parse: {offer.error}"]
    if offer.setup != "actpass":
        problems.append(
            f"a=setup is {offer.setup or 'absent'}, not actpass "
            "(RFC 5763 §5; RFC 8842 §5.2 later allows active/passive)"
        )
    if not offer.fingerprints:
        problems.append("no a=fingerprint (RFC 5763 §5)")
    if not offer.proto.startswith("UDP/TLS/RTP/SAVP") and not offer.capneg:
        problems.append(f"proto {offer.proto} and no RFC 5939 capability negotiation (RFC 5763 §5, §6.11)")
    if offer.connection:
        problems.append(f"a=connection:{', '.join(offer.connection)} (RFC 5763 §5: MUST NOT)")
    return problems


def _certificate_problem(der: bytes | None, facts: sdp.Facts, whose: str, sdp_name: str) -> str:
    """'' if `der` matches one of the SDP's fingerprints (RFC 8122 §5: any with a supported hash), else why not."""
    if der is None:
        return ""
    fingerprints = facts.parsed_fingerprints()
    usable = [f for f in fingerprints if f.supported]
    if any(f.matches(der) for f in usable):
        return ""
    shown = sdp.certificate_fingerprint(der, usable[0].hash_function if usable else "sha-256")
    return (
        f"the certificate {whose} presented on the wire ({str(shown)[:38]}...) matches no a=fingerprint of "
        f"the {sdp_name} ({_fingerprint_text(facts)}) (RFC 5763 §5)"
    )


def _hash_note(facts: sdp.Facts) -> str:
    hashes = {f.hash_function for f in facts.parsed_fingerprints()}
    if "sha-1" in hashes:
        return (
            "; sha-1 fingerprint: allowed by RFC 8122 §5 (RFC 4572 wanted the certificate's signature hash), but weak"
        )
    return ""


@dataclass(frozen=True)
class Arrival:
    """A request arriving at a node: what its Max-Forwards, body and Record-Routes were there."""

    node: str
    max_forwards: int | None
    body_sha256: str
    record_routes: int
    t: float
    self_reported: bool = False


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _arrivals(ev: Evidence, first: Datagram | None, method: str) -> list[Arrival]:
    """Where one request went from the caller on, hop by hop: from the wire, and past the last captured
    link from the reports of the nodes it reached (a cluster captures only where a pod can)."""
    out = []
    for d in ev.hops(first, method):
        m = d.sip
        assert isinstance(m, Request)
        node = ev.wire.node(d.own_dst) or fmt(d.own_dst)
        seen = ev.reached(d, node)
        out.append(
            Arrival(node, m.max_forwards, _sha256(m.body), len(m.headers.get_all("Record-Route")), (seen or d.last).t)
        )
    last = out[-1].node if out else ""
    if last and last != ev.callee and not ev.wire.covers(last) and first is not None:
        cseq = str(first.sip.cseq.number) if first.sip is not None else ""
        for e in ev.reports:
            a = e.get("attrs", {})
            if (
                e["kind"] == "sip.recv"
                and a.get("sip.method") == method
                and a.get("sip.cseq") == cseq
                and e["service"] not in [x.node for x in out]
                and e["t"] >= out[-1].t - 1.0
            ):
                mf = a.get("sip.max_forwards", "")
                out.append(
                    Arrival(
                        e["service"],
                        int(mf) if mf.isdigit() else None,
                        a.get("sdp.sha256", ""),
                        int(a.get("sip.record_route_count", "0") or 0),
                        e["t"],
                        True,
                    )
                )
    return out


def _path_text(ev: Evidence, arrivals: list[Arrival]) -> str:
    reported = [a.node for a in arrivals if a.self_reported]
    path = " -> ".join([ev.caller, *(a.node for a in arrivals)])
    return path + (f" (self-reported past the captured links: {', '.join(reported)})" if reported else "")


def _invite_path(ev: Evidence) -> str:
    """Check 2: the INVITE went caller -> the figure's proxies -> callee, each proxy decrementing
    Max-Forwards and leaving the body alone (RFC 3261 §16.6), Record-Routing (the figure)."""
    invite = ev.invite_sent
    if invite is None or invite.sip is None:
        raise Failure(f"{ev.caller} sent no INVITE")
    arrivals = _arrivals(ev, invite, "INVITE")
    nodes = [a.node for a in arrivals]
    expected = [*ev.info.get("proxies", []), ev.callee]
    problems_rfc, problems_figure = [], []
    body = _sha256(invite.sip.body)
    for previous, following in zip(arrivals, arrivals[1:]):
        if previous.max_forwards is not None and following.max_forwards != previous.max_forwards - 1:
            problems_rfc.append(
                f"{previous.node} forwarded Max-Forwards {following.max_forwards} of "
                f"{previous.max_forwards} (RFC 3261 §16.6 step 3: decrement)"
            )
    changed = next((a for a in arrivals if a.body_sha256 and a.body_sha256 != body), None)
    if changed is not None:
        at = nodes[nodes.index(changed.node) - 1] if nodes.index(changed.node) else ev.caller
        problems_rfc.append(f"{at} changed the SDP body (RFC 3261 §16.6 step 1: MUST NOT modify it)")
    if ev.callee not in nodes:
        raise Failure(
            f"the INVITE never reached {ev.callee} (it went {_path_text(ev, arrivals)})",
            arrivals[-1].t if arrivals else invite.t,
        )
    at_callee = arrivals[nodes.index(ev.callee)]
    proxies = len(nodes) - 1
    if nodes != expected:
        problems_figure.append(
            f"it went {_path_text(ev, arrivals)}, the figure's path is {' -> '.join([ev.caller, *expected])}"
        )
    if at_callee.record_routes != proxies:
        problems_figure.append(
            f"{at_callee.record_routes} Record-Route entries for {proxies} proxies (the figure's proxies "
            "Record-Route; RFC 3261 §16.6 step 4 leaves it to them)"
        )
    if problems_rfc:
        raise Failure("; ".join(problems_rfc + problems_figure), at_callee.t, RFC)
    if problems_figure:
        raise Failure("; ".join(problems_figure), at_callee.t, FIGURE)
    return (
        f"{_path_text(ev, arrivals)}; Record-Route x{at_callee.record_routes}; Max-Forwards "
        f"{at_callee.max_forwards}; body byte-identical"
    )


def _ack(ev: Evidence) -> tuple[str, float | None]:
    """Check 12 (§7.1: 11): the ACK for the 2xx reaches Bob through every proxy that Record-Routed."""
    if ev.call is None or ev.invite_cseq is None:
        raise Failure(f"{ev.caller} sent no INVITE")
    acks = [d for d in ev.call.messages(method="ACK", cseq=ev.invite_cseq) if ev.left(d, ev.caller)]
    if not acks:
        raise Failure(f"{ev.caller} sent no ACK")
    arrivals = _arrivals(ev, acks[0], "ACK")
    nodes = [a.node for a in arrivals]
    if ev.callee not in nodes:
        raise Failure(f"the ACK did not reach {ev.callee} (it went {_path_text(ev, arrivals)})", acks[0].t)
    when = arrivals[nodes.index(ev.callee)].t
    ok = ev.ok_at_caller.sip if ev.ok_at_caller is not None else None
    route_set = []
    for value in ok.headers.get_all("Record-Route") if ok is not None else []:
        for part in value.split(","):
            uri = part.strip().strip("<>").split(">")[0]
            try:
                host = parse_uri(uri).hostport[0]  # type: ignore[union-attr]
            except (SipParseError, ValueError, AttributeError):
                continue
            route_set.append(ev.wire.info.node_of(host) or host)
    skipped = [p for p in route_set if p not in nodes]
    if skipped:
        raise Failure(
            f"the ACK went {_path_text(ev, arrivals)}, bypassing {', '.join(skipped)}, which Record-Routed the "
            "INVITE (RFC 3261 §12.2.1.1: the route set)",
            when,
        )
    extra = [p for p in nodes[:-1] if p not in route_set]
    note = f"; {', '.join(extra)} on the way without Record-Routing (an outbound proxy)" if extra else ""
    return f"{_path_text(ev, arrivals)}, the route set {route_set or 'empty'}{note}", when


def _answer(ev: Evidence) -> tuple[str, float | None]:
    """Check 4 (§7.1: 8): the answer Alice got: active or passive, a fingerprint that is Bob's certificate on
    the wire, no a=connection, DTLS-SRTP; the same body Bob sent."""
    ok = ev.ok_at_caller
    if ok is None:
        sent = ev.ok_sent
        if sent is not None:
            raise Failure(
                f"{ev.callee}'s 200 OK never reached {ev.caller} (last seen on {sent.last.link.name})", sent.t
            )
        raise Failure(f"{ev.caller} received no 200 OK to her INVITE")
    answer = ev.answer
    if answer.error:
        raise Failure(f"the answer's SDP does not parse: {answer.error}", ok.t)
    problems = []
    if answer.setup not in ("active", "passive"):
        problems.append(f"a=setup:{answer.setup or '(absent)'} in the answer (RFC 5763 §5: active or passive)")
    if answer.connection:
        problems.append(f"a=connection:{', '.join(answer.connection)} (RFC 5763 §5: MUST NOT)")
    if not answer.fingerprints:
        problems.append("no a=fingerprint (RFC 5763 §5)")
    if not answer.proto.startswith("UDP/TLS/RTP/SAVP") and not answer.capneg:
        problems.append(f"proto {answer.proto} (RFC 5763 §5)")
    sent = ev.ok_sent
    if sent is not None and sent.sip is not None and ok.sip is not None and sent.sip.body != ok.sip.body:
        problems.append("the SDP body changed between Bob and Alice (RFC 3261 §16.7 step 9: MUST NOT)")
    a = ev.association
    mismatch = _certificate_problem(
        a.certificate(ev.callee_media) if a and ev.callee_media else None, answer, ev.callee, "answer"
    )
    if mismatch:
        problems.append(mismatch)
    if problems:
        raise Failure("; ".join(problems), ok.t)
    seen = a and ev.callee_media and a.certificate(ev.callee_media)
    checked = "matches Bob's certificate on the wire" if seen else "(certificate not seen)"
    text = f"setup {answer.setup}, fingerprint {_fingerprint_text(answer)} {checked}, media {answer.media}"
    if answer.setup == "passive":
        raise Failure(text + "; §7.3 has Bob active (RFC 5763 §5 allows passive, only RECOMMENDS active)", ok.t, FIGURE)
    return text + _hash_note(answer), ok.t


def _flight_4(ev: Evidence) -> tuple[str, float | None]:
    """Check 8 (§7.1: 4): the DTLS server's flight: ServerHello with exactly one use_srtp profile the client
    offered, Certificate, CertificateRequest (mutual authentication), ServerHelloDone."""
    a = ev.association
    if a is None:
        raise Failure("no DTLS handshake between the two media sockets")
    sent = a.messages(a.server)
    names = [_name(m.msg_type) for m in sent]
    server = ev.wire.node(a.server)
    if "server_hello" not in names:
        raise Failure(f"{server} sent no ServerHello")
    when = next(m.datagram.t for m in sent if _name(m.msg_type) == "server_hello")
    missing = [t for t in ("certificate", "certificate_request", "server_hello_done") if t not in names]
    if missing:
        extra = " (RFC 5763 §5: mutual certificate authentication)" if "certificate_request" in missing else ""
        raise Failure(f"{server}'s flight lacks {', '.join(missing)}{extra}", when)
    hello, offered = a.server_hello, a.client_hello.srtp_profiles if a.client_hello else ()
    chosen = hello.srtp_profiles if hello else ()
    if len(chosen) != 1:
        raise Failure(f"the ServerHello lists {len(chosen)} use_srtp profiles (RFC 5764 §4.1.1: exactly one)", when)
    if chosen[0] not in offered:
        raise Failure(
            f"the ServerHello chose profile 0x{chosen[0]:04x}, which the ClientHello did not offer (RFC 5764 §4.1.1)",
            when,
        )
    profile = dtls.SRTP_PROTECTION_PROFILES.get(chosen[0], f"0x{chosen[0]:04x}")
    return f"ServerHello (use_srtp {profile}, offered), Certificate, CertificateRequest, ServerHelloDone", when


def _name(msg_type: int) -> str:
    return msg_type.name if isinstance(msg_type, dtls.HandshakeType) else str(msg_type)


def _accepted(a: Association, side: Address) -> tuple[bool, str]:
    """Whether `side` went on with the association: its Finished, or SRTP it sent; and what shows it."""
    finished = a.finished(side)
    media = a.srtp_from(side)
    alerts = [text for _, text in a.alerts(side) if text.startswith("fatal")]
    shown = []
    if finished is not None:
        shown.append("its Finished (decrypted)" if finished[1] == "finished" else f"its Finished ({finished[1]})")
    if media:
        shown.append(f"{len(media)} SRTP packet(s)")
    refused = f"fatal alert {', '.join(alerts)}" if alerts else "no alert"
    return bool(finished is not None or media), ", ".join(shown) or refused


def _verification(
    ev: Evidence,
    verifier: str,
    verifier_media: Address | None,
    peer_media: Address | None,
    facts: sdp.Facts,
    sdp_name: str,
) -> tuple[str, float | None]:
    """`verifier`'s reaction to the peer's certificate on the wire, against the `facts` fingerprints it had:
    go on exactly when they match (RFC 5763 §5: a mismatch tears the media session down at once)."""
    a = ev.association
    if a is None or verifier_media is None or peer_media is None:
        raise Failure("no DTLS handshake between the two media sockets")
    der = a.certificate(peer_media)
    peer = ev.wire.node(peer_media)
    who = ev.wire.node(verifier_media) or verifier  # the socket's node: a box in the middle is not the party
    if der is None:
        accepted, shown = _accepted(a, verifier_media)
        if accepted:
            raise Failure(f"{who} went on ({shown}) although {peer} presented no certificate (RFC 5763 §5)")
        raise Failure(f"{peer}'s certificate never crossed the wire: the handshake did not get that far")
    mismatch = _certificate_problem(der, facts, peer, sdp_name)
    accepted, shown = _accepted(a, verifier_media)
    when = a.finished(verifier_media)[0].t if a.finished(verifier_media) else None  # type: ignore[index]
    digest = str(sdp.certificate_fingerprint(der))[:30]
    if mismatch and accepted:
        raise Failure(
            f"{who} accepted {peer}'s certificate although {mismatch[4:]}: {shown} crossed the wire "
            "(RFC 5763 §5: tear the media session down immediately)",
            when,
        )
    if mismatch:
        reported = [e for e in ev.reported(verifier, "dtls.failed")]
        said = f"; self-reported: {reported[0]['attrs'].get('reason', '')}" if reported else ""
        return (
            f"{peer}'s certificate ({digest}...) matches no a=fingerprint of the {sdp_name}, and {who} tore "
            f"the session down ({shown}; no Finished, no SRTP from {who}){said}",
            None,
        )
    if not accepted:
        raise Failure(
            f"{peer}'s certificate ({digest}...) matches the {sdp_name}, yet {who} did not go on ({shown})", None
        )
    return f"{peer}'s certificate {digest}... matches the {sdp_name}'s a=fingerprint; {who} went on: {shown}", when


def _media(ev: Evidence, sender: str, sender_media: Address | None, role: str) -> tuple[str, float | None]:
    """SRTP from `sender` authenticated with the keys the handshake exported for its DTLS role."""
    ok, delivered, failed, swapped, why = ev.srtp_check(sender_media)
    receiver = ev.callee if sender == ev.caller else ev.caller
    a = ev.association
    first = a.srtp_from(sender_media)[0] if a and sender_media and a.srtp_from(sender_media) else None
    if why:
        raise Failure(f"SRTP from {sender}: {why}", _when(first))
    if failed:
        plain = ev.plain_rtcp.get(sender_media, 0) if sender_media else 0
        problems = [f"{plain} RTCP packet(s) in the clear (RFC 3711 §3.4: SRTCP authentication is mandatory)"] * bool(
            plain
        )
        if failed > plain:
            keys = f" ({swapped} authenticate with the other side's keys: swapped)" if swapped else ""
            problems.append(
                f"{failed - plain} SRTP packet(s) do not authenticate with the {role}_write keys the handshake "
                f"exported{keys} (RFC 5764 §4.2)"
            )
        raise Failure(f"from {sender}, of {ok + failed}: {'; '.join(problems)}", _when(first))
    if not delivered:
        raise Failure(
            f"no SRTP from {sender} authenticated with the {role}_write keys reached {receiver} ({ok} sent)",
            _when(first),
        )
    said = ev.reported(receiver, "media.closed")
    decrypted = f"; {receiver} says it decrypted {said[-1]['attrs'].get('srtp_received')}" if said else ""
    return f"{delivered} packet(s) reached {receiver}, each authenticated with the {role}_write keys{decrypted}", _when(
        first
    )


def _role(ev: Evidence, side: Address | None) -> str:
    a = ev.association
    return "client" if a is not None and side == a.client else "server"


def _strangers(ev: Evidence) -> Iterable[str]:
    if ev.call is None:
        return
    for d in ev.call.strangers[:3]:
        summary = d.describe().get("summary", d.kind)
        yield f"{summary} from {fmt(d.own_src)}, no party of the call, to {fmt(d.own_dst)}: not judged as Bob's"


# --------------------------------------------------------------------------- RFC 5763 §7.3


def _callee_client(ev: Evidence) -> Association:
    """The association in which Bob is the DTLS client, as both figures draw him."""
    a = ev.association
    if a is None:
        raise Failure(f"no DTLS handshake between {ev.caller}'s and {ev.callee}'s media sockets")
    if a.client != ev.callee_media:
        raise Failure(
            f"{ev.callee} is not the DTLS client (his answer says a=setup:{ev.answer.setup}; the figure "
            "has him active)",
            None,
            FIGURE,
        )
    return a


@check("1", "INVITE with the offer: a=setup:actpass, a=fingerprint, Alice's NAT address", "RFC 5763 §5, §7.3")
def _m1(ev: Evidence) -> tuple[str, float | None]:
    invite = ev.invite_sent
    if invite is None:
        raise Failure(f"{ev.caller} sent no INVITE")
    offer = ev.offer
    problems = _offer_problems(offer)
    a = ev.association
    mismatch = _certificate_problem(
        a.certificate(ev.caller_media) if a and ev.caller_media else None, offer, ev.caller, "offer"
    )
    if mismatch:
        problems.append(mismatch)
    advertised = (offer.address, offer.port)
    inside = ev.caller_media
    if problems:
        raise Failure("; ".join(problems), invite.t)
    nat = ev.info.get("nat", {})
    if nat.get("translate", True):
        if inside is None or inside == advertised or ev.wire.node(inside) != ev.caller:
            raise Failure(
                f"the offer advertises {fmt(advertised)}, which no datagram on the wire shows as the NAT's "
                f"mapping of a socket of {ev.caller}'s",
                invite.t,
            )
        where = f"the NAT's mapping of {ev.caller}'s {fmt(inside)}"
    else:
        where = f"{ev.caller}'s own socket (no NAT)"
    media_from = a.client if a is not None and a.client != ev.callee_media else (a.server if a else None)
    if media_from is not None and media_from != inside:
        raise Failure(f"the offer advertises {where}, but {ev.caller}'s DTLS comes from {fmt(media_from)}", invite.t)
    return f"offer {fmt(advertised)} ({where}), setup actpass, fingerprint {_fingerprint_text(offer)}", invite.t


@check("2", "INVITE reaches Bob through both proxies, body unchanged", "RFC 3261 §16.6, RFC 5763 §7.3")
def _m2(ev: Evidence) -> tuple[str, float | None]:
    return _invite_path(ev), _when(ev.invite_at_callee)


@check("3", "Bob's first ClientHello is dropped by Alice's NAT", "RFC 5763 §7.3, §6.7.2")
def _m3(ev: Evidence) -> tuple[str, float | None]:
    a = _callee_client(ev)
    first = a.client_hellos[0]
    seq = first.records[0].sequence_number if first.records else "?"
    nat = ev.info.get("nat", {})
    outside = next((s for s in first.sightings if s.link.name == nat.get("outside")), None)
    delivered = ev.reached(first, ev.caller)
    check = next(iter(ev.checks(ev.caller_media, ev.callee_media)), None)
    at_callee = ev.reached(check, ev.callee) if check is not None else None
    sent = ev.left(first, ev.callee)
    if at_callee is not None and sent is not None and at_callee.t < sent.t:
        raise Failure(
            f"{ev.callee}'s first ClientHello left {sent.t - at_callee.t:.3f}s after {ev.caller}'s check "
            "reached him: he waited for it (RFC 5763 §6.7.2: the active side MUST go on with the handshake)",
            sent.t,
        )
    if delivered is not None:
        raise Failure(
            f"the first ClientHello (record seq {seq}) reached {ev.caller}: nothing dropped it (not the §7.3 flow)",
            delivered.t,
            FIGURE,
        )
    if outside is None:
        raise Failure(
            f"the first ClientHello (record seq {seq}) never reached the NAT (last seen on {first.last.link.name})",
            first.t,
            FIGURE,
        )
    if check is not None:
        check_out = next((s for s in check.sightings if s.link.name == nat.get("outside")), None)
        if check_out is not None and check_out.t < outside.t:
            raise Failure(
                f"the first ClientHello reached the NAT after {ev.caller}'s check had left", outside.t, FIGURE
            )
    reported = ev.reported(nat.get("node", "natgw"), "nat.drop")
    said = f"; the NAT says: dropped in its {reported[0]['attrs'].get('hook')} hook" if reported else ""
    return (
        f"record seq {seq}, seen on {', '.join(first.links)}, not inside the NAT; dropped before "
        f"{ev.caller}'s check{said}"
    ), outside.t


@check("4", "200 OK with a=setup:active and Bob's fingerprint", "RFC 5763 §5, RFC 4145")
def _m4(ev: Evidence) -> tuple[str, float | None]:
    return _answer(ev)


@check("5", "Alice's single unauthenticated STUN check to Bob's media address", "RFC 5763 §6.7.2")
def _m5(ev: Evidence) -> tuple[str, float | None]:
    sends = ev.checks(ev.caller_media, ev.callee_media)
    ok = ev.ok_at_caller
    a = ev.association
    if not sends:
        raise Failure(
            f"{ev.caller} sent no STUN check to {ev.callee}'s media address after the answer, so the NAT "
            "never opened a pinhole (RFC 5763 §6.7.2)"
        )
    first = sends[0]
    message = first.stun
    assert message is not None
    transactions = {d.stun.transaction_id for d in sends if d.stun is not None}
    problems = []
    if len(transactions) != 1:
        problems.append(f"{len(transactions)} transactions, not a single one")
    delivered_answer = ev.reached(ok, ev.caller) if ok is not None else None
    if delivered_answer is not None and first.t < delivered_answer.t:
        problems.append("sent before the answer reached her")
    if message.has_message_integrity or message.username is not None:
        problems.append("it carries USERNAME/MESSAGE-INTEGRITY: the §6.7.2 check is unauthenticated")
    answered = [
        d
        for d in (ev.call.media if ev.call else [])
        if d.stun is not None
        and d.stun.transaction_id == message.transaction_id
        and d.stun.message_class != stun.MessageClass.REQUEST
        and ev.reached(d, ev.caller) is not None
    ]
    if answered and any(d.t > ev.reached(answered[0], ev.caller).t for d in sends):  # type: ignore[union-attr]
        problems.append("retransmitted after the response reached her (RFC 5389 §7.2.1)")
    if a is not None and a.finished(a.server) is not None and a.finished(a.server)[0].t < first.t:  # type: ignore[index]
        problems.append("sent after the handshake had completed (§6.7.2 asks for it only while it has not)")
    if problems:
        raise Failure("; ".join(problems), first.t)
    fingerprint = "with FINGERPRINT" if message.has_fingerprint else "without FINGERPRINT"
    return (
        f"transaction {message.transaction_id_hex} from {fmt(first.own_src)} to {fmt(first.dst)}, "
        f"{len(sends)} send(s), unauthenticated, {fingerprint}"
    ), first.t


@check("6", "Bob answers the check; Alice gets the response", "RFC 5763 §6.7.2, RFC 5389 §7.3")
def _m6(ev: Evidence) -> tuple[str, float | None]:
    sends = ev.checks(ev.caller_media, ev.callee_media)
    if not sends or ev.call is None:
        raise Failure("no STUN check to answer (message 5 missing)")
    request = sends[0].stun
    assert request is not None
    responses = [
        d
        for d in ev.call.media
        if d.stun is not None
        and d.stun.transaction_id == request.transaction_id
        and d.stun.message_class != stun.MessageClass.REQUEST
        and d.own_src == ev.callee_media
    ]
    if not responses:
        raise Failure(
            f"{ev.callee} did not answer transaction {request.transaction_id_hex} "
            "(RFC 5763 §6.7.2: every implementation MUST answer the check)",
            sends[0].t,
        )
    response = responses[0]
    message = response.stun
    assert message is not None
    if message.message_class != stun.MessageClass.SUCCESS_RESPONSE:
        raise Failure(
            f"{ev.callee} answered with a {message.message_class.name.lower()} {message.error_code or ''}", response.t
        )
    seen = next((ev.reached(d, ev.callee) for d in sends if ev.reached(d, ev.callee)), None)
    mapped = message.xor_mapped_address
    if seen is not None and mapped != seen.src:
        raise Failure(
            f"XOR-MAPPED-ADDRESS {fmt(mapped)} is not the source {fmt(seen.src)} {ev.callee} saw (RFC 5389 §7.3.1)",
            response.t,
        )
    delivered = next((ev.reached(d, ev.caller) for d in responses if ev.reached(d, ev.caller)), None)
    if delivered is None:
        raise Failure(
            f"{ev.callee}'s response never reached {ev.caller} (last seen on {response.last.link.name})", response.t
        )
    advertised = fmt((ev.offer.address, ev.offer.port))
    note = "equals" if fmt(mapped) == advertised else "differs from"
    return (
        f"XOR-MAPPED-ADDRESS {fmt(mapped)}, the source {ev.callee} saw ({note} the advertised {advertised})",
        delivered.t,
    )


@check("7", "Bob's timer-driven ClientHello retransmission passes the NAT", "RFC 6347 §4.2.4, RFC 5763 §7.3")
def _m7(ev: Evidence) -> tuple[str, float | None]:
    a = _callee_client(ev)
    hellos = a.client_hellos
    arrived = next((d for d in hellos if ev.reached(d, ev.caller)), None)
    if arrived is None:
        nat = ev.info.get("nat", {}).get("outside", "the NAT")
        raise Failure(f"no ClientHello of {ev.callee}'s reached {ev.caller} ({len(hellos)} sent, none past {nat})")
    if arrived is hellos[0]:
        raise Failure(
            "the ClientHello that reached Alice is the first one: nothing was retransmitted (not the §7.3 flow)",
            arrived.t,
            FIGURE,
        )
    count = hellos.index(arrived)
    sequences = [d.records[0].sequence_number for d in hellos[: count + 1] if d.records]
    repeated = sorted({s for s in sequences if sequences.count(s) > 1})
    if repeated or sequences != sorted(sequences):
        raise Failure(
            f"retransmissions reuse record sequence number(s) {repeated or sequences} (RFC 6347 §4.2.2: "
            "a retransmission is a new record with a new sequence number)",
            arrived.t,
        )
    message_seqs = {
        min(m.message_seq for m in d.handshake if m.msg_type == dtls.HandshakeType.client_hello)
        for d in hellos[: count + 1]
    }
    if len(message_seqs) != 1:
        raise Failure("the retransmission changed the ClientHello's message_seq (RFC 6347 §4.2.2)", arrived.t)
    times = [(ev.left(d, ev.callee) or d.first).t for d in hellos[: count + 1]]
    check = next(iter(ev.checks(ev.caller_media, ev.callee_media)), None)
    at_callee = ev.reached(check, ev.callee) if check is not None else None
    late = []
    for k in range(1, len(times)):
        gap = times[k] - times[k - 1]
        expected = min(ev.dtls_initial * 2 ** (k - 1), ev.dtls_maximum)
        if gap < (1 - TIMER_TOLERANCE) * expected - TIMER_SLACK:
            after = f", {times[k] - at_callee.t:.3f}s after the check reached him" if at_callee else ""
            raise Failure(
                f"transmission #{k + 1} of the ClientHello came {gap:.3f}s after the previous one, sooner "
                f"than the {expected:g}s timer allows{after}: not timer-driven (RFC 6347 §4.2.4.1)",
                arrived.t,
            )
        if gap > 2 * expected * (1 + TIMER_TOLERANCE) + TIMER_SLACK:
            late.append(f"#{k + 1} after {gap:.3f}s")
    after = f", {times[count] - at_callee.t:.3f}s after the check reached Bob" if at_callee else ""
    slow = f"; later than twice the timer: {', '.join(late)}" if late else ""
    return (
        f"transmission #{count + 1} (record seq {sequences[-1]}, message_seq {message_seqs.pop()}), "
        f"{times[count] - times[count - 1]:.3f}s after the previous one (timer {ev.dtls_initial:g}s, "
        f"doubling){after}{slow}"
    ), arrived.t


@check(
    "8", "Alice's flight 4: ServerHello with use_srtp, Certificate, CertificateRequest", "RFC 5764 §4.1.1, RFC 5763 §5"
)
def _m8(ev: Evidence) -> tuple[str, float | None]:
    return _flight_4(ev)


@check("9", "Alice checks Bob's certificate against the answer's a=fingerprint", "RFC 5763 §5")
def _m9(ev: Evidence) -> tuple[str, float | None]:
    return _verification(ev, ev.caller, ev.caller_media, ev.callee_media, ev.answer, "answer")


@check("10", "SRTP from Bob authenticated with the keys the handshake exported for him", "RFC 5764 §4.2")
def _m10(ev: Evidence) -> tuple[str, float | None]:
    return _media(ev, ev.callee, ev.callee_media, _role(ev, ev.callee_media))


@check(
    "11a", "Handshake complete on both sides: both Finished, Bob checked Alice's certificate", "RFC 6347, RFC 5763 §5"
)
def _m11a(ev: Evidence) -> tuple[str, float | None]:
    a = ev.association
    if a is None:
        raise Failure("no DTLS handshake between the two media sockets")
    shown = {}
    for side in (a.client, a.server):
        finished = a.finished(side)
        node = ev.wire.node(side)
        if finished is None:
            raise Failure(f"no Finished from {node}: the handshake did not complete")
        if finished[1].startswith("not finished"):
            raise Failure(f"{node}'s encrypted handshake record after ChangeCipherSpec is {finished[1]}", finished[0].t)
        shown[node] = finished
    offer_at_callee = ev.facts(ev.invite_at_callee) if ev.invite_at_callee else ev.offer
    detail, _ = _verification(ev, ev.callee, ev.callee_media, ev.caller_media, offer_at_callee, "offer")
    decrypted = all(f[1] == "finished" for f in shown.values())
    how = "decrypted with the key log" if decrypted else "not decrypted: no key log line"
    last = max(f[0].t for f in shown.values())
    return f"both Finished on the wire ({how}); {detail}", last


@check("11b", "SRTP from Alice authenticated with the keys the handshake exported for her", "RFC 5764 §4.2")
def _m11b(ev: Evidence) -> tuple[str, float | None]:
    return _media(ev, ev.caller, ev.caller_media, _role(ev, ev.caller_media))


@check("12", "ACK for the 200 OK reaches Bob along the route set", "RFC 3261 §13.2.2.4, §12.2.1.1")
def _m12(ev: Evidence) -> tuple[str, float | None]:
    return _ack(ev)


# --------------------------------------------------------------------------- RFC 5763 §7.1


FLOW_7_1 = "rfc5763-7.1"


@check(
    "1",
    "INVITE with the offer: a=setup:actpass, a=fingerprint, Alice's own address",
    "RFC 5763 §5, §7.1",
    flow=FLOW_7_1,
)
def _s71_m1(ev: Evidence) -> tuple[str, float | None]:
    detail, when = _m1(ev)
    advertised = (ev.offer.address, ev.offer.port)
    if ev.caller_media is not None and ev.caller_media != advertised:
        raise Failure(
            f"the offer advertises {fmt(advertised)}, a NAT's mapping of {ev.caller}'s "
            f"{fmt(ev.caller_media)}: a NAT in her path is §7.3's setting, not §7.1's",
            when,
            FIGURE,
        )
    return detail, when


check("2", "INVITE reaches Bob through both proxies, body unchanged", "RFC 3261 §16.6, RFC 5763 §7.1", flow=FLOW_7_1)(
    _m2
)


@check("3", "Bob's first ClientHello reaches Alice: nothing drops it", "RFC 5763 §7.1", flow=FLOW_7_1)
def _s71_m3(ev: Evidence) -> tuple[str, float | None]:
    a = _callee_client(ev)
    first = a.client_hellos[0]
    delivered = ev.reached(first, ev.caller)
    seq = first.records[0].sequence_number if first.records else "?"
    if delivered is None:
        raise Failure(
            f"{ev.callee}'s first ClientHello (record seq {seq}) never reached {ev.caller} (last seen on "
            f"{first.last.link.name}: a NAT in the way is §7.3)",
            first.t,
            FIGURE,
        )
    return f"record seq {seq}, {delivered.t - first.t:.3f}s from {ev.callee} to {ev.caller}", delivered.t


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
def _s71_m5(ev: Evidence) -> tuple[str, float | None]:
    a = _callee_client(ev)
    names = [_name(m.msg_type) for m in a.messages(a.client)]
    missing = [t for t in ("certificate", "client_key_exchange", "certificate_verify") if t not in names]
    finished = a.finished(a.client)
    if finished is None:
        missing.append("ChangeCipherSpec + Finished")
    if missing or finished is None:  # finished is None only when missing names it
        raise Failure(f"{ev.wire.node(a.client)}'s flight lacks {', '.join(missing)}")
    delivered = ev.reached(finished[0], ev.caller) if finished else None
    if delivered is None:
        raise Failure(f"{ev.wire.node(a.client)}'s flight never reached {ev.caller}", finished[0].t)
    flight = f"Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished ({finished[1]})"
    return flight, delivered.t


@check(
    "6",
    "Bob's early media is not trusted before his fingerprint arrives",
    "RFC 5763 §7.1, §6.2, §5",
    flow=FLOW_7_1,
    evidence=SELF_REPORTED,
)
def _s71_m6(ev: Evidence) -> tuple[str, float | None]:
    a = ev.association
    ok = ev.ok_at_caller
    answered = ev.reached(ok, ev.caller).t if ok is not None and ev.reached(ok, ev.caller) else None  # type: ignore[union-attr]
    if a is None or answered is None:
        raise Failure("no association or no answer: nothing to judge early media by")
    early_in = [d for d in a.srtp_from(ev.callee_media) if (ev.reached(d, ev.caller) or d.last).t < answered]  # type: ignore[arg-type]
    early_out = [d for d in a.srtp_from(ev.caller_media) if (ev.left(d, ev.caller) or d.first).t < answered]  # type: ignore[arg-type]
    played = ev.reported(ev.caller, "srtp.first_received")
    held = ev.reported(ev.caller, "srtp.held")
    released = ev.reported(ev.caller, "srtp.released")
    problems = []
    if played and played[0]["t"] < answered and not held:
        problems.append(
            f"self-reported: {ev.caller} decrypted {ev.callee}'s SRTP before his answer verified him "
            "(RFC 5763 §7.1 message 6: she cannot trust it yet)"
        )
    if early_out:
        problems.append(
            f"{ev.caller} sent {len(early_out)} SRTP packet(s) to {ev.callee} before his answer reached her: she "
            "trusted a certificate no a=fingerprint had vouched for yet (RFC 5763 §5: only tentatively accepted; "
            "the §7.1 figure's media (10) follows the answer (9))"
        )
    if problems:  # what she decrypted breaks the RFC's message 6; what she sent, the figure's order
        first = min([*(d.t for d in early_out), *(e["t"] for e in played if e["t"] < answered)])
        raise Failure("; ".join(problems), first, RFC if problems[0].startswith("self-reported") else FIGURE)
    wire = f"{len(early_in)} SRTP packet(s) from {ev.callee} reached {ev.caller} before his answer; none from her"
    if held and released:
        return (
            f"{wire}; self-reported: held {released[0]['attrs'].get('packets', '?')} packet(s), released "
            f"{released[0]['t'] - held[0]['t']:.3f}s later when his certificate matched"
        ), held[0]["t"]
    if not ev.reports:
        return f"{wire} (what she did with them is self-reported: no trace given)", None
    return wire, None


@check(
    "7",
    "Alice's Finished: the handshake completes before the 200 OK reaches her",
    "RFC 5763 §7.1",
    flow=FLOW_7_1,
)
def _s71_m7(ev: Evidence) -> tuple[str, float | None]:
    a = ev.association
    if a is None or ev.caller_media is None:
        raise Failure("no DTLS handshake between the two media sockets")
    finished = a.finished(ev.caller_media)
    if finished is None:
        raise Failure(f"no Finished from {ev.caller}: the handshake did not complete")
    ok = ev.ok_at_caller
    delivered = ev.reached(ok, ev.caller) if ok is not None else None
    sent = ev.left(finished[0], ev.caller) or finished[0].first
    if delivered is not None and sent.t > delivered.t:
        raise Failure(
            f"{ev.caller}'s Finished left {sent.t - delivered.t:.3f}s after the answer reached her "
            "(§7.3's order, not §7.1's)",
            sent.t,
            FIGURE,
        )
    detail, _ = _verification(
        ev,
        ev.callee,
        ev.callee_media,
        ev.caller_media,
        ev.facts(ev.invite_at_callee) if ev.invite_at_callee else ev.offer,
        "offer",
    )
    ahead = f", {delivered.t - sent.t:.3f}s before the answer reached her" if delivered is not None else ""
    return f"{ev.caller}'s Finished ({finished[1]}){ahead}; {detail}", sent.t


check("8", "Bob's 200 OK with a=setup:active and his fingerprint", "RFC 5763 §5, RFC 4145", flow=FLOW_7_1)(_m4)


@check(
    "9", "On the 200 OK Alice checks Bob's certificate against its a=fingerprint", "RFC 5763 §5, §7.1", flow=FLOW_7_1
)
def _s71_m9(ev: Evidence) -> tuple[str, float | None]:
    ok = ev.ok_at_caller
    if ok is None:
        raise Failure(f"{ev.caller} received no 200 OK to her INVITE")
    hops = []
    for d in ev.call.messages(status=200, cseq_method="INVITE") if ev.call else []:
        hops.append(ev.wire.node(d.own_src))
    proxies = ev.info.get("proxies", [])
    if proxies and not all(p in hops for p in proxies):
        raise Failure(f"the 200 OK came back through {hops}, not along the Via path through {proxies}", ok.t)
    a = ev.association
    if a is None or ev.callee_media is None or ev.caller_media is None:
        raise Failure("no DTLS handshake between the two media sockets")
    der = a.certificate(ev.callee_media)
    mismatch = _certificate_problem(der, ev.answer, ev.callee, "answer")
    delivered = ev.reached(ok, ev.caller)
    answered = delivered.t if delivered else ok.t
    after = [d for d in a.srtp_from(ev.caller_media) if (ev.left(d, ev.caller) or d.first).t > answered]
    alerts = [(d, t) for d, t in a.alerts(ev.caller_media) if t.startswith("fatal") and d.t >= answered]
    if der is None:
        if after:
            raise Failure(
                f"{ev.caller} went on ({len(after)} SRTP packet(s) after the answer) although {ev.callee} "
                "presented no certificate (RFC 5763 §5: mutual certificate authentication)",
                after[0].t,
            )
        raise Failure(f"{ev.callee}'s certificate never crossed the wire")
    if mismatch:
        failed = ev.reported(ev.caller, "dtls.failed")
        if after:
            raise Failure(
                f"{mismatch}, yet {ev.caller} went on: {len(after)} SRTP packet(s) from her after the answer "
                "(RFC 5763 §5: tear the media session down immediately)",
                after[0].t,
            )
        said = f"; self-reported: {failed[0]['attrs'].get('reason', '')}" if failed else ""
        shown = f"fatal alert {alerts[0][1]}" if alerts else "no SRTP from her after it"
        return f"{mismatch[4:]}; {ev.caller} tore the session down on the answer ({shown}){said}", answered
    return (
        f"{ev.callee}'s certificate {str(sdp.certificate_fingerprint(der))[:30]}... matches the answer that came "
        f"back via {', '.join(p for p in hops if p in proxies)}; {ev.caller} went on"
    ), answered


@check(
    "10",
    "Two-way SRTP, each authenticated with its side's exported keys",
    "RFC 5764 §4.2, RFC 5763 §7.1",
    flow=FLOW_7_1,
)
def _s71_m10(ev: Evidence) -> tuple[str, float | None]:
    results, failed = [], []
    for sender, media in ((ev.callee, ev.callee_media), (ev.caller, ev.caller_media)):
        try:
            results.append(_media(ev, sender, media, _role(ev, media)))
        except Failure as failure:
            failed.append(failure.detail)
    if failed:
        raise Failure("; ".join(failed))
    times = [t for _, t in results if t is not None]
    return "; ".join(d for d, _ in results), max(times) if times else None


check("11", "ACK for the 200 OK reaches Bob along the route set", "RFC 3261 §13.2.2.4, §12.2.1.1", flow=FLOW_7_1)(_m12)


# --------------------------------------------------------------------------- judging


# --------------------------------------------------------------------------- RFC 5763 §8, both figures


def _fingerprints(facts: sdp.Facts) -> frozenset[tuple[str, bytes]]:
    """The a=fingerprint set as values (hash function, digest): how it is written (case) does not count."""
    return frozenset((f.hash_function.lower(), f.value) for f in facts.parsed_fingerprints())


def _rewritten_by(ev: Evidence, chain: list[Datagram]) -> str:
    """The node that sent the first datagram of `chain` whose a=fingerprint set differs from the previous one's."""
    for before, after in zip(chain, chain[1:], strict=False):
        if _fingerprints(ev.facts(before)) != _fingerprints(ev.facts(after)):
            return ev.wire.node(after.own_src) or fmt(after.own_src)
    return "a node the capture does not cover"


def _change(what: str, sent: sdp.Facts, got: sdp.Facts, to: str, where: str) -> str:
    return (
        f"the {what}'s a=fingerprint {_fingerprint_text(sent)} (media {sent.media}) reached {to} as "
        f"{_fingerprint_text(got)} (media {got.media}), rewritten by {where}"
    )


def _end_to_end(ev: Evidence) -> tuple[str, float | None]:
    """RFC 5763 §8: each side verifies the other's certificate only if the fingerprints arrive as sent.
    From the wire: the offer and the answer reach the other side with the a=fingerprint set they were
    sent with (a media relay may change the address; it cannot change the fingerprints unless it ends
    DTLS). If not: an RFC 8224 refusal by the callee (the rewrite exposed, no answer reached the caller)
    stops the man in the middle; anything else is one, with the handshakes it ran."""
    if ev.invite_at_callee is None and not ev.wire.covers(ev.callee):  # a cluster: only some links captured
        return f"not shown: {ev.callee}'s link is not in the capture, so what reached {ev.callee} is not either", None
    if ev.invite_at_callee is None:
        raise Failure(f"the INVITE was not seen reaching {ev.callee}: the offer cannot be shown to arrive as sent")
    answer_sent = ev.facts(_origin(ev, ev.ok_at_caller)) if ev.ok_at_caller is not None else sdp.Facts()
    if ev.ok_at_caller is not None and answer_sent.error:
        raise Failure(f"the 200 OK that reached {ev.caller} was not seen leaving its sender: end to end not shown")
    changes = []
    offer_got = ev.facts(ev.invite_at_callee)
    if _fingerprints(ev.offer) != _fingerprints(offer_got):
        changes.append(_change("offer", ev.offer, offer_got, ev.callee, _rewritten_by(ev, ev.invite_hops)))
    if ev.ok_at_caller is not None and _fingerprints(answer_sent) != _fingerprints(ev.answer):
        changes.append(
            _change("answer", answer_sent, ev.answer, ev.caller, _rewritten_by(ev, _chain(ev, ev.ok_at_caller)))
        )
    if not changes:
        return "the offer's and the answer's a=fingerprint reached the other side as sent", None
    when = _when(ev.invite_at_callee)
    refusal = _callee_refusal(ev)
    if refusal and ev.ok_at_caller is None:
        return f"{'; '.join(changes)}; {ev.callee} refused it ({refusal}): the man in the middle was stopped", when
    callee_media = ev.wire.own((answer_sent.address, answer_sent.port)) if answer_sent.address else None
    peers = []
    for side, media in ((ev.caller, ev.caller_media), (ev.callee, callee_media)):
        for a in ev.call.associations if ev.call is not None and media is not None else []:
            if media in (a.client, a.server):
                other = a.server if media == a.client else a.client
                done = "completed" if a.master_secret is not None else "not completed"
                peers.append(f"{side}'s handshake ran with {ev.wire.node(other) or '?'} {fmt(other)} ({done})")
                break
    relayed = ""
    if ev.call is not None and callee_media is not None:
        towards = [d for a in ev.call.associations if callee_media in (a.client, a.server) for d in a.srtp]
        relayed = f"; {sum(d.own_dst == callee_media for d in towards)} SRTP packet(s) reached {ev.callee} from it"
    raise Failure(
        f"a man in the middle: {'; '.join(changes)}; {'; '.join(peers) or 'no handshake'}{relayed}. Without an "
        "integrity-protected offer (RFC 8224 Identity with the fingerprints in the PASSporT's mky) nothing "
        "tells the parties (RFC 3261 §16.6 forbids a proxy to touch the body)",
        when,
    )


IDENTITY_REFUSALS = (428, 436, 437, 438)  # RFC 8224 §6.2.2: the verifier's answers to a bad or missing Identity


def _callee_refusal(ev: Evidence) -> str:
    """The callee's RFC 8224 refusal of the INVITE, as "438 Invalid Identity Header" ("" if none)."""
    if ev.call is None or ev.invite_cseq is None:
        return ""
    for d in ev.call.messages(cseq_method="INVITE", cseq=ev.invite_cseq):
        m = d.sip
        if isinstance(m, Response) and m.status_code in IDENTITY_REFUSALS and ev.left(d, ev.callee) is not None:
            return f"{m.status_code} {m.reason}"
    return ""


def _chain(ev: Evidence, arrived: Datagram) -> list[Datagram]:
    """The datagrams that carried one response (same To tag, same CSeq) up to `arrived`, in time order."""
    m = arrived.sip
    assert ev.call is not None and isinstance(m, Response)
    same = [
        d
        for d in ev.call.messages(status=m.status_code, cseq_method=m.cseq.method, cseq=m.cseq.number)
        if isinstance(d.sip, Response) and d.sip.to.tag == m.to.tag and d.t <= arrived.t
    ]
    return same


def _origin(ev: Evidence, arrived: Datagram) -> Datagram | None:
    """The first datagram of `arrived`'s response as its sender sent it (its To tag names the dialog, so a
    forked call's other 2xx is never taken for it)."""
    chain = _chain(ev, arrived)
    return chain[0] if chain else None


END_TO_END = (
    "e2e",
    "Each side's handshake is with the other: the fingerprints and media addresses arrive as sent",
    "RFC 5763 §8, RFC 3261 §16.6, RFC 8224",
)
for _flow in FLOW_TITLES:
    check(*END_TO_END, flow=_flow)(_end_to_end)


def judge(
    wire: Wire,
    *,
    call_id: str | None = None,
    reports: list[Event] | None = None,
    scenario: str = "",
    flow: str | None = None,
) -> Verdict:
    """Run every check of the figure (`flow`, else the run's, else §7.3) on the call; it passes only if all pass.

    `reports`: what pinhole's services said about the call (trace events), for what the wire cannot show."""
    flow = flow or wire.info.get("flow") or DEFAULT_FLOW
    if flow not in FLOWS:
        raise ValueError(f"no checks for flow {flow!r}; known: {', '.join(FLOWS)}")
    ev = Evidence(wire, call_id, reports)
    scenario = scenario or wire.info.get("scenario", "") or "capture"
    if ev.call is None:
        wanted = call_id or ev.info.get("call_id")
        gave_up = [  # only before its INVITE: a later failure means the capture lacks what was sent
            e
            for e in ev.reported(ev.caller, "call.failed")
            if e.get("call_id") == wanted and e.get("attrs", {}).get("reason", "").startswith(BEFORE_INVITE)
        ]
        if not gave_up:
            return Verdict(
                scenario, False, [], [], broken="no call on the wire: no SIP message of it was captured", flow=flow
            )
        # the caller tried and gave up before its INVITE (its STUN requests all lost, say): a failed call
        message, title, rfc, _, _ = FLOWS[flow][0]
        reason = gave_up[0].get("attrs", {}).get("reason", "")
        detail = f"no INVITE on the wire: {ev.caller} gave up before sending it (self-reported: {reason})"
        checks = [Check(message, title, rfc, False, detail, gave_up[0]["t"], RFC, SELF_REPORTED)]
        return Verdict(scenario, False, checks, list(_notes(ev)), broken="; ".join(wire.problems()), flow=flow)
    checks = []
    for message, title, rfc, evidence, fn in FLOWS[flow]:
        try:
            detail, when = fn(ev)
            checks.append(Check(message, title, rfc, True, detail, when, "", evidence))
        except Failure as failure:
            checks.append(Check(message, title, rfc, False, failure.detail, failure.when, failure.kind, evidence))
        except Exception as error:  # a check must report, not crash the judge
            checks.append(
                Check(
                    message,
                    title,
                    rfc,
                    False,
                    f"check could not be evaluated: {type(error).__name__}: {error}",
                    None,
                    RFC,
                    evidence,
                )
            )
    result = Verdict(scenario, all(c.passed for c in checks), checks, list(_notes(ev)), flow=flow)
    problems = wire.problems()
    if problems:
        result.broken = "; ".join(problems)
    return result


def _notes(ev: Evidence) -> Iterable[str]:
    for node, label in sorted(ev.info.get("external", {}).items()):
        yield f"external: {node} runs {label}, judged by what it put on the wire (it reports nothing itself)"
    deviations = ev.info.get("deviations", {})
    for node, names in sorted(deviations.items()):
        if names:
            yield f"deviation on purpose: {node} runs {', '.join(names)} (pinhole's own misbehaviour, not a fault)"
    yield from _strangers(ev)
    yield "SIP runs over UDP: the signalling is not integrity-protected (RFC 5763 §5 SHOULD use TLS)"
    # RFC 8224 as the wire shows it (unverified here: the callee's answer says what its verification made of it)
    from pinhole.sip import identity

    sent, arrived = _sip(ev.invite_sent), _sip(ev.invite_at_callee)
    if not isinstance(sent, Request):
        yield "no INVITE on the wire: whether it carried an Identity header (RFC 8224) is not known"
        return
    values = sent.headers.get_all("Identity")
    if not values:
        yield "no Identity header: the authentication service of RFC 8224 is not staged"
        return
    claims = identity.peek(values[0])
    what = "an Identity header that does not decode"
    if claims is not None:
        what = f"PASSporT from {claims.orig} to {', '.join(claims.dest)}, " + (
            f"mky over {len(claims.mky)} fingerprint(s)" if claims.mky else "no mky"
        )
    if not isinstance(arrived, Request):
        reached = f"it is not seen reaching {ev.callee}"
    else:
        kept = arrived.headers.get_all("Identity") == values
        reached = f"it reached {ev.callee} " + ("with that Identity" if kept else "with its Identity changed or gone")
        try:
            offered = {str(f) for f in identity.body_fingerprints(arrived.body)}
        except (sdp.SdpError, ValueError):
            offered = None
        if claims is not None:
            same = offered == set(claims.mky)
            reached += ", its a=fingerprint " + ("the one mky signs" if same else "not the one mky signs (rewritten)")
    finals = [
        m
        for d in (ev.call.messages(cseq_method="INVITE", cseq=ev.invite_cseq) if ev.call is not None else [])
        if isinstance(m := d.sip, Response) and m.status_code >= 200 and ev.left(d, ev.callee) is not None
    ]
    answer = f"{finals[0].status_code} {finals[0].reason}" if finals else "nothing final on the wire"
    yield f"Identity (RFC 8224): {ev.caller}'s INVITE was signed ({what}); {reached}; {ev.callee} answered {answer}"
