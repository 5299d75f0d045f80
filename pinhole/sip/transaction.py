"""SIP transactions over UDP (RFC 3261 §17, with the Accepted states of RFC 6026).

A transaction turns one request and its responses into a reliable exchange over UDP: the
client retransmits until a response comes, the server absorbs retransmissions and repeats its
last response. The transactions here never touch a socket or a clock: they send through a
:class:`TransactionTransport` (the :class:`~pinhole.sip.transport.SipEndpoint`) and arm timers
on a :class:`Scheduler` (the asyncio loop, or a virtual clock in tests), so every timer of §17
can be checked exactly.

Why RFC 6026: in RFC 3261 a 2xx to INVITE ends both transactions at once, so the 2xx
retransmissions that the UAS core sends (§13.3.1.4) and INVITE retransmissions that cross the
2xx would match nothing. RFC 6026 keeps both transactions in an *Accepted* state for 64*T1:
the client passes every 2xx retransmission to its TU (which ACKs each, §13.2.2.4), the server
absorbs INVITE retransmissions and forwards the 2xx retransmissions its TU (a proxy) hands it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pinhole.address import Address
from pinhole.sip.message import MAGIC_COOKIE, Request, Response, make_ack
from pinhole.timers import SIP_T1, SIP_T2, SIP_T4

__all__ = [
    "DEFAULT_TIMERS",
    "SipTimers",
    "SipTransactionError",
    "SipTimeout",
    "TransactionStateError",
    "TransactionState",
    "Scheduler",
    "TransactionTransport",
    "ClientTransaction",
    "ServerTransaction",
    "TwoXXRetransmission",
    "retransmit_2xx",
    "client_transaction_key",
    "server_transaction_key",
]



@dataclass(frozen=True)
class SipTimers:
    """RFC 3261 §17.1.1.1 / Table 4: T1 (RTT estimate), T2 (max non-INVITE retransmit interval), T4.

    Every other timer is derived from these three, so tests shorten them all by shrinking T1.
    """

    t1: float = SIP_T1
    t2: float = SIP_T2
    t4: float = SIP_T4

    @classmethod
    def scaled(cls, t1: float) -> SipTimers:
        """Every timer scaled with T1, keeping the RFC ratios (T2 = 8*T1, T4 = 10*T1)."""
        return cls(t1=t1, t2=8 * t1, t4=10 * t1)

    @property
    def timer_a(self) -> float:
        """INVITE retransmit, initially T1, doubled each time (no cap)."""
        return self.t1

    @property
    def timer_b(self) -> float:
        """INVITE transaction timeout while Calling: 64*T1."""
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        """Wait for response retransmissions after a non-2xx: >32 s over UDP (64*T1 with the default T1)."""
        return 64 * self.t1

    @property
    def timer_e(self) -> float:
        """Non-INVITE retransmit, initially T1, doubled up to T2."""
        return self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE transaction timeout: 64*T1."""
        return 64 * self.t1

    @property
    def timer_g(self) -> float:
        """INVITE non-2xx response retransmit, initially T1, doubled up to T2."""
        return self.t1

    @property
    def timer_h(self) -> float:
        """Wait for the ACK of a non-2xx: 64*T1."""
        return 64 * self.t1

    @property
    def timer_i(self) -> float:
        """Absorb ACK retransmissions: T4 over UDP."""
        return self.t4

    @property
    def timer_j(self) -> float:
        """Absorb non-INVITE request retransmissions: 64*T1 over UDP."""
        return 64 * self.t1

    @property
    def timer_k(self) -> float:
        """Absorb non-INVITE response retransmissions: T4 over UDP."""
        return self.t4

    @property
    def timer_l(self) -> float:
        """RFC 6026: INVITE server Accepted state lasts 64*T1."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """RFC 6026: INVITE client Accepted state lasts 64*T1."""
        return 64 * self.t1


DEFAULT_TIMERS = SipTimers()


class SipTransactionError(Exception):
    """A transaction ended without a final response (timeout, endpoint closed)."""


class SipTimeout(SipTransactionError):
    """Timer B (INVITE) or Timer F (non-INVITE) fired: no final response (§17.1.1.2, §17.1.2.2)."""


class TransactionStateError(RuntimeError):
    """The TU asked a server transaction for something its state does not allow."""


class TransactionState(enum.StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What transactions need of a clock: ``asyncio.AbstractEventLoop`` satisfies it."""

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle: ...


class TransactionTransport(Protocol):
    """What transactions need of the transport layer (implemented by ``SipEndpoint``)."""

    @property
    def scheduler(self) -> Scheduler: ...

    def transmit(self, message: Request | Response, destination: Address, *, retransmission: bool = False) -> None: ...

    def transaction_terminated(self, transaction: ClientTransaction | ServerTransaction) -> None: ...


