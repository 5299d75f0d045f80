"""pinhole.sip.transaction and pinhole.sip.transport.

The state machines run on a virtual clock (``VirtualClock``), so every §17 timer is checked at
its exact instant with no waiting. The endpoint tests use real UDP sockets on 127.0.0.1 with
short timers and wait on futures, never on sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from pinhole.events import EventLog
from pinhole.sip.describe import record_message
from pinhole.sip.message import (
    Headers,
    Request,
    Response,
    make_response,
    parse_message,
    parse_via,
)
from pinhole.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    SipTimeout,
    SipTimers,
    SipTransactionError,
    TransactionState,
    TransactionStateError,
    client_transaction_key,
    retransmit_2xx,
    server_transaction_key,
)
from pinhole.sip.transport import SipEndpoint, response_destination, stamp_via

T = TypeVar("T")
Address = tuple[str, int]
PEER: Address = ("192.0.2.10", 5060)  # virtual-clock tests never touch a socket
TORTURE = Path(__file__).parent / "data" / "sip"  # RFC 4475 messages


# -- a virtual clock and a recording transport ------------------------------------------------------


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A ``Scheduler`` whose time only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, _Handle, Callable[..., object], tuple[Any, ...]]] = []
        self._seq = 0

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Handle:
        handle = _Handle()
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, handle, callback, args))
        return handle

    def advance(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until + 1e-9:
            when, _, handle, callback, args = heapq.heappop(self._queue)
            if not handle.cancelled:
                self.now = when
                callback(*args)
        self.now = until

    @property
    def pending(self) -> int:
        return sum(1 for entry in self._queue if not entry[2].cancelled)


class RecordingTransport:
    def __init__(self) -> None:
        self.scheduler = VirtualClock()
        self.sent: list[tuple[float, Request | Response, Address, bool]] = []
        self.terminated: list[object] = []

    def transmit(self, message: Request | Response, destination: Address, *, retransmission: bool = False) -> None:
        self.sent.append((self.scheduler.now, message, destination, retransmission))

    def transaction_terminated(self, transaction: object) -> None:
        self.terminated.append(transaction)

    def times(self, what: str | None = None) -> list[float]:
        return [round(t, 6) for t, message, _, _ in self.sent if what is None or _label(message) == what]


def _label(message: Request | Response) -> str:
    return message.method if isinstance(message, Request) else str(message.status_code)


def run(coroutine: Awaitable[T], timeout: float = 10.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(main())


TIMERS = SipTimers()  # RFC defaults: T1 0.5 s, T2 4 s, T4 5 s (virtual time costs nothing)


def request(method: str = "INVITE", branch: str = "z9hG4bKtest1", sent_by: str = "192.0.2.1:5060") -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP {sent_by};rport;branch={branch}")
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:alice@example.com>;tag=a1")
    headers.add("To", "<sip:bob@example.com>")
    headers.add("Call-ID", "call-1@example.com")
    headers.add("CSeq", f"1 {method}")
    return Request(method, "sip:bob@example.com", headers)


def response(to: Request, code: int) -> Response:
    return make_response(to, code, to_tag=None if code == 100 else "b1")


# -- timers -----------------------------------------------------------------------------------------


def test_timer_values_derive_from_t1_t2_t4() -> None:
    t = SipTimers()
    assert (t.timer_a, t.timer_b, t.timer_d, t.timer_e, t.timer_f) == (0.5, 32.0, 32.0, 0.5, 32.0)
    assert (t.timer_g, t.timer_h, t.timer_i, t.timer_j, t.timer_k) == (0.5, 32.0, 5.0, 32.0, 5.0)
    assert (t.timer_l, t.timer_m) == (32.0, 32.0)
    short = SipTimers(t1=0.01, t2=0.08, t4=0.1)
    assert short.timer_b == 0.64 and short.timer_k == 0.1
    assert SipTimers.scaled(0.01) == SipTimers(t1=0.01, t2=0.08, t4=0.1)
    assert SipTimers.scaled(0.5) == SipTimers()


# -- INVITE client transaction (§17.1.1) ------------------------------------------------------------


def test_invite_client_retransmits_on_timer_a_and_times_out_on_timer_b() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        txn = ClientTransaction(request(), PEER, transport=transport, timers=TIMERS)
        txn.start()
        transport.scheduler.advance(31.9)
        # Timer A: T1, doubling without a cap: sends at 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5 s
        assert transport.times() == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
        assert [rtx for *_, rtx in transport.sent] == [False] + [True] * 6
        assert txn.state is TransactionState.CALLING
        transport.scheduler.advance(32.0)  # Timer B = 64*T1
        assert txn.state is TransactionState.TERMINATED and transport.terminated == [txn]
        assert transport.scheduler.pending == 0
        with pytest.raises(SipTimeout, match="Timer B fired: no final response to INVITE after 32 s"):
            await txn.final_response()
        with pytest.raises(SipTimeout):
            async for _ in txn.responses():
                pass

    run(main())


def test_invite_client_provisional_stops_retransmissions_and_non_2xx_is_acked() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        invite = request()
        txn = ClientTransaction(invite, PEER, transport=transport, timers=TIMERS)
        txn.start()
        transport.scheduler.advance(0.6)
        txn.receive(response(invite, 180))
        assert txn.state is TransactionState.PROCEEDING and txn.provisional_received
        transport.scheduler.advance(100.0)  # neither A nor B run in Proceeding
        assert transport.times() == [0.0, 0.5]
        txn.receive(response(invite, 486))
        assert txn.state is TransactionState.COMPLETED
        ack = transport.sent[-1][1]
        assert isinstance(ack, Request) and ack.method == "ACK" and ack.to.tag == "b1"
        assert ack.top_via.branch == "z9hG4bKtest1" and ack.cseq.number == 1
        txn.receive(response(invite, 486))  # a retransmitted final: ACK again, TU not told
        assert [_label(m) for _, m, _, _ in transport.sent] == ["INVITE", "INVITE", "ACK", "ACK"]
        codes = []
        transport.scheduler.advance(100.0 + 31.9)
        assert txn.state is TransactionState.COMPLETED
        transport.scheduler.advance(100.0 + 32.0)  # Timer D
        assert txn.state is TransactionState.TERMINATED
        async for r in txn.responses():
            codes.append(r.status_code)
        assert codes == [180, 486]
        assert (await txn.final_response()).status_code == 486

    run(main())


def test_invite_client_2xx_and_its_retransmissions_reach_the_tu() -> None:
    """RFC 6026 Accepted state: every 2xx goes up, since the TU ACKs each one (§13.2.2.4)."""

    async def main() -> None:
        transport = RecordingTransport()
        invite = request()
        txn = ClientTransaction(invite, PEER, transport=transport, timers=TIMERS)
        txn.start()
        txn.receive(response(invite, 200))
        assert txn.state is TransactionState.ACCEPTED
        transport.scheduler.advance(5.0)
        txn.receive(response(invite, 200))
        txn.receive(response(invite, 486))  # nonsense after a 2xx: dropped
        assert transport.times() == [0.0]  # no retransmission, no ACK from the transaction
        transport.scheduler.advance(32.0)  # Timer M
        assert txn.state is TransactionState.TERMINATED
        assert [r.status_code async for r in txn.responses()] == [200, 200]

    run(main())


# -- non-INVITE client transaction (§17.1.2) --------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        txn = ClientTransaction(request("OPTIONS"), PEER, transport=transport, timers=TIMERS)
        txn.start()
        transport.scheduler.advance(32.0)
        assert transport.times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
        assert txn.state is TransactionState.TERMINATED
        with pytest.raises(SipTimeout, match="Timer F fired"):
            await txn.final_response()

    run(main())


def test_non_invite_client_proceeding_retransmits_every_t2_then_completes() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        bye = request("BYE")
        txn = ClientTransaction(bye, PEER, transport=transport, timers=TIMERS)
        txn.start()
        transport.scheduler.advance(0.7)
        txn.receive(response(bye, 100))
        assert txn.state is TransactionState.PROCEEDING
        transport.scheduler.advance(10.0)
        assert transport.times() == [0.0, 0.5, 1.5, 5.5, 9.5]  # T2 once in Proceeding
        txn.receive(response(bye, 200))
        assert txn.state is TransactionState.COMPLETED
        txn.receive(response(bye, 200))  # absorbed
        transport.scheduler.advance(14.9)
        assert txn.state is TransactionState.COMPLETED and transport.times() == [0.0, 0.5, 1.5, 5.5, 9.5]
        transport.scheduler.advance(15.0)  # Timer K = T4
        assert txn.state is TransactionState.TERMINATED
        assert [r.status_code async for r in txn.responses()] == [100, 200]

    run(main())


def test_client_transaction_refuses_ack_and_close_fails_waiters() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        with pytest.raises(ValueError, match="ACK has no client transaction"):
            ClientTransaction(request("ACK"), PEER, transport=transport, timers=TIMERS)
        txn = ClientTransaction(request("OPTIONS"), PEER, transport=transport, timers=TIMERS)
        txn.start()
        txn.close(SipTransactionError("endpoint closed"))
        with pytest.raises(SipTransactionError, match="endpoint closed"):
            await txn.final_response()
        assert transport.scheduler.pending == 0

    run(main())


# -- INVITE server transaction (§17.2.1) ------------------------------------------------------------


def server(req: Request, transport: RecordingTransport, **kwargs: Any) -> ServerTransaction:
    return ServerTransaction(req, PEER, transport=transport, timers=TIMERS, response_destination=PEER, **kwargs)


def test_invite_server_non_2xx_retransmits_on_timer_g_until_ack() -> None:
    transport = RecordingTransport()
    invite = request()
    txn = server(invite, transport)
    assert txn.state is TransactionState.PROCEEDING
    assert txn.receive_request(invite)  # retransmission before any response: absorbed silently
    txn.respond(response(invite, 180))
    assert txn.receive_request(invite)  # ... after a provisional: it is repeated
    assert transport.times() == [0.0, 0.0]
    transport.scheduler.advance(1.0)
    txn.respond(response(invite, 486))
    assert txn.state is TransactionState.COMPLETED
    transport.scheduler.advance(1.0 + 9.0)
    # Timer G: T1 doubling up to T2 from 1.0: 1.5, 2.5, 4.5, 8.5 (then every 4 s)
    assert transport.times("486") == [1.0, 1.5, 2.5, 4.5, 8.5]
    txn.receive_request(invite)  # an INVITE retransmission gets the final again
    assert transport.times("486")[-1] == 10.0
    ack = request("ACK")
    assert txn.receive_request(ack)
    assert txn.state is TransactionState.CONFIRMED
    transport.scheduler.advance(10.0 + 4.9)
    assert transport.times("486")[-1] == 10.0  # G stopped
    assert txn.receive_request(ack)  # ACK retransmission absorbed
    transport.scheduler.advance(10.0 + 5.0)  # Timer I = T4
    assert txn.state is TransactionState.TERMINATED and transport.terminated == [txn]


def test_invite_server_timer_h_gives_up_without_ack() -> None:
    transport = RecordingTransport()
    invite = request()
    txn = server(invite, transport)
    txn.respond(response(invite, 500))
    transport.scheduler.advance(31.9)
    assert txn.state is TransactionState.COMPLETED
    transport.scheduler.advance(32.0)
    assert txn.state is TransactionState.TERMINATED and txn.ack_timed_out
    # G fired at .5 1.5 3.5 7.5 11.5 ... 31.5 (T2-capped)
    assert transport.times("500") == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_invite_server_2xx_moves_to_accepted() -> None:
    transport = RecordingTransport()
    invite = request()
    txn = server(invite, transport)
    txn.respond(response(invite, 200))
    assert txn.state is TransactionState.ACCEPTED and txn.final_sent
    assert txn.receive_request(invite)  # absorbed: the TU retransmits the 2xx, not us
    assert transport.times() == [0.0]
    txn.respond(response(invite, 200))  # a proxy forwarding a 2xx retransmission
    assert transport.sent[-1][3] is True
    assert not txn.receive_request(request("ACK"))  # RFC 6026: an ACK here is for the TU
    with pytest.raises(TransactionStateError, match="cannot send 486 in state accepted of INVITE"):
        txn.respond(response(invite, 486))
    transport.scheduler.advance(32.0)  # Timer L
    assert txn.state is TransactionState.TERMINATED


# -- non-INVITE server transaction (§17.2.2) --------------------------------------------------------


def test_non_invite_server_absorbs_and_repeats_then_timer_j() -> None:
    transport = RecordingTransport()
    bye = request("BYE")
    txn = server(bye, transport)
    assert txn.state is TransactionState.TRYING
    txn.receive_request(bye)
    assert transport.sent == []  # Trying: retransmissions are discarded
    txn.respond(response(bye, 100))
    txn.receive_request(bye)
    txn.respond(response(bye, 200))
    txn.receive_request(bye)
    assert [(_label(m), rtx) for _, m, _, rtx in transport.sent] == [
        ("100", False), ("100", True), ("200", False), ("200", True)
    ]  # fmt: skip
    with pytest.raises(TransactionStateError):
        txn.respond(response(bye, 500))
    transport.scheduler.advance(31.9)
    assert txn.state is TransactionState.COMPLETED
    transport.scheduler.advance(32.0)  # Timer J = 64*T1
    assert txn.state is TransactionState.TERMINATED


def test_stateless_ack_cannot_be_answered() -> None:
    txn = server(request("ACK"), RecordingTransport(), stateless=True)
    assert txn.terminated and not txn.can_respond(200)
    with pytest.raises(TransactionStateError, match=r"ACK is never answered"):
        txn.respond(Response(200, "OK"))


# -- the UAS core's 2xx retransmission (§13.3.1.4) --------------------------------------------------


def test_retransmit_2xx_until_ack() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        ok = response(request(), 200)
        handle = retransmit_2xx(transport, ok, PEER, TIMERS)
        transport.scheduler.advance(12.0)
        assert transport.times() == [0.5, 1.5, 3.5, 7.5, 11.5]
        handle.ack_received()
        transport.scheduler.advance(40.0)
        assert handle.retransmissions == 5 and await handle.wait() is True

        transport = RecordingTransport()
        handle = retransmit_2xx(transport, ok, PEER, TIMERS)
        transport.scheduler.advance(40.0)
        assert await handle.wait() is False and transport.times()[-1] == 31.5

    run(main())


# -- matching keys (§17.1.3, §17.2.3) ---------------------------------------------------------------


def test_transaction_keys() -> None:
    invite = request()
    assert client_transaction_key(invite) == ("z9hG4bKtest1", "INVITE")
    assert client_transaction_key(response(invite, 180)) == ("z9hG4bKtest1", "INVITE")
    assert server_transaction_key(invite) == ("z9hG4bKtest1", "192.0.2.1", "5060", "INVITE")
    assert server_transaction_key(request("ACK")) == server_transaction_key(invite)
    assert server_transaction_key(request("CANCEL"))[-1] == "CANCEL"
    assert server_transaction_key(request(sent_by="192.0.2.1:5070"))[2] == "5070"
    old = server_transaction_key(request(branch="1234"))  # RFC 2543: no magic cookie
    assert old[0] == "rfc2543" and old[-1] == "INVITE"


# -- RFC 3581 rules, pure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("via", "source", "stamped", "destination"),
    [
        # RFC 3581 §4 example: rport asked, NAT changed address and port
        ("SIP/2.0/UDP 10.1.1.1:4540;rport;branch=z9hG4bKkjshdyff", ("192.0.2.1", 9988),
         "SIP/2.0/UDP 10.1.1.1:4540;rport=9988;branch=z9hG4bKkjshdyff;received=192.0.2.1", ("192.0.2.1", 9988)),
        # rport asked, nothing changed: received is still added (RFC 3581 §4)
        ("SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bKx", ("192.0.2.1", 5060),
         "SIP/2.0/UDP 192.0.2.1:5060;rport=5060;branch=z9hG4bKx;received=192.0.2.1", ("192.0.2.1", 5060)),
        # no rport, different address: received only (§18.2.1), sent-by port used (§18.2.2)
        ("SIP/2.0/UDP 10.1.1.1:4540;branch=z9hG4bKx", ("192.0.2.1", 9988),
         "SIP/2.0/UDP 10.1.1.1:4540;branch=z9hG4bKx;received=192.0.2.1", ("192.0.2.1", 4540)),
        # no rport, same address: untouched, default port 5060
        ("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx", ("192.0.2.1", 7000),
         "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx", ("192.0.2.1", 5060)),
        # a hostname sent-by always differs from the source IP
        ("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKx", ("192.0.2.1", 5060),
         "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKx;received=192.0.2.1", ("192.0.2.1", 5060)),
        # a received the sender wrote itself is replaced by the truth
        ("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx;received=198.51.100.7", ("192.0.2.1", 5060),
         "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx;received=192.0.2.1", ("192.0.2.1", 5060)),
    ],
)  # fmt: skip
def test_stamp_via_and_response_destination(via: str, source: Address, stamped: str, destination: Address) -> None:
    result = stamp_via(parse_via(via), source)
    assert str(result) == stamped
    assert response_destination(result) == destination


# -- the endpoint over loopback ----------------------------------------------------------------------

SHORT = SipTimers(t1=0.02, t2=0.16, t4=0.2)
LOOPBACK = ("127.0.0.1", 0)


def options(uri: str = "sip:bob@127.0.0.1") -> Request:
    headers = Headers()
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:alice@example.com>;tag=a1")
    headers.add("To", f"<{uri}>")
    headers.add("Call-ID", f"{random.getrandbits(64):x}@example.com")
    headers.add("CSeq", "1 OPTIONS")
    return Request("OPTIONS", uri, headers)


def answer(code: int = 200) -> Callable[[ServerTransaction], None]:
    def on_request(txn: ServerTransaction) -> None:
        if not txn.stateless:
            txn.respond(make_response(txn.request, code, to_tag="b1"))

    return on_request


def test_endpoint_rport_routes_the_response_to_the_real_source() -> None:
    """A UA behind a NAT advertises one address but sends from another: rport saves the response."""

    async def main() -> None:
        seen: list[Request] = []
        decoy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        decoy.bind(LOOPBACK)
        decoy.setblocking(False)

        def on_request(txn: ServerTransaction) -> None:
            seen.append(txn.request)
            txn.respond(make_response(txn.request, 200, to_tag="b1"))

        uas = await SipEndpoint.create(LOOPBACK, timers=SHORT, on_request=on_request)
        uac = await SipEndpoint.create(LOOPBACK, timers=SHORT)
        try:
            uac.advertised_address = decoy.getsockname()  # a sent-by that is not where we are
            final = await uac.send_request(options(), uas.local_address).final_response()
            assert final.status_code == 200
            via = seen[0].top_via
            assert via.sent_by == decoy.getsockname()
            assert (via.received, via.rport) == ("127.0.0.1", uac.local_address[1])
            assert final.top_via.rport == uac.local_address[1]  # the UAC learns its public port
            with pytest.raises(BlockingIOError):
                decoy.recv(2048)  # nothing went to the advertised port

            # Without rport, §18.2.2 sends the response to sent-by: the decoy gets it.
            loop = asyncio.get_running_loop()
            plain = options()
            host, port = decoy.getsockname()
            plain.headers.insert_first("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKnorport")
            uac.send_request(plain, uas.local_address, add_via=False)
            data = await loop.sock_recv(decoy, 2048)
            misrouted = parse_message(data)
            assert isinstance(misrouted, Response) and misrouted.top_via.branch == "z9hG4bKnorport"
        finally:
            uac.close()
            uas.close()
            decoy.close()

    run(main())


def test_endpoint_server_transaction_absorbs_retransmissions() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        calls: list[ServerTransaction] = []
        third_copy: asyncio.Future[None] = loop.create_future()
        received = 0

        def on_message(direction: str, message: Request | Response, peer: Address) -> None:
            nonlocal received
            if direction == "recv":
                received += 1
                if received == 3 and not third_copy.done():
                    third_copy.set_result(None)

        uas = await SipEndpoint.create(LOOPBACK, timers=SHORT, on_request=calls.append, on_message=on_message)
        uac = await SipEndpoint.create(LOOPBACK, timers=SHORT)
        try:
            txn = uac.send_request(options(), uas.local_address)
            await third_copy  # the request and two Timer E retransmissions arrived
            assert len(calls) == 1 and uas.stats["absorbed"] >= 2
            calls[0].respond(make_response(calls[0].request, 200))
            assert (await txn.final_response()).status_code == 200
            assert uac.stats["retransmissions"] >= 2
        finally:
            uac.close()
            uas.close()

    run(main())


def test_a_retransmitted_request_is_the_same_bytes_its_trace_context_included() -> None:
    """Each transmission is its own event and span, but the wire carries the first one's traceparent: a
    retransmission is the same request (RFC 3261 §17.1.1.2), and peers that compare copies (SIPp) see one."""
    from opentelemetry.sdk.trace import TracerProvider

    async def main() -> None:
        events = EventLog("uac", tracer=TracerProvider().get_tracer("test"))
        uac = SipEndpoint(timers=SHORT, on_message=lambda d, m, peer: record_message(events, d, m, peer))
        wire = RecordingWire()
        uac.connection_made(cast(asyncio.DatagramTransport, wire))
        uac.send_request(options(), ("127.0.0.1", 9))
        while len(wire.sent) < 3:  # Timer E: 20 ms, then 40 ms
            await asyncio.sleep(SHORT.t1)
        sends = [e for e in events.since() if e.kind == "sip.send"]
        assert len({data for data, _ in wire.sent}) == 1 and b"traceparent: 00-" in wire.sent[0][0].lower()
        assert len(sends) >= 3 and len({e.span_id for e in sends}) == len(sends)
        uac.close()

    run(main())


def test_endpoint_invite_timeout_over_udp_to_a_black_hole() -> None:
    async def main() -> None:
        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(LOOPBACK)
        uac = await SipEndpoint.create(LOOPBACK, timers=SipTimers(t1=0.005, t2=0.04, t4=0.05))
        try:
            invite = options()
            invite.method = "INVITE"
            invite.headers.set("CSeq", "1 INVITE")
            with pytest.raises(SipTimeout):
                await uac.send_request(invite, hole.getsockname()).final_response()
            assert uac.stats["timeouts"] == 1 and uac.transactions == 0
            assert 5 <= uac.stats["sent"] <= 7  # 7 on schedule; a slow loop may merge the last ones
        finally:
            uac.close()
            hole.close()

    run(main())


def test_endpoint_stun_keepalive_and_malformed() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stun: asyncio.Future[tuple[bytes, Address]] = loop.create_future()
        malformed: list[tuple[bytes, Address, str]] = []
        uas = await SipEndpoint.create(
            LOOPBACK,
            timers=SHORT,
            on_request=answer(),
            on_stun=lambda data, peer: stun.set_result((data, peer)),
            on_malformed=lambda data, peer, reason: malformed.append((data, peer, reason)),
        )
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(LOOPBACK)
        client.setblocking(False)
        try:
            binding = bytes.fromhex("000100002112a442") + bytes(12)
            client.sendto(b"\r\n\r\n", uas.local_address)
            client.sendto(binding, uas.local_address)
            assert (await stun)[0] == binding

            bad = options().encode().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 BYE")
            bad = bad.replace(b"Max-Forwards", b"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKbad\r\nMax-Forwards")
            client.sendto(bad, uas.local_address)
            reply = parse_message(await loop.sock_recv(client, 4096))
            assert isinstance(reply, Response) and reply.status_code == 400
            assert (reply.headers.get("Warning") or "").endswith(
                '"CSeq method BYE does not match request method OPTIONS"'
            )
            assert malformed[0][2] == "CSeq method BYE does not match request method OPTIONS"

            version = bad.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
            client.sendto(version, uas.local_address)
            reply = parse_message(await loop.sock_recv(client, 4096))
            assert isinstance(reply, Response) and reply.status_code == 505

            client.sendto(b"hello world\r\n\r\n", uas.local_address)  # no Via: nowhere to answer
            client.sendto(options().encode(), uas.local_address)  # not answered either: no Via
            good = options()
            good.headers.insert_first("Via", f"SIP/2.0/UDP 127.0.0.1:{client.getsockname()[1]};branch=z9hG4bKok")
            client.sendto(good.encode(), uas.local_address)
            reply = parse_message(await loop.sock_recv(client, 4096))
            assert isinstance(reply, Response) and reply.status_code == 200  # the one after the garbage
            assert uas.stats["malformed"] == 4 and uas.stats["stun"] == 1 and uas.stats["keepalives"] == 1
            assert [reason for *_, reason in malformed][1:] == [
                "request line: SIP version SIP/3.0 not supported",
                "request line: expected 'Method SP Request-URI SP SIP-Version', "
                "got 2 SP-separated fields in 'hello world'",
                "missing mandatory header Via",
            ]
        finally:
            client.close()
            uas.close()

    run(main())


def test_endpoint_survives_1000_garbage_datagrams() -> None:
    """Random bytes and mutated requests: every one is handled, none crashes the socket."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        destinations: set[str] = set()
        uas = await SipEndpoint.create(
            LOOPBACK,
            timers=SHORT,
            on_request=answer(),
            on_message=lambda direction, _, peer: destinations.add(peer[0]) if direction == "send" else None,
        )
        uac = await SipEndpoint.create(LOOPBACK, timers=SHORT)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(LOOPBACK)
        rng = random.Random(3261)
        via = f"Via: SIP/2.0/UDP 127.0.0.1:{sender.getsockname()[1]};rport;branch=z9hG4bKg\r\n".encode()
        template = options().encode().replace(b"Max-Forwards", via + b"Max-Forwards")

        def garbage() -> bytes:
            kind = rng.randrange(3)
            if kind == 0:
                return rng.randbytes(rng.randrange(1, 600))
            data = bytearray(template)
            for _ in range(rng.randrange(1, 12)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if kind == 2:
                del data[rng.randrange(len(data)) :]
            return bytes(data) or b"x"

        try:
            for _ in range(20):
                for _ in range(50):
                    sender.sendto(garbage(), uas.local_address)
                # A valid request after each burst: once it is answered, the burst was processed.
                final = await uac.send_request(options(), uas.local_address).final_response()
                assert final.status_code == 200
            stats = uas.stats
            assert stats["errors"] == 0
            assert stats["received"] >= 1000 + 20  # every datagram arrived and was handled
            assert stats["malformed"] + stats["stun"] > 600
            assert destinations == {"127.0.0.1"}  # answers go to the source, whatever a Via claims
        finally:
            sender.close()
            uac.close()
            uas.close()
        await asyncio.sleep(0)  # let the transports finish closing
        assert loop.is_running()

    run(main())


class RecordingWire:
    """The endpoint's datagram transport, in memory: nothing leaves the process."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address]] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5060) if name == "sockname" else default

    def sendto(self, data: bytes, address: Address) -> None:
        self.sent.append((data, address))

    def close(self) -> None:
        pass


def recording_endpoint(events: EventLog) -> tuple[SipEndpoint, RecordingWire]:
    """A UAS that records what it sends and receives as the services do (sip.send / sip.recv events)."""
    endpoint = SipEndpoint(
        timers=SHORT,
        on_request=answer(),
        on_message=lambda direction, message, peer: record_message(events, direction, message, peer),
    )
    wire = RecordingWire()
    endpoint.connection_made(cast(asyncio.DatagramTransport, wire))
    return endpoint, wire


def mutated(rng: random.Random, seeds: list[bytes]) -> bytes:
    """A seed with a few bytes flipped, separators inserted, spans deleted or repeated."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 8)):
        at = rng.randrange(len(data) + 1)
        operation = rng.randrange(4)
        if operation == 0 and data:
            data[at % len(data)] = rng.randrange(256)
        elif operation == 1:
            data[at:at] = rng.choice([b"\r\n", b",", b";", b'"', b"<", b">", b":", b" ", b"\\", b"="])
        elif operation == 2:
            del data[at : at + rng.randrange(1, 20)]
        else:
            start = rng.randrange(len(data) + 1)
            data[at:at] = data[start : start + rng.randrange(1, 40)]
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "call_id", "expected"),
    [
        # RFC 4475 §3.3.1: no Call-ID, From or To, "ideally" answered with 400
        ("insuf", "", {"sip.cseq": "193942", "sip.cseq_method": "INVITE", "summary": "400 Bad Request (INVITE)"}),
        # §3.1.2.4: a CSeq beyond 2**32-1 "should" be answered with 400
        (
            "scalar02",
            "scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
            {"sip.cseq": "", "sip.error": "CSeq: sequence number 36893488147419103232 exceeds 2**32-1"},
        ),
    ],
)
def test_the_400_to_an_unreadable_request_is_recorded(name: str, call_id: str, expected: dict[str, str]) -> None:
    """The 400 copies the request's Call-ID and CSeq as they came (§8.2.6.2), readable or not."""

    async def main() -> None:
        events = EventLog("uas")
        uas, _ = recording_endpoint(events)
        uas.datagram_received((TORTURE / f"{name}.sip").read_bytes(), ("192.0.2.7", 5060))
        uas.close()
        assert uas.stats["malformed"] == 1 and uas.stats["errors"] == 0
        (sent,) = [event for event in events.since() if event.kind == "sip.send"]
        assert sent.call_id == call_id and sent.attributes["sip.status_code"] == "400"
        assert expected.items() <= dict(sent.attributes).items()
        assert sent.attributes["sip.via_count"] == "1" and sent.attributes["sip.branch"].startswith("z9hG4bK")

    run(main())


