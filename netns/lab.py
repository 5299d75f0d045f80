"""The netns lab backend: the RFC 5763 §7.3 topology as Linux network namespaces.

A topology (netns/topology.toml) is data; `NetnsLab` renders it with pyroute2: one namespace per
node, named "<lab>-<node>", veth pairs created straight into their namespaces, a bridge inside
its own namespace for the public segment, addresses, routes and sysctls. Nothing touches the
host's namespace, so several labs with different names coexist.

The lab also runs processes in nodes (`spawn`, `ip netns exec` underneath, PIDs recorded in
<run_dir>/state.json so another process can clean up) and says where each link is captured
(`capture_points`, for pinhole.capture).

Entering a namespace is per thread (pinhole.nsenter.in_netns), so a single process can open
sockets in several namespaces; a socket stays in the namespace where it was created.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinhole.capture import CapturePoint
from pinhole.nsenter import CLONE_NEWNET, NETNS_DIR, in_netns
from pinhole.nsenter import setns as _setns

__all__ = [
    "DEFAULT_TOPOLOGY",
    "LabError",
    "Link",
    "NetnsLab",
    "Node",
    "Route",
    "Topology",
    "TopologyError",
    "in_netns",
    "load_topology",
    "parse_topology",
    "pids_in_netns",
]

DEFAULT_TOPOLOGY = Path(__file__).with_name("topology.toml")
RUN_BASE = Path("/run/pinhole")
STATE_FILE = "state.json"

LAB_NAME_RE = re.compile(r"^ph-[a-z0-9-]{1,20}$")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ = 16 with the NUL
SYSCTL_RE = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")
NODE_KINDS = ("host", "router", "switch")
NODE_KEYS = ("kind", "service", "interfaces", "routes", "sysctls", "bridge")

FIRST_IFINDEX = 100  # link N gets ifindex 100+2N and 101+2N
CARRIER_TIMEOUT = 3.0
BR_STATE_FORWARDING = 3


class TopologyError(ValueError):
    """The topology file is malformed; the message names the file, the key and the problem."""


class LabError(RuntimeError):
    """A lab operation failed (the lab is not up, a node is unknown, a process is not ours)."""


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
    """Read and check a topology file (default: netns/topology.toml)."""
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
                    f"{end!r}: interface {ifname!r} is not declared in "
                    f"nodes.{node_name}.interfaces",
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


# --------------------------------------------------------------------------- namespaces

_libc = ctypes.CDLL(None, use_errno=True)


MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2


def _ensure_shared_rundir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so namespace mounts made
    later propagate into mount namespaces created earlier (e.g. by `ip netns exec`)."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    rundir = bytes(NETNS_DIR)
    if _libc.mount(b"none", rundir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(rundir, rundir, b"none", MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind-mounting {NETNS_DIR} onto itself: {os.strerror(err)}")
    if _libc.mount(b"none", rundir, b"none", MS_SHARED | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"making {NETNS_DIR} a shared mount: {os.strerror(err)}")


def _netns_create(ns: str) -> None:
    """Create a named network namespace without forking: unshare(2) the calling thread into a
    new namespace, bind-mount it at /run/netns/NAME, and setns(2) back. (pyroute2's create()
    forks a Python child, which is unsafe in a process with gRPC or other threads running.)"""
    _ensure_shared_rundir()
    path = NETNS_DIR / ns
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET) for {ns}: {os.strerror(err)}")
        try:
            source = b"/proc/thread-self/ns/net"
            if _libc.mount(source, bytes(path), b"none", MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bind-mounting namespace {ns}: {os.strerror(err)}")
        finally:
            _setns(saved)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(saved)


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        path.write_text(value + "\n")
    except FileNotFoundError:
        raise LabError(f"sysctl {name} does not exist in this kernel") from None
    except OSError as e:
        raise LabError(f"sysctl {name}={value}: {e.strerror}") from e


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _netns_remove(ns: str) -> bool:
    """Unmount and unlink /run/netns/NAME; the kernel frees the namespace once nothing uses it."""
    path = NETNS_DIR / ns
    _libc.umount2(bytes(path), MNT_DETACH)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _add_veth(
    ipr: Any, end_a: tuple[str, int], end_b: tuple[str, int], peer_ns: str | None
) -> None:
    """Create a veth pair with both ifindexes chosen: pyroute2's `peer=` cannot set the peer's
    ifindex (it lives in the peer's ifinfomsg header, VETH_INFO_PEER), so build the request."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    fd = None if peer_ns is None else os.open(NETNS_DIR / peer_ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer_attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", end_b[0])]
        if fd is not None:
            peer_attrs.append(("IFLA_NET_NS_FD", fd))
        peer = {"index": end_b[1], "attrs": peer_attrs}
        msg = ifinfmsg()
        msg["index"] = end_a[1]
        msg["attrs"] = [
            ("IFLA_IFNAME", end_a[0]),
            (
                "IFLA_LINKINFO",
                {
                    "attrs": [
                        ("IFLA_INFO_KIND", "veth"),
                        (
                            "IFLA_INFO_DATA",
                            {"attrs": [("VETH_INFO_PEER", peer)]},
                        ),
                    ]
                },
            ),
        ]
        msg["header"]["type"] = RTM_NEWLINK
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        tuple(ipr.nlm_request_batch([msg]))
    finally:
        if fd is not None:
            os.close(fd)


def _wait_carrier(iprs: dict[str, Any], topology: Topology, deadline: float) -> None:
    """Wait until every veth end is operationally up and every bridge port forwards, so the
    lab carries packets when up() returns (the kernel applies carrier changes asynchronously)."""
    pending = {(n, ifname) for link in topology.links for n, ifname in (link.a, link.b)}
    while True:
        for node in sorted({n for n, _ in pending}):
            for msg in iprs[node].get_links():
                key = (node, msg.get_attr("IFLA_IFNAME"))
                if key not in pending or msg.get_attr("IFLA_OPERSTATE") != "UP":
                    continue
                if topology.nodes[node].kind == "switch":
                    info = msg.get_attr("IFLA_LINKINFO")
                    slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info else None
                    if slave is None or slave.get_attr("IFLA_BRPORT_STATE") != BR_STATE_FORWARDING:
                        continue
                pending.discard(key)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{n}:{i}" for n, i in sorted(pending))
            raise LabError(f"interfaces not up after {CARRIER_TIMEOUT} s: {names}")
        time.sleep(0.001)


def pids_in_netns(ns: str) -> list[int]:
    """PIDs of every process whose network namespace is `ns` (for leak checks)."""
    try:
        st = os.stat(NETNS_DIR / ns)
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino):
            out.append(int(entry))
    return sorted(out)


