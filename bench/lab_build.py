"""Benchmark: building and tearing down the §7.3 lab, pinhole's netlink builder vs the iproute2 CLI.

The issue's target is "well under a second". The named peer is the same topology built the way a
shell script would, one `ip` command per step (iproute2, measured in the same run). NetnsLab also
waits until every bridge port forwards, which the CLI script does not, so the ratio is
conservative. Run with `make bench` (root).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from netns.lab import NetnsLab
from pinhole.lab import Topology, load_topology

ROUNDS = 10


def cli_commands(topology: Topology, prefix: str) -> list[list[str]]:
    """The iproute2 commands that build `topology` with namespaces named prefix-NODE."""
    ns = lambda node: f"{prefix}-{node}"  # noqa: E731
    commands: list[list[str]] = []
    for node in topology.nodes:
        commands.append(["ip", "netns", "add", ns(node)])
        commands.append(["ip", "-n", ns(node), "link", "set", "lo", "up"])
    for node, spec in topology.nodes.items():
        if spec.kind == "switch":
            commands.append(["ip", "-n", ns(node), "link", "add", spec.bridge, "type", "bridge"])
            commands.append(["ip", "-n", ns(node), "link", "set", spec.bridge, "up"])
    for link in topology.links:
        (node_a, if_a), (node_b, if_b) = link.a, link.b
        commands.append(
            ["ip", "-n", ns(node_a), "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns(node_b)]
        )
        for node, ifname in link.a, link.b:
            spec = topology.nodes[node]
            if spec.kind == "switch":
                commands.append(["ip", "-n", ns(node), "link", "set", ifname, "master", spec.bridge])
            for address in spec.interfaces.get(ifname, []):
                commands.append(["ip", "-n", ns(node), "addr", "add", address, "dev", ifname])
            commands.append(["ip", "-n", ns(node), "link", "set", ifname, "up"])
    for node, spec in topology.nodes.items():
        for route in spec.routes:
            commands.append(["ip", "-n", ns(node), "route", "add", route.to, "via", route.via])
        for key, value in spec.sysctls.items():
            commands.append(["ip", "netns", "exec", ns(node), "sysctl", "-qw", f"{key}={value}"])
    return commands


def cli_build(topology: Topology, prefix: str) -> tuple[float, float]:
    made = []  # the namespaces this build added: deleted here, whatever fails (a lab deletes only its own)
    started = time.perf_counter()
    try:
        for command in cli_commands(topology, prefix):
            subprocess.run(command, check=True, capture_output=True)
            if command[:3] == ["ip", "netns", "add"]:
                made.append(command[3])
        built = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], check=True, capture_output=True)
    return built, time.perf_counter() - started


def netlink_build(topology: Topology, name: str) -> tuple[float, float]:
    lab = NetnsLab(topology, name=name)
    try:
        return lab.up(), lab.down()
    finally:
        if lab.exists():
            lab.down()


def main() -> int:
    topology = load_topology()
    ours, peer = [], []
    for _ in range(ROUNDS):
        ours.append(netlink_build(topology, "ph-bench"))
        peer.append(cli_build(topology, "ph-bcli"))
    for label, index in (("up", 0), ("down", 1)):
        a = statistics.median(r[index] for r in ours)
        b = statistics.median(r[index] for r in peer)
        print(
            f"lab {label:4}: pinhole netlink {a * 1000:7.1f} ms   iproute2 CLI {b * 1000:7.1f} ms   "
            f"ratio pinhole/iproute2 {a / b:5.2f}   (median of {ROUNDS}, {len(topology.nodes)} namespaces)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
