"""What every pinhole service shares: its command line, its gRPC server and its shutdown.

A service is wiring: config in, gRPC server up (with the standard health service and server
reflection, so grpcurl-style tools can drive it), library objects driven, evidence out. The
gRPC server listens on a unix socket at a file path: reachable from the controller in any
namespace without touching the lab's data plane. In Kubernetes it listens on TCP instead, with
mutual TLS that admits the controller alone (`control_plane`, pinhole.labca), and the kubelet's
probes ask a plaintext server that offers the health service and nothing else (`health_only`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import ipaddress
import logging
import math
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pinhole import capture as link_capture
from pinhole import labca, pcapng, telemetry
from pinhole.events import Counters, EventLog
from pinhole.rpc.v1 import capture_pb2, capture_pb2_grpc, events_pb2

log = logging.getLogger(__name__)


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--name", required=True, help="instance name, e.g. alice or proxy-a")
    parser.add_argument("--grpc", required=True, help="gRPC listen address, e.g. unix:/run/pinhole/lab/alice.sock")
    parser.add_argument("--log-level", default="INFO")
    return parser


def command_line(parser: argparse.ArgumentParser, values: dict[str, object]) -> list[str]:
    """The arguments that make `parser` give `values` ({dest: value}; a list repeats its option): the flags
    are spelled where the service declares them, nowhere else."""
    options = {action.dest: action for action in parser._actions if action.option_strings}
    argv: list[str] = []
    for dest, value in values.items():
        if dest not in options:
            raise ValueError(f"{parser.prog}: no option for {dest!r}")
        option = max(options[dest].option_strings, key=len)  # the long spelling
        for item in value if isinstance(value, list) else [value]:
            argv += [option, str(item)]
    return argv


def setup_observability(level: str, name: str) -> None:
    """Logging to stderr and this instance's OpenTelemetry tracer provider (standard OTEL_* settings)."""
    logging.basicConfig(level=level, format=f"%(asctime)s {name} %(name)s %(levelname)s %(message)s")
    telemetry.setup(name)
    CaptureServicer.node = name