def client_transaction_key(message: Request | Response) -> tuple[str, str]:
    """§17.1.3: a response matches by the top Via branch and the CSeq method."""
    return (message.top_via.branch or "", message.cseq.method)


def server_transaction_key(request: Request) -> tuple[str, ...]:
    """§17.2.3: branch + sent-by + method, where an ACK matches the INVITE it acknowledges.

    Without the magic cookie (an RFC 2543 peer) the key falls back on the fields §17.2.3 lists
    for that case (Request-URI, tags, Call-ID, CSeq number, top Via).
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    host, port = via.sent_by
    if branch.startswith(MAGIC_COOKIE):
        return (branch, host.lower(), str(port), method)
    to_tag = request.to.tag if request.method != "ACK" else None
    return ("rfc2543", request.uri, to_tag or "", request.from_.tag or "", request.call_id,
            str(request.cseq.number), f"{host}:{port}", branch, method)  # fmt: skip


class _Timers:
    """Named timer handles of one transaction, so they can be cancelled by name or all at once."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._handles: dict[str, TimerHandle] = {}

    def start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.cancel(name)
        self._handles[name] = self._scheduler.call_later(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], None]) -> None:
        self._handles.pop(name, None)
        callback()

    def cancel(self, *names: str) -> None:
        for name in names:
            handle = self._handles.pop(name, None)
            if handle is not None:
                handle.cancel()

    def cancel_all(self) -> None:
        self.cancel(*list(self._handles))

    def __contains__(self, name: str) -> bool:
        return name in self._handles


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ClientTransaction:
    """INVITE (§17.1.1) or non-INVITE (§17.1.2) client transaction.

    Consume what reaches the TU with ``async for response in txn.responses()`` (provisional
    responses, the final response, and for INVITE every 2xx retransmission, which the TU must ACK
    again), or just ``await txn.final_response()``. Both raise :class:`SipTimeout` on Timer B/F.
    The ACK for a non-2xx final response is sent here (§17.1.1.3), never by the TU.
    """

    def __init__(
        self, request: Request, destination: Address, *, transport: TransactionTransport, timers: SipTimers
    ) -> None:
        if request.method == "ACK":
            raise ValueError("ACK has no client transaction (§17.1.1.3, §13.2.2.4)")
        self.request = request
        self.destination = destination
        self.timers = timers
        self.method = request.method
        self.key = client_transaction_key(request)
        self.is_invite = request.method == "INVITE"
        self.state = TransactionState.CALLING if self.is_invite else TransactionState.TRYING
        self.last_response: Response | None = None
        self.provisional_received = False
        self.ack: Request | None = None
        self.error: SipTransactionError | None = None
        self._transport = transport
        self._timers = _Timers(transport.scheduler)
        self._interval = timers.t1
        self._queue: asyncio.Queue[Response | SipTransactionError | None] = asyncio.Queue()
        self._final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._final.add_done_callback(_retrieve_exception)

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.key[0]} {self.state.value}>"

    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    def start(self) -> None:
        """Send the request and arm A+B (INVITE) or E+F (non-INVITE)."""
        self._transport.transmit(self.request, self.destination)
        if self.is_invite:
            self._timers.start("A", self.timers.timer_a, self._on_retransmit_timer)
            self._timers.start("B", self.timers.timer_b, self._on_timeout)
        else:
            self._timers.start("E", self.timers.timer_e, self._on_retransmit_timer)
            self._timers.start("F", self.timers.timer_f, self._on_timeout)

    def _on_retransmit_timer(self) -> None:
        """Timer A doubles without limit (§17.1.1.2); Timer E doubles up to T2, and is T2 in Proceeding."""
        self._transport.transmit(self.request, self.destination, retransmission=True)
        if self.is_invite:
            self._interval *= 2
            self._timers.start("A", self._interval, self._on_retransmit_timer)
        else:
            if self.state is TransactionState.PROCEEDING:
                self._interval = self.timers.t2
            else:
                self._interval = min(2 * self._interval, self.timers.t2)
            self._timers.start("E", self._interval, self._on_retransmit_timer)

    def _on_timeout(self) -> None:
        timer = "B" if self.is_invite else "F"
        self._fail(SipTimeout(f"Timer {timer} fired: no final response to {self.method} after {self._timeout:g} s"))

    @property
    def _timeout(self) -> float:
        return self.timers.timer_b if self.is_invite else self.timers.timer_f

    def receive(self, response: Response) -> None:
        """A response matched this transaction (§17.1.3); run the state machine."""
        code = response.status_code
        state = self.state
        if state is TransactionState.TERMINATED:
            return
        if self.is_invite:
            if state in (TransactionState.CALLING, TransactionState.PROCEEDING):
                self._timers.cancel("A", "B")
                if code < 200:
                    self.state = TransactionState.PROCEEDING
                    self.provisional_received = True
                elif code < 300:
                    self.state = TransactionState.ACCEPTED
                    self._timers.start("M", self.timers.timer_m, self._terminate)
                else:
                    self.state = TransactionState.COMPLETED
                    self.ack = make_ack(self.request, response)
                    self._transport.transmit(self.ack, self.destination)
                    self._timers.start("D", self.timers.timer_d, self._terminate)
                self._deliver(response)
            elif state is TransactionState.ACCEPTED and 200 <= code < 300:
                self._deliver(response)
            elif state is TransactionState.COMPLETED and code >= 300 and self.ack is not None:
                self._transport.transmit(self.ack, self.destination, retransmission=True)
            return
        if state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            if code < 200:
                self.state = TransactionState.PROCEEDING
                self.provisional_received = True
            else:
                self.state = TransactionState.COMPLETED
                self._timers.cancel("E", "F")
                self._timers.start("K", self.timers.timer_k, self._terminate)
            self._deliver(response)

    def _deliver(self, response: Response) -> None:
        self.last_response = response
        self._queue.put_nowait(response)
        if response.status_code >= 200 and not self._final.done():
            self._final.set_result(response)

    def _fail(self, error: SipTransactionError) -> None:
        if self.terminated:
            return
        self.error = error
        if not self._final.done():
            self._final.set_exception(error)
            self._queue.put_nowait(error)
        self._terminate()

    def _terminate(self) -> None:
        if self.terminated:
            return
        self.state = TransactionState.TERMINATED
        self._timers.cancel_all()
        self._queue.put_nowait(None)
        self._transport.transaction_terminated(self)

    def close(self, error: SipTransactionError) -> None:
        """End the transaction now (the endpoint is closing)."""
        self._fail(error)
        self._terminate()

    async def responses(self) -> AsyncIterator[Response]:
        """Responses passed to the TU, in order; ends when the transaction terminates."""
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # let a second reader end too
                return
            if isinstance(item, SipTransactionError):
                raise item
            yield item

    async def final_response(self) -> Response:
        """The first final response; raises :class:`SipTimeout` when Timer B/F fires first."""
        return await asyncio.shield(self._final)


