"""Outgoing calls: the offerer (Alice) and its INVITE client transaction (RFC 3261 §13.2).

The offerer behind a NAT learns its server-reflexive address from the STUN server before it offers:
RFC 5763 does not say how the offerer learns the address to advertise; pinhole chooses a STUN Binding
to a public STUN server, which works because the NAT's mapping is endpoint-independent. The offer is
a=setup:actpass, so the answerer's ClientHello may arrive before its answer (RFC 5763 §5): the media
sessions accept it and complete the handshake tentatively, and the answer's a=fingerprint decides. The
INVITE's responses are read until Timer M: each 2xx with a new To tag is a fork (forking.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from opentelemetry.context import Context

from pinhole import dtls, sdp, stun
from pinhole.address import Address
from pinhole.media import RTCP, RTP
from pinhole.sip import (
    Dialog,
    Headers,
    Request,
    Response,
    SipTimeout,
    SipTransactionError,
    identity,
    new_call_id,
    new_tag,
    parse_uri,
)
from services.useragent.call import Call, CallState
from services.useragent.config import ConfigError
from services.useragent.forking import Fork, Forking
from services.useragent.offer_answer import Negotiated, OfferAnswer, offerer_role, peer_fingerprints

log = logging.getLogger("useragent")


class CallLimitError(RuntimeError):
    """max_calls calls are in progress: a new one is refused, not tried."""


class Outgoing(Forking, OfferAnswer):
    """Places calls: offers, sends the INVITE, and takes each 2xx's answer."""

    async def place_call(self, target: str, parent: Context | None = None) -> str:
        """Call `target`; `parent` is the trace context of whoever asked (the controller's run)."""
        if self.config.outbound_proxy is None:
            raise ConfigError("outbound_proxy: not configured")
        parse_uri(target)
        assert self.endpoint is not None
        if self.in_progress() >= self.config.max_calls:
            self.counters["calls_refused_over_limit"] += 1
            raise CallLimitError(
                f"{self.in_progress()} calls in progress, the most this agent takes (max_calls {self.config.max_calls})"
            )
        call = Call(call_id=new_call_id(self.sip_address[0]), direction="outgoing", invite_time=time.time())
        call.certificate = self.certificate
        self.calls[call.call_id] = call
        self.events.start_call(call.call_id, parent, direction="outgoing", target=target, **self._deviations())
        try:
            media = await self._open_media(call, RTP)
            if not self.config.rtcp_mux or self.config.rtcp_mux_fallback:
                await self._open_media(call, RTCP)
            for session in call.sessions():
                # a=setup:actpass: a ClientHello may come before the answer (RFC 5763 §5), we are its server
                session.accept_early_client_hello = True
            media.accept_forks = True  # and a fork's answerer may send its own (RFC 5763 §6.3)
            advertised = media.local_address
            advertised_rtcp = call.rtcp.local_address if call.rtcp is not None else None
            if self.config.stun_server is not None:
                # each component's own public address: each socket has its own NAT mapping
                mapped = await asyncio.gather(
                    *(s.stun_binding(self.config.stun_server, purpose="reflexive-address") for s in call.sessions())
                )
                advertised = mapped[0]
                if call.rtcp is not None:
                    advertised_rtcp = mapped[1]
                if self.sip_reflexive.address is None:
                    await self.sip_reflexive.learn(
                        self.config.stun_server, self.config.media_timers.stun_rto, call.call_id
                    )
        except (OSError, TimeoutError, stun.StunError) as error:
            # the call was tried and failed (under loss its STUN requests can all be lost): that is the
            # call's outcome, in its events, not a failure of the control plane
            self._fail(call, f"could not prepare the call: {error}")
            return call.call_id
        call.advertised, call.advertised_rtcp = advertised, advertised_rtcp
        self._media_opened(call)
        if "early-srtp-before-verify" in self.config.deviations:
            # the deviation: media once keys exist, verified or not
            media.start_media(self.config.media_packets, keep_on=True)
        active = "offer-setup-active" in self.config.deviations  # the deviation: not actpass
        fingerprint = self._sent_fingerprint(call, "tamper-offer-fingerprint")
        offer = self._describe(call, fingerprint, sdp.Setup.ACTIVE if active else sdp.Setup.ACTPASS)
        if active:
            for session in call.sessions():
                session.accept_early_client_hello = False  # we are the DTLS client: no ClientHello comes
        self._deviate_sdp(call, offer)
        call.offer_media = sdp.read_offer(offer)
        invite = self._new_request("INVITE", target, call.call_id, body=sdp.serialize(offer).encode())
        try:
            self.identity.sign(call.call_id, invite)
        except (identity.IdentityError, ValueError) as error:
            self._fail(call, f"could not sign the INVITE (RFC 8224 §5): {error}")
            raise ConfigError(f"identity: {error}") from None
        call.invite_time = time.time()
        asyncio.get_running_loop().create_task(self._run_invite(call, invite))
        return call.call_id

    def _new_request(self, method: str, target: str, call_id: str, body: bytes) -> Request:
        headers = Headers()
        assert self.config.outbound_proxy is not None
        proxy_host, proxy_port = self.config.outbound_proxy
        headers.add("Route", f"<sip:{proxy_host}:{proxy_port};lr>")
        headers.add("Max-Forwards", "70")
        name = f'"{self.config.display_name}" ' if self.config.display_name else ""
        headers.add("From", f"{name}<{self.config.aor}>;tag={new_tag()}")
        headers.add("To", f"<{target}>")
        headers.add("Call-ID", call_id)
        headers.add("CSeq", f"1 {method}")
        headers.add("Contact", self._contact())
        headers.add("User-Agent", f"pinhole/{self.name}")
        if body:
            headers.add("Content-Type", "application/sdp")
        return Request(method, target, headers, body)

    async def _run_invite(self, call: Call, invite: Request) -> None:
        assert self.endpoint is not None and self.config.outbound_proxy is not None
        transaction = self.endpoint.send_request(invite, self.config.outbound_proxy)
        call.invite_client = transaction
        try:
            async for response in transaction.responses():
                if response.status_code < 200:
                    if response.status_code == 180 and call.state == CallState.CALLING:
                        self._set_state(call, CallState.RINGING)
                    continue
                if response.status_code >= 300:
                    if call.state != CallState.TERMINATED:  # a 487 after our CANCEL is expected
                        self._fail(call, f"INVITE rejected: {response.status_code} {response.reason}")
                    return
                # read on until Timer M: a forked INVITE brings one 2xx per dialog (§13.2.2.4)
                await self._answered(call, invite, response)
        except SipTimeout:
            self._fail(call, "INVITE timed out (Timer B)")
        except SipTransactionError as error:  # the endpoint closed while we read on for more 2xx
            if not call.forks:
                self._fail(call, f"INVITE transaction ended: {error}")
        except Exception as error:  # keep the service up; the call fails with the reason
            log.exception("INVITE handling failed")
            self._fail(call, f"{type(error).__name__}: {error}")
        finally:
            if call.media is not None:
                call.media.opener.accept_forks = False  # no 2xx can come any more
                for session in call.media.socket_sessions:  # nor an answer that a ClientHello could beat
                    session.accept_early_client_hello = False
            if (
                call.state == CallState.ESTABLISHED
                and call.forks
                and all(f.state != CallState.ESTABLISHED for f in call.forks)
            ):
                self._fail(call, "every fork of the call failed (RFC 5763 §6.3)")

    async def _answered(self, call: Call, invite: Request, response: Response) -> None:
        """200 OK: ACK it, read the answer, set the DTLS role; passive sends the §6.7.2 check."""
        assert self.endpoint is not None
        known = call.fork(response.to.tag)
        if known is not None:  # a retransmitted 2xx: ACK again (§13.2.2.4)
            ack, destination = self._ack(known.dialog, call.invite_cseq)
            self.endpoint.send_stateless(ack, destination)
            return
        dialog = Dialog.from_uac(invite, response)
        ack, destination = self._ack(dialog, call.invite_cseq)
        self.endpoint.send_stateless(ack, destination)
        fork = Fork(dialog.remote_tag, dialog)
        call.forks.append(fork)
        if call.dialog is not None:  # a 2xx with a new To tag: our INVITE forked (RFC 5763 §6.3)
            await self._answered_fork(call, fork, response)
            return
        call.dialog = dialog
        if call.state == CallState.TERMINATED:  # a 2xx that crossed our CANCEL: acknowledge it, then end it
            fork.state = CallState.TERMINATED
            self._bye_aside(call)
            return
        try:
            answer = sdp.read_answer(sdp.parse(response.body), call.offer_media)
        except sdp.SdpError as error:
            fork.state = CallState.FAILED
            self._fail(call, f"bad SDP answer: {error}")
            self._bye_aside(call)  # the dialog exists: end it at Bob too
            return
        self._set_state(call, CallState.ESTABLISHED)
        self._settle_rtcp(call, answer)
        call.remote_media = (answer.address, answer.port)
        fingerprints = peer_fingerprints(answer)
        # the session whose tentative certificate this answer vouches for, else ours (RFC 5763 §6.3)
        media = call.media = self._claim_session(call, call.remote_media, fingerprints, first=True)
        fork.media, fork.remote_media, fork.answer_fingerprints = media, call.remote_media, fingerprints
        media.fork_tag = fork.tag
        role = offerer_role(answer.setup)
        for session, remote in call.components():
            assert remote is not None
            session.set_remote(remote)
            session.set_peer_fingerprints(fingerprints)
            session.accept_early_client_hello = False
            if session.endpoint is None:
                session.start_dtls(role, remote)
            elif session.role != role:
                self._fail(
                    call,
                    f"answer a=setup:{answer.setup.value} but a ClientHello already made us the server"
                    f" ({session.component_name})",
                )
                self._bye_aside(call)
                return
        call.negotiated = Negotiated(
            str(self._fingerprint(call)), fingerprints, role, call.remote_media, call.remote_rtcp
        )
        if role == dtls.Role.SERVER:
            self._stun_checks(call)
        self._start_media(call)

    def _ack(self, dialog: Dialog, cseq: int) -> tuple[Request, Address]:
        """The ACK for a 2xx along the route set (RFC 3261 §13.2.2.4); ack-bypass-route-set sends it straight
        to the remote target instead."""
        ack, destination = dialog.create_ack(cseq)
        if "ack-bypass-route-set" in self.config.deviations:
            ack.headers.remove_all("Route")
            target = parse_uri(dialog.remote_target)
            ack.uri = dialog.remote_target
            destination = target.hostport  # type: ignore[union-attr]
        return ack, destination
