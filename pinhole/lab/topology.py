"""The lab's topology: nodes, their interfaces, addresses, routes and links, as data.

Backend-neutral: the namespace backend renders it as namespaces and veth pairs, the container
backend as engine networks, Kubernetes as pods; the controller reads addresses and roles from it.
The default topology (topology.toml beside this module) is RFC 5763 §7.3's.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TOPOLOGY = Path(__file__).with_name("topology.toml")
RUN_BASE = Path("/run/pinhole")  # where every backend keeps a lab's sockets, logs and state

LAB_NAME_RE = re.compile(r"^ph-[a-z0-9-]{1,20}$")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ = 16 with the NUL
SYSCTL_RE = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")
NODE_KINDS = ("host", "router", "switch")
NODE_KEYS = ("kind", "service", "interfaces", "routes", "sysctls", "bridge")


class TopologyError(ValueError):
    """The topology file is malformed; the message names the file, the key and the problem."""


# --------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Route:
    """A static route: `to` is "default" or an IPv4 network, `via` the gateway address."""

    to: str
    via: str


@dataclass
class Node:
    """One namespace. `interfaces` maps interface name to its IPv4 addresses ("A.B.C.D/LEN"),
    `addresses` lists them all in declaration order; `extra` holds service configuration."""

    name: str
    kind: str
    service: str
    interfaces: dict[str, list[str]]
    addresses: list[str]
    routes: list[Route]
    extra: dict[str, Any]
    sysctls: dict[str, str] = field(default_factory=dict)
    bridge: str | None = None


@dataclass(frozen=True)
class Link:
    """A veth pair between two (node, interface) ends."""

    a: tuple[str, str]
    b: tuple[str, str]


@dataclass
class Topology:
    nodes: dict[str, Node]
    links: list[Link]
    raw: dict[str, Any]
    ipv6: bool = False

    def capture_ends(self) -> list[tuple[str, str, str]]:
        """Where each link is captured, once per link: (node, ifname, the link as "end <-> end").

        Not on a switch's port (the host's end sees the same frames, as the host sends and gets
        them), and on a router's end when there is one: the NAT's interfaces show both sides of
        its translation, its inside link with Alice included.
        """
        out = []
        for link in self.links:
            ends = [link.a, link.b]
            kinds = [self.nodes[node].kind for node, _ in ends]
            pick = 1 if kinds[0] == "switch" or (kinds[1] == "router" and kinds[0] != "router") else 0
            (node, ifname), (peer, peer_if) = ends[pick], ends[1 - pick]
            out.append((node, ifname, f"{node}:{ifname} <-> {peer}:{peer_if}"))
        return out

    def ports(self, switch: str) -> list[str]:
        """The link ends on a switch node, in link order: they join its bridge."""
        out = []
        for link in self.links:
            for node, ifname in (link.a, link.b):
                if node == switch:
                    out.append(ifname)
        return out


def load_topology(path: Path | None = None) -> Topology:
    """Read and check a topology file (default: the §7.3 topology beside this module)."""
    path = DEFAULT_TOPOLOGY if path is None else Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise TopologyError(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise TopologyError(f"{path}: not UTF-8 at byte {e.start}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{path}: invalid TOML: {e}") from e
    return parse_topology(data, source=str(path))


def parse_topology(data: dict[str, Any], *, source: str = "topology") -> Topology:
    """Check a decoded topology document and build a `Topology` (pure)."""

    def fail(where: str, reason: str) -> TopologyError:
        return TopologyError(f"{source}: {where}: {reason}")

    unknown = sorted(set(data) - {"lab", "nodes", "links"})
    if unknown:
        raise fail(unknown[0], "unknown top-level key (expected lab, nodes, links)")
    lab = data.get("lab", {})
    if not isinstance(lab, dict):
        raise fail("lab", "must be a table")
    ipv6 = lab.get("ipv6", False)
    if not isinstance(ipv6, bool):
        raise fail("lab.ipv6", f"{ipv6!r} is not a boolean")
    nodes_raw = data.get("nodes")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        raise fail("nodes", "missing or empty: declare at least one [nodes.NAME] table")

    nodes: dict[str, Node] = {}
    owner: dict[str, str] = {}  # address -> "node:ifname"
    for name, spec in nodes_raw.items():
        where = f"nodes.{name}"
        if not NODE_NAME_RE.match(name):
            raise fail(where, "node name must match ^[a-z][a-z0-9-]{0,31}$")
        if not isinstance(spec, dict):
            raise fail(where, "must be a table")
        node = _parse_node(name, spec, fail)
        for ifname, addrs in node.interfaces.items():
            for addr in addrs:
                ip = addr.split("/")[0]
                if ip in owner:
                    raise fail(
                        f"{where}.interfaces.{ifname}",
                        f"address {ip} is already used by {owner[ip]}",
                    )
                owner[ip] = f"{name}:{ifname}"
        nodes[name] = node

    links_raw = data.get("links", [])
    if not isinstance(links_raw, list):
        raise fail("links", "must be an array of tables ([[links]])")
    links: list[Link] = []
    used: dict[tuple[str, str], int] = {}
    for index, spec in enumerate(links_raw):
        where = f"links[{index}]"
        if not isinstance(spec, dict):
            raise fail(where, "must be a table")
        extra_keys = sorted(set(spec) - {"endpoints"})
        if extra_keys:
            raise fail(f"{where}.{extra_keys[0]}", "unknown key (expected endpoints)")
        ends = spec.get("endpoints")
        if not isinstance(ends, list) or len(ends) != 2:
            raise fail(f"{where}.endpoints", 'must be two strings "NODE:IFNAME"')
        parsed: list[tuple[str, str]] = []
        for end in ends:
            if not isinstance(end, str) or end.count(":") != 1:
                raise fail(f"{where}.endpoints", f'{end!r} is not "NODE:IFNAME"')
            node_name, ifname = end.split(":")
            if node_name not in nodes:
                raise fail(f"{where}.endpoints", f"{end!r} names unknown node {node_name!r}")
            if not IFNAME_RE.match(ifname):
                raise fail(
                    f"{where}.endpoints",
                    f"{end!r}: interface name must be 1-15 characters [A-Za-z0-9_.-]",
                )
            node = nodes[node_name]
            if node.kind == "switch":
                if ifname == node.bridge:
                    raise fail(f"{where}.endpoints", f"{end!r} reuses the bridge name {ifname!r}")
            elif ifname not in node.interfaces:
                raise fail(
                    f"{where}.endpoints",
                    f"{end!r}: interface {ifname!r} is not declared in nodes.{node_name}.interfaces",
                )
            if (node_name, ifname) in used:
                previous = used[(node_name, ifname)]
                raise fail(f"{where}.endpoints", f"{end!r} is already an end of links[{previous}]")
            used[(node_name, ifname)] = index
            parsed.append((node_name, ifname))
        links.append(Link(a=parsed[0], b=parsed[1]))

    for node in nodes.values():
        for ifname in node.interfaces:
            if (node.name, ifname) not in used:
                raise fail(f"nodes.{node.name}.interfaces.{ifname}", "declared but no link uses it")
    return Topology(nodes=nodes, links=links, raw=data, ipv6=ipv6)


def _parse_node(name: str, spec: dict[str, Any], fail: Any) -> Node:
    where = f"nodes.{name}"
    kind = spec.get("kind")
    if kind not in NODE_KINDS:
        raise fail(f"{where}.kind", f"{kind!r} is not one of {', '.join(NODE_KINDS)}")
    service = spec.get("service", "")
    if not isinstance(service, str):
        raise fail(f"{where}.service", f"{service!r} is not a string")

    interfaces: dict[str, list[str]] = {}
    networks: list[ipaddress.IPv4Interface] = []
    raw_ifs = spec.get("interfaces", {})
    if kind == "switch" and raw_ifs:
        raise fail(
            f"{where}.interfaces",
            "a switch has no addressed interfaces (its ports come from links)",
        )
    if not isinstance(raw_ifs, dict):
        raise fail(f"{where}.interfaces", "must be a table IFNAME = [ADDRESSES]")
    for ifname, addrs in raw_ifs.items():
        iwhere = f"{where}.interfaces.{ifname}"
        if not IFNAME_RE.match(ifname):
            raise fail(iwhere, "interface name must be 1-15 characters [A-Za-z0-9_.-]")
        if not isinstance(addrs, list):
            raise fail(iwhere, 'must be an array of "A.B.C.D/LEN" strings')
        out = []
        for addr in addrs:
            if not isinstance(addr, str) or "/" not in addr:
                raise fail(iwhere, f"{addr!r} is not an IPv4 address with a prefix length")
            try:
                iface = ipaddress.IPv4Interface(addr)
            except ValueError:
                reason = f"{addr!r} is not an IPv4 address with a prefix length"
                raise fail(iwhere, reason) from None
            networks.append(iface)
            out.append(str(iface))
        interfaces[ifname] = out

    routes: list[Route] = []
    raw_routes = spec.get("routes", [])
    if not isinstance(raw_routes, list):
        raise fail(f"{where}.routes", "must be an array of { to, via } tables")
    for index, route in enumerate(raw_routes):
        rwhere = f"{where}.routes[{index}]"
        if not isinstance(route, dict) or set(route) != {"to", "via"}:
            raise fail(rwhere, "must be a table with exactly the keys to and via")
        to, via = route["to"], route["via"]
        if to != "default":
            try:
                to = str(ipaddress.IPv4Network(to, strict=True))
            except (ValueError, TypeError):
                raise fail(f"{rwhere}.to", f'{to!r} is not "default" or an IPv4 network') from None
        try:
            gateway = ipaddress.IPv4Address(via)
        except (ValueError, TypeError):
            raise fail(f"{rwhere}.via", f"{via!r} is not an IPv4 address") from None
        if not any(gateway in net.network for net in networks):
            raise fail(f"{rwhere}.via", f"gateway {via} is not on a connected subnet of {name}")
        routes.append(Route(to=to, via=str(gateway)))

    sysctls: dict[str, str] = {}
    raw_sysctls = spec.get("sysctls", {})
    if not isinstance(raw_sysctls, dict):
        raise fail(f"{where}.sysctls", 'must be a table "NAME" = VALUE')
    for key, value in raw_sysctls.items():
        if not SYSCTL_RE.match(key):
            raise fail(f"{where}.sysctls", f"{key!r} is not a dotted sysctl name")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (str, int)):
            raise fail(f"{where}.sysctls.{key}", f"{value!r} is not a string or an integer")
        sysctls[key] = str(value)

    bridge = None
    if kind == "switch":
        bridge = spec.get("bridge", "br0")
        if not isinstance(bridge, str) or not IFNAME_RE.match(bridge):
            raise fail(f"{where}.bridge", f"{bridge!r} is not a valid interface name")
    elif "bridge" in spec:
        raise fail(f"{where}.bridge", "only a switch has a bridge")
    if kind != "switch" and routes and not interfaces:
        raise fail(f"{where}.routes", "a node without interfaces cannot have routes")

    extra = {k: v for k, v in spec.items() if k not in NODE_KEYS}
    addresses = [a for addrs in interfaces.values() for a in addrs]
    return Node(
        name=name,
        kind=kind,
        service=service,
        interfaces=interfaces,
        addresses=addresses,
        routes=routes,
        extra=extra,
        sysctls=sysctls,
        bridge=bridge,
    )
