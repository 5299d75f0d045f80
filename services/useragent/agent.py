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

rtcp-mux (RFC 5761, `rtcp_mux`, on by default). A call has one media session per component: RTP,
and without rtcp-mux RTCP on its own socket, each with its own DTLS association (RFC 5764 §4),
its own §6.7.2 check from the passive side and, behind the NAT, its own reflexive address learned
from the STUN server. An offer that asks for rtcp-mux also reserves an RTCP port and names it in
a=rtcp (`rtcp_mux_fallback`, on by default): if the answer declines rtcp-mux, RFC 5761 §5.1.1
forbids multiplexing and RTCP needs a port the answerer can reach (RFC 5761 §5.1.3 asks ICE
offers for that same a=rtcp fallback). The reserved port is released once the answer accepts
rtcp-mux. The answerer multiplexes only if the offer asked and its own `rtcp_mux` allows.

Session modification (RFC 5763 §6.6). Either side may re-INVITE within the dialog (`reinvite`)
with a new offer: a new certificate, the other DTLS role, or nothing changed. When the offer/answer
changes a fingerprint, the roles or the peer's transport address, every component gets a new
association (see MediaSession.renew for the media in flight); otherwise the associations continue
and no handshake runs. A re-INVITE that arrives while an offer/answer is in progress gets 491
(RFC 3261 §14.2); one that fails leaves the session as it was (§14.1).

