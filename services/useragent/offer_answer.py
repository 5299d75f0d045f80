"""Our side of the SDP offer/answer (RFC 3264) for DTLS-SRTP (RFC 5763 §5): the SDP we send (built in
one place, by pinhole.sdp), what the peer's SDP settles (DTLS roles, fingerprints, rtcp-mux), and the
record of it (Negotiated) that a modification is compared with (RFC 5763 §6.6).

rtcp-mux (RFC 5761, `rtcp_mux`, on by default). An offer that asks for rtcp-mux also reserves an RTCP
port and names it in a=rtcp (`rtcp_mux_fallback`, on by default): if the answer declines rtcp-mux,
RFC 5761 §5.1.1 forbids multiplexing and RTCP needs a port the answerer can reach (RFC 5761 §5.1.3
asks ICE offers for that same a=rtcp fallback). The reserved port is released once the answer accepts
rtcp-mux. The answerer multiplexes only if the offer asked and its own `rtcp_mux` allows.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from pinhole import dtls, sdp
from pinhole.address import Address
from pinhole.sip import Request, Response, ServerTransaction, make_response, retransmit_2xx
from services.useragent.base import AgentBase
from services.useragent.call import Call


@dataclass
class Negotiated:
    """What the last completed offer/answer settled; RFC 5763 §6.6 compares the next one with it."""

    local_fingerprint: str
    peer_fingerprints: list[tuple[str, bytes]]
    role: dtls.Role
    remote: Address
    remote_rtcp: Address | None  # None with rtcp-mux


def peer_fingerprints(description: sdp.DtlsSrtpMedia) -> list[tuple[str, bytes]]:
    """The peer's a=fingerprint values its certificate must match: those of the strongest hash (RFC 8122 §5)."""
    return [(f.hash_function, f.value) for f in sdp.select_fingerprints(description.fingerprints)]


def answerer_setup(offered: sdp.Setup, default: sdp.Setup) -> sdp.Setup:
    """The answer's a=setup: the other role to an offer of active or passive (RFC 4145 §4.1; RFC 8842
    allows them), else `default`."""
    return {sdp.Setup.ACTIVE: sdp.Setup.PASSIVE, sdp.Setup.PASSIVE: sdp.Setup.ACTIVE}.get(offered, default)


def answerer_role(setup: sdp.Setup) -> dtls.Role:
    """Our DTLS role when our answer says a=setup:`setup` (the active side is the client)."""
    return dtls.Role.CLIENT if setup == sdp.Setup.ACTIVE else dtls.Role.SERVER


def offerer_role(answered: sdp.Setup) -> dtls.Role:
    """Our DTLS role when the answer says a=setup:`answered`: active there makes us the server, and the
    reverse (RFC 4145)."""
    return dtls.Role.SERVER if answered == sdp.Setup.ACTIVE else dtls.Role.CLIENT


class OfferAnswer(AgentBase):
    """Builds the SDP the agent sends, and applies what an answer settles."""

    def _describe(
        self, call: Call, fingerprint: sdp.Fingerprint, setup: sdp.Setup, *, offer: sdp.SessionDescription | None = None
    ) -> sdp.SessionDescription:
        """Our SDP in `call`: an offer, or the answer to `offer`, at the call's advertised addresses; the one
        place the agent has SDP built. The first exchange proposes our rtcp-mux configuration (an offer
        with the fallback RTCP port, if reserved); a modification keeps the rtcp-mux the call runs with,
        under the next o= version (RFC 3264 §8)."""
        assert call.advertised is not None
        modifying = call.negotiated is not None
        build: Callable[..., sdp.SessionDescription] = (
            sdp.build_offer if offer is None else functools.partial(sdp.build_answer, offer)
        )
        return build(
            address=call.advertised[0],
            port=call.advertised[1],
            fingerprints=[fingerprint],
            session_id=call.sdp_session_id,
            session_version=call.sdp_version + 1 if modifying else call.sdp_version,
            username=self._user(),
            setup=setup,
            rtcp_mux=call.rtcp_mux if modifying else self.config.rtcp_mux,
            rtcp=None if modifying and call.rtcp_mux else call.advertised_rtcp,
        )

    def _ok(self, request: Request, answer: sdp.SessionDescription, to_tag: str | None = None) -> Response:
        """The 200 OK that carries our answer."""
        ok = make_response(request, 200, "OK", to_tag=to_tag)
        ok.headers.add("Contact", self._contact())
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = sdp.serialize(answer).encode()
        return ok

    def _send_ok(self, call: Call, transaction: ServerTransaction, ok: Response) -> None:
        """Send the 2xx to an INVITE, retransmitted until its ACK (RFC 3261 §13.3.1.4); it replaces the
        retransmission of an earlier one."""
        assert self.endpoint is not None
        transaction.respond(ok)
        if call.ok_retransmitter is not None:
            call.ok_retransmitter.ack_received()  # type: ignore[attr-defined]
        call.ok_retransmitter = retransmit_2xx(
            self.endpoint, ok, transaction.response_destination(), self.endpoint.timers
        )

    def _fingerprint(self, call: Call) -> sdp.Fingerprint:
        hash_function = "sha-1" if "sha1-fingerprint" in self.config.deviations else "sha-256"
        return sdp.certificate_fingerprint((call.certificate or self.certificate).der, hash_function)

    def _sent_fingerprint(self, call: Call, tamper: str) -> sdp.Fingerprint:
        """The a=fingerprint our offer or answer carries: ours, unless the `tamper` deviation lies about it."""
        if tamper not in self.config.deviations:
            return self._fingerprint(call)
        call.tampered_fingerprint = True
        fingerprint = sdp.Fingerprint("sha-256", hashlib.sha256(os.urandom(32)).digest())
        self.events.emit(
            "sdp.tampered",
            call.call_id,
            reason=f"deviation {tamper}: a fingerprint that is not ours",
            fingerprint=str(fingerprint),
        )
        return fingerprint

    def _deviate_sdp(self, call: Call, description: sdp.SessionDescription) -> None:
        """a-connection-new: the attribute RFC 5763 §5 forbids, in the SDP we send."""
        if "a-connection-new" in self.config.deviations:
            description.media[0].attributes.insert(1, ("connection", "new"))

    def _settle_rtcp(self, call: Call, answer: sdp.DtlsSrtpMedia) -> None:
        """The answer decides rtcp-mux (RFC 5761 §5.1.1): release the fallback RTCP port, or keep RTCP
        apart towards the answer's a=rtcp (or port + 1)."""
        call.rtcp_mux = answer.rtcp_mux
        if answer.rtcp_mux:
            if call.rtcp is not None:
                call.rtcp.teardown(
                    "the answer accepted rtcp-mux: the fallback RTCP port is not needed (RFC 5761 §5.1.1)",
                    event="media.released",
                )
                call.rtcp = None
            call.advertised_rtcp = None
            return
        if call.rtcp is None:
            self.events.emit(
                "media.rtcp_unavailable",
                call.call_id,
                component="rtcp",
                reason="the answer declined rtcp-mux and our offer reserved no RTCP port (rtcp_mux_fallback off);"
                " RFC 5761 §5.1.1 forbids multiplexing, so this call has no RTCP",
            )
            return
        call.remote_rtcp = answer.rtcp_target(False)
