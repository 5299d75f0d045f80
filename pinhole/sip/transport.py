"""SIP over UDP (RFC 3261 §18) with symmetric response routing (RFC 3581), as an asyncio endpoint.

:class:`SipEndpoint` owns one UDP socket and the transaction tables. It is the only place where
datagrams become messages and back:

- a datagram whose first byte is 0..3 is STUN (RFC 7983 demultiplexing): a UA learns its
  server-reflexive SIP address through the very socket its Via names, so it goes to ``on_stun``;
- anything that does not parse is counted, reported with the parser's reason and, when enough
  of a request can be read, answered with 400 carrying the reason in a Warning (§8.2, §21.4.1);
- every request gets ``received``/``rport`` on its top Via (RFC 3581 §4), and every response
  goes back to that address (§18.2.2): this is what gets a 200 OK back through Alice's NAT;
- requests and responses are matched to transactions (§17.1.3, §17.2.3) before a TU sees them.

The two pure rules (:func:`stamp_via`, :func:`response_destination`) are exposed for tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, cast

from pinhole.address import Address
from pinhole.sip.describe import TRACE_HEADERS
from pinhole.sip.message import (
    Request,
    Response,
    SipParseError,
    Via,
    make_response,
    new_branch,
    parse_message,
    salvage_request,
)
from pinhole.sip.transaction import (
    DEFAULT_TIMERS,
    ClientTransaction,
    Scheduler,
    ServerTransaction,
    SipTimeout,
    SipTimers,
    SipTransactionError,
    client_transaction_key,
    server_transaction_key,
)

__all__ = ["SipEndpoint", "stamp_via", "response_destination"]

logger = logging.getLogger(__name__)

RequestHandler = Callable[[ServerTransaction], None]
MessageTracer = Callable[[str, Request | Response, Address], None]
MalformedHandler = Callable[[bytes, Address, str], None]
StunHandler = Callable[[bytes, Address], None]
ResponseHandler = Callable[[Response, Address], None]


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def stamp_via(via: Via, source: Address) -> Via:
    """RFC 3261 §18.2.1 and RFC 3581 §4: record where a request really came from.

    ``received`` is added when the source IP differs from sent-by, and always when the client
    asked for ``rport`` (then ``rport`` gets the source port). A ``received`` that the sender
    wrote itself and that is not its source is overwritten: responses go where the request
    came from, never to an address a datagram merely claims. Returns a new Via.
    """
    stamped = via.copy()
    ip, port = source
    if via.rport is not None:
        stamped.set_param("received", ip)
        stamped.set_param("rport", str(port))
    elif not _same_ip(via.host, ip) or (via.received is not None and not _same_ip(via.received, ip)):
        stamped.set_param("received", ip)
    return stamped


def response_destination(via: Via) -> Address:
    """Where a response to a request with this top Via goes over UDP (§18.2.2, RFC 3581 §4).

    received:rport when the server filled rport in, else received:sent-by-port, else sent-by
    (port 5060 by default).
    """
    host, port = via.sent_by
    received = via.received
    rport = via.rport
    if received is not None:
        if isinstance(rport, int) and not isinstance(rport, bool):
            return received, rport
        return received, port
    if isinstance(rport, int) and not isinstance(rport, bool):
        return host, rport
    return host, port


class SipEndpoint(asyncio.DatagramProtocol):
    """One SIP/UDP socket with its transaction layer (§17, §18).

    Create it with ``await SipEndpoint.create(...)``. Callbacks run synchronously in the loop:

    - ``on_request(txn)``: a new server transaction, or an ACK for a 2xx (``txn.stateless``);
    - ``on_message(direction, message, peer)``: every datagram sent ("send") or received ("recv");
    - ``on_malformed(data, peer, reason)``: a datagram that did not parse;
    - ``on_stun(data, peer)``: a STUN message on this socket;
    - ``on_response(response, peer)``: a response that matched no client transaction.
    """

    def __init__(
        self,
        *,
        timers: SipTimers = DEFAULT_TIMERS,
        on_request: RequestHandler | None = None,
        on_message: MessageTracer | None = None,
        on_malformed: MalformedHandler | None = None,
        on_stun: StunHandler | None = None,
        on_response: ResponseHandler | None = None,
    ) -> None:
        self.timers = timers
        self.on_request = on_request
        self.on_message = on_message
        self.on_malformed = on_malformed
        self.on_stun = on_stun
        self.on_response = on_response
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "sent", "malformed", "retransmissions", "absorbed", "stun", "keepalives",
             "stray_responses", "timeouts", "errors", "send_errors"), 0,
        )  # fmt: skip
        self.scheduler: Scheduler = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._local: Address = ("0.0.0.0", 0)
        self._advertised: Address | None = None
        self._client: dict[tuple[str, ...], ClientTransaction] = {}
        self._server: dict[tuple[str, ...], ServerTransaction] = {}
        self._closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def create(
        cls,
        local_addr: Address,
        *,
        timers: SipTimers = DEFAULT_TIMERS,
        on_request: RequestHandler | None = None,
        on_message: MessageTracer | None = None,
        on_malformed: MalformedHandler | None = None,
        on_stun: StunHandler | None = None,
        on_response: ResponseHandler | None = None,
    ) -> SipEndpoint:
        """Bind a UDP socket on ``local_addr`` (port 0 picks one) and return the endpoint."""
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: cls(
                timers=timers,
                on_request=on_request,
                on_message=on_message,
                on_malformed=on_malformed,
                on_stun=on_stun,
                on_response=on_response,
            ),
            local_addr=local_addr,
        )
        return endpoint

    # -- addresses -----------------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def advertised_address(self) -> Address:
        """The sent-by put in this endpoint's Via (and the host:port a proxy Record-Routes)."""
        return self._advertised or self._local

    @advertised_address.setter
    def advertised_address(self, address: Address) -> None:
        self._advertised = (address[0], int(address[1]))

    def make_via(self, branch: str | None = None) -> str:
        """``SIP/2.0/UDP host:port;rport;branch=...`` (RFC 3581 §3: ask for symmetric responses)."""
        host, port = self.advertised_address
        host = f"[{host}]" if ":" in host else host
        return f"SIP/2.0/UDP {host}:{port};rport;branch={branch or new_branch()}"

    # -- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self._local = (sockname[0], sockname[1])

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (port unreachable ...) are not tied to a transaction over UDP: count them."""
        self.stats["send_errors"] += 1

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source: Address = (addr[0], addr[1])
        self.stats["received"] += 1
        try:
            self._dispatch(data, source)
        except Exception:  # a callback's bug must never take the socket down
            self.stats["errors"] += 1
            logger.exception("error while handling a datagram from %s:%d", *source)

    def _dispatch(self, data: bytes, source: Address) -> None:
        if not data.strip(b"\r\n"):
            self.stats["keepalives"] += 1  # RFC 5626 §4.4.1 CRLF keep-alive
            return
        if data[0] < 4:
            self.stats["stun"] += 1
            if self.on_stun is not None:
                self.on_stun(data, source)
            return
        try:
            message = parse_message(data)
        except SipParseError as error:
            self._malformed(data, source, str(error))
            return
        if isinstance(message, Request):
            top = message.top_via
            stamped = stamp_via(top, source)
            if stamped != top:
                message.headers.replace("Via", str(stamped))
            self._trace("recv", message, source)
            self._receive_request(message, source, stamped)
        else:
            self._trace("recv", message, source)
            self._receive_response(message, source)

    def _malformed(self, data: bytes, source: Address, reason: str) -> None:
        """Count, report, and answer 400 (505 for a SIP version we do not speak) when possible."""
        self.stats["malformed"] += 1
        if self.on_malformed is not None:
            self.on_malformed(data, source, reason)
        request = salvage_request(data)
        if request is None:
            return
        stamped = stamp_via(request.top_via, source)
        request.headers.replace("Via", str(stamped))
        status = 505 if "SIP version" in reason and "not supported" in reason else 400
        response = make_response(request, status)
        warning = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "?" for ch in reason)[:200]
        host, port = self.advertised_address
        response.headers.add("Warning", f'399 {host}:{port} "{warning}"')
        self.transmit(response, response_destination(stamped))

    def _receive_request(self, request: Request, source: Address, top_via: Via) -> None:
        key = server_transaction_key(request)
        existing = self._server.get(key)
        if existing is not None and existing.receive_request(request):
            self.stats["absorbed"] += 1
            return
        txn = ServerTransaction(
            request,
            source,
            transport=self,
            timers=self.timers,
            response_destination=response_destination(top_via),
            stateless=request.method == "ACK",
        )
        if not txn.stateless:
            self._server[key] = txn
        if self.on_request is None:
            if not txn.stateless:
                txn.respond(make_response(request, 501))
            return
        try:
            self.on_request(txn)
        except Exception:
            self.stats["errors"] += 1
            logger.exception("on_request failed for %s", request)
            if txn.can_respond(500) and not txn.final_sent:
                txn.respond(make_response(request, 500))

    def _receive_response(self, response: Response, source: Address) -> None:
        txn = self._client.get(client_transaction_key(response))
        if txn is not None:
            txn.receive(response)
            return
        self.stats["stray_responses"] += 1
        if self.on_response is not None:
            self.on_response(response, source)

    def _trace(self, direction: str, message: Request | Response, peer: Address) -> None:
        if self.on_message is not None:
            try:
                self.on_message(direction, message, peer)
            except Exception:
                self.stats["errors"] += 1
                logger.exception("on_message failed")

    # -- sending -------------------------------------------------------------------------------

    def transmit(self, message: Request | Response, destination: Address, *, retransmission: bool = False) -> None:
        """Encode and send one message (the transport layer of §18); used by transactions."""
        if self._transport is None:
            return
        sent_with = [(name, message.headers.get(name)) for name in TRACE_HEADERS] if retransmission else []
        self._trace("send", message, destination)  # first: it adds the traceparent, and the peer may log first
        for name, value in sent_with:  # a retransmission is the same message (§17.1.1.2): its first trace context
            if value is not None:
                message.headers.set(name, value)
        self._transport.sendto(message.encode(), destination)
        self.stats["sent"] += 1
        if retransmission:
            self.stats["retransmissions"] += 1

    def send_raw(self, data: bytes, destination: Address) -> None:
        """Send raw bytes from the SIP socket (a STUN Binding request for the reflexive address)."""
        if self._transport is not None:
            self._transport.sendto(data, destination)

    def send_request(self, request: Request, destination: Address, *, add_via: bool = True) -> ClientTransaction:
        """Start a client transaction for a copy of ``request`` (``txn.request`` is what was sent).

        With ``add_via`` the endpoint adds its own top Via with a new branch; a proxy that built
        its Via itself passes ``add_via=False``. ACK is never sent this way (:meth:`send_stateless`).
        """
        if request.method == "ACK":
            raise ValueError("ACK has no client transaction; use send_stateless (§13.2.2.4, §17.1.1.3)")
        request = request.copy()
        if add_via:
            request.headers.insert_first("Via", self.make_via())
        txn = ClientTransaction(request, destination, transport=self, timers=self.timers)
        if not txn.key[0]:
            raise ValueError("the top Via of a request sent statefully needs a branch")
        if txn.key in self._client:
            raise ValueError(f"a client transaction with branch {txn.key[0]} and method {txn.key[1]} exists")
        self._client[txn.key] = txn
        txn.start()
        return txn

    def send_stateless(self, message: Request | Response, destination: Address, *, add_via: bool | None = None) -> None:
        """Send outside any transaction: the ACK for a 2xx (§13.2.2.4), a proxy's forwarded ACK.

        A request gets this endpoint's Via with a new branch first when ``add_via`` is True, or
        by default (None) when it has no Via at all (as the ACK from ``Dialog.create_ack``).
        """
        if add_via is None:
            add_via = isinstance(message, Request) and "Via" not in message.headers
        if add_via and isinstance(message, Request):
            message = message.copy()
            message.headers.insert_first("Via", self.make_via())
        self.transmit(message, destination)

    # -- transaction table ---------------------------------------------------------------------

    def transaction_terminated(self, transaction: ClientTransaction | ServerTransaction) -> None:
        if isinstance(transaction, ClientTransaction):
            if isinstance(transaction.error, SipTimeout):
                self.stats["timeouts"] += 1
            if self._client.get(transaction.key) is transaction:
                del self._client[transaction.key]
        elif self._server.get(transaction.key) is transaction:
            del self._server[transaction.key]

    def matching_invite(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (§9.2: same key but the method)."""
        key = server_transaction_key(cancel)
        return self._server.get((*key[:-1], "INVITE"))

    @property
    def transactions(self) -> int:
        return len(self._client) + len(self._server)

    def close(self) -> None:
        """End every transaction (waiting TUs get :class:`SipTransactionError`) and close the socket."""
        for client in list(self._client.values()):
            client.close(SipTransactionError("endpoint closed"))
        for server in list(self._server.values()):
            server.close()
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)
