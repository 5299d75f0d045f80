"""Deviation profiles: pinhole's own user agent and proxy misbehaving on purpose, by name.

A test bed must be able to make its own side break a rule to see what the other side (or the verdict)
does about it. Each deviation is one documented misbehaviour a service can be configured with
(`UserAgentConfig.deviations`, `ProxyConfig.deviations`, `deviations:` in scenario files); the run puts
them on its root span (`pinhole.deviations`) and in the capture's description, and the verdict names
them in its notes, so a deviated run is never mistaken for a real failure of the implementation.

This list is the one place a deviation is defined: its name, which service can run it, what it does
instead, and the rule it breaks (or the text that allows it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEVIATIONS", "Deviation", "DeviationError", "checked"]

USER_AGENT, PROXY = "useragent", "proxy"


class DeviationError(ValueError):
    """An unknown deviation, or one the service cannot run: the message names it."""


@dataclass(frozen=True)
class Deviation:
    name: str
    service: str  # useragent or proxy
    does: str  # what the service does instead
    rule: str  # the rule it breaks, or what allows it


DEVIATIONS: dict[str, Deviation] = {
    d.name: d
    for d in (
        Deviation("no-stun-answer", USER_AGENT, "its media socket answers no STUN Binding request",
                  "RFC 5763 §6.7.2: every implementation MUST answer the check"),
        Deviation("no-stun-check", USER_AGENT, "as the DTLS-passive side it sends no connectivity check",
                  "RFC 5763 §6.7.2: the passive side MUST send one"),
        Deviation("authenticated-stun-check", USER_AGENT, "its check carries USERNAME and MESSAGE-INTEGRITY",
                  "RFC 5763 §6.7.2: the check is unauthenticated"),
        Deviation("resend-hello-on-check", USER_AGENT,
                  "as the DTLS client it resends its ClientHello as soon as a STUN check arrives",
                  "RFC 6347 §4.2.4: flights are resent on the timer (or the peer's retransmission)"),
        Deviation("byte-identical-hello-resend", USER_AGENT,
                  "it resends a flight with the records' original sequence numbers",
                  "RFC 6347 §4.2.2: a retransmission is a new record with a new sequence number"),
        Deviation("hello-after-check", USER_AGENT,
                  "as the DTLS client it waits for the peer's STUN check before its first ClientHello",
                  "RFC 5763 §6.7.2: the active side MUST go on with the handshake without it"),
        Deviation("skip-fingerprint-check", USER_AGENT,
                  "it accepts the peer's certificate without comparing it with a=fingerprint",
                  "RFC 5763 §5: a certificate that does not match tears the session down"),
        Deviation("tamper-answer-fingerprint", USER_AGENT, "its answer's a=fingerprint is not its certificate's",
                  "RFC 5763 §5: the certificate presented MUST match the fingerprint"),
        Deviation("tamper-offer-fingerprint", USER_AGENT, "its offer's a=fingerprint is not its certificate's",
                  "RFC 5763 §5: the certificate presented MUST match the fingerprint"),
        Deviation("sha1-fingerprint", USER_AGENT, "its a=fingerprint uses sha-1 (of the right certificate)",
                  "allowed: RFC 8122 §5 (RFC 4572 wanted the certificate's signature hash); weak"),
        Deviation("a-connection-new", USER_AGENT, "its SDP carries a=connection:new",
                  "RFC 5763 §5: the endpoint MUST NOT use the connection attribute"),
        Deviation("offer-setup-active", USER_AGENT, "it offers a=setup:active instead of actpass",
                  "RFC 5763 §5: the offerer MUST use actpass (RFC 8842 §5.2 later allows active/passive)"),
        Deviation("early-srtp-before-verify", USER_AGENT,
                  "it sends and plays SRTP once its handshake completes, before a=fingerprint vouched for the peer",
                  "RFC 5763 §5: the offerer may only tentatively accept the answerer's certificate (§7.1)"),
        Deviation("swap-srtp-keys", USER_AGENT, "it protects its SRTP with the peer's keys, and the reverse",
                  "RFC 5764 §4.2: the client protects with client_write keys, the server with server_write"),
        Deviation("no-certificate-request", USER_AGENT,
                  "as the DTLS server it asks for no client certificate and goes on unverified",
                  "RFC 5763 §5: mutual DTLS certificate-based authentication"),
        Deviation("ack-bypass-route-set", USER_AGENT,
                  "it sends the ACK for a 2xx straight to the remote target, outside the route set",
                  "RFC 3261 §12.2.1.1, §13.2.2.4: in-dialog requests follow the route set"),
        Deviation("proxy-no-record-route", PROXY, "it does not Record-Route dialog-creating requests",
                  "allowed: RFC 3261 §16.6 step 4 leaves Record-Route to the proxy (the figure's proxies do)"),
        Deviation("proxy-keep-max-forwards", PROXY, "it forwards requests with Max-Forwards unchanged",
                  "RFC 3261 §16.6 step 3: MUST decrement it"),
        Deviation("mitm", PROXY,
                  "it rewrites the offer's and the answer's a=fingerprint and media address to its own media box, "
                  "which terminates DTLS with each side and relays the SRTP (RFC 5763 §8's man in the middle)",
                  "RFC 3261 §16.6 step 1, §16.7 step 9: MUST NOT modify the body; RFC 5763 §8, RFC 8224"),
        Deviation("proxy-rewrite-sdp", PROXY,
                  "it replaces a=fingerprint in the SDP bodies it forwards (RFC 5763 §8's signalling MITM)",
                  "RFC 3261 §16.6 step 1, §16.7 step 9: MUST NOT modify the body"),
    )
}  # fmt: skip


def checked(names: Iterable[str], service: str, where: str = "deviations") -> frozenset[str]:
    """The deviations, each known and runnable by `service`; DeviationError names the first that is not."""
    out = set()
    for name in names:
        deviation = DEVIATIONS.get(name)
        if deviation is None:
            known = ", ".join(d.name for d in DEVIATIONS.values() if d.service == service)
            raise DeviationError(f"{where}: unknown deviation {name!r} (a {service} knows: {known})")
        if deviation.service != service:
            raise DeviationError(f"{where}: {name!r} is a {deviation.service}'s deviation, not a {service}'s")
        out.add(name)
    return frozenset(out)
