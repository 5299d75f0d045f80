"""SIP proxy service: a stateful RFC 3261 §16 proxy (proxy.py) behind a gRPC control plane.

The lab runs it twice: proxy-a is Alice's outbound proxy, proxy-b is Bob's. Both Record-Route,
so in-dialog requests (the ACK, the BYE) come back through them, and both honour rport
(RFC 3581), which is what lets responses find Alice behind her NAT.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from pinhole.deviations import PROXY, DeviationError, checked
from pinhole.events import Counters, EventLog
from pinhole.rpc.v1 import proxy_pb2, proxy_pb2_grpc
from pinhole.service import (
    EvidenceServicer,
    parse_hostport,
    positive_seconds,
    serve,
    setup_observability,
)
from pinhole.sip import Request, Response, ServerTransaction, SipEndpoint, SipTimers
from pinhole.sip.describe import record_message
from pinhole.sip.message import SipParseError, check_sip_uri
from services.proxy import cli
from services.proxy.proxy import Route, StatefulProxy

log = logging.getLogger("proxy")


class ProxyServicer(EvidenceServicer, proxy_pb2_grpc.ProxyServicer):
    def __init__(self, proxy: StatefulProxy, endpoint: SipEndpoint, events: EventLog, counters: Counters) -> None:
        self.proxy, self.endpoint, self.events, self.counters = proxy, endpoint, events, counters
        self.config = proxy_pb2.ProxyConfig(sip_t1_seconds=endpoint.timers.t1)

    async def Configure(self, request, context):  # noqa: N802 (gRPC method name)
        routes = []
        for index, route in enumerate(request.routes):
            if not route.domain:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"routes[{index}].domain: empty")
            try:  # both reach the wire: a Request-URI sip:user@domain is written of them
                uri = check_sip_uri(f"sip:{route.user or 'user'}@{route.domain}", f"routes[{index}]")
                if uri.host != route.domain or uri.port is not None or uri.params:
                    raise SipParseError(f"routes[{index}].domain: {route.domain!r} is not a host (RFC 3261 §25.1)")
            except SipParseError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            try:
                next_hop = parse_hostport(route.next_hop, f"routes[{index}].next_hop")
            except ValueError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            try:
                fork_to = tuple(
                    parse_hostport(hop, f"routes[{index}].fork_to[{fork}]") for fork, hop in enumerate(route.fork_to)
                )
            except ValueError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            targets = (next_hop, *fork_to)
            if len(set(targets)) != len(targets):  # RFC 3261 §16.5: no target twice in the target set
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"routes[{index}].fork_to: names a target twice ({', '.join(route.fork_to)})",
                )
            routes.append(Route(domain=route.domain, next_hop=next_hop, user=route.user or None, fork_to=fork_to))
        try:
            positive_seconds(request.sip_t1_seconds, "sip_t1_seconds")
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            deviations = checked(request.deviations, PROXY)
        except DeviationError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if request.sip_t1_seconds:
            self.endpoint.timers = SipTimers.scaled(request.sip_t1_seconds)
        self.proxy.routes = routes
        self.proxy.deviations = deviations
        self.config = proxy_pb2.ProxyConfig(
            routes=request.routes, sip_t1_seconds=self.endpoint.timers.t1, deviations=sorted(deviations)
        )
        self.events.emit("proxy.configured", routes=len(routes), deviations=",".join(sorted(deviations)))
        return proxy_pb2.ProxyConfigReply(effective=self.config)

    async def GetConfig(self, request, context):  # noqa: N802
        return proxy_pb2.ProxyConfigReply(effective=self.config)

    async def collect_counters(self) -> Counters:
        counters = Counters(self.counters)
        counters.update({f"sip_{k}": v for k, v in self.endpoint.stats.items()})
        counters.update({f"proxy_{k}": v for k, v in self.proxy.stats.items()})
        return counters


async def main() -> None:
    args = cli.parser().parse_args()
    setup_observability(args.log_level, args.name)
    events, counters = EventLog(args.name), Counters()
    host, port = parse_hostport(args.sip_listen, "--sip-listen")

    def on_message(direction: str, message: Request | Response, peer: tuple[str, int]) -> None:
        record_message(events, direction, message, peer)

    def on_malformed(data: bytes, peer: tuple[str, int], reason: str) -> None:
        events.emit("sip.malformed", peer=f"{peer[0]}:{peer[1]}", reason=reason, size=len(data))

    proxy: StatefulProxy | None = None

    def on_request(transaction: ServerTransaction) -> None:
        assert proxy is not None
        proxy.handle(transaction)

    endpoint = await SipEndpoint.create(
        (host, port), on_request=on_request, on_message=on_message, on_malformed=on_malformed
    )

    def on_event(kind: str, attrs: dict[str, object]) -> None:
        events.emit(kind, str(attrs.pop("call_id", "")), attrs)  # StatefulProxy puts the message's Call-ID there

    proxy = StatefulProxy(endpoint, name=args.name, routes=[], on_event=on_event, media_events=events)
    events.emit("service.started", sip=args.sip_listen)
    name = proxy_pb2.DESCRIPTOR.services_by_name["Proxy"].full_name
    try:
        await serve(
            args.grpc,
            [(proxy_pb2_grpc.add_ProxyServicer_to_server, ProxyServicer(proxy, endpoint, events, counters), name)],
        )
    finally:
        endpoint.close()


if __name__ == "__main__":
    asyncio.run(main())
