"""Whether a call worked, and why not: the verdict of any variant of the flow.

The §7.3 verdict (verdict.py) judges one message sequence; a matrix varies the NAT, the DTLS roles,
the check and latching, and each variant has its own right sequence. What every variant must reach
is the same (RFC 5763 §5, RFC 5764 §4): a DTLS association whose certificates match the SDP
fingerprints on both sides, and SRTP decrypted both ways. When it is not reached, the reason is the
first thing the evidence shows going wrong, in the words of the protocol that failed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pinhole.address import fmt
from pinhole.wire import Wire


@dataclass(frozen=True)
class Outcome:
    works: bool
    reason: str
    invite_to_media: float | None  # seconds from the INVITE to SRTP decrypted in the slower direction
    forks: dict[str, str] = field(default_factory=dict)  # forking: each Bob's fork, works or fails

    @property
    def name(self) -> str:
        return "works" if self.works else "fails"


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _drops(events: list[dict[str, Any]]) -> str:
    """The NAT's drops of the call, summarised: "2 DTLS ClientHello, 1 STUN request"."""
    counts = Counter(e["attrs"].get("summary") or e["attrs"].get("classification", "packet") for e in events)
    return ", ".join(f"{n} {what}" for what, n in counts.most_common())


def judge_outcome(evidence: dict[str, Any]) -> Outcome:
    """The call's outcome: from the wire when a party of it is not pinhole's (evidence["outcome"], written by
    the run from the capture), else from what pinhole's user agents report of it."""
    if "outcome" in evidence:
        return Outcome(**evidence["outcome"])
    calls = evidence.get("calls", {})
    events = evidence.get("events", [])
    measured = evidence.get("measurements", {})
    times = [measured.get(k) for k in ("invite_to_srtp_bob_to_alice_s", "invite_to_srtp_alice_to_bob_s")]
    media_time = max(times) if all(isinstance(t, (int, float)) for t in times) else None
    alice, bob = calls.get("alice", {}), calls.get("bob", {})
    drops = [e for e in events if e["kind"] == "nat.drop"]
    latched = [e for e in events if e["kind"] == "media.latched"]
    state = f"{alice.get('state', '?')}: {alice.get('reason', '')}"
    if not bob:
        return Outcome(False, f"the INVITE never reached Bob ({state})", None)
    if not any(e["service"] == "alice" and e["attrs"].get("sip.status_code") == "200" for e in events):
        return Outcome(False, f"no 200 OK reached Alice ({state})", None)
    if "bob2" in calls:  # a forked call (RFC 5763 §6.3): each Bob's fork is judged on its own
        return _forked(calls, media_time)
    media = {side: call.get("media", {}) for side, call in (("alice", alice), ("bob", bob))}
    unconnected = [side for side, m in media.items() if not m.get("handshake_completed")]
    if unconnected:
        failure = "; ".join(f"{side}: {media[side].get('dtls_failure')}" for side in unconnected)
        reason = f"DTLS never completed ({failure or 'no handshake'})"
        if drops:
            reason += f"; the NAT dropped {_drops(drops)} on their way to Alice"
        checks = sum(_int(m.get("stun_checks_sent")) for m in media.values())
        reason += f"; {checks} STUN check(s) sent" + (", Bob latched" if latched else "")
        return Outcome(False, reason, None)
    unverified = [side for side, m in media.items() if not m.get("peer_fingerprint_verified")]
    if unverified:
        return Outcome(False, f"{' and '.join(unverified)}: the peer's certificate does not match a=fingerprint", None)
    for sender, receiver in (("bob", "alice"), ("alice", "bob")):
        received, failed = _int(media[receiver].get("srtp_received")), _int(media[receiver].get("srtp_auth_failed"))
        if received == 0 or failed:
            why = f"SRTP {sender} -> {receiver}: {received} decrypted, {failed} failed authentication"
            return Outcome(False, why, None)
    # without rtcp-mux the RTCP component has its own association (RFC 5764 §4): it must work as well
    for side, m in media.items():
        for component in m.get("components", []):
            if component.get("name") != "rtcp":
                continue
            if not component.get("peer_fingerprint_verified"):
                failure = component.get("dtls_failure") or "no handshake"
                why = f"{side}: the RTCP association never completed ({failure})"
                return Outcome(False, why, None)
            if _int(component.get("srtcp_received")) == 0:
                return Outcome(False, f"{side}: no SRTCP decrypted on the RTCP component", None)
    modified = ""
    for restart in evidence.get("restarts", []):
        node = restart["node"]
        if restart.get("error") or "started" not in restart:
            return Outcome(False, f"restart of {node}: {restart.get('error', 'never started again')}", None)
        how = "crashed" if restart.get("crash") else "stopped"
        modified += f"; {node} {how} and was back {restart['started'] - restart['killed']:.2f}s later"
    if evidence.get("restarts") and alice.get("state") != "terminated":
        return Outcome(False, f"the call did not end with a BYE answered ({state})", None)
    if evidence.get("reinvites"):
        problem, changes = _modifications(evidence["reinvites"], alice, bob)
        if problem:
            return Outcome(False, problem, None)
        modified += changes
    client = "Bob" if media["bob"].get("dtls_role") == "client" else "Alice"
    how = f"DTLS ({client} active) after {len(drops)} NAT drop(s)" if drops else f"DTLS ({client} active), no NAT drop"
    if latched:
        how += ", Bob latched onto " + latched[0]["attrs"].get("to", "the check's source")
    sent = {side: _int(m.get("srtp_received")) for side, m in media.items()}
    separate = any(c.get("name") == "rtcp" for m in media.values() for c in m.get("components", []))
    rtcp = " and SRTCP on its own association" if separate else ""
    return Outcome(
        True, f"{how}; SRTP both ways ({sent['alice']} and {sent['bob']} packets){rtcp}{modified}", media_time
    )


