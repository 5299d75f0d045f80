"""Session modification (RFC 5763 §6.6, RFC 3264 §8): a re-INVITE with a new offer within the dialog,
sent (`reinvite`) or received, and what its offer/answer does to the DTLS associations.

A re-offer may carry a new certificate, the other DTLS role, or nothing changed. When the offer/answer
changes a fingerprint, the roles or the peer's transport address, every component gets a new
association (see MediaSession.renew for the media in flight); otherwise the associations continue and
no handshake runs. A re-INVITE that arrives while an offer/answer is in progress gets 491 (RFC 3261
§14.2); one that fails leaves the session as it was (§14.1). A forked call is not modified (RFC 5763
§6.3: the offer would reach every fork's session on our port).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from enum import Enum

from pinhole import dtls, sdp
from pinhole.address import Address
from pinhole.sip import (
    ClientTransaction,
    DialogError,
    Request,
    Response,
    ServerTransaction,
    SipTimeout,
    identity,
    make_response,
)
from services.useragent.call import Call, CallState, CallStateError
from services.useragent.media import Media
from services.useragent.offer_answer import (
    Negotiated,
    OfferAnswer,
    answerer_role,
    answerer_setup,
    offerer_role,
    peer_fingerprints,
)


class ReinviteSetup(str, Enum):
    """The a=setup of a re-offer (RFC 4145 §4.1, RFC 5763 §6.6)."""

    KEEP = "keep"  # our current role (active if we are the DTLS client): the roles stay
    FLIP = "flip"  # the other role: the roles swap, so a new association MUST be made (§6.6)
    ACTPASS = "actpass"  # let the answerer choose; pinhole's answerer keeps its current role


@dataclass
class Modification:
    """One re-INVITE offer/answer (RFC 5763 §6.6) and what it did to the DTLS associations."""

    direction: str  # sent (our re-INVITE) or received
    offered_setup: str
    new_certificate: bool = False
    status_code: int = 0  # the final response; 0 while pending
    new_association: bool = False
    reason: str = ""  # why a new association, why the old one continues, or why it failed
    dtls_role: str = ""  # our role afterwards
    time: float = field(default_factory=time.time)


class SessionModification(Media, OfferAnswer):
    """Sends and answers re-INVITEs, and keeps or renews the associations as their offer/answer says."""

    async def reinvite(
        self, call_id: str, *, new_certificate: bool = False, setup: ReinviteSetup = ReinviteSetup.KEEP
    ) -> Modification:
        """Send a re-INVITE with a new offer in the call's dialog and apply the answer; returns when the
        re-INVITE has its final response (the new handshake, if any, runs on: watch the events)."""
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        if call.state != CallState.ESTABLISHED or call.dialog is None or call.negotiated is None or call.media is None:
            raise CallStateError(f"call {call_id} is {call.state}: no established session to modify")
        if len(call.forks) > 1:
            raise CallStateError(f"call {call_id} forked into {len(call.forks)} dialogs: pinhole modifies none of them")
        if call.offer_pending:
            raise CallStateError(
                f"call {call_id}: an offer/answer is in progress ({call.offer_pending}), RFC 3261 §14.1"
            )
        assert self.endpoint is not None and call.advertised is not None and call.certificate is not None
        setup = ReinviteSetup(setup)
        certificate = dtls.Certificate.generate(common_name=self.name) if new_certificate else call.certificate
        client = call.negotiated.role is dtls.Role.CLIENT
        offered_setup = {
            ReinviteSetup.KEEP: sdp.Setup.ACTIVE if client else sdp.Setup.PASSIVE,
            ReinviteSetup.FLIP: sdp.Setup.PASSIVE if client else sdp.Setup.ACTIVE,
            ReinviteSetup.ACTPASS: sdp.Setup.ACTPASS,
        }[setup]
        fingerprint = sdp.certificate_fingerprint(certificate.der, "sha-256")
        offer = self._describe(call, fingerprint, offered_setup)
        offer_media = sdp.read_offer(offer)
        request, destination = call.dialog.create_request("INVITE", sdp.serialize(offer).encode())
        self.identity.sign(call_id, request)
        call.sdp_version += 1
        modification = Modification("sent", offered_setup.value, new_certificate=new_certificate)
        call.modifications.append(modification)
        call.offer_pending = "sent"
        may_be_server = offered_setup in (sdp.Setup.PASSIVE, sdp.Setup.ACTPASS)
        for session in call.sessions():
            # the answerer may be active and start the new handshake before its answer reaches us
            session.expect_new_association, session.renewed_early = may_be_server, False
            session.certificate = certificate  # what a new association (only) will present
        self.counters["reinvites_sent"] += 1
        self.events.emit(
            "call.reinvite",
            call_id,
            direction="sent",
            setup=offered_setup.value,
            new_certificate=new_certificate,
            fingerprint=str(fingerprint),
        )
        transaction = self.endpoint.send_request(request, destination)
        try:
            response = await self._final_response(transaction)
            if response is None or response.status_code >= 300:
                status = 408 if response is None else response.status_code
                why = "timed out (Timer B)" if response is None else f"{response.status_code} {response.reason}"
                modification.status_code = status
                modification.reason = f"re-INVITE {why}: the session continues unchanged (RFC 3261 §14.1)"
                for session in call.sessions():
                    session.certificate = call.certificate
                self._modified(call, modification)
                return modification
            modification.status_code = response.status_code
            call.dialog.receive_response(response)
            ack, ack_destination = call.dialog.create_ack(request.cseq.number)
            self.endpoint.send_stateless(ack, ack_destination)
            asyncio.get_running_loop().create_task(self._ack_retransmissions(transaction, ack, ack_destination))
            try:
                answer = sdp.read_answer(sdp.parse(response.body), offer_media)
                if answer.rtcp_mux != call.rtcp_mux:
                    raise sdp.SdpError("the answer declines the rtcp-mux this call runs with (RFC 5761 §5.1.1)")
            except sdp.SdpError as error:
                modification.reason = f"bad SDP answer to the re-INVITE: {error}"
                self._modified(call, modification)
                self._fail(call, modification.reason)
                await self._bye_after_failure(call)
                return modification
            self._apply_offer_answer(
                call,
                modification,
                role=offerer_role(answer.setup),
                peer_fingerprints=peer_fingerprints(answer),
                remote=(answer.address, answer.port),
                remote_rtcp=None if call.rtcp_mux else answer.rtcp_target(False),
                certificate=certificate,
                local_fingerprint=str(fingerprint),
            )
            return modification
        finally:
            call.offer_pending = ""
            for session in call.sessions():
                session.expect_new_association = False

    async def _final_response(self, transaction: ClientTransaction) -> Response | None:
        """The first final response of a client transaction; None on Timer B."""
        try:
            async for response in transaction.responses():
                if response.status_code >= 200:
                    return response
        except SipTimeout:
            return None
        return None

    async def _ack_retransmissions(self, transaction: ClientTransaction, ack: Request, destination: Address) -> None:
        """ACK every retransmission of the 2xx to our re-INVITE (§13.2.2.4) until Timer M ends it."""
        assert self.endpoint is not None
        with contextlib.suppress(SipTimeout):
            async for response in transaction.responses():
                if 200 <= response.status_code < 300:
                    self.endpoint.send_stateless(ack, destination)

    async def _on_reinvite(self, transaction: ServerTransaction, call: Call) -> None:
        """A re-INVITE in our dialog: answer its offer, and keep or replace the associations (§6.6)."""
        request = transaction.request
        if call.dialog is None or not call.dialog.matches(request):
            transaction.respond(make_response(request, 481, "Call/Transaction Does Not Exist"))
            return
        try:
            call.dialog.receive_request(request)
        except DialogError as error:
            transaction.respond(make_response(request, 500, f"Server Internal Error ({error})"[:120]))
            return
        try:
            self.identity.verified(call.call_id, self.identity.verify(request))
        except identity.IdentityError as error:  # RFC 8224 §6.2: refused; the session stays as it was (§14.1)
            self.identity.rejected(call.call_id, error)
            modification = Modification("received", "", status_code=error.status)
            modification.reason = f"Identity refused: {error}; the session continues unchanged"
            call.modifications.append(modification)
            transaction.respond(make_response(request, error.status, error.reason))
            self._modified(call, modification)
            return
        if len(call.forks) > 1:  # the offer would reach every fork's session on our port, not this dialog's
            self.counters["reinvites_refused"] += 1
            transaction.respond(make_response(request, 488, "Not Acceptable Here (a forked call: RFC 5763 §6.3)"))
            return
        if call.offer_pending or call.state != CallState.ESTABLISHED or call.negotiated is None or call.media is None:
            # RFC 3261 §14.2: an offer while one of ours is outstanding (glare) gets 491
            self.counters["reinvites_491"] += 1
            self.events.emit(
                "call.reinvite_rejected",
                call.call_id,
                status=491,
                reason=f"offer/answer in progress ({call.offer_pending or call.state})",
            )
            transaction.respond(make_response(request, 491, "Request Pending"))
            return
        assert self.endpoint is not None and call.advertised is not None and call.certificate is not None
        self.counters["reinvites_received"] += 1
        call.offer_pending = "received"
        modification = Modification("received", "")
        call.modifications.append(modification)
        try:
            try:
                offer_sdp = sdp.parse(request.body)
                offered = sdp.read_offer(offer_sdp)
                modification.offered_setup = offered.setup.value
                if call.rtcp_mux and not offered.rtcp_mux:
                    raise sdp.SdpError("the offer drops rtcp-mux: pinhole adds no RTCP component to a running call")
                # RFC 4145 §4.1 for active/passive; for actpass keep our role, so a re-offer that
                # changes nothing keeps the association (RFC 8842 has the same answerer rule, verify)
                client = call.negotiated.role is dtls.Role.CLIENT
                setup = answerer_setup(offered.setup, sdp.Setup.ACTIVE if client else sdp.Setup.PASSIVE)
                fingerprint = sdp.certificate_fingerprint(call.certificate.der, "sha-256")
                answer = self._describe(call, fingerprint, setup, offer=offer_sdp)
            except sdp.SdpError as error:
                modification.status_code = 488
                modification.reason = f"cannot answer the re-offer: {error}; the session continues unchanged"
                self.events.emit("sdp.rejected", call.call_id, reason=str(error))
                transaction.respond(make_response(request, 488, "Not Acceptable Here"))
                self._modified(call, modification)
                return
            call.sdp_version += 1
            self.events.emit(
                "call.reinvite",
                call.call_id,
                direction="received",
                setup=offered.setup.value,
                answer_setup=setup.value,
                fingerprint=str(offered.fingerprints[0]) if offered.fingerprints else "",
            )
            modification.status_code = 200
            # as in the first answer: an active answerer's ClientHello leaves before its 200 OK
            self._apply_offer_answer(
                call,
                modification,
                role=answerer_role(setup),
                peer_fingerprints=peer_fingerprints(offered),
                remote=(offered.address, offered.port),
                remote_rtcp=None if call.rtcp_mux else offered.rtcp_target(False),
                certificate=call.certificate,
                local_fingerprint=str(fingerprint),
            )
            self._send_ok(call, transaction, self._ok(request, answer))
        finally:
            call.offer_pending = ""

    def _apply_offer_answer(
        self,
        call: Call,
        modification: Modification,
        *,
        role: dtls.Role,
        peer_fingerprints: list[tuple[str, bytes]],
        remote: Address,
        remote_rtcp: Address | None,
        certificate: dtls.Certificate,
        local_fingerprint: str,
    ) -> None:
        """A re-INVITE's offer/answer is complete (RFC 5763 §6.6): reuse the associations if they are
        compatible (same fingerprints, roles and transport), else make new ones, following "the same
        rules as for initial exchanges" (the active side sends its ClientHello at once, the passive
        side its §6.7.2 check) and tearing the old ones down now."""
        previous = call.negotiated
        assert previous is not None
        reasons = []
        if sorted(peer_fingerprints) != sorted(previous.peer_fingerprints):
            reasons.append("the peer's fingerprint changed")
        if local_fingerprint != previous.local_fingerprint:
            reasons.append("our fingerprint changed")
        if role != previous.role:
            reasons.append(f"the DTLS roles changed (we are now {role.value}), a new association MUST be made")
        if remote != previous.remote or remote_rtcp != previous.remote_rtcp:
            reasons.append("the peer's transport address changed")
        call.certificate = certificate
        call.peer_fingerprints = peer_fingerprints
        call.remote_media, call.remote_rtcp = remote, remote_rtcp
        call.negotiated = Negotiated(local_fingerprint, peer_fingerprints, role, remote, remote_rtcp)
        modification.dtls_role = role.value
        if reasons:
            modification.new_association = True
            modification.reason = "; ".join(reasons) + " (RFC 5763 §6.6)"
            for session, target in call.components():
                if session.renewed_early and role is dtls.Role.SERVER and session.endpoint is not None:
                    # the peer's new ClientHello already started it: check its certificate now
                    session.renewed_early = False
                    if target is not None and target != session.sdp_remote:
                        session.set_remote(target)
                    session.set_peer_fingerprints(peer_fingerprints)
                else:
                    session.renew(
                        role,
                        target,
                        reason=modification.reason,
                        peer_fingerprints=peer_fingerprints,
                        certificate=certificate,
                    )
            if role is dtls.Role.SERVER:
                self._stun_checks(call)
        else:
            modification.reason = "same fingerprints, roles and transport: the association continues (RFC 5763 §6.6)"
            for session, _ in call.components():
                if session.renewed_early:  # the peer made a new association although nothing changed
                    session.renewed_early = False
                    session.set_peer_fingerprints(peer_fingerprints)
                    modification.new_association = True
                    modification.reason = "the peer started a new association although the offer/answer changed nothing"
                    continue
                self.events.emit(
                    "dtls.kept",
                    call.call_id,
                    component=session.component_name,
                    association=session.association,
                    reason=modification.reason,
                )
        for session in call.sessions():
            session.certificate = certificate
        self._modified(call, modification)

    def _modified(self, call: Call, modification: Modification) -> None:
        self.events.emit(
            "call.modified",
            call.call_id,
            direction=modification.direction,
            status=modification.status_code,
            new_association=modification.new_association,
            dtls_role=modification.dtls_role,
            reason=modification.reason,
            associations=call.media.association if call.media is not None else 0,
        )
