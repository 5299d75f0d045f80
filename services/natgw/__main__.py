"""NAT gateway service: owns the kernel NAT (nftables + conntrack) of its namespace.

The NAT itself is the Linux kernel: this process only loads the RFC 4787 behaviour asked for
over gRPC as an nftables ruleset, raises conntrack's UDP timeout to RFC 4787 REQ-5 values, and
observes: every inbound packet the ruleset drops arrives here over NFLOG and is classified
(STUN / DTLS with handshake type / RTP / other) so the lab can show *which* message died.

It also injects faults when asked (SetFaults): loss, delay, duplication, reordering and expired
mappings on the packets of Alice's path, decided packet by packet from an NFQUEUE (pinhole/faults/); each
injected fault is a `fault.injected` event in the call's trace, correlated like the drops. Packets that
crossed unjudged (NFQUEUE fail-open, above the rate the engine keeps up with) are counted
(faults_queue_bypassed) and reported as `fault.bypassed`, at most once a second.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import signal
import socket
import time

import grpc

from pinhole import demux
from pinhole.calls import CallDirectory, CallFlow
from pinhole.events import Counters, EventLog
from pinhole.faults import engine as faults
from pinhole.faults.engine import FaultPlan, Injected, RoutedLinks
from pinhole.faults.host import FaultHost
from pinhole.faults.rpc import FaultsServicer
from pinhole.nat import MAX_MAPPING_TIMEOUT, MIN_MAPPING_TIMEOUT, NatBehaviour, NatError
from pinhole.pcap import decode_ipv4_udp
from pinhole.rpc.v1 import natgw_pb2, natgw_pb2_grpc
from pinhole.service import EvidenceServicer, serve, setup_observability
from services.natgw import cli, conntrack, kernel, ruleset
from services.natgw.nflog import LoggedPacket, NflogReader

log = logging.getLogger("natgw")

PR_SET_PDEATHSIG = 1
DROPS_KEPT = 1_000  # the latest drops WatchDrops replays: a call's own are among them, and memory stays flat


class NatGateway(FaultHost):
    """The kernel NAT of this namespace and what it was seen to drop."""

    kind = "nat"

    def __init__(
        self,
        *,
        lan_if: str,
        wan_if: str,
        wan_address: str,
        lan_prefix: str,
        log_group: int,
        wan_services: list[tuple[str, int]],
        events: EventLog,
        counters: Counters,
        fault_queue: int = 1,
    ) -> None:
        super().__init__(events=events, counters=counters, fault_queue=fault_queue)
        self.lan_if, self.wan_if, self.wan_address, self.lan_prefix = lan_if, wan_if, wan_address, lan_prefix
        self.log_group = log_group
        self.wan_services = wan_services
        self.behaviour = NatBehaviour().effective()
        self.script = ""
        self.drops: list[natgw_pb2.DroppedPacket] = []
        self._watchers: list[asyncio.Queue[natgw_pb2.DroppedPacket]] = []
        self.reader: NflogReader | None = None
        self.sip_reader: NflogReader | None = None
        self.calls = CallDirectory()
        self._reported: dict[str, None] = {}  # calls whose translated packets were reported (at their BYE)
        self._tasks: set[asyncio.Task[None]] = set()
        self._conntrack_events: asyncio.subprocess.Process | None = None

    def apply(self, behaviour: NatBehaviour) -> str:
        behaviour = behaviour.effective()
        script = ruleset.render(
            behaviour,
            lan_if=self.lan_if,
            wan_if=self.wan_if,
            wan_address=self.wan_address,
            lan_prefix=self.lan_prefix,
            log_group=self.log_group,
            sip_log_group=self.log_group + 1,
            wan_services=self.wan_services,
        )
        ruleset.apply(script)
        if behaviour.translate != self.behaviour.translate:
            # conntrack keeps each flow's translation: a flow translated before would stay translated (and the
            # untranslated replies to it clash with its entry and are dropped), and the reverse; start afresh
            conntrack.flush()
            self.events.emit("nat.flushed", reason="translation turned " + ("on" if behaviour.translate else "off"))
        for setting in ruleset.set_mapping_timeout(behaviour.mapping_timeout):
            self.events.emit("nat.warning", reason=f"cannot set {setting}")
        self.behaviour, self.script = behaviour, script
        configured: dict[str, object] = {
            "mapping": behaviour.mapping.value,
            "filtering": behaviour.filtering.value,
            "mapping_timeout": behaviour.mapping_timeout,
            "port_preservation": "on" if behaviour.preserves_ports else "off",
        }
        if not behaviour.translate:
            configured["translation"] = "off"
        elif not behaviour.hairpins:
            configured["hairpinning"] = "off"
        self.events.emit("nat.configured", attributes=configured)
        return script

    async def start_observing(self) -> None:
        """Drops (NFLOG), forwarded SIP (NFLOG, for call correlation) and new mappings (conntrack -E)."""
        loop = asyncio.get_running_loop()
        self.reader = NflogReader(self.log_group)
        loop.add_reader(self.reader.fileno(), self._read_drops)
        self.sip_reader = NflogReader(self.log_group + 1)
        loop.add_reader(self.sip_reader.fileno(), self._read_sip)
        self._conntrack_events = await asyncio.create_subprocess_exec(
            "conntrack",
            "-E",
            "-e",
            "NEW",
            "-p",
            "udp",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        loop.create_task(self._read_mappings(self._conntrack_events))

    def _read_sip(self) -> None:
        assert self.sip_reader is not None
        for packet in self.sip_reader.read():
            seen = self.calls.observe(packet.payload)
            if seen is None:
                continue
            call_id, what = seen
            if what == "rejected":
                self.calls.forget(call_id)
            elif what == "BYE" and call_id not in self._reported:
                self._reported[call_id] = None
                if len(self._reported) > 10_000:  # junk Call-IDs must not grow this forever
                    del self._reported[next(iter(self._reported))]
                task = asyncio.get_running_loop().create_task(self._report_translated(call_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _report_translated(self, call_id: str) -> None:
        """At the call's BYE: how many packets the NAT translated on each of its media mappings."""
        addresses = set(self.calls.addresses_of(call_id))
        flow = self.calls.lookup(*addresses)  # the call's trace context, before we let the call go
        try:
            ports = {port for _, port in addresses}
            counts = await asyncio.to_thread(conntrack.flow_counts, self.wan_address, ports=ports)
        except Exception as error:  # a report must never take the gateway down
            self.events.emit("nat.error", call_id, reason=f"{type(error).__name__}: {error}")
            return
        finally:
            self.calls.forget(call_id)  # the call is over; report what it announced, then let go
        reported = 0
        for count in counts:
            m = count.mapping
            if m.external not in addresses or m.remote not in addresses:
                continue  # only the flow between the offer's and the answer's addresses
            self.events.emit(
                "nat.translated",
                call_id,
                parent=flow.context if flow else None,
                internal=f"{m.internal[0]}:{m.internal[1]}",
                external=f"{m.external[0]}:{m.external[1]}",
                remote=f"{m.remote[0]}:{m.remote[1]}",
                peer=f"{m.remote[0]}:{m.remote[1]}",
                outbound_packets=count.outbound_packets,
                inbound_packets=count.inbound_packets,
            )
            reported += 1
        self.events.emit("nat.call_ended", call_id, parent=flow.context if flow else None, media_flows=reported)

    async def _read_mappings(self, process: asyncio.subprocess.Process) -> None:
        """Every new mapping onto the outside address, as the kernel creates it (`nat.mapping`), and every
        session a remote opens through one, admitted by endpoint-independent or address-dependent
        filtering (`nat.admitted`)."""
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").replace("[NEW]", "").strip()
            try:
                mappings = conntrack.parse_udp_mappings(line, self.wan_address)
            except conntrack.ConntrackError:
                self.counters["conntrack_unparsable"] += 1
                continue
            for m in mappings:
                self.counters["sessions_admitted" if m.inbound else "mappings_seen"] += 1
                flow = self.calls.lookup(m.external, m.remote)
                self.events.emit(
                    "nat.admitted" if m.inbound else "nat.mapping",
                    flow.call_id if flow else "",
                    parent=flow.context if flow else None,
                    internal=f"{m.internal[0]}:{m.internal[1]}",
                    external=f"{m.external[0]}:{m.external[1]}",
                    remote=f"{m.remote[0]}:{m.remote[1]}",
                    peer=f"{m.remote[0]}:{m.remote[1]}",
                )

    def _read_drops(self) -> None:
        assert self.reader is not None
        for packet in self.reader.read():
            self._dropped(packet)

    def _dropped(self, packet: LoggedPacket) -> None:
        """Classify one dropped inbound packet by its UDP payload (RFC 7983 first-byte demux)."""
        self.counters["dropped_inbound"] += 1
        hook = ruleset.drop_hook(packet.prefix) or "unknown"
        udp = decode_ipv4_udp(packet.payload)
        when = packet.timestamp or time.time()
        if udp is None:
            self.counters["dropped_inbound_non_udp"] += 1
            self.events.emit(
                "nat.drop", hook=hook, classification="other", detail="non-UDP packet", size=len(packet.payload)
            )
            return
        description = demux.describe(udp.payload)
        classification = description.get("kind", "unknown")
        if classification not in ("stun", "dtls", "rtp", "rtcp"):
            classification = "other"
        self.counters[f"dropped_inbound_{classification}"] += 1
        source, destination = f"{udp.src[0]}:{udp.src[1]}", f"{udp.dst[0]}:{udp.dst[1]}"
        drop = natgw_pb2.DroppedPacket(
            time_unix_nano=int(when * 1e9),
            hook=hook,
            source=natgw_pb2.Endpoint(ip=udp.src[0], port=udp.src[1]),
            destination=natgw_pb2.Endpoint(ip=udp.dst[0], port=udp.dst[1]),
            protocol="udp",
            classification=classification,
            detail=description.get("summary", ""),
            attributes=description,
        )
        self.drops.append(drop)
        del self.drops[:-DROPS_KEPT]
        flow = self.calls.lookup(udp.dst, udp.src)
        self.events.emit(
            "nat.drop",
            flow.call_id if flow else "",
            description,
            parent=flow.context if flow else None,
            at_ns=int(when * 1e9),  # the kernel's time of the drop, comparable with other hosts' events
            hook=hook,
            source=source,
            destination=destination,
            classification=classification,
            detail=description.get("summary", ""),
        )
        for queue in self._watchers:
            queue.put_nowait(drop)

    # -- faults (pinhole.faults.host) --------------------------------------------------------------

    def fault_links(self) -> RoutedLinks:
        """The fault engine's links: lan (inside) and wan (outside)."""
        return RoutedLinks("lan", socket.if_nametoindex(self.lan_if), "wan", socket.if_nametoindex(self.wan_if))

    def _install_queue(self, plan: FaultPlan) -> dict[str, object]:
        path = ruleset.FaultPath(self.fault_queue, frozenset(d.value for d in plan.directions()))
        ruleset.apply_faults(path, lan_if=self.lan_if, wan_if=self.wan_if)
        return {"directions": ",".join(sorted(path.directions))}

    def _remove_queue(self, *, final: bool) -> int | None:
        return ruleset.remove_faults(hooks=final)

    def _injector_hooks(self) -> dict[str, object]:
        return {"expire": self._expire_mapping, "settle": self._forget_mapping}

    async def _expire_mapping(self, internal: tuple[str, int]) -> int:
        """expire-mapping: the conntrack entries of Alice's inside endpoint, and what the ruleset's sets
        remember of its mappings (the external port EIF/ADF admit through, the addresses it sent to)."""
        deleted = await asyncio.to_thread(faults.expire_mapping, internal)
        return deleted + await self._forget_mapping(internal)

    async def _forget_mapping(self, internal: tuple[str, int]) -> int:
        """The sets again once the packet passed: an outbound one renews them in postrouting."""
        return await asyncio.to_thread(ruleset.forget_mapping, internal, self.behaviour)

    def _flow_of(self, injected: Injected) -> CallFlow | None:
        """A SIP message names its call; a media packet is found by the far end's address, which the call's
        SDP announced (as for nat.drop)."""
        if self.sip_reader is not None:
            self._read_sip()  # the SIP forwarded just before (an answer) may tell whose packet this is
        flow = self.calls.of_message(injected.payload) if injected.attributes.get("kind") == "sip" else None
        return flow or self.calls.lookup(injected.peer, injected.internal)

    def watch(self) -> asyncio.Queue[natgw_pb2.DroppedPacket]:
        queue: asyncio.Queue[natgw_pb2.DroppedPacket] = asyncio.Queue()
        self._watchers.append(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[natgw_pb2.DroppedPacket]) -> None:
        self._watchers.remove(queue)

    def close(self) -> None:
        self.close_faults()  # best effort: the NAT table must still go
        for reader in (self.reader, self.sip_reader):
            if reader is not None:
                asyncio.get_running_loop().remove_reader(reader.fileno())
                reader.close()
        if self._conntrack_events is not None and self._conntrack_events.returncode is None:
            self._conntrack_events.terminate()
        ruleset.remove()