class ServerTransaction:
    """INVITE (§17.2.1) or non-INVITE (§17.2.2) server transaction, handed to the TU.

    ``respond()`` sends a response to ``response_destination()`` (§18.2.2 with RFC 3581, computed
    by the endpoint) and drives the state machine; retransmitted requests are absorbed and the
    last response is repeated. An INVITE 2xx moves to Accepted (RFC 6026): the TU, not this
    transaction, retransmits the 2xx (see :func:`retransmit_2xx`).

    An ACK for a 2xx is a transaction of its own with no response (§17): the endpoint hands it to
    the TU as a ``ServerTransaction`` with ``stateless=True`` whose ``respond()`` refuses.
    """

    def __init__(
        self,
        request: Request,
        source: Address,
        *,
        transport: TransactionTransport,
        timers: SipTimers,
        response_destination: Address,
        stateless: bool = False,
    ) -> None:
        self.request = request
        self.source = source
        self.timers = timers
        self.method = request.method
        self._response_destination = response_destination
        self.stateless = stateless
        self.key = server_transaction_key(request)
        self.is_invite = request.method == "INVITE"
        self.last_response: Response | None = None
        self.ack_timed_out = False
        self._transport = transport
        self._timers = _Timers(transport.scheduler)
        self._interval = timers.t1
        if stateless:
            self.state = TransactionState.TERMINATED
        elif self.is_invite:
            self.state = TransactionState.PROCEEDING
        else:
            self.state = TransactionState.TRYING

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.method} {self.key[0]} {self.state.value}>"

    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    def response_destination(self) -> Address:
        """Where responses go: §18.2.2 with RFC 3581 (received:rport of the stamped top Via)."""
        return self._response_destination

    @property
    def final_sent(self) -> bool:
        return self.last_response is not None and self.last_response.status_code >= 200

    def can_respond(self, status_code: int) -> bool:
        """Whether ``respond()`` with this code is allowed now."""
        if self.state in (TransactionState.PROCEEDING, TransactionState.TRYING):
            return True
        return self.state is TransactionState.ACCEPTED and 200 <= status_code < 300

    def respond(self, response: Response) -> None:
        """Send ``response`` and move the state machine (§17.2.1, §17.2.2)."""
        code = response.status_code
        if self.stateless:
            raise TransactionStateError(f"{self.method} is never answered (§17.1.1.3)")
        if not self.can_respond(code):
            raise TransactionStateError(f"cannot send {code} in state {self.state.value} of {self.method}")
        retransmission = self.state is TransactionState.ACCEPTED
        self.last_response = response
        self._transport.transmit(response, self._response_destination, retransmission=retransmission)
        if self.is_invite:
            if code < 200 or self.state is TransactionState.ACCEPTED:
                return
            if code < 300:
                self.state = TransactionState.ACCEPTED
                self._timers.start("L", self.timers.timer_l, self._terminate)
            else:
                self.state = TransactionState.COMPLETED
                self._timers.start("G", self.timers.timer_g, self._on_timer_g)
                self._timers.start("H", self.timers.timer_h, self._on_timer_h)
        elif code < 200:
            self.state = TransactionState.PROCEEDING
        else:
            self.state = TransactionState.COMPLETED
            self._timers.start("J", self.timers.timer_j, self._terminate)

    def receive_request(self, request: Request) -> bool:
        """A retransmission or an ACK matched this transaction; True when it was absorbed here.

        An ACK in the Accepted state is not ours to absorb (RFC 6026 §8.7: pass it to the TU).
        """
        state = self.state
        if request.method == "ACK":
            if state is TransactionState.COMPLETED:
                self.state = TransactionState.CONFIRMED
                self._timers.cancel("G", "H")
                self._timers.start("I", self.timers.timer_i, self._terminate)
                return True
            return state is TransactionState.CONFIRMED
        if self.last_response is not None and state in (
            TransactionState.PROCEEDING,
            TransactionState.COMPLETED,
        ):
            self._transport.transmit(self.last_response, self._response_destination, retransmission=True)
        return True

    def _on_timer_g(self) -> None:
        assert self.last_response is not None
        self._transport.transmit(self.last_response, self._response_destination, retransmission=True)
        self._interval = min(2 * self._interval, self.timers.t2)
        self._timers.start("G", self._interval, self._on_timer_g)

    def _on_timer_h(self) -> None:
        """§17.2.1: the ACK never came; a TU may treat this as a failed session."""
        self.ack_timed_out = True
        self._terminate()

    def _terminate(self) -> None:
        if self.terminated:
            return
        self.state = TransactionState.TERMINATED
        self._timers.cancel_all()
        self._transport.transaction_terminated(self)

    def close(self) -> None:
        self._terminate()


