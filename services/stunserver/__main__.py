"""STUN server (RFC 5389 Binding; RFC 5780 NAT Behavior Discovery) on the lab's public segment.

Alice asks it for her server-reflexive address before she offers: that NAT address:port is
what she puts in her SDP, so Bob's ClientHello is aimed at the NAT (RFC 5763 §7.3 needs that,
and it works because the NAT's mapping is endpoint-independent).

With `--alternate IP:PORT` (a second address of this host and a second port) it is also an
RFC 5780 server: it listens on both IPs x both ports, answers with RESPONSE-ORIGIN and
OTHER-ADDRESS and honours CHANGE-REQUEST, which is what `pinhole nat probe` needs to classify the
NAT's mapping and filtering. When the alternate IP is not an address of this host (a container
given only its first address), the server waits up to --alternate-wait seconds for it to appear (a
container's further addresses are added by a helper just after it starts; health says SERVING only
once this is settled), then says so (event stun.alternate_unavailable) and goes on as a plain
single-address server. What to answer is decided in responder.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time

from pinhole.address import Address, fmt
from pinhole.events import Counters, EventLog
from pinhole.rpc.v1 import stunserver_pb2, stunserver_pb2_grpc
from pinhole.service import EvidenceServicer, parse_hostport, serve, setup_observability
from services.stunserver import cli
from services.stunserver.responder import Responder

log = logging.getLogger("stunserver")


class ServerSocket(asyncio.DatagramProtocol):
    """One of the server's UDP sockets; the responder says which socket sends each reply."""

    def __init__(self, responder: Responder, local: Address, transports: dict[Address, asyncio.DatagramTransport]):
        self.responder = responder
        self.local = local
        self.transports = transports

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transports[self.local] = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.responder.handle(data, self.local, (addr[0], addr[1]))
        if reply is None:
            return
        transport = self.transports.get(reply.origin)
        if transport is None:  # cannot happen: the responder only names sockets that are open
            self.responder.counters["send_errors"] += 1
            return
        transport.sendto(reply.data, reply.destination)

    def error_received(self, exc: Exception) -> None:  # an ICMP error for an earlier reply
        self.responder.counters["icmp_errors"] += 1


class StunServerServicer(EvidenceServicer, stunserver_pb2_grpc.StunServerServicer):
    def __init__(self, events: EventLog, counters: Counters) -> None:
        self.events = events
        self.counters = counters

    async def collect_counters(self) -> Counters:
        return self.counters


ALTERNATE_RETRY = 0.05  # seconds between attempts to bind an alternate address that is not there yet


async def open_sockets(
    responder: Responder, events: EventLog, alternate_wait: float = 0.0
) -> dict[Address, asyncio.DatagramTransport]:
    """The primary socket (failing to open it is fatal), then the alternate ones (optional: an address
    this host does not have, EADDRNOTAVAIL, is retried for `alternate_wait` seconds)."""
    loop = asyncio.get_running_loop()
    transports: dict[Address, asyncio.DatagramTransport] = {}

    async def bind(local: Address) -> None:
        await loop.create_datagram_endpoint(lambda: ServerSocket(responder, local, transports), local_addr=local)

    primary, *others = responder.sockets
    await bind(primary)
    deadline = time.monotonic() + alternate_wait
    while others:
        try:
            for local in others:
                if local not in transports:
                    await bind(local)
            break
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL and time.monotonic() < deadline:
                await asyncio.sleep(ALTERNATE_RETRY)
                continue
            for local in others:
                transport = transports.pop(local, None)
                if transport is not None:
                    transport.close()
            alternate = fmt(responder.alternate)  # set while there are others
            responder.drop_alternate()
            responder.counters["alternate_unavailable"] += 1
            log.warning("alternate address %s unusable (%s): single-address server", alternate, error)
            events.emit("stun.alternate_unavailable", alternate=alternate, reason=str(error))
            break
    return transports


async def main() -> None:
    parser = cli.parser()
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    primary = (host, int(port))
    alternate = None
    if args.alternate:
        try:
            alternate = parse_hostport(args.alternate, "--alternate")
            primary = parse_hostport(args.listen, "--listen")
            if primary[0] == "0.0.0.0":
                raise ValueError("--listen: a wildcard address cannot tell which IP a request was sent to")
        except ValueError as error:
            parser.error(str(error))
    setup_observability(args.log_level, args.name)
    events, counters = EventLog(args.name), Counters()
    try:
        responder = Responder(primary, alternate, events, counters, software=f"pinhole {args.name}")
    except ValueError as error:
        parser.error(str(error))
    transports = await open_sockets(responder, events, args.alternate_wait)
    started: dict[str, object] = {"listen": args.listen}
    if responder.alternate is not None:
        started["alternate"] = fmt(responder.alternate)
        started["sockets"] = ",".join(fmt(local) for local in responder.sockets)
    events.emit("service.started", attributes=started)
    servicer = StunServerServicer(events, counters)
    name = stunserver_pb2.DESCRIPTOR.services_by_name["StunServer"].full_name
    try:
        await serve(args.grpc, [(stunserver_pb2_grpc.add_StunServerServicer_to_server, servicer, name)])
    finally:
        for transport in transports.values():
            transport.close()


if __name__ == "__main__":
    asyncio.run(main())