Forking (RFC 5763 §6.3). As the offerer, every 2xx with a new To tag is a dialog of its own
(`Fork`): it is ACKed (RFC 3261 §13.2.2.4), its answer read, and its association made on the call's
ONE media port (pinhole.media: one session per answerer on the socket, demultiplexed by the
answerer's transport address). Each fork's association is matched to its answer by the peer
certificate's hash against the answer's a=fingerprint: a session whose handshake already completed
tentatively (its ClientHello came before the answer) is claimed by the answer its certificate
matches; otherwise the session at the answer's address (a new one for a new address) checks the
answerer's certificate against that answer. As passive side Alice sends the §6.7.2 check to each
answer's address, and SRTP runs both ways on each fork. A fork whose association fails, or that
Bob ends with BYE, ends alone (its dialog gets a BYE); the call fails only when no fork is left.
HangUp sends BYE on every confirmed dialog. Forking needs rtcp-mux (an answer that declines it
fails its fork, beyond the first) and is not offered to a re-INVITE (a forked call cannot be
modified). A call that does not fork runs exactly as without this: its one dialog is `dialog`.

Identity (RFC 8224, `IdentityPolicy`; off by default). With a signing key the UA is its own authentication
service (RFC 8224 §5 allows a UA to be one): every INVITE and re-INVITE it sends gets a Date and an Identity
whose PASSporT's mky carries the offer's a=fingerprint values (RFC 5763 §8). With trust anchors it is its own
verification service: an INVITE that carries Identity (or, with `require`, any INVITE) is verified before
anything else, and a failure is answered with RFC 8224 §6.2's response (428, 436, 437, 438 or 403): no 180,
no 200, no DTLS. A re-INVITE refused so leaves the session as it was. pinhole.sip.identity does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.context import Context

from pinhole import dtls, sdp, stun
from pinhole.events import Counters, EventLog
from pinhole.media import RTCP, RTP, Address, MediaSession, MediaTimers, fmt
from pinhole.sip import (
    ClientTransaction,
    Dialog,
    DialogError,
    Headers,
    Request,
    Response,
    ServerTransaction,
    SipEndpoint,
    SipTimeout,
    SipTimers,
    SipTransactionError,
    SipUri,
    identity,
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
FINISHED_CALLS_KEPT = 1_000  # ended calls GetCall/GetKeyLog still answer for; older ones are forgotten
MAX_CALLS = 200  # calls in progress at once, unless configured: at 300 with media a 2-core lab saturates
RETRY_AFTER_S = 1  # what a 503 beyond max_calls asks the caller to wait (RFC 3261 §20.33)


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


class CallStateError(RuntimeError):
    """The call is not in a state where that action makes sense."""


class CallLimitError(RuntimeError):
    """max_calls calls are in progress: a new one is refused, not tried."""


@dataclass(frozen=True)
class IdentityPolicy:
    """RFC 8224 at this UA: what it signs its INVITEs with, what it verifies incoming ones against."""

    key: ec.EllipticCurvePrivateKey | None = None  # P-256: sign with ES256 (authentication service)
    chain: tuple[x509.Certificate, ...] = ()  # the key's certificate (covering the aor) first
    trust_anchors: tuple[x509.Certificate, ...] = ()  # verify INVITEs that carry Identity (verification service)
    require: bool = False  # with trust anchors: an INVITE without Identity gets 428


@dataclass
class AgentConfig:
    aor: str = ""
    display_name: str = ""
    outbound_proxy: Address | None = None
    stun_server: Address | None = None
    answer_setup: sdp.Setup = sdp.Setup.ACTIVE
    auto_answer: bool = True
    ring_seconds: float = 0.0  # auto-answer after ringing this long; DTLS and early media start at once
    max_calls: int = MAX_CALLS  # calls in progress at once, at most
    deviations: frozenset[str] = frozenset()  # pinhole.deviations: misbehaviour on purpose, by name
    srtp_profiles: tuple[str, ...] = DEFAULT_PROFILES
    sip_timers: SipTimers = field(default_factory=SipTimers)
    media_timers: MediaTimers = field(default_factory=MediaTimers)
    media_packets: int = 50
    latching: bool = False  # send media where the peer's packets come from (MediaSession), not the SDP address
    rtcp_mux: bool = True  # RFC 5761: RTP and RTCP on one port and one DTLS association
    rtcp_mux_fallback: bool = True  # offers with rtcp-mux reserve an RTCP port too, named in a=rtcp
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)  # RFC 8224: sign, verify, or neither


class ReinviteSetup(str, Enum):
    """The a=setup of a re-offer (RFC 4145 §4.1, RFC 5763 §6.6)."""

    KEEP = "keep"  # our current role (active if we are the DTLS client): the roles stay
    FLIP = "flip"  # the other role: the roles swap, so a new association MUST be made (§6.6)
    ACTPASS = "actpass"  # let the answerer choose; pinhole's answerer keeps its current role


@dataclass
class Negotiated:
    """What the last completed offer/answer settled; RFC 5763 §6.6 compares the next one with it."""

    local_fingerprint: str
    peer_fingerprints: list[tuple[str, bytes]]
    role: dtls.Role
    remote: Address
    remote_rtcp: Address | None  # None with rtcp-mux


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


@dataclass
class Fork:
    """One dialog of our INVITE (RFC 3261 §13.2.2.4: each 2xx with a new To tag) and its media
    (RFC 5763 §6.3: its own answer, its own association on the call's one media port)."""

    tag: str  # the answerer's To tag: the dialog's remote tag, named in the fork's events
    dialog: Dialog
    state: str = "established"  # established, failed, terminated
    reason: str = ""
    media: MediaSession | None = None
    remote_media: Address | None = None  # the answer's media address
    answer_fingerprints: list[tuple[str, bytes]] = field(default_factory=list)


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
    tampered_fingerprint: bool = False  # our SDP carried a fingerprint that is not ours (a deviation)
    peer_fingerprints: list[tuple[str, bytes]] = field(default_factory=list)
    certificate: dtls.Certificate | None = None  # ours for this call (a re-INVITE may change it)
    rtcp: MediaSession | None = None  # component 2 without rtcp-mux (or the fallback reserved by an offer)
    rtcp_mux: bool = True
    advertised_rtcp: Address | None = None
    remote_rtcp: Address | None = None
    offer_media: sdp.DtlsSrtpMedia | None = None  # our initial offer, to check the answer against
    negotiated: Negotiated | None = None
    sdp_session_id: int = field(default_factory=lambda: int(time.time()))
    sdp_version: int = (
        0  # o= sess-version of our last SDP (starts at the session id); +1 per modification (RFC 3264 §8)
    )
    offer_pending: str = ""  # "sent" or "received" while a re-INVITE offer/answer runs (RFC 3261 §14)
    modifications: list[Modification] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)  # outgoing: every dialog our INVITE made, first first
    key_log: list[str] = field(default_factory=list)  # NSS key log lines of every DTLS association of the call

    def __post_init__(self) -> None:
        self.sdp_version = self.sdp_version or self.sdp_session_id

    def sessions(self) -> list[MediaSession]:
        """The call's media sessions, RTP first (every fork's on the RTP socket, RFC 5763 §6.3)."""
        rtp = self.media.socket_sessions if self.media is not None else []
        return [*rtp, *([self.rtcp] if self.rtcp is not None else [])]

    def fork(self, tag: str | None) -> Fork | None:
        return next((f for f in self.forks if f.tag == tag), None)

    def fork_of(self, session: MediaSession) -> Fork | None:
        return next((f for f in self.forks if f.media is session), None)

    def components(self) -> list[tuple[MediaSession, Address | None]]:
        """Each media session with the peer's SDP address for it."""
        out: list[tuple[MediaSession, Address | None]] = []
        if self.media is not None:
            out.append((self.media, self.remote_media))
        if self.rtcp is not None:
            out.append((self.rtcp, self.remote_rtcp))
        return out