class TwoXXRetransmission:
    """The UAS core's 2xx retransmission (§13.3.1.4); see :func:`retransmit_2xx`."""

    def __init__(
        self, transport: TransactionTransport, response: Response, destination: Address, timers: SipTimers
    ) -> None:
        self.response = response
        self.destination = destination
        self.timers = timers
        self.retransmissions = 0
        self._transport = transport
        self._timers = _Timers(transport.scheduler)
        self._interval = timers.t1
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._timers.start("retransmit", self._interval, self._retransmit)
        self._timers.start("give-up", 64 * timers.t1, self._give_up)

    def _retransmit(self) -> None:
        self._transport.transmit(self.response, self.destination, retransmission=True)
        self.retransmissions += 1
        self._interval = min(2 * self._interval, self.timers.t2)
        self._timers.start("retransmit", self._interval, self._retransmit)

    def _give_up(self) -> None:
        """No ACK within 64*T1: §13.3.1.4 says the UAS should then end the session with BYE."""
        self._timers.cancel_all()
        if not self.done.done():
            self.done.set_result(False)

    def ack_received(self) -> None:
        """The ACK for this 2xx arrived: stop retransmitting."""
        self._timers.cancel_all()
        if not self.done.done():
            self.done.set_result(True)

    def cancel(self) -> None:
        self._timers.cancel_all()
        if not self.done.done():
            self.done.cancel()

    async def wait(self) -> bool:
        """True when acknowledged, False when the UAS gave up after 64*T1."""
        return await asyncio.shield(self.done)


def retransmit_2xx(
    endpoint: TransactionTransport, response: Response, destination: Address, timers: SipTimers
) -> TwoXXRetransmission:
    """Start retransmitting a 2xx to INVITE already sent once by the server transaction.

    §13.3.1.4 makes this the UAS *core's* job, not the transaction's: resend at T1, 2*T1 ...
    capped at T2, until the TU calls ``ack_received()`` (the ACK for 2xx is its own transaction
    and reaches the TU), giving up after 64*T1. ``destination`` is the server transaction's
    ``response_destination()``.
    """
    return TwoXXRetransmission(endpoint, response, destination, timers)
