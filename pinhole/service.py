"""What every pinhole service shares: its command line, its gRPC server and its shutdown.

A service is wiring: config in, gRPC server up (with the standard health service and server
reflection, so grpcurl-style tools can drive it), library objects driven, evidence out. The
gRPC server listens on a unix socket at a file path: reachable from the controller in any
namespace without touching the lab's data plane.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pinhole import capture as link_capture
from pinhole import pcapng, telemetry
from pinhole.events import Counters, EventLog
from pinhole.rpc.v1 import capture_pb2, capture_pb2_grpc, events_pb2

log = logging.getLogger(__name__)


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--name", required=True, help="instance name, e.g. alice or proxy-a")
    parser.add_argument("--grpc", required=True, help="gRPC listen address, e.g. unix:/run/pinhole/lab/alice.sock")
    parser.add_argument("--log-level", default="INFO")
    return parser


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
    """
    server = grpc.aio.server(options=[("grpc.max_send_message_length", MAX_CAPTURE_MESSAGE)])
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
    server.add_insecure_port(address)
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC listening on %s", address)

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
    await asyncio.to_thread(telemetry.shutdown)  # flushes: a SIGTERM loses no span


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
