"""Incoming calls: the answerer (Bob) and its INVITE server transaction (RFC 3261 §13.3).

An INVITE is checked before anything else (RFC 8224 Identity, then its SDP offer), rings, and is
answered at once, after `ring_seconds`, or when asked (`answer`). As the answerer with a=setup:active
the UA sends its ClientHello *before* its 200 OK, so that the first ClientHello reaches Alice's NAT
before her STUN check can open the pinhole (the RFC 5763 §7.3 drop is deterministic only that way).
An INVITE within a dialog is a session modification (modification.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from pinhole import dtls, sdp
from pinhole.address import fmt
from pinhole.media import RTCP, RTP
from pinhole.sip import Dialog, ServerTransaction, identity, make_response, new_tag
from services.useragent.call import Call, CallState, CallStateError
from services.useragent.modification import SessionModification
from services.useragent.offer_answer import Negotiated, answerer_role, answerer_setup, peer_fingerprints

RETRY_AFTER_S = 1  # what a 503 beyond max_calls asks the caller to wait (RFC 3261 §20.33)


class Incoming(SessionModification):
    """Takes INVITEs: refuses, rings, answers; re-INVITEs go to SessionModification."""

    async def _on_invite(self, transaction: ServerTransaction) -> None:
        """An offer arrives: check it, ring, and answer at once when the policy says so."""
        request = transaction.request
        call_id = request.call_id
        if call_id in self.calls:
            if request.to.tag is not None:  # within a dialog: a session modification
                await self._on_reinvite(transaction, self.calls[call_id])
                return
            transaction.respond(make_response(request, 491, "Request Pending"))
            return
        if self.in_progress() >= self.config.max_calls:  # overload: refuse at once, say when to retry
            self.counters["calls_refused_over_limit"] += 1
            busy = make_response(request, 503, "Service Unavailable")
            busy.headers.add("Retry-After", str(RETRY_AFTER_S))
            transaction.respond(busy)
            self.events.emit("call.refused", call_id, reason=f"max_calls {self.config.max_calls} in progress")
            return
        try:  # RFC 8224 §6.2 comes first: a request that fails it is not a call to answer
            verified = self.identity.verify(request)
        except identity.IdentityError as error:
            self._refuse_identity(transaction, error)
            return
        try:
            offer_sdp = sdp.parse(request.body)
            offer = sdp.read_offer(offer_sdp)
        except sdp.SdpError as error:
            self.counters["sdp_rejected"] += 1
            self.events.emit("sdp.rejected", call_id, reason=str(error))
            transaction.respond(make_response(request, 488, f"Not Acceptable Here ({error})"[:120]))
            return
        to_tag = new_tag()
        transaction.respond(make_response(request, 180, "Ringing", to_tag=to_tag))
        call = Call(call_id=call_id, direction="incoming", invite_time=time.time(), state=CallState.RINGING)
        call.invite_transaction, call.offer, call.to_tag = transaction, offer_sdp, to_tag
        call.remote_media = (offer.address, offer.port)
        call.peer_fingerprints = peer_fingerprints(offer)
        self.calls[call_id] = call
        # under the INVITE's receive span
        self.events.start_call(call_id, parent=None, direction="incoming", **self._deviations())
        self.identity.verified(call_id, verified)
        self.events.emit(
            "call.incoming", call_id, remote_media=fmt(call.remote_media), warnings=";".join(offer.warnings)
        )
        if self.config.auto_answer:
            with contextlib.suppress(sdp.SdpError):  # answered 488 and failed the call already
                await self.answer(call_id)

    def _refuse_identity(self, transaction: ServerTransaction, error: identity.IdentityError) -> None:
        """An INVITE whose Identity fails is answered with RFC 8224 §6.2's response, no 180, no 200, no DTLS;
        the call is recorded (failed) so that its events say why."""
        request = transaction.request
        call = Call(call_id=request.call_id, direction="incoming", invite_time=time.time())
        self.calls[call.call_id] = call
        self.events.start_call(call.call_id, parent=None, direction="incoming", **self._deviations())
        self.identity.rejected(call.call_id, error)
        transaction.respond(make_response(request, error.status, error.reason))
        self._fail(call, f"Identity refused (RFC 8224 §6.2): {error}")

    async def answer(self, call_id: str) -> None:
        """Answer a ringing call: DTLS first (as the active side, the ClientHello leaves before the
        200 OK, see the module docstring), then the 200 OK with our SDP answer."""
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        if call.direction != "incoming" or call.state != CallState.RINGING or call.invite_transaction is None:
            raise CallStateError(f"call {call_id} is {call.direction} and {call.state}: nothing to answer")
        if call.remote_media is None:  # set from the offer when the INVITE arrived
            raise CallStateError(f"call {call_id} is ringing without the offer's media address")
        transaction, request = call.invite_transaction, call.invite_transaction.request
        call.invite_transaction = None
        assert call.offer is not None
        offered = sdp.read_offer(call.offer)
        setup = answerer_setup(offered.setup, self.config.answer_setup)
        # RFC 5761 §5.1.1: multiplex only if offered and wanted; else RTCP gets its own component
        call.rtcp_mux = offered.rtcp_mux and self.config.rtcp_mux
        call.certificate = self.certificate
        media = await self._open_media(call, RTP)
        if not call.rtcp_mux:
            rtcp = await self._open_media(call, RTCP)
            call.advertised_rtcp = rtcp.local_address
            call.remote_rtcp = offered.rtcp_target(False)
        call.advertised = media.local_address
        fingerprint = self._sent_fingerprint(call, "tamper-answer-fingerprint")
        try:  # the answer is built before any DTLS leaves: an offer we cannot answer costs nothing
            answer = self._describe(call, fingerprint, setup, offer=call.offer)
        except sdp.SdpError as error:
            transaction.respond(make_response(request, 488, "Not Acceptable Here"))
            self._fail(call, f"cannot answer the offer: {error}")
            raise
        self._deviate_sdp(call, answer)
        self._media_opened(call)
        role = answerer_role(setup)
        for session, remote in call.components():
            session.set_peer_fingerprints(call.peer_fingerprints)
            session.start_dtls(role, remote)
        call.negotiated = Negotiated(
            str(fingerprint),
            call.peer_fingerprints,
            role,
            call.remote_media,
            call.remote_rtcp,
        )
        if role == dtls.Role.SERVER:
            self._stun_checks(call)  # §6.7.2: the passive side checks as soon as it has the peer's SDP
        ok = self._ok(request, answer, to_tag=call.to_tag)
        call.dialog = Dialog.from_uas(request, call.to_tag, self._contact())
        # RFC 5763 §6.2: the active answerer may send (early) media as soon as its handshake completes,
        # before its 200 OK arrives (§7.1 message 6); the media waits for the handshake (MediaSession)
        self._start_media(call)
        if self.config.ring_seconds > 0:  # the user picks up later: §7.1, the handshake ends before the 200 OK
            await asyncio.sleep(self.config.ring_seconds)
            if call.state != CallState.RINGING:  # cancelled or ended while ringing
                return
        self._send_ok(call, transaction, ok)
        self._set_state(call, CallState.ESTABLISHED)
