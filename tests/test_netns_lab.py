"""netns/lab.py and pinhole.lab: the topology file, and real labs built from it (root, namespaces "ph-t*")."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns import lab as lab_mod
from netns.lab import NetnsLab, pids_in_netns
from pinhole.capture import CaptureError, CapturePoint, LinkCapture
from pinhole.lab import DEFAULT_TOPOLOGY, LabError, Link, Route, Topology, TopologyError, load_topology, parse_topology
from pinhole.nat import NatBehaviour
from pinhole.nsenter import in_netns
from pinhole.pcap import decode_udp
from pinhole.pcapng import DIRECTION_INBOUND, DIRECTION_OUTBOUND, read_pcapng, write_pcapng

# Labs of this test process: "ph-t" + 5 digits of the PID + a letter, so a prefix never
# matches another test process's labs.
PREFIX = f"ph-tl{os.getpid() % 100000:05d}"  # "l" is not a hex digit: no clash with uuid-named labs
LAB_NETWORKS = ("10.10.1.0/24", "203.0.113.0/24")

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")

# --------------------------------------------------------------------------- topology (pure)


def test_default_topology() -> None:
    topo = load_topology()
    assert list(topo.nodes) == ["alice", "natgw", "public", "proxy-a", "proxy-b", "stun", "bob", "bob2"]
    alice, natgw, public = topo.nodes["alice"], topo.nodes["natgw"], topo.nodes["public"]
    assert (alice.kind, alice.service) == ("host", "useragent")
    assert alice.interfaces == {"eth0": ["10.10.1.10/24"]}
    assert alice.routes == [Route(to="default", via="10.10.1.1")]
    assert alice.extra == {
        "sip_port": 5060,
        "proxy": "proxy-a",
        "stun_server": "stun",
    }
    assert natgw.addresses == ["10.10.1.1/24", "203.0.113.1/24"]
    assert natgw.sysctls == {"net.ipv4.ip_forward": "1"}
    assert natgw.extra == {"lan_if": "lan0", "wan_if": "wan0"}
    assert (public.kind, public.bridge, public.interfaces) == ("switch", "br0", {})
    assert topo.ports("public") == ["p-natgw", "p-proxy-a", "p-proxy-b", "p-stun", "p-bob", "p-bob2"]
    assert topo.links[0] == Link(a=("alice", "eth0"), b=("natgw", "lan0"))
    for name in ("proxy-a", "proxy-b", "stun", "bob", "bob2"):
        # Alice's LAN through the gateway: used only when it routes without translating (RFC 5763 §7.1)
        assert topo.nodes[name].routes == [Route(to="10.10.1.0/24", via="203.0.113.1")]
        assert topo.nodes[name].addresses[0].startswith("203.0.113.")
    assert topo.nodes["stun"].extra == {"stun_port": 3478, "stun_alternate_port": 3479}
    assert topo.nodes["stun"].addresses == ["203.0.113.30/24", "203.0.113.31/24"]
    assert topo.ipv6 is False


def _doc(**changes: Any) -> dict[str, Any]:
    data = tomllib.loads(DEFAULT_TOPOLOGY.read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = data
        for key in path:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"extra": 1}, "extra: unknown top-level key (expected lab, nodes, links)"),
        ({"nodes__alice__kind": "vm"}, "nodes.alice.kind: 'vm' is not one of host, router, switch"),
        (
            {"nodes__alice__interfaces": {"eth0": ["10.10.1.300/24"]}},
            "nodes.alice.interfaces.eth0: '10.10.1.300/24' is not an IPv4 address with a prefix length",
        ),
        (
            {"nodes__alice__interfaces": {"eth0": ["10.10.1.10"]}},
            "nodes.alice.interfaces.eth0: '10.10.1.10' is not an IPv4 address with a prefix length",
        ),
        (
            {"nodes__alice__routes": [{"to": "default", "via": "10.10.2.1"}]},
            "nodes.alice.routes[0].via: gateway 10.10.2.1 is not on a connected subnet of alice",
        ),
        (
            {"nodes__alice__routes": [{"to": "10.0.0.1/8", "via": "10.10.1.1"}]},
            "nodes.alice.routes[0].to: '10.0.0.1/8' is not \"default\" or an IPv4 network",
        ),
        (
            {"nodes__bob__interfaces": {"eth0": ["203.0.113.30/24"]}},
            "nodes.bob.interfaces.eth0: address 203.0.113.30 is already used by stun:eth0",
        ),
        (
            {"nodes__natgw__sysctls": {"ip_forward": "1"}},
            "nodes.natgw.sysctls: 'ip_forward' is not a dotted sysctl name",
        ),
        (
            {"nodes__public__bridge": "a-very-long-bridge-name"},
            "nodes.public.bridge: 'a-very-long-bridge-name' is not a valid interface name",
        ),
        ({"nodes__alice__bridge": "br0"}, "nodes.alice.bridge: only a switch has a bridge"),
        (
            {"links__0__endpoints": ["alice:eth0", "carol:eth0"]},
            "links[0].endpoints: 'carol:eth0' names unknown node 'carol'",
        ),
        (
            {"links__0__endpoints": ["alice:eth1", "natgw:lan0"]},
            "links[0].endpoints: 'alice:eth1': interface 'eth1' is not declared in nodes.alice.interfaces",
        ),
        (
            {"links__1__endpoints": ["natgw:lan0", "public:p-natgw"]},
            "links[1].endpoints: 'natgw:lan0' is already an end of links[0]",
        ),
        (
            {"links__1__endpoints": ["natgw:wan0", "public:p-interface-name"]},
            "links[1].endpoints: 'public:p-interface-name': interface name must be 1-15 characters [A-Za-z0-9_.-]",
        ),
        (
            {"links__0__endpoints": "alice:eth0"},
            'links[0].endpoints: must be two strings "NODE:IFNAME"',
        ),
        (
            {"links__1__endpoints": ["proxy-a:eth0", "public:p-proxy-a"]},
            "links[2].endpoints: 'proxy-a:eth0' is already an end of links[1]",
        ),
    ],
)
def test_topology_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(_doc(**changes), source="t.toml")
    assert str(info.value) == f"t.toml: {message}"


def test_topology_interface_without_link() -> None:
    data = _doc()
    data["links"] = [link for link in data["links"] if link["endpoints"][0] != "bob:eth0"]
    with pytest.raises(TopologyError) as info:
        parse_topology(data, source="t.toml")
    assert str(info.value) == "t.toml: nodes.bob.interfaces.eth0: declared but no link uses it"


def test_load_topology_reports_toml_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[nodes.alice\n")
    with pytest.raises(TopologyError, match=rf"^{path}: invalid TOML: "):
        load_topology(path)
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "missing.toml")
    assert str(info.value) == f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"


def test_lab_names() -> None:
    topo = load_topology()
    with pytest.raises(LabError) as info:
        NetnsLab(topo, name="lab")
    assert str(info.value) == "lab name 'lab' does not match ^ph-[a-z0-9-]{1,20}$"
    lab = NetnsLab(topo, name="ph-x")
    assert lab.ns("proxy-a") == "ph-x-proxy-a"
    assert lab.run_dir == Path("/run/pinhole/ph-x")
    assert lab.address("natgw") == "10.10.1.1"
    assert lab.address("natgw", "wan0") == "203.0.113.1"
    with pytest.raises(LabError) as info:
        lab.ns("carol")
    assert str(info.value) == "lab ph-x has no node 'carol'"
    with pytest.raises(LabError) as info:
        lab.address("public")
    assert str(info.value) == "public of lab ph-x has no address"


# --------------------------------------------------------------------------- real labs


def _alive(pid: int) -> bool:
    stat = lab_mod._proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _assert_nothing_left(lab: NetnsLab, pids: list[int]) -> None:
    leftover = [ns for ns in lab_mod._netns_names() if ns.startswith(lab.name + "-")]
    assert leftover == [], f"namespaces left behind: {leftover}"
    assert not lab.run_dir.exists(), f"{lab.run_dir} left behind"
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], f"processes left behind: {alive}"


@pytest.fixture
def make_lab() -> Iterator[Callable[..., NetnsLab]]:
    """Labs named PREFIX + letter; torn down afterwards, checking nothing leaked."""
    labs: list[NetnsLab] = []

    def make(suffix: str, topology: Topology | None = None) -> NetnsLab:
        lab = NetnsLab(topology or load_topology(), name=f"{PREFIX}{suffix}")
        labs.append(lab)
        return lab

    yield make
    errors = []
    for lab in labs:
        pids = [pid for ns in lab.namespaces() for pid in pids_in_netns(ns)]
        pids += [int(p["pid"]) for p in lab.processes()]
        try:
            lab.down()
            _assert_nothing_left(lab, pids)
        except Exception as e:  # keep tearing down the others
            errors.append(e)
    if errors:
        raise errors[0]


def _udp(lab: NetnsLab, node: str, port: int) -> socket.socket:
    with in_netns(lab.ns(node)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((lab.address(node), port))
    sock.settimeout(2.0)
    return sock


def _ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def _sysctl(lab: NetnsLab, node: str, name: str) -> str:
    with in_netns(lab.ns(node)):
        return (Path("/proc/sys") / name.replace(".", "/")).read_text().strip()


def _masquerade(lab: NetnsLab) -> None:
    from services.natgw import ruleset

    script = ruleset.render(NatBehaviour(), wan_address="203.0.113.1", lan_prefix="10.10.1.0/24")
    ruleset.apply(script, netns=lab.ns("natgw"))


@needs_root
def test_up_builds_the_declared_topology(
    make_lab: Callable[..., NetnsLab], record_property: Callable[[str, object], None]
) -> None:
    lab = make_lab("a")
    assert not lab.exists()
    seconds = lab.up()
    record_property("up_seconds", round(seconds, 4))
    assert seconds < 10.0  # built; speed is for the benchmarks
    assert lab.exists()
    assert all((Path("/run/netns") / ns).exists() for ns in lab.namespaces())
    state = json.loads((lab.run_dir / "state.json").read_text())
    assert state["lab"] == lab.name and state["namespaces"] == lab.namespaces()

    for name, node in lab.topology.nodes.items():
        ns = lab.ns(name)
        links = {link["ifname"]: link for link in _ip_json(ns, "link")}
        expected = {"lo"} | set(node.interfaces) | set(lab.topology.ports(name))
        if node.bridge:
            expected.add(node.bridge)
        assert set(links) == expected, name
        assert all("UP" in link["flags"] for link in links.values()), name
        addrs = {
            a["ifname"]: sorted(f"{i['local']}/{i['prefixlen']}" for i in a["addr_info"])
            for a in _ip_json(ns, "addr")
            if a["ifname"] != "lo"
        }
        for ifname, declared in node.interfaces.items():
            assert addrs[ifname] == sorted(declared), (name, ifname)
            assert not any(":" in a for a in addrs[ifname]), "IPv6 must be off"
        routes = [r for r in _ip_json(ns, "route") if r.get("gateway")]
        assert [(r["dst"], r["gateway"]) for r in routes] == [(r.to, r.via) for r in node.routes], name
        forward = "1" if name == "natgw" else "0"
        assert _sysctl(lab, name, "net.ipv4.ip_forward") == forward, name
    ports = _ip_json(lab.ns("public"), "link", "show", "master", "br0")
    assert sorted(p["ifname"] for p in ports) == sorted(lab.topology.ports("public"))


@needs_root
def test_every_link_stays_inside_the_lab(make_lab: Callable[..., NetnsLab]) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    lab = make_lab("b")
    lab.up()
    # Both ends of every veth are in lab namespaces (a veth has exactly two ends, so none can
    # lead to the host), and they are each other's peers.
    for link in lab.topology.links:
        (node_a, if_a), (node_b, if_b) = link.a, link.b
        end_a = {x["ifname"]: x for x in _ip_json(lab.ns(node_a), "link")}[if_a]
        end_b = {x["ifname"]: x for x in _ip_json(lab.ns(node_b), "link")}[if_b]
        assert end_a["link_index"] == end_b["ifindex"] and end_b["link_index"] == end_a["ifindex"]
    # No namespace can route to anything outside the lab's two networks (a lookup, no packet).
    for name in lab.topology.nodes:
        with IPRoute(netns=lab.ns(name)) as ipr:
            for route in ipr.get_routes(family=socket.AF_INET, table=254):
                dst = route.get_attr("RTA_DST") or "0.0.0.0"
                gateway = route.get_attr("RTA_GATEWAY")
                if gateway:
                    assert any(_in(gateway, net) for net in LAB_NETWORKS)
                if dst != "0.0.0.0":
                    assert any(_in(dst, net) for net in LAB_NETWORKS)
            if name != "alice":  # the only node with a default route (to the NAT)
                with pytest.raises(NetlinkError) as info:
                    ipr.route("get", dst="192.0.2.1")
                assert info.value.code == errno.ENETUNREACH
    # Bob routes to Alice's private network only through the gateway (which, translating, drops what
    # comes unsolicited; without translation it forwards it: RFC 5763 §7.1).
    with IPRoute(netns=lab.ns("bob")) as ipr:
        (route,) = ipr.route("get", dst="10.10.1.10")
        assert route.get_attr("RTA_GATEWAY") == "203.0.113.1"


def _in(address: str, network: str) -> bool:
    import ipaddress

    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(network)


@needs_root
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_alice_reaches_bob_through_the_nat(make_lab: Callable[..., NetnsLab]) -> None:
    lab = make_lab("c")
    lab.up()
    _masquerade(lab)
    alice, bob = _udp(lab, "alice", 41000), _udp(lab, "bob", 5000)
    with alice, bob:
        alice.sendto(b"hello", ("203.0.113.40", 5000))
        data, source = bob.recvfrom(2048)
        assert (data, source) == (b"hello", ("203.0.113.1", 41000))
        bob.sendto(b"back", source)
        assert alice.recvfrom(2048) == (b"back", ("203.0.113.40", 5000))


@needs_root
def test_two_labs_coexist(make_lab: Callable[..., NetnsLab]) -> None:
    first, second = make_lab("d"), make_lab("e")
    first.up()
    second.up()
    socks = [(_udp(lab, "proxy-a", 5060), _udp(lab, "bob", 5060)) for lab in (first, second)]
    for index, (proxy, _bob) in enumerate(socks):
        proxy.sendto(f"lab {index}".encode(), ("203.0.113.40", 5060))
    for index, (_proxy, bob) in enumerate(socks):
        assert bob.recvfrom(2048) == (f"lab {index}".encode(), ("203.0.113.10", 5060))
        bob.setblocking(False)
        with pytest.raises(BlockingIOError):  # the other lab's datagram did not cross over
            bob.recvfrom(2048)
    first.down()
    assert not first.exists() and second.exists()
    proxy, bob = socks[1]
    proxy.sendto(b"still here", ("203.0.113.40", 5060))
    bob.settimeout(2.0)
    assert bob.recvfrom(2048)[0] == b"still here"
    for pair in socks:
        for sock in pair:
            sock.close()


@needs_root
def test_down_is_idempotent(make_lab: Callable[..., NetnsLab]) -> None:
    lab = make_lab("f")
    assert lab.down() >= 0.0  # never up
    lab.up()
    with pytest.raises(LabError) as info:
        lab.up()
    assert str(info.value) == f"lab {lab.name} is already up; call down() first"
    lab.down()
    _assert_nothing_left(lab, [])
    lab.down()
    _assert_nothing_left(lab, [])


READY_CHILD = """
import os, signal, socket, sys
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("203.0.113.40", int(sys.argv[3])))
print("bound", udp.getsockname(), flush=True)
ready = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ready.connect(sys.argv[1])
ready.sendall(b"ready %d" % os.getpid())
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(data.upper(), peer)
"""


def _spawn_ready(lab: NetnsLab, tmp_path: Path, mode: str, port: int = 6000) -> Any:
    """Spawn the child in bob and wait (on a socket read) until it is bound."""
    path = lab.run_dir / f"ready-{mode}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(10.0)
    proc = lab.spawn(
        "bob",
        [sys.executable, "-c", READY_CHILD, str(path), mode, str(port)],
        log_path=tmp_path / f"bob-{mode}.log",
    )
    with listener:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10.0)
            assert conn.recv(64) == b"ready %d" % proc.pid
    return proc


@needs_root
def test_spawn_and_stop_by_pid(make_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = make_lab("g")
    lab.up()
    proc = _spawn_ready(lab, tmp_path, "normal")
    # The PID is the program itself (ip netns exec execs), running in bob's namespace.
    assert proc.pid in pids_in_netns(lab.ns("bob"))
    assert [p["pid"] for p in lab.processes()] == [proc.pid]
    status = lab.status()
    assert status["up"] and all(status["namespaces"].values())
    assert [(p["pid"], p["node"], p["running"]) for p in status["processes"]] == [(proc.pid, "bob", True)]
    proxy = _udp(lab, "proxy-b", 6001)
    with proxy:
        proxy.sendto(b"echo", ("203.0.113.40", 6000))
        assert proxy.recvfrom(2048) == (b"ECHO", ("203.0.113.40", 6000))
    assert lab.stop(proc.pid) == -15
    assert lab.processes() == []
    assert "bound ('203.0.113.40', 6000)" in (tmp_path / "bob-normal.log").read_text()

    stubborn = _spawn_ready(lab, tmp_path, "ignore-term", 6002)
    assert lab.stop(stubborn.pid, timeout=0.2) == -9
    with pytest.raises(LabError) as info:
        lab.stop(stubborn.pid)
    assert str(info.value) == f"pid {stubborn.pid} was not spawned by lab {lab.name}"


@needs_root
def test_down_stops_spawned_processes(make_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = make_lab("h")
    lab.up()
    procs = [_spawn_ready(lab, tmp_path, mode, port) for mode, port in (("normal", 6000), ("ignore-term", 6002))]
    lab.down(timeout=0.2)
    assert [proc.wait(timeout=5) for proc in procs] == [-15, -9]
    _assert_nothing_left(lab, [proc.pid for proc in procs])


@needs_root
def test_down_leaves_a_process_that_is_no_longer_ours(make_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = make_lab("i")
    lab.up()
    proc = _spawn_ready(lab, tmp_path, "normal")
    # Pretend the PID was reused by another program: the recorded command line no longer matches.
    with lab._state() as state:
        state["processes"][0]["argv"] = ["/usr/bin/something-else"]
    lab.down()
    try:
        assert proc.poll() is None  # not ours any more, so not signalled
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@needs_root
def test_failure_in_the_middle_of_up_leaves_nothing(
    make_lab: Callable[..., NetnsLab], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _doc(nodes__natgw__sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.no_such_knob": "1"})
    lab = make_lab("j", parse_topology(data))
    with pytest.raises(LabError) as info:
        lab.up()
    assert str(info.value) == "sysctl net.ipv4.no_such_knob does not exist in this kernel"
    _assert_nothing_left(lab, [])

    calls = []
    real = lab_mod._add_veth

    def flaky(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise OSError(errno.EEXIST, "injected")
        real(*args)

    monkeypatch.setattr(lab_mod, "_add_veth", flaky)
    second = make_lab("k")
    with pytest.raises(OSError, match="injected"):
        second.up()
    _assert_nothing_left(second, [])


@needs_root
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_capture_takes_every_link_once_into_a_pcapng_that_tshark_reads(
    make_lab: Callable[..., NetnsLab], tmp_path: Path
) -> None:
    lab = make_lab("l")
    lab.up()
    _masquerade(lab)
    points = lab.capture_points()
    # one point per link, at the router's end where there is one, never on a switch port
    assert [p.name for p in points] == [
        "natgw:lan0", "natgw:wan0", "proxy-a:eth0", "proxy-b:eth0", "stun:eth0", "bob:eth0", "bob2:eth0",
    ]  # fmt: skip
    assert points[0].description == "natgw:lan0 <-> alice:eth0"
    alice, bob = _udp(lab, "alice", 42000), _udp(lab, "bob", 5000)
    with alice, bob, LinkCapture(points) as cap:
        alice.sendto(b"first", ("203.0.113.40", 5000))  # right after start(): must be captured
        assert bob.recvfrom(2048)[0] == b"first"
    assert cap.stop_reason == "stopped" and not cap.running and cap.problems() == []
    write_pcapng(tmp_path / "capture.pcapng", cap.result())
    capture = read_pcapng(tmp_path / "capture.pcapng")
    seen = [
        (capture.interfaces[p.interface].name, p.direction, d.src, d.dst)
        for p in capture.packets
        if (d := decode_udp(p.data)) and d.payload == b"first"
    ]
    # the datagram on each link it crossed, in time order, each with the direction its capturing end saw
    assert seen == [
        ("natgw:lan0", DIRECTION_INBOUND, ("10.10.1.10", 42000), ("203.0.113.40", 5000)),
        ("natgw:wan0", DIRECTION_OUTBOUND, ("203.0.113.1", 42000), ("203.0.113.40", 5000)),
        ("bob:eth0", DIRECTION_INBOUND, ("203.0.113.1", 42000), ("203.0.113.40", 5000)),
    ]
    assert [(s.received, s.dropped) for s in capture.statistics][:2] == [(cap.counts[0], 0), (cap.counts[1], 0)]
    if shutil.which("tshark"):
        out = subprocess.run(
            ["tshark", "-r", str(tmp_path / "capture.pcapng"), "-Y", "udp", "-T", "fields",
             "-e", "frame.interface_name", "-e", "ip.src", "-e", "udp.srcport"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        assert out.splitlines() == ["natgw:lan0\t10.10.1.10\t42000", "natgw:wan0\t203.0.113.1\t42000",
                                    "bob:eth0\t203.0.113.1\t42000"]  # fmt: skip


@needs_root
def test_capture_is_bounded_and_says_so(make_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = make_lab("m")
    lab.up()
    proxy, bob = _udp(lab, "proxy-a", 5000), _udp(lab, "bob", 5000)
    bob_link = [p for p in lab.capture_points() if p.name == "bob:eth0"]
    with proxy, bob:
        cap = LinkCapture(bob_link, max_packets=3).start()
        for n in range(6):
            proxy.sendto(b"%d" % n, ("203.0.113.40", 5000))
            bob.recvfrom(2048)
        cap._thread.join(timeout=5)  # type: ignore[union-attr]
        assert cap.stop_reason == "max_packets"
        assert len(cap.stop().packets) == 3
    assert cap.problems() == ["the capture stopped early (max_packets) with 3 frames"]
    with pytest.raises(CaptureError) as info:
        LinkCapture([CapturePoint("bob:eth9", "eth9", lab.ns("bob"))]).start()
    assert str(info.value) == "capture on bob:eth9: No such device"


@needs_root
def test_a_link_that_vanishes_stops_its_capture_alone_and_says_so(make_lab: Callable[..., NetnsLab]) -> None:
    """A container replaced takes its interface with it: that link's capture ends (a problem of the run, named),
    the other links go on capturing."""
    from pyroute2 import IPRoute

    lab = make_lab("v")
    lab.up()
    points = [p for p in lab.capture_points() if p.name in ("bob:eth0", "proxy-b:eth0")]
    proxy_a, proxy_b = _udp(lab, "proxy-a", 5000), _udp(lab, "proxy-b", 5000)
    with proxy_a, proxy_b, LinkCapture(points) as cap:
        with IPRoute(netns=lab.ns("bob")) as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname="eth0")[0])
        proxy_a.sendto(b"after", ("203.0.113.20", 5000))
        assert proxy_b.recvfrom(2048)[0] == b"after"
        assert cap.wait_for(lambda p: (d := decode_udp(p.data)) is not None and d.payload == b"after", timeout=5)
    assert cap.stop_reason == "stopped"
    assert [problem.split(":")[0] for problem in cap.problems()] == ["the capture on bob"]
    assert "stopped" in cap.problems()[0]


@needs_root
def test_list_labs_and_cleanup_stragglers(make_lab: Callable[..., NetnsLab]) -> None:
    from pyroute2 import netns

    lab = make_lab("n")
    lab.up()
    orphan = f"{PREFIX}o-alice"  # a namespace without state: pinhole did not record making it
    netns.create(orphan)
    try:
        labs = NetnsLab.list_labs()
        assert lab.name in labs and f"{PREFIX}o" in labs
        removed = NetnsLab.cleanup_stragglers(prefix=PREFIX)
        assert removed == sorted(lab.namespaces())
        assert not lab.exists() and not lab.run_dir.exists()
        assert orphan in lab_mod._netns_names()  # listed, never deleted
        assert [name for name in NetnsLab.list_labs() if name.startswith(PREFIX)] == [f"{PREFIX}o"]
    finally:
        if orphan in lab_mod._netns_names():
            netns.remove(orphan)
    with pytest.raises(LabError) as info:
        NetnsLab.cleanup_stragglers(prefix="x-")
    assert str(info.value) == "prefix 'x-' must start with 'ph-' (only pinhole labs are cleaned)"


@needs_root
def test_a_lab_deletes_only_the_namespaces_it_recorded_creating(
    make_lab: Callable[..., NetnsLab], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another tool's namespace that only shares the lab's prefix survives down() and make clean's sweep."""
    lab = make_lab("w")
    foreign = f"{lab.name}-foreign"
    subprocess.run(["ip", "netns", "add", foreign], check=True, capture_output=True)
    real_create = lab_mod._netns_create

    def recorded_first(ns: str) -> None:  # a crash mid-up must still leave the record
        assert ns in json.loads(lab.state_path.read_text())["namespaces"]
        real_create(ns)

    monkeypatch.setattr(lab_mod, "_netns_create", recorded_first)
    try:
        lab.up()
        lab.down()
        assert foreign in lab_mod._netns_names()
        assert not lab.exists()
        lab.up()
        assert NetnsLab.cleanup_stragglers(prefix=lab.name) == sorted(lab.namespaces())
        assert foreign in lab_mod._netns_names()
        lab.down()  # no state left: deletes nothing
        assert foreign in lab_mod._netns_names()
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=False, capture_output=True)
