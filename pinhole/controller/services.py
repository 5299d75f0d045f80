"""Starting the lab's services and talking to their gRPC control planes.

Every node of the topology that names a service gets that service as its own process inside
its namespace; the controller reaches each over a unix socket in the lab's run directory and
waits for readiness with the standard health Watch (an event, not a sleep).
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pinhole import labca
from pinhole.lab import Lab, Node, Topology
from pinhole.rpc.v1 import (
    capture_pb2,
    capture_pb2_grpc,
    natgw_pb2,
    natgw_pb2_grpc,
    proxy_pb2,
    proxy_pb2_grpc,
    stunserver_pb2,
    stunserver_pb2_grpc,
    switch_pb2,
    switch_pb2_grpc,
    useragent_pb2,
    useragent_pb2_grpc,
)
from pinhole.service import command_line

T = TypeVar("T")

STUBS = {
    "useragent": useragent_pb2_grpc.UserAgentStub,
    "proxy": proxy_pb2_grpc.ProxyStub,
    "natgw": natgw_pb2_grpc.NatGatewayStub,
    "stunserver": stunserver_pb2_grpc.StunServerStub,
    "switch": switch_pb2_grpc.SwitchStub,
}

# The longest a unary call may take (a caller may say less, never more: gRFC A2 takes the smaller). A
# control call answers at once; the slow ones wait on the network: PlaceCall on two STUN transactions in
# turn (39.5 s of RFC 5389 retransmissions each at most), HangUp and Reinvite on their final responses
# (Timer B and F are 64*T1 = 32 s with RFC timers), StopCapture hands over a whole capture,
# FlushTelemetry every span.
CALL_DEADLINE_S = 10
SLOW_CALL_DEADLINE_S = {"PlaceCall": 90, "HangUp": 60, "Reinvite": 60, "StopCapture": 60, "FlushTelemetry": 30}


RETRY_POLICY = {  # gRFC A6: a call the contract marks idempotent, again while its service is unavailable
    "maxAttempts": 5,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    """The gRPC service config (gRFC A2) of every channel to a lab service, one entry per method.

    Every call waits for its service to be ready instead of failing on the first connect; a unary call
    ends at its deadline; a method the contract marks idempotent (`idempotency_level` in proto/) is
    retried on UNAVAILABLE within it, the others (PlaceCall, HangUp, ...) never, since a second attempt
    could act twice. Streams (WatchEvents) have no deadline."""
    configs = []
    for module in (useragent_pb2, proxy_pb2, natgw_pb2, stunserver_pb2, switch_pb2, capture_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                config: dict[str, Any] = {
                    "name": [{"service": service.full_name, "method": method.name}],
                    "waitForReady": True,
                }
                if not (method.server_streaming or method.client_streaming):
                    config["timeout"] = f"{SLOW_CALL_DEADLINE_S.get(method.name, CALL_DEADLINE_S)}s"
                    if method.GetOptions().idempotency_level:  # NO_SIDE_EFFECTS or IDEMPOTENT
                        config["retryPolicy"] = RETRY_POLICY
                configs.append(config)
    return json.dumps({"methodConfig": configs})


# A service's socket appears only once it has started; without these gRPC backs off
# exponentially (up to minutes) between connection attempts to a socket that is not there yet.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),  # a capture's frames (LinkCapture.StopCapture)
    ("grpc.service_config", service_config()),
    ("grpc.enable_retries", 1),
]


class ServiceCallError(grpc.RpcError):
    """A failed call to a lab service, naming the node and the method (a bare RpcError names neither)."""

    def __init__(self, node: str, method: str, error: grpc.RpcError) -> None:
        super().__init__(f"{node}: {method} failed: {error.code().name} {error.details()}")
        self.node, self.method, self.error = node, method, error

    def code(self) -> grpc.StatusCode:
        return self.error.code()

    def details(self) -> str | None:
        return self.error.details()


class _NameFailures(grpc.UnaryUnaryClientInterceptor):
    """Turns a unary call's RpcError into a ServiceCallError naming its node and method."""

    def __init__(self, node: str) -> None:
        self.node = node

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        outcome = continuation(client_call_details, request)
        error = outcome.exception() if outcome.done() else None
        if isinstance(error, grpc.RpcError) and not isinstance(error, ServiceCallError):
            raise ServiceCallError(self.node, client_call_details.method.rsplit("/", 1)[-1], error)
        return outcome