def _modifications(steps: list[dict[str, Any]], alice: dict[str, Any], bob: dict[str, Any]) -> tuple[str, str]:
    """The scenario's re-INVITEs against what the user agents did (RFC 5763 §6.6): each answered 200, each
    made a new association exactly when it changed the fingerprint or the roles, and every new association
    carried SRTP both ways. Returns (the first problem or "", a summary)."""
    calls = {"alice": alice, "bob": bob}
    sent: dict[str, list[dict[str, Any]]] = {
        side: [m for m in call.get("modifications", []) if m.get("direction") == "sent"] for side, call in calls.items()
    }
    associations = {
        side: {
            _int(a.get("index")): a
            for a in call.get("media", {}).get("associations", [])
            if _int(a.get("component")) == 1
        }
        for side, call in calls.items()
    }
    index, summary = 1, []
    for number, step in enumerate(steps, 1):
        certificate = ", new certificate" if step["new_certificate"] else ""
        what = f"re-INVITE #{number} ({step['by']}, setup {step['setup']}{certificate})"
        if not sent[step["by"]]:
            return f"{what} was never sent", ""
        modification = sent[step["by"]].pop(0)
        if _int(modification.get("status_code")) != 200:
            return f"{what} got {modification.get('status_code')}: {modification.get('reason', '')}", ""
        made = bool(modification.get("new_association"))
        if made != step["new_association_expected"]:
            said = "made a new DTLS association" if made else "kept the DTLS association"
            return f"{what} {said}; RFC 5763 §6.6 says {'the opposite' if made else 'it must not'}", ""
        if not made:
            summary.append(f"#{number} kept association {index}")
            continue
        index += 1
        for side in calls:
            association = associations[side].get(index)
            if association is None or not association.get("completed"):
                return f"{what}: {side}'s new association {index} never completed", ""
            if _int(association.get("srtp_received")) == 0:
                return f"{what}: {side} decrypted no SRTP with association {index}'s keys", ""
        summary.append(f"#{number} new association {index}, SRTP both ways on it")
    return "", f"; re-INVITEs: {', '.join(summary)}"


def _fork(calls: dict[str, Any], bob: str) -> tuple[bool, str]:
    """One fork of a forked call: Alice's association with this Bob verified against *his* answer's
    fingerprint (RFC 5763 §6.3), Bob's against her offer, and SRTP decrypted both ways under its keys."""
    theirs = calls.get(bob, {}).get("media", {})
    local = theirs.get("local_media", "")
    fork = next((f for f in calls["alice"].get("forks", []) if f.get("peer_media") == local and local), None)
    if fork is None:
        return False, f"{bob}: no fork of Alice's call answered from {local or 'anywhere'}"
    if not fork.get("fingerprint_verified"):
        seen = fork.get("peer_fingerprint", "")[:17]
        failure = fork.get("dtls_failure") or fork.get("reason") or fork.get("dtls_state", "")
        return (
            False,
            f"{bob}: the certificate Alice saw ({seen}...) does not match his answer's a=fingerprint ({failure})",
        )
    if not theirs.get("peer_fingerprint_verified"):
        return False, f"{bob}: he did not verify Alice's certificate ({theirs.get('dtls_failure', '')})"
    to_alice, to_bob = _int(fork.get("srtp_received")), _int(theirs.get("srtp_received"))
    if not to_alice or not to_bob:
        return False, f"{bob}: SRTP decrypted {to_alice} at Alice, {to_bob} at {bob}"
    return True, f"{bob}: verified against his own answer, SRTP both ways ({to_alice} and {to_bob})"