def _wan_service(value: str) -> tuple[str, int]:
    """'tcp/50051' -> ('tcp', 50051); the ruleset checks the values."""
    protocol, _, port = value.partition("/")
    if not port.isdigit():
        raise SystemExit(f"--wan-allow: expected tcp/PORT or udp/PORT, got {value!r}")
    return protocol, int(port)


def _die_with_parent() -> None:
    """In the conntrack child: SIGTERM when the gateway dies, even by SIGKILL (no orphan in the lab)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _endpoint(address: tuple[str, int]) -> natgw_pb2.Endpoint:
    return natgw_pb2.Endpoint(ip=address[0], port=address[1])


class NatGatewayServicer(FaultsServicer, EvidenceServicer, natgw_pb2_grpc.NatGatewayServicer):
    def __init__(self, gateway: NatGateway) -> None:
        self.gateway = gateway
        self.events = gateway.events

    def fault_host(self) -> NatGateway:
        return self.gateway

    async def Configure(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            behaviour = NatBehaviour.from_proto(request).require_req5()
        except NatError as error:
            if error.field == "mapping_timeout":  # the proto's name, and what it may be
                allowed = f"(allowed: {MIN_MAPPING_TIMEOUT}..{MAX_MAPPING_TIMEOUT}, 0 = the default)"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"mapping_timeout_seconds: {error} {allowed}")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error}")
        try:
            script = self.gateway.apply(behaviour)
        except NotImplementedError as error:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(error))
        except (OSError, RuntimeError) as error:
            await context.abort(grpc.StatusCode.INTERNAL, f"loading the ruleset failed: {error}")
        return natgw_pb2.NatConfigReply(effective=self.gateway.behaviour.to_proto(), ruleset=script)

    async def ListMappings(self, request, context):  # noqa: N802
        try:
            mappings = await asyncio.to_thread(conntrack.list_udp_mappings, self.gateway.wan_address)
        except conntrack.ConntrackError as error:
            await context.abort(grpc.StatusCode.INTERNAL, f"reading the conntrack table failed: {error}")
        return natgw_pb2.ListMappingsReply(
            mappings=[
                natgw_pb2.NatMappingEntry(
                    internal=_endpoint(m.internal),
                    external=_endpoint(m.external),
                    remote=_endpoint(m.remote),
                    timeout_seconds=m.timeout,
                    assured=m.assured,
                    inbound=m.inbound,
                )
                for m in mappings
            ]
        )

    async def collect_counters(self) -> Counters:
        counters = await self.gateway.fault_counters()
        for name, values in (await asyncio.to_thread(ruleset.read_counters)).items():
            counters[f"nft_{name}_packets"] = values["packets"]
            counters[f"nft_{name}_bytes"] = values["bytes"]
        return counters

    async def WatchDrops(self, request, context):  # noqa: N802
        queue = self.gateway.watch()
        try:
            if request.replay:
                for drop in list(self.gateway.drops):
                    yield drop
            while True:
                yield await queue.get()
        finally:
            self.gateway.unwatch(queue)


async def main() -> None:
    args = cli.parser().parse_args()
    setup_observability(args.log_level, args.name)
    wan_address, lan_prefix = ipaddress.ip_address(args.wan_address), ipaddress.ip_network(args.lan_prefix)
    # a container engine names interfaces in its own order (eth0, eth1): then find them by address
    lan_if = args.lan_if or kernel.interface_with(lambda address: address in lan_prefix, "an address in --lan-prefix")
    wan_if = args.wan_if or kernel.interface_with(lambda address: address == wan_address, "--wan-address")
    events, counters = EventLog(args.name), Counters()
    gateway = NatGateway(
        lan_if=lan_if,
        wan_if=wan_if,
        wan_address=args.wan_address,
        lan_prefix=args.lan_prefix,
        log_group=args.log_group,
        wan_services=[_wan_service(value) for value in args.wan_allow],
        events=events,
        counters=counters,
        fault_queue=args.fault_queue,
    )
    try:  # a gateway that died with faults set left its queue rules behind (they let packets pass: bypass)
        ruleset.remove_faults()
    except Exception as error:
        log.warning("removing a stale fault path failed: %s", error)
    await gateway.start_observing()
    gateway.apply(NatBehaviour())
    events.emit("service.started", wan_address=args.wan_address, lan_prefix=args.lan_prefix)
    name = natgw_pb2.DESCRIPTOR.services_by_name["NatGateway"].full_name

    async def stop() -> None:
        gateway.close()

    await serve(
        args.grpc, [(natgw_pb2_grpc.add_NatGatewayServicer_to_server, NatGatewayServicer(gateway), name)], on_stop=stop
    )


if __name__ == "__main__":
    asyncio.run(main())
