"""The user agent core: SIP calls (RFC 3261) carrying DTLS-SRTP media (RFC 5763).

One UserAgent runs as Alice and as Bob; what differs is configuration. It is assembled here from one
module per concept, and this module keeps what is the agent's own: its lifecycle, the dispatch of SIP
requests, how calls end (BYE, CANCEL, hang-up) and the table of calls it keeps.

    config.py             AgentConfig, IdentityPolicy: what the agent is configured with
    call.py               Call, CallState and the transitions a call may make
    base.py               AgentBase: what every part shares; a call's state change and failure
    offer_answer.py       the SDP we send (one builder) and what the peer's settles (RFC 3264, RFC 5763 §5)
    media.py              the media sessions and the §6.7.2 STUN check
    forking.py            Fork: one dialog per 2xx, one association each (RFC 5763 §6.3)
    modification.py       re-INVITE (RFC 5763 §6.6)
    outgoing.py           the offerer (Alice): place_call, the INVITE client transaction
    incoming.py           the answerer (Bob): the INVITE server transaction, answer
    identity_services.py  RFC 8224 signing and verification
    sip_reflexive.py      our SIP socket's public address, for Contact

The parts are mixins on AgentBase, each building on the ones it uses (Forking on Media, Outgoing on
Forking and OfferAnswer, Incoming on SessionModification); identity and the SIP reflexive address are
collaborators. The names the service and the tests use (AgentConfig, Call, CallState, Fork,
Modification, ...) are importable from here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pinhole import dtls
from pinhole.address import Address, fmt
from pinhole.events import Counters, EventLog
from pinhole.sip import (
    Dialog,
    Request,
    Response,
    ServerTransaction,
    SipEndpoint,
    SipTimeout,
    make_cancel,
    make_response,
)
from pinhole.sip.describe import record_message
from services.useragent.call import Call, CallState, CallStateError
from services.useragent.config import (
    DEFAULT_PROFILES,
    MAX_CALLS,
    AgentConfig,
    ConfigError,
    IdentityPolicy,
    check_config,
)
from services.useragent.forking import Fork
from services.useragent.identity_services import IdentityServices
from services.useragent.incoming import RETRY_AFTER_S, Incoming
from services.useragent.modification import Modification, ReinviteSetup
from services.useragent.offer_answer import Negotiated
from services.useragent.outgoing import CallLimitError, Outgoing
from services.useragent.sip_reflexive import SipReflexive

__all__ = [
    "DEFAULT_PROFILES",
    "FINISHED_CALLS_KEPT",
    "MAX_CALLS",
    "RETRY_AFTER_S",
    "AgentConfig",
    "Call",
    "CallLimitError",
    "CallState",
    "CallStateError",
    "ConfigError",
    "Fork",
    "IdentityPolicy",
    "Modification",
    "Negotiated",
    "ReinviteSetup",
    "UserAgent",
]

log = logging.getLogger("useragent")

FINISHED_CALLS_KEPT = 1_000  # ended calls GetCall/GetKeyLog still answer for; older ones are forgotten


class UserAgent(Incoming, Outgoing):
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
        self.sip_reflexive = SipReflexive(
            self._send_from_sip_socket,
            local=sip_address,
            events=events,
            counters=counters,
            on_malformed=self._on_malformed,
        )
        self.identity = IdentityServices(lambda: self.config.identity, events, counters)
        self._background: set[asyncio.Task[None]] = set()  # BYEs sent on the side, kept until done

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.endpoint = await SipEndpoint.create(
            self.sip_address,
            timers=self.config.sip_timers,
            on_request=self._on_request,
            on_message=self._on_sip_message,
            on_malformed=self._on_malformed,
            on_stun=self.sip_reflexive.receive,
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
        check_config(config)
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

    # -- requests ---------------------------------------------------------------------------------

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

    # -- ending calls -----------------------------------------------------------------------------

    async def _on_bye(self, transaction: ServerTransaction) -> None:
        call = self._call_of(transaction)
        if call is None:
            return
        transaction.respond(make_response(transaction.request, 200, "OK"))
        fork = next((f for f in call.forks if f.dialog.matches(transaction.request)), None)
        if fork is not None and len(call.forks) > 1 and fork.state != CallState.ESTABLISHED:
            return  # a fork that ended already (its own failure crossed this BYE)
        if fork is not None and any(f.state == CallState.ESTABLISHED and f is not fork for f in call.forks):
            # one fork of several ends (RFC 5763 §6.3): the others go on
            fork.state, fork.reason = CallState.TERMINATED, "BYE received"
            self.events.emit("call.fork_terminated", call.call_id, fork=fork.tag, reason=fork.reason)
            if fork.media is not None:
                fork.media.teardown(fork.reason)
            return
        self._end(call, CallState.TERMINATED, "BYE received")

    async def _on_cancel(self, transaction: ServerTransaction) -> None:
        """RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE it cancels if not answered yet."""
        call = self._call_of(transaction)
        if call is None:
            return
        transaction.respond(make_response(transaction.request, 200, "OK"))
        if call.invite_transaction is not None:
            call.invite_transaction.respond(make_response(call.invite_transaction.request, 487, "Request Terminated"))
            call.invite_transaction = None
            self._end(call, CallState.TERMINATED, "cancelled by the caller")

    async def hang_up(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        if call.invite_transaction is not None:  # ringing, never answered: decline it
            call.invite_transaction.respond(make_response(call.invite_transaction.request, 603, "Decline"))
            call.invite_transaction = None
        elif (
            call.direction == "outgoing" and call.state in (CallState.CALLING, CallState.RINGING) and call.invite_client
        ):
            assert self.endpoint is not None and self.config.outbound_proxy is not None
            # §9.1: CANCEL the pending INVITE (same Via branch); its 487 then ends the transaction
            self.endpoint.send_request(
                make_cancel(call.invite_client.request), self.config.outbound_proxy, add_via=False
            )
        if call.dialog is not None and call.state == CallState.ESTABLISHED:
            # every confirmed dialog (RFC 5763 §6.3: each fork of our INVITE is one); an incoming call has one
            confirmed = [f for f in call.forks if f.state == CallState.ESTABLISHED]
            dialogs = [f.dialog for f in confirmed] if call.forks else [call.dialog]
            await asyncio.gather(*(self._bye(call_id, dialog) for dialog in dialogs))
            for fork in confirmed:
                fork.state, fork.reason = CallState.TERMINATED, "local hang-up"
        self._end(call, CallState.TERMINATED, "local hang-up")

    async def _bye(self, call_id: str, dialog: Dialog) -> None:
        assert self.endpoint is not None
        bye, destination = dialog.create_request("BYE")
        transaction = self.endpoint.send_request(bye, destination)
        try:
            await transaction.final_response()
        except SipTimeout:
            self.events.emit("sip.timeout", call_id, method="BYE")

    def _end(self, call: Call, state: CallState, reason: str) -> None:
        if call.ok_retransmitter is not None:
            call.ok_retransmitter.ack_received()  # type: ignore[attr-defined]
        for session in call.sessions():
            session.teardown(reason)
        if call.state != CallState.FAILED:
            self._set_state(call, state, reason)
        self.events.emit("call.terminated", call.call_id, reason=reason)
        self.events.end_call(call.call_id, state=call.state, reason=reason)
        self._finished_call(call)

    # -- the table of calls -----------------------------------------------------------------------

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