async def serve(
    address: str,
    servicers: Iterable[tuple[Callable[[object, grpc.aio.Server], None], object, str]],
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run a gRPC server until SIGTERM/SIGINT.

    `servicers` are (add_XServicer_to_server, servicer, full service name) triples. The
    health service reports SERVING for each of them only once the server is listening,
    so readiness can be awaited with a health Watch instead of a sleep.

    From the environment (a pod's manifest): PINHOLE_GRPC_TLS_DIR, the mounted Secret that makes a TCP
    `address` mutual TLS for the controller alone (`control_plane`); PINHOLE_GRPC_HEALTH, the address of
    a plaintext server of the health service alone for the kubelet's probes (`health_only`).
    """
    tls_dir = os.environ.get(labca.TLS_DIR_ENV)
    server, _ = control_plane(address, tls_dir)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    capture = CaptureServicer()
    for add, servicer, name in [
        *servicers,
        (capture_pb2_grpc.add_LinkCaptureServicer_to_server, capture, "pinhole.rpc.v1.LinkCapture"),
    ]:
        add(servicer, server)
        names.append(name)
    reflection.enable_server_reflection(names, server)
    health_address = os.environ.get(HEALTH_ENV)
    health_server = health_only(health_address, health_servicer)[0] if health_address else None
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    mutual = tls_dir and not address.startswith("unix:")
    log.info("gRPC listening on %s%s", address, f" (mutual TLS: {labca.CONTROLLER} only)" if mutual else "")
    if health_server is not None:
        log.info("gRPC health alone, plaintext, on %s", health_address)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    capture.stop()
    if on_stop is not None:
        await on_stop()
    await server.stop(grace=1.0)
    if health_server is not None:
        await health_server.stop(grace=None)
    await asyncio.to_thread(telemetry.shutdown)  # flushes: a SIGTERM loses no span


HEALTH_ENV = "PINHOLE_GRPC_HEALTH"  # address of a plaintext server of the health service alone (kubelet probes)


def control_plane(address: str, tls_dir: str | os.PathLike[str] | None = None) -> tuple[grpc.aio.Server, int]:
    """The control plane's gRPC server bound to `address`, not started; returns it and its port (0: a unix socket).

    A unix socket stays plaintext whatever `tls_dir` says: it lies in the lab's run directory, which only
    root may enter, and that directory is a local lab's access control. On TCP with `tls_dir` (a mounted
    kubernetes.io/tls Secret: ca.crt, tls.crt, tls.key, see pinhole.labca) it is mutual TLS: a client must
    show a certificate of the lab CA for the TLS handshake to succeed (require_client_auth), and every call
    is then refused unless that certificate is the controller's (ControllerOnly). On TCP without it, plaintext:
    whoever reaches the port drives the service, which is said in the log.
    """
    options = [
        ("grpc.max_send_message_length", MAX_CAPTURE_MESSAGE),
        # a request waits for the service's event loop to take it up to here, not gRPC's 30 s (then CANCELLED):
        # longer than any deadline the controller sets, so a busy service answers late, or the caller's own
        # deadline says DEADLINE_EXCEEDED (a few of a burst are still CANCELLED when a blocked loop comes back)
        ("grpc.server_max_unrequested_time_in_server", UNREQUESTED_WAIT_S),
    ]
    if address.startswith("unix:"):
        server = grpc.aio.server(options=options)
        return server, server.add_insecure_port(address)
    if not tls_dir:
        log.warning(
            "gRPC on %s without TLS (%s unset): whoever reaches it drives this service", address, labca.TLS_DIR_ENV
        )
        server = grpc.aio.server(options=options)
        return server, server.add_insecure_port(address)
    tls = labca.read_tls_dir(tls_dir)
    credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True)
    server = grpc.aio.server(interceptors=[ControllerOnly()], options=options)
    return server, server.add_secure_port(address, credentials)


def health_only(address: str, servicer: health.aio.HealthServicer) -> tuple[grpc.aio.Server, int]:
    """A plaintext server of the health service alone, bound to `address` and not started, and its port: for the
    kubelet's gRPC probes, which can show no client certificate. It answers whether the service is SERVING and
    nothing else; in Kubernetes no NetworkPolicy admits a pod to it, and traffic from the pod's own node (the
    kubelet) always is admitted."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return server, server.add_insecure_port(address)


class ControllerOnly(grpc.aio.ServerInterceptor):
    """Every call must come from the controller's certificate (pinhole.labca): the lab CA signs every service's
    certificate too, and a lab pod taken over must not drive another's control plane. The TLS handshake
    has verified the chain by then; this checks whose certificate it is, before the method runs."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        return None if handler is None else _controller_only(handler)


async def _refuse_unless_controller(context: grpc.aio.ServicerContext) -> None:
    auth = context.auth_context()
    if not labca.is_controller(auth):
        names = ", ".join(labca.peer_names(auth)) or "none"
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"only the controller's certificate ({labca.CONTROLLER}) may call this service; the caller's: {names}",
        )


def _controller_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with the controller check before its behaviour (aio behaviours: coroutines, async generators)."""

    def unary_reply(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_unless_controller(context)
            reply = behaviour(request, context)
            return await reply if inspect.isawaitable(reply) else reply

        return guarded

    def streamed_replies(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_unless_controller(context)
            replies = behaviour(request, context)
            if inspect.isawaitable(replies):  # a coroutine that writes with context.write
                await replies
            elif hasattr(replies, "__aiter__"):
                async for reply in replies:
                    yield reply
            else:
                for reply in replies:
                    yield reply

        return guarded

    codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_reply(handler.unary_unary), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary_reply(handler.stream_unary), **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streamed_replies(handler.unary_stream), **codecs)
    if handler.stream_stream is None:  # grpc's method handlers set exactly one of the four
        raise ValueError("a gRPC method handler with no behaviour to guard")
    return grpc.stream_stream_rpc_method_handler(streamed_replies(handler.stream_stream), **codecs)


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """'203.0.113.10:5060' -> ('203.0.113.10', 5060), with an error that names the field.

    The host must be an IPv4 literal: the lab has no DNS, and a name would only fail later.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: expected IPv4:port, got {value!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{what}: {host!r} is not an IPv4 address (the lab has no DNS)") from None
    return host, int(port)


def positive_seconds(value: float, what: str) -> float:
    """A timer value: finite and > 0 (0 means unset to the caller, so check it before defaulting)."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}: must be a finite number of seconds >= 0, got {value}")
    return value


