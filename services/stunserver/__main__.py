"""STUN server (RFC 5389 Binding) on the lab's public segment.

Alice asks it for her server-reflexive address before she offers: that NAT address:port is
what she puts in her SDP, so Bob's ClientHello is aimed at the NAT (RFC 5763 §7.3 needs that,
and it works because the NAT's mapping is endpoint-independent).
"""

from __future__ import annotations

import asyncio
import logging

from pinhole import stun
from pinhole.events import Counters, EventLog
from pinhole.rpc.v1 import stunserver_pb2, stunserver_pb2_grpc
from pinhole.service import EvidenceServicer, argument_parser, serve, setup_observability

log = logging.getLogger("stunserver")


class BindingResponder(asyncio.DatagramProtocol):
    """Answers every Binding request with XOR-MAPPED-ADDRESS; counts everything else."""

    def __init__(self, events: EventLog, counters: Counters, software: str) -> None:
        self.events = events
        self.counters = counters
        self.software = software
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters["datagrams_received"] += 1
        peer = f"{addr[0]}:{addr[1]}"
        try:
            request = stun.decode(data)
        except stun.StunError as error:
            self.counters["malformed"] += 1
            self.events.emit("stun.malformed", peer=peer, reason=str(error), size=len(data))
            return
        if request.message_class != stun.MessageClass.REQUEST or request.method != stun.Method.BINDING:
            self.counters["ignored"] += 1
            self.events.emit("stun.ignored", peer=peer, reason="not a Binding request")
            return
        self.counters["binding_requests"] += 1
        tid = request.transaction_id.hex()
        self.events.emit("stun.recv", peer=peer, attributes={"stun.transaction_id": tid, "stun.class": "request"})
        response = stun.encode(stun.binding_success(request, addr, software=self.software))
        self.counters["binding_responses"] += 1
        self.events.emit(
            "stun.send",
            peer=peer,
            attributes={
                "stun.transaction_id": tid,
                "stun.class": "success_response",
                "stun.xor_mapped_address": peer,
            },
        )
        assert self.transport is not None
        self.transport.sendto(response, addr)


class StunServerServicer(EvidenceServicer, stunserver_pb2_grpc.StunServerServicer):
    def __init__(self, events: EventLog, counters: Counters) -> None:
        self.events = events
        self.counters = counters

    async def collect_counters(self) -> Counters:
        return self.counters


async def main() -> None:
    parser = argument_parser("pinhole STUN server")
    parser.add_argument("--listen", default="0.0.0.0:3478", help="UDP address to answer on")
    args = parser.parse_args()
    setup_observability(args.log_level, args.name)
    events, counters = EventLog(args.name), Counters()
    host, _, port = args.listen.rpartition(":")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: BindingResponder(events, counters, software=f"pinhole {args.name}"), local_addr=(host, int(port))
    )
    events.emit("service.started", listen=args.listen)
    servicer = StunServerServicer(events, counters)
    name = stunserver_pb2.DESCRIPTOR.services_by_name["StunServer"].full_name
    try:
        await serve(args.grpc, [(stunserver_pb2_grpc.add_StunServerServicer_to_server, servicer, name)])
    finally:
        transport.close()


if __name__ == "__main__":
    asyncio.run(main())