class UserAgent:
    """A SIP UA whose calls carry one DTLS-SRTP audio stream each (one or two components)."""

    def __init__(self, *, name: str, sip_address: Address, media_ip: str, events: EventLog, counters: Counters) -> None:
        self.name = name
        self.sip_address = sip_address
        self.media_ip = media_ip
        self.events = events
        self.counters = counters
        self.config = AgentConfig()
        self.certificate = dtls.Certificate.generate(common_name=name)
        self.calls: dict[str, Call] = {}
        self._finished: dict[str, float] = {}  # ended calls, oldest first: when each ended (monotonic)
        self.endpoint: SipEndpoint | None = None
        self.sip_reflexive: Address | None = None
        self._sip_stun = stun.BindingClient(self._send_from_sip_socket, on_send=self._sip_stun_sent)
        self._sip_stun_calls: dict[bytes, str] = {}  # transaction id -> the call it was made for
        self._background: set[asyncio.Task[None]] = set()  # BYEs sent on the side, kept until done

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
            for session in call.sessions():
                session.teardown("service stopping")
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
            deviations=",".join(sorted(config.deviations)),
            answer_setup=config.answer_setup.value,
            latching=config.latching,
            rtcp_mux=config.rtcp_mux,
            rtcp_mux_fallback=config.rtcp_mux_fallback,
            identity_signs=config.identity.key is not None,
            identity_verifies=bool(config.identity.trust_anchors),
            identity_require=config.identity.require,
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
                if self.sip_reflexive is None:
                    self.sip_reflexive = await self._learn_sip_reflexive(call.call_id)
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
        offer = sdp.build_offer(
            address=advertised[0],
            port=advertised[1],
            fingerprints=[self._sent_fingerprint(call, "tamper-offer-fingerprint")],
            session_id=call.sdp_session_id,
            session_version=call.sdp_version,
            username=self._user(),
            setup=sdp.Setup.ACTIVE if active else sdp.Setup.ACTPASS,
            rtcp_mux=self.config.rtcp_mux,
            rtcp=advertised_rtcp,
        )
        if active:
            for session in call.sessions():
                session.accept_early_client_hello = False  # we are the DTLS client: no ClientHello comes
        self._deviate_sdp(call, offer)
        call.offer_media = sdp.read_offer(offer)
        invite = self._new_request("INVITE", target, call.call_id, body=sdp.serialize(offer).encode())
        try:
            self._sign(call.call_id, invite)
        except (identity.IdentityError, ValueError) as error:
            self._fail(call, f"could not sign the INVITE (RFC 8224 §5): {error}")
            raise ConfigError(f"identity: {error}") from None
        call.invite_time = time.time()
        asyncio.get_running_loop().create_task(self._run_invite(call, invite))
        return call.call_id

    def _media_opened(self, call: Call) -> None:
        assert call.media is not None
        self.events.emit(
            "media.open",
            call.call_id,
            local=fmt(call.media.local_address),
            advertised=fmt(call.advertised),
            component=call.media.component_name,
            rtcp_mux=self.config.rtcp_mux if call.direction == "outgoing" else call.rtcp_mux,
            rtcp_local=fmt(call.rtcp.local_address) if call.rtcp is not None else None,
            rtcp_advertised=fmt(call.advertised_rtcp) if call.rtcp is not None else None,
        )

    def _user(self) -> str:
        aor = parse_uri(self.config.aor)
        if not isinstance(aor, SipUri):  # configure() takes only a sip: URI
            raise ConfigError(f"aor: expected a sip: URI with a user, got {self.config.aor!r}")
        return aor.user or "-"

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
            if call.state == "established" and call.forks and all(f.state != "established" for f in call.forks):
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
        if call.state == "terminated":  # a 2xx that crossed our CANCEL: acknowledge it, then end it
            fork.state = "terminated"
            self._bye_aside(call)
            return
        try:
            answer = sdp.read_answer(sdp.parse(response.body), call.offer_media)
        except sdp.SdpError as error:
            fork.state = "failed"
            self._fail(call, f"bad SDP answer: {error}")
            self._bye_aside(call)  # the dialog exists: end it at Bob too
            return
        self._set_state(call, "established")
        self._settle_rtcp(call, answer)
        call.remote_media = (answer.address, answer.port)
        peer_fingerprints = [(f.hash_function, f.value) for f in sdp.select_fingerprints(answer.fingerprints)]
        # the session whose tentative certificate this answer vouches for, else ours (RFC 5763 §6.3)
        media = call.media = self._claim_session(call, call.remote_media, peer_fingerprints, first=True)
        fork.media, fork.remote_media, fork.answer_fingerprints = media, call.remote_media, peer_fingerprints
        media.fork_tag = fork.tag
        # a=setup:active in the answer makes us the DTLS server (passive), and the reverse (RFC 4145)
        role = dtls.Role.SERVER if answer.setup == sdp.Setup.ACTIVE else dtls.Role.CLIENT
        for session, remote in call.components():
            assert remote is not None
            session.set_remote(remote)
            session.set_peer_fingerprints(peer_fingerprints)
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
            str(self._fingerprint(call)), peer_fingerprints, role, call.remote_media, call.remote_rtcp
        )
        if role == dtls.Role.SERVER:
            self._stun_checks(call)
        self._start_media(call)

    async def _answered_fork(self, call: Call, fork: Fork, response: Response) -> None:
        """Another 2xx, a new To tag: another dialog with its own answer and its own association on
        our one media port (RFC 5763 §6.3). It fails alone; see the module docstring."""
        self.counters["forks"] += 1
        self.events.emit(
            "call.fork", call.call_id, fork=fork.tag, forks=len(call.forks), remote_target=fork.dialog.remote_target
        )
        if call.state in ("terminated", "failed"):  # the call is over: acknowledge this dialog, then end it
            await self._fork_failed(call, fork, f"the call is {call.state} already")
            return
        try:
            answer = sdp.read_answer(sdp.parse(response.body), call.offer_media)
            if not (answer.rtcp_mux and call.rtcp_mux):
                raise sdp.SdpError("pinhole forks media only with rtcp-mux (RFC 5761): one port, one association")
        except sdp.SdpError as error:
            await self._fork_failed(call, fork, f"bad SDP answer: {error}")
            return
        remote = (answer.address, answer.port)
        fingerprints = [(f.hash_function, f.value) for f in sdp.select_fingerprints(answer.fingerprints)]
        role = dtls.Role.SERVER if answer.setup == sdp.Setup.ACTIVE else dtls.Role.CLIENT
        session = self._claim_session(call, remote, fingerprints)
        fork.media, fork.remote_media, fork.answer_fingerprints = session, remote, fingerprints
        session.fork_tag = fork.tag
        session.accept_early_client_hello = False
        self.events.emit(
            "media.fork",
            call.call_id,
            fork=fork.tag,
            peer=fmt(remote),
            local=fmt(session.local_address),
            role=role.value,
            answer_fingerprint=str(sdp.select_fingerprints(answer.fingerprints)[0]) if fingerprints else "",
            tentative=session.endpoint is not None,
        )
        if session.endpoint is None:
            session.set_peer_fingerprints(fingerprints)
            session.start_dtls(role, remote)
        elif session.role != role:
            await self._fork_failed(
                call, fork, f"answer a=setup:{answer.setup.value} but a ClientHello already made us the server"
            )
            return
        else:  # its ClientHello came first: the answer's fingerprint now decides (RFC 5763 §5, §6.3)
            session.sdp_remote = remote
            session.set_peer_fingerprints(fingerprints)
        if role == dtls.Role.SERVER:
            self._stun_check(call, session, remote)
        session.start_media(self.config.media_packets, keep_on=True)

    def _claim_session(
        self, call: Call, remote: Address, fingerprints: list[tuple[str, bytes]], *, first: bool = False
    ) -> MediaSession:
        """The media session on our port for an answer (RFC 5763 §6.3): one no fork has claimed whose
        peer certificate (accepted tentatively) matches the answer's a=fingerprint; else, for the first
        answer, the call's session unless it already runs an association with another address (that
        of another fork); else the one at the answer's address; else a new one."""
        assert call.media is not None
        claimed = [f.media for f in call.forks if f.media is not None]
        unclaimed = [s for s in call.media.socket_sessions if not s.closed and all(s is not c for c in claimed)]
        for session in unclaimed:
            der = session.endpoint.peer_certificate_der if session.endpoint is not None else None
            if der is not None and _certificate_matches(der, fingerprints):
                return session
        media = call.media
        if first and (media.endpoint is None or media.remote in (None, remote) or media.latching):
            return media  # the call that does not fork: as it always was
        for session in unclaimed:
            if session.remote == remote:
                return session
        return call.media.opener.fork()

    def _fork_pending(self, call: Call) -> bool:
        """Another answerer's association runs on our port and its 2xx may still come (RFC 5763 §6.3)."""
        if call.media is None or not call.media.opener.accept_forks:
            return False
        claimed = [f.media for f in call.forks if f.media is not None]
        return any(
            not s.closed and s.endpoint is not None and all(s is not c for c in claimed)
            for s in call.media.socket_sessions
        )

    async def _fork_failed(self, call: Call, fork: Fork, reason: str) -> None:
        """One fork ends on its own (RFC 5763 §6.3): its media stops, its dialog gets a BYE."""
        if fork.state != "established":
            return
        fork.state, fork.reason = "failed", reason
        self.counters["forks_failed"] += 1
        self.events.emit("call.fork_failed", call.call_id, fork=fork.tag, reason=reason)
        if fork.media is not None:
            fork.media.teardown(reason)
        self._bye_aside(call, fork.dialog)

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

    def _start_media(self, call: Call) -> None:
        assert call.media is not None
        call.media.start_media(self.config.media_packets, keep_on=True)
        if call.rtcp is not None:
            call.rtcp.start_rtcp(call.media)

    def _stun_checks(self, call: Call) -> None:
        """RFC 5763 §6.7.2: no ICE and the handshake not complete → one unauthenticated check, per
        component (each DTLS flow needs its own pinhole)."""
        for media, sdp_remote in call.components():
            self._stun_check(call, media, sdp_remote)

    def _stun_check(self, call: Call, media: MediaSession, sdp_remote: Address | None) -> None:
        """The §6.7.2 check of one session (one component, or one fork's association)."""
        fork = {"fork": media.fork_tag} if media.fork_tag else {}
        if media.handshake_complete:
            self.events.emit(
                "stun.check_skipped",
                call.call_id,
                {"component": media.component_name, "reason": "handshake already complete", **fork},
            )
            return
        if "no-stun-check" in self.config.deviations:
            self.events.emit(
                "stun.check_skipped",
                call.call_id,
                {"component": media.component_name, "reason": "deviation no-stun-check", **fork},
            )
            return
        destination = media.remote or sdp_remote  # the SDP address, unless latched elsewhere already
        assert destination is not None
        future = media.stun_binding(destination, purpose="connectivity-check")
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # the outcome is in the events

    # -- session modification (RFC 5763 §6.6) -----------------------------------------------------

    async def reinvite(
        self, call_id: str, *, new_certificate: bool = False, setup: ReinviteSetup = ReinviteSetup.KEEP
    ) -> Modification:
        """Send a re-INVITE with a new offer in the call's dialog and apply the answer; returns when the
        re-INVITE has its final response (the new handshake, if any, runs on: watch the events)."""
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        if call.state != "established" or call.dialog is None or call.negotiated is None or call.media is None:
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
        offer = sdp.build_offer(
            address=call.advertised[0],
            port=call.advertised[1],
            fingerprints=[fingerprint],
            session_id=call.sdp_session_id,
            session_version=call.sdp_version + 1,
            username=self._user(),
            setup=offered_setup,
            rtcp_mux=call.rtcp_mux,
            rtcp=None if call.rtcp_mux else call.advertised_rtcp,
        )
        offer_media = sdp.read_offer(offer)
        request, destination = call.dialog.create_request("INVITE", sdp.serialize(offer).encode())
        self._sign(call_id, request)
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
            role = dtls.Role.SERVER if answer.setup == sdp.Setup.ACTIVE else dtls.Role.CLIENT
            self._apply_offer_answer(
                call,
                modification,
                role=role,
                peer_fingerprints=[(f.hash_function, f.value) for f in sdp.select_fingerprints(answer.fingerprints)],
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
            self._identity_verified(call.call_id, self._verify_identity(request))
        except identity.IdentityError as error:  # RFC 8224 §6.2: refused; the session stays as it was (§14.1)
            self._identity_rejected(call.call_id, error)
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
        if call.offer_pending or call.state != "established" or call.negotiated is None or call.media is None:
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
                setup = {sdp.Setup.ACTIVE: sdp.Setup.PASSIVE, sdp.Setup.PASSIVE: sdp.Setup.ACTIVE}.get(
                    offered.setup, sdp.Setup.ACTIVE if client else sdp.Setup.PASSIVE
                )
                fingerprint = sdp.certificate_fingerprint(call.certificate.der, "sha-256")
                answer = sdp.build_answer(
                    offer_sdp,
                    address=call.advertised[0],
                    port=call.advertised[1],
                    fingerprints=[fingerprint],
                    session_id=call.sdp_session_id,
                    session_version=call.sdp_version + 1,
                    username=self._user(),
                    setup=setup,
                    rtcp_mux=call.rtcp_mux,
                    rtcp=None if call.rtcp_mux else call.advertised_rtcp,
                )
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
            role = dtls.Role.CLIENT if setup == sdp.Setup.ACTIVE else dtls.Role.SERVER
            # as in the first answer: an active answerer's ClientHello leaves before its 200 OK
            self._apply_offer_answer(
                call,
                modification,
                role=role,
                peer_fingerprints=[(f.hash_function, f.value) for f in sdp.select_fingerprints(offered.fingerprints)],
                remote=(offered.address, offered.port),
                remote_rtcp=None if call.rtcp_mux else offered.rtcp_target(False),
                certificate=call.certificate,
                local_fingerprint=str(fingerprint),
            )
            ok = make_response(request, 200, "OK")
            ok.headers.add("Contact", self._contact())
            ok.headers.add("Content-Type", "application/sdp")
            ok.body = sdp.serialize(answer).encode()
            transaction.respond(ok)
            if call.ok_retransmitter is not None:
                call.ok_retransmitter.ack_received()  # type: ignore[attr-defined]
            call.ok_retransmitter = retransmit_2xx(
                self.endpoint, ok, transaction.response_destination(), self.endpoint.timers
            )
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

    async def _safely(
        self, handler: Callable[[ServerTransaction], Awaitable[None]], transaction: ServerTransaction
    ) -> None:
        try:
            await handler(transaction)
        except Exception as error:
            log.exception("handling %s failed", transaction.request.method)
            self.counters["handler_errors"] += 1
            if transaction.request.method != "ACK" and transaction.can_respond(500) and not transaction.final_sent:
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
            verified = self._verify_identity(request)
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
        call = Call(call_id=call_id, direction="incoming", invite_time=time.time(), state="ringing")
        call.invite_transaction, call.offer, call.to_tag = transaction, offer_sdp, to_tag
        call.remote_media = (offer.address, offer.port)
        call.peer_fingerprints = [(f.hash_function, f.value) for f in sdp.select_fingerprints(offer.fingerprints)]
        self.calls[call_id] = call
        # under the INVITE's receive span
        self.events.start_call(call_id, parent=None, direction="incoming", **self._deviations())
        self._identity_verified(call_id, verified)
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
        self._identity_rejected(call.call_id, error)
        transaction.respond(make_response(request, error.status, error.reason))
        self._fail(call, f"Identity refused (RFC 8224 §6.2): {error}")

    async def answer(self, call_id: str) -> None:
        """Answer a ringing call: DTLS first (as the active side, the ClientHello leaves before the
        200 OK, see the module docstring), then the 200 OK with our SDP answer."""
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        if call.direction != "incoming" or call.state != "ringing" or call.invite_transaction is None:
            raise CallStateError(f"call {call_id} is {call.direction} and {call.state}: nothing to answer")
        if call.remote_media is None:  # set from the offer when the INVITE arrived
            raise CallStateError(f"call {call_id} is ringing without the offer's media address")
        transaction, request = call.invite_transaction, call.invite_transaction.request
        call.invite_transaction = None
        assert call.offer is not None
        offered = sdp.read_offer(call.offer)
        # RFC 4145 §4.1: an offer of active/passive (RFC 8842 allows them) leaves us the other role
        setup = {sdp.Setup.ACTIVE: sdp.Setup.PASSIVE, sdp.Setup.PASSIVE: sdp.Setup.ACTIVE}.get(
            offered.setup, self.config.answer_setup
        )
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
            answer = sdp.build_answer(
                call.offer,
                address=call.advertised[0],
                port=call.advertised[1],
                fingerprints=[fingerprint],
                session_id=call.sdp_session_id,
                session_version=call.sdp_version,
                username=self._user(),
                setup=setup,
                rtcp_mux=self.config.rtcp_mux,
                rtcp=call.advertised_rtcp,
            )
        except sdp.SdpError as error:
            transaction.respond(make_response(request, 488, "Not Acceptable Here"))
            self._fail(call, f"cannot answer the offer: {error}")
            raise
        self._deviate_sdp(call, answer)
        self._media_opened(call)
        role = dtls.Role.CLIENT if setup == sdp.Setup.ACTIVE else dtls.Role.SERVER
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
        ok = make_response(request, 200, "OK", to_tag=call.to_tag)
        ok.headers.add("Contact", self._contact())
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = sdp.serialize(answer).encode()
        call.dialog = Dialog.from_uas(request, call.to_tag, self._contact())
        # RFC 5763 §6.2: the active answerer may send (early) media as soon as its handshake completes,
        # before its 200 OK arrives (§7.1 message 6); the media waits for the handshake (MediaSession)
        self._start_media(call)
        if self.config.ring_seconds > 0:  # the user picks up later: §7.1, the handshake ends before the 200 OK
            await asyncio.sleep(self.config.ring_seconds)
            if call.state != "ringing":  # cancelled or ended while ringing
                return
        transaction.respond(ok)
        assert self.endpoint is not None
        call.ok_retransmitter = retransmit_2xx(
            self.endpoint, ok, transaction.response_destination(), self.endpoint.timers
        )
        self._set_state(call, "established")

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
        fork = next((f for f in call.forks if f.dialog.matches(transaction.request)), None)
        if fork is not None and len(call.forks) > 1 and fork.state != "established":
            return  # a fork that ended already (its own failure crossed this BYE)
        if fork is not None and any(f.state == "established" and f is not fork for f in call.forks):
            # one fork of several ends (RFC 5763 §6.3): the others go on
            fork.state, fork.reason = "terminated", "BYE received"
            self.events.emit("call.fork_terminated", call.call_id, fork=fork.tag, reason=fork.reason)
            if fork.media is not None:
                fork.media.teardown(fork.reason)
            return
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
            # every confirmed dialog (RFC 5763 §6.3: each fork of our INVITE is one); an incoming call has one
            confirmed = [f for f in call.forks if f.state == "established"]
            dialogs = [f.dialog for f in confirmed] if call.forks else [call.dialog]
            await asyncio.gather(*(self._bye(call_id, dialog) for dialog in dialogs))
            for fork in confirmed:
                fork.state, fork.reason = "terminated", "local hang-up"
        self._end(call, "terminated", "local hang-up")

    async def _bye(self, call_id: str, dialog: Dialog) -> None:
        assert self.endpoint is not None
        bye, destination = dialog.create_request("BYE")
        transaction = self.endpoint.send_request(bye, destination)
        try:
            await transaction.final_response()
        except SipTimeout:
            self.events.emit("sip.timeout", call_id, method="BYE")

    # -- Identity (RFC 8224) ----------------------------------------------------------------------

    def _sign(self, call_id: str, request: Request) -> None:
        """RFC 8224 §5: with a key, this UA is the authentication service of the INVITEs it sends."""
        policy = self.config.identity
        if policy.key is None:
            return
        signed = identity.authenticate(request, policy.key, policy.chain, time.time())
        self.counters["identity_signed"] += 1
        self.events.emit(
            "identity.signed",
            call_id,
            method=request.method,
            orig=signed.orig,
            dest=",".join(signed.dest),
            iat=signed.iat,
            mky=",".join(signed.mky),
            size=len(signed.field),
        )

    def _verify_identity(self, request: Request) -> identity.Assertion | None:
        """RFC 8224 §6.2 with this UA's trust anchors; None without them, or for an unsigned INVITE none requires."""
        policy = self.config.identity
        if not policy.trust_anchors:
            return None
        return identity.verify(request, policy.trust_anchors, time.time(), require=policy.require)

    def _identity_verified(self, call_id: str, verified: identity.Assertion | None) -> None:
        if verified is None:
            return
        self.counters["identity_verified"] += 1
        self.events.emit(
            "identity.verified",
            call_id,
            orig=verified.orig,
            dest=",".join(verified.dest),
            iat=verified.iat,
            mky=",".join(verified.mky),
            signer=verified.signer,
            form="compact" if verified.compact else "full",
        )

    def _identity_rejected(self, call_id: str, error: identity.IdentityError) -> None:
        self.counters["identity_rejected"] += 1
        self.events.emit("identity.rejected", call_id, status=error.status, reason=error.reason, detail=error.detail)

    # -- helpers ----------------------------------------------------------------------------------

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

    def _deviations(self) -> dict[str, str]:
        """The call span's pinhole.deviations, when this agent deviates on purpose."""
        names = ",".join(sorted(self.config.deviations))
        return {"pinhole.deviations": names} if names else {}

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

    async def _open_media(self, call: Call, component: int) -> MediaSession:
        session = await MediaSession.open(
            self.media_ip,
            certificate=call.certificate or self.certificate,
            events=self.events,
            call_id=call.call_id,
            timers=self.config.media_timers,
            srtp_profiles=self.config.srtp_profiles,
            on_change=lambda media: self._media_changed(call, media),
            latching=self.config.latching,
            component=component,
            key_log=call.key_log,
            deviations=self.config.deviations,
        )
        if component == RTP:
            call.media = session
        else:
            call.rtcp = session
        return session

    def _media_changed(self, call: Call, media: MediaSession) -> None:
        if media.failed.is_set() and call.state not in ("failed", "terminated"):
            reason = media.endpoint.failure_reason if media.endpoint else "media failed"
            fork = call.fork_of(media)
            if fork is None and media is not call.media and media is not call.rtcp:
                return  # an association no answer claimed (RFC 5763 §6.3): it fails alone, in its events
            others = [f for f in call.forks if f.state == "established" and f is not fork]
            if fork is not None and (others or self._fork_pending(call)):
                # RFC 5763 §6.3: a fork whose association fails fails alone
                asyncio.get_running_loop().create_task(
                    self._fork_failed(call, fork, f"media session torn down: {reason}")
                )
                return
            if fork is not None:
                fork.state, fork.reason = "failed", f"media session torn down: {reason}"
            self._fail(call, f"media session torn down: {reason}")
            dialog = fork.dialog if fork is not None else call.dialog
            if dialog is not None:
                self._bye_aside(call, dialog)

    def _bye_aside(self, call: Call, dialog: Dialog | None = None) -> None:
        """End a dialog without waiting for its BYE's answer: the INVITE's response loop must go on
        ACKing other forks' 2xx meanwhile (RFC 3261 §13.2.2.4)."""
        task = asyncio.get_running_loop().create_task(self._bye_after_failure(call, dialog))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bye_after_failure(self, call: Call, dialog: Dialog | None = None) -> None:
        dialog = dialog or call.dialog
        assert self.endpoint is not None and dialog is not None
        bye, destination = dialog.create_request("BYE")
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
        for session in call.sessions():
            session.teardown(reason)
        self._finished_call(call)

    def _end(self, call: Call, state: str, reason: str) -> None:
        if call.ok_retransmitter is not None:
            call.ok_retransmitter.ack_received()  # type: ignore[attr-defined]
        for session in call.sessions():
            session.teardown(reason)
        if call.state != "failed":
            self._set_state(call, state, reason)
        self.events.emit("call.terminated", call.call_id, reason=reason)
        self.events.end_call(call.call_id, state=call.state, reason=reason)
        self._finished_call(call)

    def in_progress(self) -> int:
        """Calls not ended yet (placing, ringing, established)."""
        return len(self.calls) - len(self._finished)

    def _finished_call(self, call: Call) -> None:
        """Remember when `call` ended; forget the oldest ended calls beyond FINISHED_CALLS_KEPT once their
        transactions are over (64*T1: Timers B, F, H, J), so a UA under load holds only what it can still use.
        A request for a forgotten call is answered as for any unknown dialog (481)."""
        now = time.monotonic()
        self._finished.setdefault(call.call_id, now)
        linger = 64 * self.config.sip_timers.t1
        while len(self._finished) > FINISHED_CALLS_KEPT:
            oldest, ended = next(iter(self._finished.items()))
            if now - ended < linger:
                break
            del self._finished[oldest]
            self.calls.pop(oldest, None)


def _certificate_matches(der: bytes, fingerprints: list[tuple[str, bytes]]) -> bool:
    """Whether a certificate's hash is one of an answer's a=fingerprint values (RFC 5763 §6.3)."""
    for hash_function, digest in fingerprints:
        with contextlib.suppress(dtls.DtlsError):
            if dtls.certificate_digest(der, hash_function) == digest:
                return True
    return False
