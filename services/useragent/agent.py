"""The user agent core: SIP calls (RFC 3261) carrying DTLS-SRTP media (RFC 5763).

One class runs as Alice and as Bob; what differs is configuration. As the offerer it learns
its server-reflexive address from the STUN server first (RFC 5763 does not say how the offerer
behind a NAT learns the address to advertise; pinhole chooses a STUN Binding to a public STUN
server, which works because the NAT's mapping is endpoint-independent). As the answerer with
a=setup:active it sends its ClientHello *before* its 200 OK, so that the first ClientHello
reaches Alice's NAT before her STUN check can open the pinhole (the §7.3 drop is deterministic
only that way). Whoever is passive sends the single STUN check of §6.7.2 when the peer's SDP
arrives and the handshake is not complete.

With `latching` configured (off by default) the media session follows the peer's packets rather
than its SDP address (symmetric RTP; see pinhole.media.MediaSession for what counts as the peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field

from opentelemetry.context import Context

from pinhole import dtls, sdp, stun
from pinhole.events import Counters, EventLog
from pinhole.media import Address, MediaSession, MediaTimers, fmt
from pinhole.sip import (
    ClientTransaction,
    Dialog,
    Headers,
    Request,
    Response,
    ServerTransaction,
    SipEndpoint,
    SipTimeout,
    SipTimers,
    make_cancel,
    make_response,
    new_call_id,
    new_tag,
    parse_uri,
    retransmit_2xx,
)
from pinhole.sip.describe import record_message

log = logging.getLogger("useragent")

DEFAULT_PROFILES = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


class CallStateError(RuntimeError):
    """The call is not in a state where that action makes sense."""


@dataclass
class AgentConfig:
    aor: str = ""
    display_name: str = ""
    outbound_proxy: Address | None = None
    stun_server: Address | None = None
    answer_setup: sdp.Setup = sdp.Setup.ACTIVE
    auto_answer: bool = True
    stun_check: bool = True
    tamper_answer_fingerprint: bool = False
    srtp_profiles: tuple[str, ...] = DEFAULT_PROFILES
    sip_timers: SipTimers = field(default_factory=SipTimers)
    media_timers: MediaTimers = field(default_factory=MediaTimers)
    media_packets: int = 50
    latching: bool = False  # send media where the peer's packets come from (MediaSession), not the SDP address


@dataclass
class Call:
    call_id: str
    direction: str
    invite_time: float
    state: str = "calling"
    reason: str = ""
    media: MediaSession | None = None
    dialog: Dialog | None = None
    invite_cseq: int = 1
    advertised: Address | None = None
    remote_media: Address | None = None
    ok_retransmitter: object | None = None
    invite_transaction: ServerTransaction | None = None  # an incoming call not answered yet
    offer: sdp.SessionDescription | None = None
    to_tag: str = ""
    invite_client: ClientTransaction | None = None  # our pending INVITE, for CANCEL
    tampered_fingerprint: bool = False  # our SDP carried a fingerprint that is not ours (negative control)
    peer_fingerprints: list[tuple[str, bytes]] = field(default_factory=list)


class UserAgent:
    """A SIP UA whose calls carry one DTLS-SRTP audio flow each (rtcp-mux)."""

    def __init__(self, *, name: str, sip_address: Address, media_ip: str, events: EventLog, counters: Counters) -> None:
        self.name = name
        self.sip_address = sip_address
        self.media_ip = media_ip
        self.events = events
        self.counters = counters
        self.config = AgentConfig()
        self.certificate = dtls.Certificate.generate(common_name=name)
        self.calls: dict[str, Call] = {}
        self.endpoint: SipEndpoint | None = None
        self.sip_reflexive: Address | None = None
        self._sip_stun = stun.BindingClient(self._send_from_sip_socket, on_send=self._sip_stun_sent)
        self._sip_stun_calls: dict[bytes, str] = {}  # transaction id -> the call it was made for

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.endpoint = await SipEndpoint.create(
            self.sip_address,
            timers=self.config.sip_timers,
            on_request=self._on_request,
            on_message=self._on_sip_message,
            on_malformed=self._on_malformed,
            on_stun=self._on_sip_stun,
        )
        self.events.emit(
            "service.started", sip=fmt(self.sip_address), fingerprint=self.certificate.fingerprint("sha-256")
        )

    def _send_from_sip_socket(self, data: bytes, destination: Address) -> None:
        assert self.endpoint is not None
        self.endpoint.send_raw(data, destination)

    def close(self) -> None:
        for call in self.calls.values():
            if call.media is not None:
                call.media.teardown("service stopping")
        self.events.close()
        if self.endpoint is not None:
            self.endpoint.close()

    def configure(self, config: AgentConfig) -> None:
        if not config.aor.startswith("sip:") or "@" not in config.aor:
            raise ConfigError(f"aor: expected a sip: URI with a user, got {config.aor!r}")
        for profile in config.srtp_profiles:
            if profile not in DEFAULT_PROFILES + ("SRTP_AES128_CM_SHA1_32",):
                raise ConfigError(f"srtp_profiles: unknown profile {profile!r}")
        self.config = config
        if self.endpoint is not None:
            self.endpoint.timers = config.sip_timers
        self.events.emit(
            "ua.configured",
            aor=config.aor,
            stun_check=config.stun_check,
            answer_setup=config.answer_setup.value,
            tamper=config.tamper_answer_fingerprint,
            latching=config.latching,
        )

    # -- evidence ---------------------------------------------------------------------------------

    def _on_sip_message(self, direction: str, message: Request | Response, peer: Address) -> None:
        record_message(self.events, direction, message, peer)

    def _on_malformed(self, data: bytes, peer: Address, reason: str) -> None:
        """Counted by the SIP endpoint's own stats (sip_malformed); here it becomes evidence."""
        self.events.emit("sip.malformed", peer=fmt(peer), reason=reason, size=len(data))

    # -- reflexive addresses (STUN to the STUN server) --------------------------------------------

    def _on_sip_stun(self, data: bytes, peer: Address) -> None:
        try:
            message = stun.decode(data)
        except stun.StunError as error:
            self.counters["sip_socket_stun_malformed"] += 1
            self._on_malformed(data, peer, f"STUN: {error}")
            return
        self.events.emit(
            "stun.recv",
            self._sip_stun_calls.pop(message.transaction_id, ""),
            {
                "stun.transaction_id": message.transaction_id.hex(),
                "stun.class": message.message_class.name.lower(),
                "stun.xor_mapped_address": fmt(message.xor_mapped_address),
            },
            peer=fmt(peer),
            local=fmt(self.sip_address),
        )
        self._sip_stun.receive(message)

    def _sip_stun_sent(self, tid: bytes, destination: Address, attempt: int, call_id: str) -> None:
        self._sip_stun_calls[tid] = call_id
        self.events.emit(
            "stun.send",
            call_id,
            {"stun.transaction_id": tid.hex(), "stun.class": "request"},
            peer=fmt(destination),
            local=fmt(self.sip_address),
            purpose="sip-reflexive-address",
            authenticated=False,
            attempt=attempt,
        )

    async def _learn_sip_reflexive(self, call_id: str) -> Address:
        """Our SIP socket's public address, for Contact: in-dialog requests must reach us through the NAT."""
        assert self.config.stun_server is not None
        self._sip_stun.rto = self.config.media_timers.stun_rto
        return await self._sip_stun.request(self.config.stun_server, label=call_id)

    # -- outgoing calls (the offerer: Alice) ------------------------------------------------------

    async def place_call(self, target: str, parent: Context | None = None) -> str:
        """Call `target`; `parent` is the trace context of whoever asked (the controller's run)."""
        if self.config.outbound_proxy is None:
            raise ConfigError("outbound_proxy: not configured")
        parse_uri(target)
        assert self.endpoint is not None
        call = Call(call_id=new_call_id(self.sip_address[0]), direction="outgoing", invite_time=time.time())
        self.calls[call.call_id] = call
        self.events.start_call(call.call_id, parent, direction="outgoing", target=target)
        try:
            media = await self._open_media(call)
            # a=setup:actpass: a ClientHello may come before the answer (RFC 5763 §5), we are its server
            media.accept_early_client_hello = True
            advertised = media.local_address
            if self.config.stun_server is not None:
                advertised = await media.stun_binding(self.config.stun_server, purpose="reflexive-address")
                if self.sip_reflexive is None:
                    self.sip_reflexive = await self._learn_sip_reflexive(call.call_id)
        except (OSError, TimeoutError, stun.StunError) as error:
            self._fail(call, f"could not prepare the call: {error}")
            raise
        call.advertised = advertised
        self.events.emit("media.open", call.call_id, local=fmt(media.local_address), advertised=fmt(advertised))
        offer = sdp.build_offer(
            address=advertised[0],
            port=advertised[1],
            fingerprints=[self._fingerprint()],
            session_id=int(time.time()),
            username=self._user(),
        )
        invite = self._new_request("INVITE", target, call.call_id, body=sdp.serialize(offer).encode())
        call.invite_time = time.time()
        asyncio.get_running_loop().create_task(self._run_invite(call, invite))
        return call.call_id

    def _user(self) -> str:
        return parse_uri(self.config.aor).user or "-"

    def _contact(self) -> str:
        host, port = self.sip_reflexive or self.endpoint.advertised_address  # type: ignore[union-attr]
        return f"<sip:{self._user()}@{host}:{port}>"

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
                    if response.status_code == 180 and call.state == "calling":
                        self._set_state(call, "ringing")
                    continue
                if response.status_code >= 300:
                    if call.state != "terminated":  # a 487 after our CANCEL is expected
                        self._fail(call, f"INVITE rejected: {response.status_code} {response.reason}")
                    return
                await self._answered(call, invite, response)
                return
        except SipTimeout:
            self._fail(call, "INVITE timed out (Timer B)")
        except Exception as error:  # keep the service up; the call fails with the reason
            log.exception("INVITE handling failed")
            self._fail(call, f"{type(error).__name__}: {error}")

    async def _answered(self, call: Call, invite: Request, response: Response) -> None:
        """200 OK: ACK it, read the answer, set the DTLS role; passive sends the §6.7.2 check."""
        assert self.endpoint is not None
        if call.dialog is not None:  # a retransmitted 2xx: ACK again (§13.2.2.4)
            ack, destination = call.dialog.create_ack(call.invite_cseq)
            self.endpoint.send_stateless(ack, destination)
            return
        call.dialog = Dialog.from_uac(invite, response)
        ack, destination = call.dialog.create_ack(call.invite_cseq)
        self.endpoint.send_stateless(ack, destination)
        if call.state == "terminated":  # a 2xx that crossed our CANCEL: acknowledge it, then end it
            await self._bye_after_failure(call)
            return
        try:
            answer = sdp.read_answer(sdp.parse(response.body))
        except sdp.SdpError as error:
            self._fail(call, f"bad SDP answer: {error}")
            await self._bye_after_failure(call)  # the dialog exists: end it at Bob too
            return
        self._set_state(call, "established")
        media = call.media
        assert media is not None
        call.remote_media = (answer.address, answer.port)
        media.set_remote(call.remote_media)
        media.set_peer_fingerprints([(f.hash_function, f.value) for f in sdp.select_fingerprints(answer.fingerprints)])
        # a=setup:active in the answer makes us the DTLS server (passive), and the reverse (RFC 4145)
        role = dtls.Role.SERVER if answer.setup == sdp.Setup.ACTIVE else dtls.Role.CLIENT
        media.accept_early_client_hello = False
        if media.endpoint is None:
            media.start_dtls(role, call.remote_media)
        elif media.role != role:
            self._fail(call, f"answer a=setup:{answer.setup.value} but a ClientHello already made us the server")
            await self._bye_after_failure(call)
            return
        if role == dtls.Role.SERVER:
            self._stun_check(call)
        media.start_media(self.config.media_packets)

    def _stun_check(self, call: Call) -> None:
        """RFC 5763 §6.7.2: no ICE and the handshake not complete → one unauthenticated check."""
        media = call.media
        assert media is not None and call.remote_media is not None
        if media.connected.is_set():
            self.events.emit("stun.check_skipped", call.call_id, reason="handshake already complete")
            return
        if not self.config.stun_check:
            self.events.emit("stun.check_skipped", call.call_id, reason="disabled by configuration")
            return
        # to where the peer is: its SDP address, unless the session has latched elsewhere already
        future = media.stun_binding(media.remote or call.remote_media, purpose="connectivity-check")
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # the outcome is in the events

    # -- incoming calls (the answerer: Bob) -------------------------------------------------------

    def _on_request(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        handler = {
            "INVITE": self._on_invite,
            "BYE": self._on_bye,
            "ACK": self._on_ack,
            "OPTIONS": self._on_options,
            "CANCEL": self._on_cancel,
        }.get(request.method)
        if handler is None:
            response = make_response(request, 405, "Method Not Allowed")
            response.headers.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")
            transaction.respond(response)
            return
        asyncio.get_running_loop().create_task(self._safely(handler, transaction))

    async def _safely(self, handler, transaction: ServerTransaction) -> None:  # type: ignore[no-untyped-def]
        try:
            await handler(transaction)
        except Exception as error:
            log.exception("handling %s failed", transaction.request.method)
            self.counters["handler_errors"] += 1
            if transaction.request.method != "ACK":
                transaction.respond(
                    make_response(transaction.request, 500, f"Server Internal Error ({type(error).__name__})")
                )

    async def _on_options(self, transaction: ServerTransaction) -> None:
        transaction.respond(make_response(transaction.request, 200, "OK"))

    async def _on_invite(self, transaction: ServerTransaction) -> None:
        """An offer arrives: check it, ring, and answer at once when the policy says so."""
        request = transaction.request
        call_id = request.call_id
        if call_id in self.calls:
            transaction.respond(make_response(request, 491, "Request Pending"))
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
        call = Call(call_id=call_id, direction="incoming", invite_time=time.time(), state="ringing")
        call.invite_transaction, call.offer, call.to_tag = transaction, offer_sdp, to_tag
        call.remote_media = (offer.address, offer.port)
        call.peer_fingerprints = [(f.hash_function, f.value) for f in sdp.select_fingerprints(offer.fingerprints)]
        self.calls[call_id] = call
        self.events.start_call(call_id, direction="incoming")  # under the INVITE's receive span
        self.events.emit(
            "call.incoming", call_id, remote_media=fmt(call.remote_media), warnings=";".join(offer.warnings)
        )
        if self.config.auto_answer:
            with contextlib.suppress(sdp.SdpError):  # answered 488 and failed the call already
                await self.answer(call_id)

    async def answer(self, call_id: str) -> None:
        """Answer a ringing call: DTLS first (as the active side, the ClientHello leaves before the
        200 OK, see the module docstring), then the 200 OK with our SDP answer."""
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        if call.direction != "incoming" or call.state != "ringing" or call.invite_transaction is None:
            raise CallStateError(f"call {call_id} is {call.direction} and {call.state}: nothing to answer")
        transaction, request = call.invite_transaction, call.invite_transaction.request
        call.invite_transaction = None
        assert call.offer is not None
        offered = sdp.read_offer(call.offer).setup
        # RFC 4145 §4.1: an offer of active/passive (RFC 8842 allows them) leaves us the other role
        setup = {sdp.Setup.ACTIVE: sdp.Setup.PASSIVE, sdp.Setup.PASSIVE: sdp.Setup.ACTIVE}.get(
            offered, self.config.answer_setup
        )
        media = await self._open_media(call)
        call.advertised = media.local_address
        fingerprint = self._fingerprint()
        if self.config.tamper_answer_fingerprint:
            fingerprint = sdp.Fingerprint("sha-256", hashlib.sha256(os.urandom(32)).digest())
            call.tampered_fingerprint = True
            self.events.emit(
                "sdp.tampered",
                call_id,
                reason="negative control: answer fingerprint is not ours",
                fingerprint=str(fingerprint),
            )
        try:  # the answer is built before any DTLS leaves: an offer we cannot answer costs nothing
            answer = sdp.build_answer(
                call.offer,
                address=call.advertised[0],
                port=call.advertised[1],
                fingerprints=[fingerprint],
                session_id=int(time.time()),
                username=self._user(),
                setup=setup,
            )
        except sdp.SdpError as error:
            transaction.respond(make_response(request, 488, "Not Acceptable Here"))
            self._fail(call, f"cannot answer the offer: {error}")
            raise
        self.events.emit("media.open", call_id, local=fmt(media.local_address), advertised=fmt(media.local_address))
        media.set_peer_fingerprints(call.peer_fingerprints)
        if setup == sdp.Setup.ACTIVE:
            media.start_dtls(dtls.Role.CLIENT, call.remote_media)
        else:
            media.start_dtls(dtls.Role.SERVER, call.remote_media)
            self._stun_check(call)  # §6.7.2: the passive side checks as soon as it has the peer's SDP
        ok = make_response(request, 200, "OK", to_tag=call.to_tag)
        ok.headers.add("Contact", self._contact())
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = sdp.serialize(answer).encode()
        call.dialog = Dialog.from_uas(request, call.to_tag, self._contact())
        transaction.respond(ok)
        assert self.endpoint is not None
        call.ok_retransmitter = retransmit_2xx(
            self.endpoint, ok, transaction.response_destination(), self.endpoint.timers
        )
        self._set_state(call, "established")
        media.start_media(self.config.media_packets)

    async def _on_ack(self, transaction: ServerTransaction) -> None:
        call = self.calls.get(transaction.request.call_id)
        if call is not None and call.ok_retransmitter is not None:
            call.ok_retransmitter.ack_received()  # type: ignore[attr-defined]

    def _call_of(self, transaction: ServerTransaction) -> Call | None:
        """The call an in-dialog request or CANCEL is for; answers 481 when there is none (§15.1.2)."""
        call = self.calls.get(transaction.request.call_id)
        if call is None:
            transaction.respond(make_response(transaction.request, 481, "Call/Transaction Does Not Exist"))
        return call

    async def _on_bye(self, transaction: ServerTransaction) -> None:
        call = self._call_of(transaction)
        if call is None:
            return
        transaction.respond(make_response(transaction.request, 200, "OK"))
        self._end(call, "terminated", "BYE received")

    async def _on_cancel(self, transaction: ServerTransaction) -> None:
        """RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE it cancels if not answered yet."""
        call = self._call_of(transaction)
        if call is None:
            return
        transaction.respond(make_response(transaction.request, 200, "OK"))
        if call.invite_transaction is not None:
            call.invite_transaction.respond(make_response(call.invite_transaction.request, 487, "Request Terminated"))
            call.invite_transaction = None
            self._end(call, "terminated", "cancelled by the caller")

    # -- hanging up -------------------------------------------------------------------------------

    async def hang_up(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        if call.invite_transaction is not None:  # ringing, never answered: decline it
            call.invite_transaction.respond(make_response(call.invite_transaction.request, 603, "Decline"))
            call.invite_transaction = None
        elif call.direction == "outgoing" and call.state in ("calling", "ringing") and call.invite_client:
            assert self.endpoint is not None and self.config.outbound_proxy is not None
            # §9.1: CANCEL the pending INVITE (same Via branch); its 487 then ends the transaction
            self.endpoint.send_request(
                make_cancel(call.invite_client.request), self.config.outbound_proxy, add_via=False
            )
        if call.dialog is not None and call.state == "established":
            assert self.endpoint is not None
            bye, destination = call.dialog.create_request("BYE")
            transaction = self.endpoint.send_request(bye, destination)
            try:
                await transaction.final_response()
            except SipTimeout:
                self.events.emit("sip.timeout", call_id, method="BYE")
        self._end(call, "terminated", "local hang-up")

    # -- helpers ----------------------------------------------------------------------------------

    def _fingerprint(self) -> sdp.Fingerprint:
        return sdp.certificate_fingerprint(self.certificate.der, "sha-256")

    async def _open_media(self, call: Call) -> MediaSession:
        call.media = await MediaSession.open(
            self.media_ip,
            certificate=self.certificate,
            events=self.events,
            call_id=call.call_id,
            timers=self.config.media_timers,
            srtp_profiles=self.config.srtp_profiles,
            on_change=lambda media: self._media_changed(call, media),
            latching=self.config.latching,
        )
        return call.media

    def _media_changed(self, call: Call, media: MediaSession) -> None:
        if media.failed.is_set() and call.state not in ("failed", "terminated"):
            reason = media.endpoint.failure_reason if media.endpoint else "media failed"
            self._fail(call, f"media session torn down: {reason}")
            if call.dialog is not None:
                asyncio.get_running_loop().create_task(self._bye_after_failure(call))

    async def _bye_after_failure(self, call: Call) -> None:
        assert self.endpoint is not None and call.dialog is not None
        bye, destination = call.dialog.create_request("BYE")
        try:
            await self.endpoint.send_request(bye, destination).final_response()
        except SipTimeout:
            pass

    def _set_state(self, call: Call, state: str, reason: str = "") -> None:
        call.state, call.reason = state, reason
        self.events.emit("call.state", call.call_id, state=state, reason=reason)

    def _fail(self, call: Call, reason: str) -> None:
        self._set_state(call, "failed", reason)
        self.events.emit("call.failed", call.call_id, reason=reason)
        self.events.end_call(call.call_id, state="failed", reason=reason)
        if call.media is not None:
            call.media.teardown(reason)

    def _end(self, call: Call, state: str, reason: str) -> None:
        if call.ok_retransmitter is not None:
            call.ok_retransmitter.ack_received()  # type: ignore[attr-defined]
        if call.media is not None:
            call.media.teardown(reason)
        if call.state != "failed":
            self._set_state(call, state, reason)
        self.events.emit("call.terminated", call.call_id, reason=reason)
        self.events.end_call(call.call_id, state=call.state, reason=reason)