RECEIVE_BUFFER_DROPS = "receive_buffer_drops"


def receive_buffer_drops(pid: str = "self") -> int:
    """Datagrams the kernel dropped because a UDP socket of process `pid` had a full receive buffer.

    The socket's sk_drops, the count SO_RXQ_OVFL hands out with each datagram; read here for every
    socket of the process at once from /proc/net/udp (its drops column, by socket inode), so that no
    receive path has to ask for ancillary data. A burst the service never read is counted too."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    drops = 0
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()  # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                if len(fields) >= 13 and fields[9] in inodes:
                    drops += int(fields[12])
    return drops


class EvidenceServicer:
    """The evidence RPCs every service has: WatchEvents and GetCounters.

    Mixed in before the generated servicer base, so these override its UNIMPLEMENTED stubs.
    """

    events: EventLog

    async def collect_counters(self) -> Counters:
        raise NotImplementedError

    async def WatchEvents(self, request, context):  # noqa: N802 (gRPC method name)
        async for event in self.events.follow(request.after_sequence, request.follow, request.since_unix_nano):
            yield event

    async def GetCounters(self, request, context):  # noqa: N802
        counters = await self.collect_counters()
        counters[RECEIVE_BUFFER_DROPS] = receive_buffer_drops()
        return counters.as_reply()

    async def FlushTelemetry(self, request, context):  # noqa: N802
        return events_pb2.FlushReply(flushed=await asyncio.to_thread(telemetry.flush))


MAX_CAPTURE_MESSAGE = 64 * 1024 * 1024  # a StopCapture reply carries every frame of a call
UNREQUESTED_WAIT_S = 120  # seconds a request may wait for a busy service (the longest controller deadline: 90)


class CaptureServicer(capture_pb2_grpc.LinkCaptureServicer):
    """A service capturing its own links (pinhole.capture), where the controller cannot reach them."""

    node = "service"  # this instance's name: its links are named <node>:<device>

    def __init__(self) -> None:
        self.running: link_capture.LinkCapture | None = None
        self.links: list[capture_pb2.CapturedLink] = []

    async def StartCapture(self, request, context):  # noqa: N802
        self.stop()
        links = list(request.links) or [
            capture_pb2.CapturedLink(device=name, name=f"{self.node}:{name}")
            for _, name in socket.if_nameindex()
            if name != "lo"
        ]
        points = [
            link_capture.CapturePoint(link.name or link.device, link.device, None, link.description) for link in links
        ]
        try:
            self.running = link_capture.LinkCapture(points, max_packets=request.max_packets or 200_000).start()
        except (link_capture.CaptureError, PermissionError, OSError) as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot capture here: {error}")
        self.links = links
        return capture_pb2.StartCaptureReply(links=links)

    async def StopCapture(self, request, context):  # noqa: N802
        if self.running is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no capture is running (StartCapture first)")
        running, self.running = self.running, None
        result = await asyncio.to_thread(running.stop)
        return capture_pb2.CapturedFrames(
            links=self.links,
            frames=[
                capture_pb2.CapturedFrame(
                    link=p.interface, time=p.t, data=p.data, inbound=p.direction != pcapng.DIRECTION_OUTBOUND
                )
                for p in result.packets
            ],
            statistics=[
                capture_pb2.LinkStatistics(link=s.interface, received=s.received or 0, dropped=s.dropped or 0)
                for s in result.statistics
            ],
            problems=running.problems(),
        )

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None