def _forked(calls: dict[str, Any], media_time: float | None) -> Outcome:
    results = {bob: _fork(calls, bob) for bob in ("bob", "bob2")}
    sockets = {f.get("local_socket") for f in calls.get("alice", {}).get("forks", [])}
    port = f"{len(results)} forks on one local port" if len(sockets) == 1 else f"forks on {len(sockets)} ports"
    works = all(ok for ok, _ in results.values())
    reason = f"{port}; " + "; ".join(text for _, text in results.values())
    forks = {bob: "works" if ok else "fails" for bob, (ok, _) in results.items()}
    return Outcome(works, reason, media_time if works else None, forks)


def outcome_on_wire(wire: Wire, call_id: str) -> Outcome:
    """Whether the call worked, from the capture alone (RFC 5763 §5, RFC 5764 §4): the INVITE reached the callee,
    his 200 OK the caller, a DTLS association between the two media addresses completed (both Finished sent),
    each certificate on the wire matches the other side's a=fingerprint, and SRTP reached each side, authenticated
    with the keys that handshake exported (when no key log covers it, delivered is all the wire can say)."""
    from pinhole.controller.verdict import Evidence

    ev = Evidence(wire, call_id)
    if ev.call is None:
        return Outcome(False, "no SIP message of the call on the wire", None)
    if ev.invite_at_callee is None:
        return Outcome(False, f"the INVITE never reached {ev.callee}", None)
    if ev.ok_at_caller is None:
        return Outcome(False, f"no 200 OK reached {ev.caller}", None)
    a = ev.association
    if a is None:
        return Outcome(False, "DTLS never started between the two media addresses the SDP gave", None)
    certificates = (
        (a.certificate(ev.callee_media), ev.answer, ev.callee, "answer"),  # type: ignore[arg-type]
        (a.certificate(ev.caller_media), ev.offer, ev.caller, "offer"),  # type: ignore[arg-type]
    )
    for der, facts, whose, sdp_name in certificates:
        if der is not None and not any(f.matches(der) for f in facts.parsed_fingerprints() if f.supported):
            why = f"{whose}'s certificate on the wire matches no a=fingerprint of the {sdp_name} (RFC 5763 §5)"
            return Outcome(False, why, None)
    unfinished = [wire.node(side) or fmt(side) for side in (a.client, a.server) if a.finished(side) is None]
    if unfinished:
        return Outcome(False, f"DTLS never completed: no Finished from {' and '.join(unfinished)}", None)
    for der, _, whose, _ in certificates:
        if der is None:
            return Outcome(False, f"{whose} presented no certificate (RFC 5763 §5: mutual authentication)", None)
    invite_t = ev.invite_sent.t if ev.invite_sent is not None else ev.call.sip[0].t
    slowest, counts = 0.0, []
    for sender, receiver, media in ((ev.callee, ev.caller, ev.callee_media), (ev.caller, ev.callee, ev.caller_media)):
        ok, delivered, failed, _, why = ev.srtp_check(media)
        arrived = [d for d in a.srtp_from(media) if ev.reached(d, receiver) is not None]  # type: ignore[arg-type]
        if why and arrived:  # no keys for this association: the wire shows delivery, not authenticity
            counts.append(f"{len(arrived)} {sender} -> {receiver} (not authenticated: {why})")
        elif not delivered:
            return Outcome(False, f"SRTP {sender} -> {receiver}: {delivered} authenticated, {failed} failed", None)
        else:  # media flows; a packet that fails is the verdict's to judge (messages 10, 11b), not the call's end
            failing = f" ({failed} failing authentication)" if failed else ""
            counts.append(f"{delivered} {sender} -> {receiver}{failing}")
        if not arrived:
            return Outcome(False, f"no SRTP from {sender} reached {receiver}", None)
        slowest = max(slowest, arrived[0].t - invite_t)
    client = wire.node(a.client) or fmt(a.client)
    return Outcome(True, f"DTLS ({client} active); SRTP both ways on the wire ({', '.join(counts)})", round(slowest, 4))