def control_channel(target: str, node: str, tls: labca.TlsFiles | None = None) -> grpc.Channel:
    """A channel to a node's control plane at `target`.

    A unix socket is plaintext: it lies in the lab's run directory, which only root may enter, and that is a
    local lab's access control. A TCP target with `tls` (the controller's mounted Secret, pinhole.labca) is
    mutual TLS: the service must show a certificate of the lab CA issued for the node's name (not for the pod
    IP, which nobody knew when the certificate was made: grpc.ssl_target_name_override), and the controller
    shows its own, the only one a service admits.
    """
    if tls is None or target.startswith("unix:"):
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )
    return grpc.secure_channel(target, credentials, options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", node)])


def channel(run_dir: Path, node: str) -> grpc.Channel:
    """A channel to a node's control plane in a local lab (its unix socket in the lab's run directory)."""
    return grpc.insecure_channel(local_target(run_dir, node), options=CHANNEL_OPTIONS)


def socket_path(run_dir: Path, node: str) -> Path:
    return run_dir / f"{node}.sock"


def local_target(run_dir: Path, node: str) -> str:
    return f"unix:{socket_path(run_dir, node)}"


def local_targets(run_dir: Path, nodes: Any) -> dict[str, str]:
    """node -> gRPC target of a local lab (namespaces or containers: both put the sockets in run_dir)."""
    return {node: local_target(run_dir, node) for node in nodes}


def service_argv(node: Node, run_dir: Path, *, name_interfaces: bool = True) -> list[str]:
    """The command line of the service a topology node runs (see pinhole/lab/topology.toml), rendered with
    the service's own declaration (services/<service>/cli.py).

    `run_dir`: the lab's run directory as the service sees it. `name_interfaces`: false where the
    interfaces do not carry the topology's names (containers: the NAT finds them by address).
    """
    address = node.addresses[0].split("/")[0] if node.addresses else ""  # a switch has none
    values: dict[str, object] = {"name": node.name, "grpc": f"unix:{socket_path(run_dir, node.name)}"}
    extra = node.extra
    if node.service in ("useragent", "proxy"):
        values["sip_listen"] = f"{address}:{extra.get('sip_port', 5060)}"
    if node.service == "useragent":
        values["media_ip"] = address
    if node.service == "stunserver":
        port = extra.get("stun_port", 3478)
        values["listen"] = f"{address}:{port}"
        if len(node.addresses) > 1:  # a second address: an RFC 5780 server (it copes if it lacks the address)
            values["alternate"] = f"{node.addresses[1].split('/')[0]}:{extra.get('stun_alternate_port', port + 1)}"
    if node.service == "switch":
        if node.bridge is None:  # the topology gives each switch node a bridge, and only those
            raise ValueError(f"{node.name}: the switch service runs on a switch node (one with a bridge)")
        values["bridge"] = node.bridge
    if node.service == "natgw":
        lan_if, wan_if = extra.get("lan_if", "lan0"), extra.get("wan_if", "wan0")
        if name_interfaces:
            values.update(lan_if=lan_if, wan_if=wan_if)
        values["wan_address"] = node.interfaces[wan_if][0].split("/")[0]
        values["lan_prefix"] = str(ipaddress.ip_interface(node.interfaces[lan_if][0]).network)
    parser = importlib.import_module(f"services.{node.service}.cli").parser()
    return [sys.executable, "-m", f"services.{node.service}", *command_line(parser, values)]


def service_settings(otlp_endpoint: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every service gets from the controller, whatever runs it."""
    env = {
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        # a local receiver answers in milliseconds; a short timeout keeps a stop quick when it is gone
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        # spans waiting for export: under load the exporter's thread falls behind, and the SDK's default
        # 2,048 drops the rest (a load of 50 calls at once on a busy machine lost 1,020): a run missing spans
        # is broken
        "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra_env or {})
    return env


def start_services(
    lab: Lab,
    topology: Topology,
    *,
    otlp_endpoint: str,
    extra_env: dict[str, str] | None = None,
    only: Iterable[str] | None = None,
) -> dict[str, int]:
    """Start every service of the topology on its node (or those of `only`); returns node -> host PID.

    Every service exports its spans to `otlp_endpoint` (standard OTEL_* settings); the lab decides what
    else a service's environment holds (Lab.service_env).
    """
    env = lab.service_env(service_settings(otlp_endpoint, extra_env))
    pids = {}
    for node in topology.nodes.values():
        if not lab.hosts_service(node) or (only is not None and node.name not in only):
            continue
        argv = service_argv(node, lab.service_run_dir, name_interfaces=lab.names_interfaces)
        process = lab.spawn(node.name, argv, log_path=lab.run_dir / f"{node.name}.log", env=env)
        pids[node.name] = process.pid
    return pids


def wait_healthy(
    targets: dict[str, str],
    timeout: float = 60.0,
    pids: dict[str, int] | None = None,
    logs: Path | str = "the service's log",
    tls: labca.TlsFiles | None = None,
) -> None:
    """Block until every node's health service says SERVING (health Watch), or raise naming the laggards.

    `targets`: node -> gRPC target; `pids`: host PIDs whose exit means the service died starting;
    `logs`: where to look when it did (a directory holding <node>.log, or a hint); `tls`: the controller's
    certificate for TCP targets (control_channel).
    """
    deadline = time.monotonic() + timeout
    where = (lambda node: logs / f"{node}.log") if isinstance(logs, Path) else (lambda node: logs)  # noqa: E731
    for node, target in targets.items():
        health_channel = control_channel(target, node, tls)
        try:
            stub: Any = health_pb2_grpc.HealthStub(health_channel)  # its stubs declare no Check or Watch
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"service {node} not SERVING after {timeout:.0f}s (see {where(node)})")
                if pids and node in pids and not Path(f"/proc/{pids[node]}").exists():
                    raise RuntimeError(f"service {node} exited during start-up (see {where(node)})")
                try:
                    for reply in stub.Watch(
                        health_pb2.HealthCheckRequest(service=""), timeout=min(remaining, 2.0), wait_for_ready=True
                    ):
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    else:
                        continue
                    break
                except grpc.RpcError as error:
                    if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                        raise
        finally:
            health_channel.close()


@dataclass
class ServiceClients:
    """gRPC stubs for every service of a running lab, whichever backend runs it.

    `targets`: node -> gRPC target ("unix:/run/pinhole/ph-lab/alice.sock", "10.244.1.7:50051"); `tls`: the
    controller's certificate, for TCP targets (control_channel).
    """

    targets: dict[str, str]
    kinds: dict[str, str]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    tls: labca.TlsFiles | None = None

    @classmethod
    def local(cls, run_dir: Path, kinds: dict[str, str]) -> ServiceClients:
        return cls(local_targets(run_dir, kinds), kinds)

    def stub(self, node: str) -> Any:
        if node not in self.channels:
            direct = control_channel(self.targets[node], node, self.tls)
            self.channels[node] = grpc.intercept_channel(direct, _NameFailures(node))
        return STUBS[self.kinds[node]](self.channels[node])

    def not_serving(self, timeout: float = 5.0) -> list[str]:
        """Each service that does not say SERVING within `timeout` (health Check), with why: a lab left up
        with a service stopped is named node by node before any call is tried on it."""
        problems = []
        for node, target in self.targets.items():
            with control_channel(target, node, self.tls) as channel:
                try:
                    health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs declare no Check or Watch
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                except grpc.RpcError as error:
                    problems.append(f"{node}: {error.code().name} at {target}")
                    continue
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    problems.append(f"{node}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        return problems

    def capture(self, node: str) -> Any:
        """The LinkCapture stub of a node's service (every pinhole service has one)."""
        self.stub(node)
        return capture_pb2_grpc.LinkCaptureStub(self.channels[node])

    def reconnect(self, node: str) -> None:
        """A fresh channel to a restarted service (the old one would wait out its reconnect backoff)."""
        channel = self.channels.pop(node, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()


def to_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


class EventCollector:
    """Follows every service's WatchEvents stream into one list; waits on conditions over it."""

    def __init__(
        self,
        clients: ServiceClients,
        nodes: list[str],
        since: float = 0.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Collect events recorded at or after `since` (unix seconds): a lab outlives many runs. With
        `on_event`, each event goes to it (under the collector's lock) instead of the list: a load keeps
        only what it needs of each call."""
        self.clients = clients
        self.since = since
        self.on_event = on_event
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._calls: list[Any] = []
        self._threads = [threading.Thread(target=self._follow, args=(node,), daemon=True) for node in nodes]
        self.errors: list[str] = []

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def follow(self, node: str) -> None:
        """Follow a node again: a service restarted during the run has a new event stream."""
        thread = threading.Thread(target=self._follow, args=(node,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _follow(self, node: str) -> None:
        from pinhole.rpc.v1 import events_pb2

        call = self.clients.stub(node).WatchEvents(
            events_pb2.WatchEventsRequest(follow=True, since_unix_nano=int(self.since * 1e9))
        )
        self._calls.append(call)
        try:
            for event in call:  # the service already skipped events before `since`
                record = {
                    "t": event.time_unix_nano / 1e9,
                    "service": event.service,
                    "kind": event.kind,
                    "call_id": event.call_id,
                    "attrs": dict(event.attributes),
                    "trace_id": event.trace_id,
                    "span_id": event.span_id,
                }
                with self._changed:
                    if self.on_event is None:
                        self.events.append(record)
                    else:
                        self.on_event(record)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"{node}: {error.code().name} {error.details()}")
                with self._changed:
                    self._changed.notify_all()

    def wake(self) -> None:
        """Make every wait_for look at its predicate again (something else than an event changed)."""
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], T], timeout: float | None) -> T:
        """Block until predicate(events so far) holds or `timeout` passes; returns its last value."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.events), timeout=timeout)

    def stop(self) -> None:
        for call in self._calls:
            call.cancel()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._changed:
            return sorted(self.events, key=lambda e: e["t"])
