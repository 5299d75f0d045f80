"""The UA as its own RFC 8224 authentication and verification service (IdentityPolicy; off by default).

With a signing key the UA is its own authentication service (RFC 8224 §5 allows a UA to be one):
every INVITE and re-INVITE it sends gets a Date and an Identity whose PASSporT's mky carries the
offer's a=fingerprint values (RFC 5763 §8). With trust anchors it is its own verification service: an
INVITE that carries Identity (or, with `require`, any INVITE) is verified before anything else, and a
failure is answered with RFC 8224 §6.2's response (428, 436, 437, 438 or 403): no 180, no 200, no
DTLS. A re-INVITE refused so leaves the session as it was. pinhole.sip.identity does the work; here
each outcome is counted and becomes evidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pinhole.events import Counters, EventLog
from pinhole.sip import Request, identity
from services.useragent.config import IdentityPolicy


class IdentityServices:
    """Signs and verifies as the agent's current IdentityPolicy (`policy()`) says."""

    def __init__(self, policy: Callable[[], IdentityPolicy], events: EventLog, counters: Counters) -> None:
        self._policy, self._events, self._counters = policy, events, counters

    def sign(self, call_id: str, request: Request) -> None:
        """RFC 8224 §5: with a key, this UA is the authentication service of the INVITEs it sends."""
        policy = self._policy()
        if policy.key is None:
            return
        signed = identity.authenticate(request, policy.key, policy.chain, time.time())
        self._counters["identity_signed"] += 1
        self._events.emit(
            "identity.signed",
            call_id,
            method=request.method,
            orig=signed.orig,
            dest=",".join(signed.dest),
            iat=signed.iat,
            mky=",".join(signed.mky),
            size=len(signed.field),
        )

    def verify(self, request: Request) -> identity.Assertion | None:
        """RFC 8224 §6.2 with this UA's trust anchors; None without them, or for an unsigned INVITE none requires."""
        policy = self._policy()
        if not policy.trust_anchors:
            return None
        return identity.verify(request, policy.trust_anchors, time.time(), require=policy.require)

    def verified(self, call_id: str, verified: identity.Assertion | None) -> None:
        if verified is None:
            return
        self._counters["identity_verified"] += 1
        self._events.emit(
            "identity.verified",
            call_id,
            orig=verified.orig,
            dest=",".join(verified.dest),
            iat=verified.iat,
            mky=",".join(verified.mky),
            signer=verified.signer,
            form="compact" if verified.compact else "full",
        )

    def rejected(self, call_id: str, error: identity.IdentityError) -> None:
        self._counters["identity_rejected"] += 1
        self._events.emit("identity.rejected", call_id, status=error.status, reason=error.reason, detail=error.detail)