def test_every_answer_to_2000_mutated_requests_is_recorded(caplog: pytest.LogCaptureFixture) -> None:
    """Mutated RFC 4475 messages (fixed seed): every response sent, most of them 400, is a sip.send event,
    and describing one never raises (no traceback, no error counted)."""
    seeds = [path.read_bytes() for path in sorted(TORTURE.glob("*.sip"))]

    async def main() -> tuple[SipEndpoint, EventLog, list[tuple[bytes, Address]]]:
        events = EventLog("uas")
        uas, wire = recording_endpoint(events)
        rng = random.Random(4475)
        for index in range(2000):
            uas.datagram_received(mutated(rng, seeds), ("192.0.2.7", 1024 + index))
        uas.close()
        return uas, events, wire.sent

    uas, events, sent = run(main())
    recorded = [event.attributes for event in events.since() if event.kind == "sip.send"]
    assert uas.stats["errors"] == 0 and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r["sip.status_code"] for r in recorded] == [data.split(b" ", 2)[1].decode() for data, _ in sent]
    unreadable = [r for r in recorded if r["sip.status_code"] == "400" and "sip.error" in r]
    assert len(recorded) > 900 and len(unreadable) > 100  # the answers the old description lost


def test_endpoint_close_fails_pending_transactions() -> None:
    async def main() -> None:
        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(LOOPBACK)
        uac = await SipEndpoint.create(LOOPBACK, timers=SHORT)
        txn = uac.send_request(options(), hole.getsockname())
        with pytest.raises(ValueError, match="ACK has no client transaction"):
            uac.send_request(request("ACK"), hole.getsockname())
        uac.close()
        with pytest.raises(SipTransactionError, match="endpoint closed"):
            await txn.final_response()
        await uac.wait_closed()
        hole.close()

    run(main())