# --------------------------------------------------------------------------- processes

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[19])


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _open_if_ours(entry: dict[str, Any]) -> int | None:
    """A pidfd on the recorded process if it is still the one we started: same start time
    (PIDs are reused, start times are not) and the command line we ran, either still
    `ip netns exec NS ARGV...` or ARGV after the exec. None if it is gone or not ours."""
    pid = int(entry["pid"])
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    stat = _proc_stat(pid)
    cmdline = _proc_cmdline(pid)
    argv = list(entry["argv"])
    forms = [argv] + [[ip, "netns", "exec", entry["netns"], *argv] for ip in ("ip", entry["ip"])]
    ours = stat is not None and stat[1] == entry["starttime"] and stat[0] not in ("Z", "X")
    if not ours or cmdline not in forms:
        os.close(fd)
        return None
    return fd


def _wait_pidfds(fds: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait until the processes behind `fds` (pid -> pidfd) exit; returns those still alive."""
    alive = dict(fds)
    poller = select.poll()
    by_fd = {fd: pid for pid, fd in alive.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ev in poller.poll(remaining * 1000):
            poller.unregister(fd)
            alive.pop(by_fd[fd], None)
    return alive


def _terminate(
    entries: list[dict[str, Any]], timeout: float, first: signal.Signals = signal.SIGTERM
) -> dict[int, int | None]:
    """Send `first` (SIGTERM) to the recorded processes that are still ours, wait, SIGKILL the rest.
    Returns pid -> exit status for the ones that were our children (None otherwise)."""
    fds: dict[int, int] = {}
    for entry in entries:
        fd = _open_if_ours(entry)
        if fd is not None:
            fds[int(entry["pid"])] = fd
    try:
        for fd in fds.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, first)
        alive = _wait_pidfds(fds, timeout)
        for fd in alive.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        _wait_pidfds(alive, 5.0)
    finally:
        for fd in fds.values():
            os.close(fd)
    result: dict[int, int | None] = {}
    for entry in entries:
        pid = int(entry["pid"])
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(pid)
            # Reap our own children once they are gone (signalled by us or exited before).
            if child is not None and (pid in fds or child.poll() is not None):
                del _CHILDREN[pid]
            else:
                child = None
        status = None
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = child.wait(timeout=5.0)
        result[pid] = status
    return result


# --------------------------------------------------------------------------- the lab


class NetnsLab:
    """A topology rendered as network namespaces named "<name>-<node>"."""

    def __init__(
        self, topology: Topology, name: str = "ph-lab", run_dir: Path | None = None
    ) -> None:
        if not LAB_NAME_RE.match(name):
            raise LabError(f"lab name {name!r} does not match ^ph-[a-z0-9-]{{1,20}}$")
        self.topology = topology
        self.name = name
        self.run_dir = RUN_BASE / name if run_dir is None else Path(run_dir)
        self._lock = threading.Lock()

    @property
    def service_run_dir(self) -> Path:
        """The run directory as the services see it (the same: they share the host's filesystem)."""
        return self.run_dir

    def logs_hint(self) -> Path:
        """Where a service's log is when it fails: <run_dir>/<node>.log."""
        return self.run_dir

    # ---- names

    def ns(self, node: str) -> str:
        if node not in self.topology.nodes:
            raise LabError(f"lab {self.name} has no node {node!r}")
        return f"{self.name}-{node}"

    def address(self, node: str, ifname: str | None = None) -> str:
        """The node's first IPv4 address (of `ifname` if given), without the prefix length."""
        self.ns(node)
        spec = self.topology.nodes[node]
        if ifname is None:
            addresses = spec.addresses
        elif ifname in spec.interfaces:
            addresses = spec.interfaces[ifname]
        else:
            raise LabError(f"node {node!r} of lab {self.name} has no interface {ifname!r}")
        if not addresses:
            where = node if ifname is None else f"{node}:{ifname}"
            raise LabError(f"{where} of lab {self.name} has no address")
        return addresses[0].split("/")[0]

    def namespaces(self) -> list[str]:
        return [self.ns(node) for node in self.topology.nodes]

    def exists(self) -> bool:
        present = set(_netns_names())
        return any(ns in present for ns in self.namespaces())

    # ---- state

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write state.json under a lock (threads and other processes)."""
        with self._lock:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / ".lock", "a+") as lockf:
                fcntl.flock(lockf, fcntl.LOCK_EX)
                state = _read_state(self.state_path) or {
                    "lab": self.name,
                    "namespaces": [],
                    "processes": [],
                }
                yield state
                tmp = self.state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=2) + "\n")
                os.replace(tmp, self.state_path)

    def processes(self) -> list[dict[str, Any]]:
        """The processes recorded in state.json (pid, node, argv, log, ...)."""
        state = _read_state(self.state_path)
        return list(state["processes"]) if state else []

    def status(self) -> dict[str, Any]:
        """What exists now: namespaces present, recorded processes and whether each is still
        running (and still ours)."""
        present = set(_netns_names())
        processes = []
        for entry in self.processes():
            fd = _open_if_ours(entry)
            if fd is not None:
                os.close(fd)
            processes.append({**entry, "running": fd is not None})
        return {
            "lab": self.name,
            "up": self.exists(),
            "run_dir": str(self.run_dir),
            "namespaces": {ns: ns in present for ns in self.namespaces()},
            "processes": processes,
        }

    # ---- up / down

    def up(self) -> float:
        """Build every namespace, link, address, route and sysctl; returns seconds taken.

        On any failure everything made so far is torn down and the error re-raised.
        """
        from pyroute2 import IPRoute

        started = time.perf_counter()
        if self.exists():
            raise LabError(f"lab {self.name} is already up; call down() first")
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            state = _read_state(self.state_path)
            if state is None or state.get("lab") != self.name:
                raise LabError(
                    f"run_dir {self.run_dir} is not empty and holds no state of lab {self.name}"
                )
        created: list[str] = []
        iprs: dict[str, Any] = {}
        try:
            with self._state() as state:
                state.update(
                    lab=self.name, namespaces=self.namespaces(), processes=[], created=time.time()
                )
            for node in self.topology.nodes:
                _netns_create(self.ns(node))
                created.append(self.ns(node))
            for node in self.topology.nodes:
                with in_netns(self.ns(node)):
                    if not self.topology.ipv6 and Path("/proc/sys/net/ipv6").exists():
                        # Before any interface exists, so none ever gets an IPv6 address.
                        _write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                        _write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
                    # Opened in the namespace by this thread: IPRoute(netns=...) would fork
                    # a child per namespace just to open the socket.
                    iprs[node] = IPRoute()
            for node, spec in self.topology.nodes.items():
                ipr = iprs[node]
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                if spec.kind == "switch":
                    ipr.link("add", ifname=spec.bridge, kind="bridge")
            for number, link in enumerate(self.topology.links):
                (node_a, if_a), (node_b, if_b) = link.a, link.b
                # Distinct ifindexes for the two ends: the kernel treats a carrier change as
                # urgent only when a device's ifindex differs from its peer's (iflink), and
                # otherwise delays it by up to a second, which a bridge port waits for.
                _add_veth(
                    iprs[node_a],
                    (if_a, FIRST_IFINDEX + 2 * number),
                    (if_b, FIRST_IFINDEX + 2 * number + 1),
                    None if node_b == node_a else self.ns(node_b),
                )
            for node, spec in self.topology.nodes.items():
                ipr = iprs[node]
                if spec.kind == "switch":
                    bridge_index = ipr.link_lookup(ifname=spec.bridge)[0]
                    for port in self.topology.ports(node):
                        index = ipr.link_lookup(ifname=port)[0]
                        ipr.link("set", index=index, master=bridge_index)
                        ipr.link("set", index=index, state="up")
                    ipr.link("set", index=bridge_index, state="up")
                    continue
                for ifname, addrs in spec.interfaces.items():
                    index = ipr.link_lookup(ifname=ifname)[0]
                    for addr in addrs:
                        iface = ipaddress.IPv4Interface(addr)
                        ipr.addr(
                            "add",
                            index=index,
                            address=str(iface.ip),
                            prefixlen=iface.network.prefixlen,
                            broadcast=str(iface.network.broadcast_address),
                        )
                    ipr.link("set", index=index, state="up")
                for route in spec.routes:
                    dst = "0.0.0.0/0" if route.to == "default" else route.to
                    ipr.route("add", dst=dst, gateway=route.via)
            _wait_carrier(iprs, self.topology, deadline=time.monotonic() + CARRIER_TIMEOUT)
            for node, spec in self.topology.nodes.items():
                # a node forwards only if it says so: a new namespace may inherit the host's
                # ip_forward (container runtimes turn it on), and a host must not route
                sysctls = {"net.ipv4.ip_forward": "0", **spec.sysctls}
                with in_netns(self.ns(node)):
                    for key, value in sysctls.items():
                        _write_sysctl(key, value)
        except BaseException:
            for ipr in iprs.values():
                with contextlib.suppress(Exception):
                    ipr.close()
            iprs.clear()
            for ns in created:
                with contextlib.suppress(OSError):
                    _netns_remove(ns)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:
            for ipr in iprs.values():
                with contextlib.suppress(Exception):
                    ipr.close()
        return time.perf_counter() - started

    def down(self, timeout: float = 5.0, *, keep_logs: Path | None = None) -> float:
        """Stop recorded processes (those still ours), delete the lab's namespaces, remove
        run_dir. Idempotent; returns seconds taken. `keep_logs`: a directory that gets each
        process's whole log (<node>.log) once it has ended."""
        started = time.perf_counter()
        state = _read_state(self.state_path)
        if state is not None:
            _terminate(list(state.get("processes", [])), timeout)
            if keep_logs is not None:
                for entry in state.get("processes", []):
                    with contextlib.suppress(OSError, KeyError):
                        shutil.copy(entry["log"], Path(keep_logs) / f"{entry['node']}.log")
        targets = set(self.namespaces())
        if state is not None:
            targets.update(state.get("namespaces", []))
        claimed = _claimed_by_other_labs(self.name)
        targets.update(
            ns for ns in _netns_names() if ns.startswith(self.name + "-") and ns not in claimed
        )
        for ns in sorted(targets):
            _netns_remove(ns)
        if state is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        elif self.run_dir.is_dir():
            (self.run_dir / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only if empty: run_dir may be a directory we do not own
        return time.perf_counter() - started

    # ---- processes

    def spawn(
        self,
        node: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Run `argv` inside the node's namespace (`ip netns exec`, which execs, so the PID is
        the program's); stdout and stderr go to `log_path`. The PID is recorded in state.json."""
        ns = self.ns(node)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise LabError(f"spawn on {node}: argv must be a non-empty list of strings")
        if not (NETNS_DIR / ns).exists():
            raise LabError(f"spawn on {node}: lab {self.name} is not up")
        ip = shutil.which("ip")
        if ip is None:
            raise LabError("spawn: the ip command (iproute2) is not installed")
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [ip, "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                close_fds=True,
            )
        stat = _proc_stat(proc.pid)
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = proc
        with self._state() as state:
            state["processes"].append(
                {
                    "pid": proc.pid,
                    "starttime": stat[1] if stat else -1,
                    "node": node,
                    "netns": ns,
                    "ip": ip,
                    "argv": list(argv),
                    "log": str(log_path),
                }
            )
        return proc

    def stop(self, pid: int, timeout: float = 5.0) -> int | None:
        """SIGTERM a process this lab spawned, SIGKILL after `timeout`; returns its exit
        status when it was a child of this Python process (None otherwise)."""
        state = _read_state(self.state_path)
        entries = [p for p in (state or {}).get("processes", []) if int(p["pid"]) == pid]
        if not entries:
            raise LabError(f"pid {pid} was not spawned by lab {self.name}")
        status = _terminate(entries, timeout)[pid]
        with self._state() as st:
            st["processes"] = [p for p in st["processes"] if int(p["pid"]) != pid]
        return status

    def kill(self, node: str, *, crash: bool = True, timeout: float = 5.0) -> list[int]:
        """End the node's service as a fault: SIGKILL (a crash: nothing flushed) or, with crash=False,
        SIGTERM (a graceful restart). The namespace stays; spawn() starts the service again."""
        entries = [p for p in self.processes() if p.get("node") == node]
        if not entries:
            raise LabError(f"kill {node}: lab {self.name} runs no process there")
        _terminate(entries, timeout, signal.SIGKILL if crash else signal.SIGTERM)
        ended = {int(p["pid"]) for p in entries}
        with self._state() as st:
            st["processes"] = [p for p in st["processes"] if int(p["pid"]) not in ended]
        return sorted(ended)

    # ---- capture

    def capture_points(self) -> list[CapturePoint]:
        """Every link of the lab, once, at the end `Topology.capture_ends` picks (pinhole.capture)."""
        return [
            CapturePoint(f"{node}:{ifname}", ifname, self.ns(node), description)
            for node, ifname, description in self.topology.capture_ends()
        ]

    # ---- every lab on the machine

    @staticmethod
    def list_labs() -> list[str]:
        """Names of the labs that have namespaces ("ph-*") or live state under /run/pinhole.

        A namespace without state is attributed to a lab by stripping a node name of the
        default topology (else its last "-" part) from its name.
        """
        present = [ns for ns in _netns_names() if ns.startswith("ph-")]
        labs: set[str] = set()
        claimed: set[str] = set()
        for name, state in _all_states().items():
            own = set(state.get("namespaces", []))
            claimed |= own
            if own & set(present):
                labs.add(name)
        for ns in present:
            if ns not in claimed:
                labs.add(_guess_lab(ns))
        return sorted(labs)

    @staticmethod
    def cleanup_stragglers(prefix: str = "ph-") -> list[str]:
        """Bring down every lab whose name starts with `prefix`, including namespaces that
        have no state (for `make clean`). Returns the namespaces removed."""
        if not prefix.startswith("ph-"):
            raise LabError(
                f"prefix {prefix!r} must start with 'ph-' (only pinhole labs are cleaned)"
            )
        before = set(_netns_names())
        states = _all_states()
        for name, state in states.items():
            if name.startswith(prefix):
                _terminate(list(state.get("processes", [])), 5.0)
                for ns in state.get("namespaces", []):
                    _netns_remove(ns)
                shutil.rmtree(RUN_BASE / name, ignore_errors=True)
        for ns in _netns_names():
            if ns.startswith(prefix):
                _netns_remove(ns)
        return sorted(before - set(_netns_names()))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _all_states() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not RUN_BASE.is_dir():
        return out
    for path in sorted(RUN_BASE.glob(f"*/{STATE_FILE}")):
        state = _read_state(path)
        if state is not None:
            out[path.parent.name] = state
    return out


def _claimed_by_other_labs(name: str) -> set[str]:
    claimed: set[str] = set()
    for other, state in _all_states().items():
        if other != name:
            claimed.update(state.get("namespaces", []))
    return claimed


def _guess_lab(ns: str) -> str:
    try:
        nodes = sorted(load_topology().nodes, key=len, reverse=True)
    except TopologyError:
        nodes = []
    for node in nodes:
        if ns.endswith("-" + node) and LAB_NAME_RE.match(ns[: -len(node) - 1]):
            return ns[: -len(node) - 1]
    return ns.rsplit("-", 1)[0]
