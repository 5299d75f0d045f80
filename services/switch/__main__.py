"""Switch service: impairs the lab's public segment, port by port, with the shared fault engine.

The public hosts (the NAT gateway's outside, the proxies, the STUN server, Bob) meet on one Linux
bridge in the switch's namespace, one port per host (p-<node>). The kernel bridges; this process
only acts when asked (SetFaults): while a plan is set, every bridged UDP datagram goes through an
NFQUEUE (an `iptables -m physdev --physdev-is-bridged` rule: br_netfilter hands bridged IPv4 to the
FORWARD hook when net.bridge.bridge-nf-call-iptables is 1, a per-namespace setting) and
pinhole.faults decides its fate. A rule's `link` is the node at a port's other end: `link: bob,
direction: inbound` is what the bridge sends to Bob, `outbound` what Bob sends.

Every injected fault is a `fault.injected` event in the trace of the call it hit: a SIP message
carries its Call-ID and traceparent; media is matched by the addresses the call's SDP announced,
which the switch learns from the SIP its queue sees (every bridged datagram is queued while a plan
is set, so it sees the whole SIP path, whatever links the rules name). The switch carries out drop,
delay and reorder; duplicate and expire-mapping are the NAT gateway's. Packets that crossed unjudged
(NFQUEUE fail-open, above the rate the engine keeps up with: pinhole/faults/nfqueue.py) are counted
(faults_queue_bypassed) and reported as `fault.bypassed`, at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc

from pinhole.calls import CallDirectory, CallFlow
from pinhole.events import Counters, EventLog
from pinhole.faults import nfqueue
from pinhole.faults.engine import BridgePorts, FaultPlan, Injected, PacketView
from pinhole.faults.host import FaultHost
from pinhole.faults.rpc import FaultsServicer
from pinhole.rpc.v1 import switch_pb2, switch_pb2_grpc
from pinhole.service import EvidenceServicer, serve, setup_observability
from services.switch import cli

log = logging.getLogger("switch")

PORT_PREFIX = "p-"  # netns/lab.py names each port after the node at its other end
BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class SwitchError(RuntimeError):
    """The namespace cannot impair its bridge (no such bridge, or no br_netfilter); says which."""


def bridge_ports(bridge: str) -> dict[int, tuple[str, str]]:
    """ifindex -> (link, interface) of each port of `bridge` in this namespace, by netlink (sysfs
    may show another namespace's devices); the link is the port's name without p-."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            raise SwitchError(f"no interface {bridge!r} in this namespace")
        ports = {}
        for link in ipr.get_links():
            if link.get_attr("IFLA_MASTER") == found[0]:
                name = link.get_attr("IFLA_IFNAME")
                ports[link["index"]] = (name.removeprefix(PORT_PREFIX), name)
    return ports


def require_bridge_netfilter() -> None:
    """Bridged IPv4 must reach the FORWARD hook (the queue rule): bridge-nf-call-iptables = 1 here."""
    try:
        if BRIDGE_NF_CALL_IPTABLES.read_text().strip() != "1":
            BRIDGE_NF_CALL_IPTABLES.write_text("1\n")
    except FileNotFoundError:
        raise SwitchError(
            f"{BRIDGE_NF_CALL_IPTABLES} is missing: the kernel's br_netfilter module is not loaded "
            "(bridged packets never reach iptables, so none can be queued)"
        ) from None
    except OSError as error:
        raise SwitchError(f"cannot set {BRIDGE_NF_CALL_IPTABLES} to 1: {error}") from None


class Switch(FaultHost):
    """The bridge of this namespace and the faults it applies to what crosses its ports."""

    kind = "switch"

    def __init__(self, *, bridge: str, events: EventLog, counters: Counters, fault_queue: int = 1) -> None:
        super().__init__(events=events, counters=counters, fault_queue=fault_queue)
        self.bridge = bridge
        self.calls = CallDirectory()

    async def fault_links(self) -> BridgePorts:
        """The engine's links: the bridge's ports now (read in a thread: pyroute2 runs its own loop)."""
        ports = await asyncio.to_thread(bridge_ports, self.bridge)
        return BridgePorts({index: link for index, (link, _) in ports.items()})

    def _install_queue(self, plan: FaultPlan) -> dict[str, object]:
        require_bridge_netfilter()
        nfqueue.install_queue_rules(self.fault_queue, [("", "")], bridged=True)
        return {"links": ",".join(sorted(plan.links()))}

    def _remove_queue(self, *, final: bool) -> int | None:
        return nfqueue.remove_queue_rules(prune=final)

    def _injector_hooks(self) -> dict[str, object]:
        return {"observe": self._observe}

    def _observe(self, packet: nfqueue.QueuedPacket, view: PacketView) -> None:
        """Learn the calls' media addresses from the SIP going by (before its fate is decided)."""
        if view.sip is None:
            return
        seen = self.calls.observe(packet.payload)
        if seen is not None and seen[1] in ("BYE", "rejected"):
            self.calls.forget(seen[0])

    def _flow_of(self, injected: Injected) -> CallFlow | None:
        """A SIP message names its call; a media packet is found by the addresses its call's SDP announced."""
        is_sip = injected.attributes.get("kind") == "sip"
        return self.calls.call_of(injected.payload, injected.peer, injected.internal, sip=is_sip)


class SwitchServicer(FaultsServicer, EvidenceServicer, switch_pb2_grpc.SwitchServicer):
    precondition_errors = (SwitchError,)  # no such bridge, or its ports unreadable

    def __init__(self, switch: Switch) -> None:
        self.switch = switch
        self.events = switch.events

    async def ListPorts(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            ports = await asyncio.to_thread(bridge_ports, self.switch.bridge)
        except SwitchError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return switch_pb2.ListPortsReply(
            bridge=self.switch.bridge,
            ports=[
                switch_pb2.SwitchPort(link=link, interface=name, ifindex=index)
                for index, (link, name) in sorted(ports.items(), key=lambda item: item[1])
            ],
        )

    def fault_host(self) -> Switch:
        return self.switch

    async def collect_counters(self) -> Counters:
        return await self.switch.fault_counters()


def in_lab_namespace() -> bool:
    """Whether this process runs in a network namespace the lab made (named ph-*, netns/lab.py)."""
    here = os.stat("/proc/self/ns/net").st_ino
    return any(os.stat(path).st_ino == here for path in Path("/run/netns").glob("ph-*"))


async def main() -> None:
    args = cli.parser().parse_args()
    setup_observability(args.log_level, args.name)
    if not in_lab_namespace():  # it rewrites bridge netfilter settings and FORWARD rules: only in a lab's own
        raise SystemExit("switch: refusing to run outside a lab's network namespace (/run/netns/ph-*)")
    events, counters = EventLog(args.name), Counters()
    switch = Switch(bridge=args.bridge, events=events, counters=counters, fault_queue=args.fault_queue)
    try:
        ports = await asyncio.to_thread(bridge_ports, args.bridge)
    except SwitchError as error:
        raise SystemExit(f"switch: {error}") from None
    try:  # a switch that died with faults set left its queue rule behind (it lets packets pass: bypass)
        nfqueue.remove_queue_rules()
    except Exception as error:
        log.warning("removing a stale fault queue rule failed: %s", error)
    events.emit("service.started", bridge=args.bridge, links=",".join(sorted(link for link, _ in ports.values())))
    name = switch_pb2.DESCRIPTOR.services_by_name["Switch"].full_name

    async def stop() -> None:
        switch.close_faults()

    await serve(args.grpc, [(switch_pb2_grpc.add_SwitchServicer_to_server, SwitchServicer(switch), name)], on_stop=stop)


if __name__ == "__main__":
    asyncio.run(main())
