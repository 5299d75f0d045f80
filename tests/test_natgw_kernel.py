# ruff: noqa: E501  (golden nft script and conntrack lines are kept verbatim)
"""The NAT gateway's kernel side: ruleset rendering, NFLOG and conntrack codecs (pure), and the
RFC 4787 behaviour of the rendered ruleset measured in a real lab (root, namespaces "ph-t*")."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import lab as lab_mod
from netns.lab import NetnsLab, in_netns, load_topology, pids_in_netns
from pinhole.pcap import UdpDatagram, decode_ipv4_udp
from services.natgw import conntrack, ruleset
from services.natgw.conntrack import ConntrackError, NatMapping, parse_udp_mappings
from services.natgw.nflog import (
    LoggedPacket,
    NflogError,
    NflogReader,
    config_bind,
    config_mode,
    parse_messages,
    parse_packet,
)
from services.natgw.ruleset import (
    DROP_PREFIX_FORWARD,
    DROP_PREFIX_INPUT,
    Filtering,
    Mapping,
    NatBehaviour,
    NftError,
    RulesetError,
    drop_hook,
    parse_counters,
    render,
)

WAN = "203.0.113.1"
LAN = "10.10.1.0/24"

# --------------------------------------------------------------------------- ruleset (pure)

DEFAULT_SCRIPT = """\
# pinhole NAT gateway: RFC 4787 endpoint-independent mapping, address-and-port-dependent filtering
table inet pinhole_nat
delete table inet pinhole_nat
table inet pinhole_nat {
\tcounter mappings_created {
\t}
\tcounter outbound_translated {
\t}
\tcounter inbound_translated {
\t}
\tcounter inbound_dropped_input {
\t}
\tcounter inbound_dropped_forward {
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "wan0" ip saddr 10.10.1.0/24 counter name "mappings_created" masquerade
\t}

\t# RFC 4787 REQ-5: the mapping timer of this table's flows, set while a flow is new (before
\t# conntrack confirms it), so no namespace-wide sysctl is needed (a container's /proc/sys is read-only)
\tct timeout mapping {
\t\tprotocol udp;
\t\tl3proto ip;
\t\tpolicy = { unreplied : 300, replied : 300 }
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tiifname "lan0" oifname "wan0" ip saddr 10.10.1.0/24 meta l4proto udp ct state new ct timeout set "mapping"
\t\tiifname "lan0" oifname "wan0" ip saddr 10.10.1.0/24 counter name "outbound_translated" accept
\t\tiifname "wan0" oifname "lan0" ct state established,related counter name "inbound_translated" accept
\t\tiifname "wan0" counter name "inbound_dropped_forward" log prefix "pinhole-nat drop forward" group 1 queue-threshold 1 drop
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "wan0" ct state established,related accept
\t\tiifname "wan0" ip daddr 203.0.113.1 counter name "inbound_dropped_input" log prefix "pinhole-nat drop input" group 1 queue-threshold 1 drop
\t}
}
"""


def test_render_default_behaviour_golden() -> None:
    assert render(NatBehaviour(), wan_address=WAN, lan_prefix=LAN) == DEFAULT_SCRIPT


def test_render_address_and_port_dependent_mapping() -> None:
    script = render(
        NatBehaviour(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT),
        lan_if="inside",
        wan_if="outside",
        wan_address="198.51.100.7",
        lan_prefix="192.168.0.1/16",
        log_group=7,
    )
    assert script.splitlines()[0] == (
        "# pinhole NAT gateway: RFC 4787 address-and-port-dependent mapping, address-and-port-dependent filtering"
    )
    assert (
        '\t\toifname "outside" ip saddr 192.168.0.0/16 counter name "mappings_created" '
        "masquerade fully-random" in script.splitlines()
    )
    assert 'log prefix "pinhole-nat drop input" group 7 queue-threshold 1 drop' in script
    assert "ip daddr 198.51.100.7" in script


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            NatBehaviour(mapping=Mapping.ADDRESS_DEPENDENT),
            "address-dependent mapping (RFC 4787 §4.1) is not implemented: Linux masquerade maps "
            "either per endpoint (masquerade) or per flow (masquerade fully-random)",
        ),
        (
            NatBehaviour(filtering=Filtering.ENDPOINT_INDEPENDENT),
            "endpoint-independent filtering (RFC 4787 §5) is not implemented: conntrack only "
            "admits replies from the exact remote address and port; it needs an nft set filled "
            "by outbound packets and a prerouting DNAT for inbound packets matching it",
        ),
        (
            NatBehaviour(filtering="address-dependent"),  # type: ignore[arg-type]
            "address-dependent filtering (RFC 4787 §5) is not implemented: conntrack only "
            "admits replies from the exact remote address and port; it needs an nft set filled "
            "by outbound packets and a prerouting DNAT for inbound packets matching it",
        ),
    ],
    ids=["ADM", "EIF", "ADF"],
)
def test_render_refuses_what_it_cannot_do(behaviour: NatBehaviour, message: str) -> None:
    with pytest.raises(NotImplementedError) as info:
        render(behaviour, wan_address=WAN, lan_prefix=LAN)
    assert str(info.value) == message


def test_behaviour_takes_rfc_names() -> None:
    behaviour = NatBehaviour(mapping="address-and-port-dependent", mapping_timeout=120)  # type: ignore[arg-type]
    assert behaviour.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT
    assert behaviour.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT
    assert NatBehaviour().mapping_timeout == 300


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mapping": "full-cone"},
            "mapping 'full-cone' is not one of endpoint-independent, address-dependent, address-and-port-dependent",
        ),
        (
            {"filtering": "symmetric"},
            "filtering 'symmetric' is not one of endpoint-independent, address-dependent, address-and-port-dependent",
        ),
        ({"mapping_timeout": 0}, "mapping_timeout 0 is not a positive integer"),
        ({"mapping_timeout": True}, "mapping_timeout True is not a positive integer"),
    ],
)
def test_behaviour_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RulesetError) as info:
        NatBehaviour(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wan_address": "203.0.113"}, "wan_address '203.0.113' is not an IPv4 address"),
        ({"lan_prefix": "10.10.1.0/33"}, "lan_prefix '10.10.1.0/33' is not an IPv4 network"),
        ({"lan_if": 'lan0" accept'}, "lan_if 'lan0\" accept' is not an interface name (1-15 of [A-Za-z0-9_.-])"),
        ({"wan_if": "lan0"}, "lan_if and wan_if are both 'lan0'"),
        ({"wan_address": "10.10.1.1"}, "wan_address 10.10.1.1 lies inside lan_prefix 10.10.1.0/24"),
        ({"log_group": 70000}, "log_group 70000 is not an integer in 0..65535"),
    ],
)
def test_render_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"wan_address": WAN, "lan_prefix": LAN, **kwargs}
    with pytest.raises(RulesetError) as info:
        render(NatBehaviour(), **args)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_drop_hook() -> None:
    assert drop_hook(DROP_PREFIX_INPUT) == "input"
    assert drop_hook(DROP_PREFIX_FORWARD) == "forward"
    assert drop_hook("something else") is None


NFT_COUNTERS_JSON = (
    '{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", '
    '"json_schema_version": 1}}, {"counter": {"family": "inet", "name": "mappings_created", '
    '"table": "pinhole_nat", "handle": 1, "packets": 2, "bytes": 62}}, {"counter": {"family": '
    '"inet", "name": "other", "table": "someone_else", "handle": 2, "packets": 9, "bytes": 9}}]}'
)


def test_parse_counters_golden() -> None:
    assert parse_counters(NFT_COUNTERS_JSON) == {"mappings_created": {"packets": 2, "bytes": 62}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{",
            "nft JSON output is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("{}", 'nft JSON output has no "nftables" array'),
        (
            '{"nftables": [{"counter": {"table": "pinhole_nat", "name": "x"}}]}',
            "nft counter entry is malformed: {'table': 'pinhole_nat', 'name': 'x'}",
        ),
    ],
)
def test_parse_counters_errors(text: str, message: str) -> None:
    with pytest.raises(RulesetError) as info:
        parse_counters(text)
    assert str(info.value) == message


# --------------------------------------------------------------------------- conntrack (pure)

CONNTRACK_OUTPUT = """\
udp      17 299 src=10.10.1.10 dst=203.0.113.40 sport=40000 dport=5000 src=203.0.113.40 dst=203.0.113.1 sport=5000 dport=40000 mark=0 use=1
udp      17 28 src=10.10.1.10 dst=203.0.113.30 sport=40000 dport=3478 [UNREPLIED] src=203.0.113.30 dst=203.0.113.1 sport=3478 dport=40000 mark=0 use=1
udp      17 115 src=10.10.1.10 dst=203.0.113.40 sport=40002 dport=5000 src=203.0.113.40 dst=203.0.113.1 sport=5000 dport=28411 [ASSURED] mark=0 use=1
udp      17 20 src=203.0.113.10 dst=203.0.113.1 sport=5060 dport=5060 [UNREPLIED] src=203.0.113.1 dst=203.0.113.10 sport=5060 dport=5060 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.10.1.10 dst=203.0.113.40 sport=33000 dport=80 src=203.0.113.40 dst=203.0.113.1 sport=80 dport=33000 [ASSURED] mark=0 use=1
"""


def test_parse_udp_mappings_golden() -> None:
    assert parse_udp_mappings(CONNTRACK_OUTPUT, WAN) == [
        NatMapping(("10.10.1.10", 40000), (WAN, 40000), ("203.0.113.40", 5000), 299, False),
        NatMapping(("10.10.1.10", 40000), (WAN, 40000), ("203.0.113.30", 3478), 28, False),
        NatMapping(("10.10.1.10", 40002), (WAN, 28411), ("203.0.113.40", 5000), 115, True),
    ]
    assert parse_udp_mappings(CONNTRACK_OUTPUT, "198.51.100.1") == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("udp 17 src=1.2.3.4", "line 1: no timeout after 'udp 17': 'udp 17 src=1.2.3.4'"),
        (
            "udp 17 30 src=10.10.1.10 dst=203.0.113.40 sport=1 dport=2 src=203.0.113.40 dst=203.0.113.1 sport=2",
            "line 1: incomplete reply tuple: 'udp 17 30 src=10.10.1.10 dst=203.0.113.40 sport=1 "
            "dport=2 src=203.0.113.40 dst=203.0.113.1 sport=2'",
        ),
        (
            "udp 17 30 src=a dst=b sport=1 dport=2 src=c dst=203.0.113.1 sport=2 dport=x",
            "line 1: a port is not a number: 'udp 17 30 src=a dst=b sport=1 dport=2 src=c "
            "dst=203.0.113.1 sport=2 dport=x'",
        ),
    ],
)
def test_parse_udp_mappings_errors(line: str, message: str) -> None:
    with pytest.raises(ConntrackError) as info:
        parse_udp_mappings(line, WAN)
    assert str(info.value) == message


# --------------------------------------------------------------------------- NFLOG (pure)

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="golden netlink headers are in little-endian host order"
)
IP_PACKET = bytes.fromhex("450000200001400040114e7ac000020ac6336414") + bytes.fromhex("13c40d96000c0000") + b"ping"


@little_endian_only
def test_config_messages_golden() -> None:
    assert config_bind(1, seq=1) == bytes.fromhex(
        "1c000000"
        "0104"
        "0500"
        "01000000"
        "00000000"  # nlmsghdr: NFULNL_MSG_CONFIG, REQUEST|ACK
        "00"
        "00"
        "0001"  # nfgenmsg: AF_UNSPEC, v0, group 1
        "0500"
        "0100"
        "01"
        "000000"  # NFULA_CFG_CMD = BIND
    )
    assert config_mode(1, seq=2) == bytes.fromhex(
        "28000000"
        "0104"
        "0500"
        "02000000"
        "00000000"
        "00"
        "00"
        "0001"
        "0a00"
        "0200"
        "0000ffff"
        "02"
        "00"
        "0000"  # NFULA_CFG_MODE: range 0xffff, COPY_PACKET
        "0800"
        "0500"
        "00000001"  # NFULA_CFG_QTHRESH = 1
    )


PACKET_BODY = (
    bytes.fromhex("02000001")  # nfgenmsg: AF_INET, v0, group 1
    + bytes.fromhex("0800010008000100")  # PACKET_HDR: IPv4, hook 1 (input)
    + bytes.fromhex("14000300000000006553f100000000000003d090")  # TIMESTAMP
    + bytes.fromhex("0800040000000066")  # IFINDEX_INDEV 102
    + bytes.fromhex("1b000a00")
    + b"pinhole-nat drop input\0"
    + b"\0"  # PREFIX
    + bytes.fromhex("24000900")
    + IP_PACKET  # PAYLOAD
)
LOGGED = LoggedPacket(
    prefix="pinhole-nat drop input",
    indev=102,
    payload=IP_PACKET,
    timestamp=1700000000.25,
    hook=1,
)


def test_parse_packet_golden() -> None:
    assert parse_packet(PACKET_BODY) == LOGGED
    assert decode_ipv4_udp(LOGGED.payload) == UdpDatagram(("192.0.2.10", 5060), ("198.51.100.20", 3478), b"ping")


@little_endian_only
def test_parse_messages_counts_acks_and_odd_messages() -> None:
    packet = struct.pack("=IHHII", 16 + len(PACKET_BODY), 0x0400, 0, 0, 0) + PACKET_BODY
    ack = struct.pack("=IHHII", 36, 2, 0x100, 5, 0) + struct.pack("=i", 0) + bytes(16)
    busy = struct.pack("=IHHII", 36, 2, 0, 6, 0) + struct.pack("=i", -16) + bytes(16)
    unknown = struct.pack("=IHHII", 16, 0x0999, 0, 0, 0)
    broken = struct.pack("=IHHII", 24, 0x0400, 0, 0, 0) + bytes.fromhex("020000010900ffff")
    batch = parse_messages(packet + ack + busy + unknown + broken + b"\x01\x02")
    assert batch.packets == [LOGGED]
    assert batch.acks == {5: 0, 6: 16}
    assert batch.odd == 3  # the unknown type, the bad attribute, the trailing bytes


def test_parse_packet_rejects_bad_attribute() -> None:
    with pytest.raises(NflogError) as info:
        parse_packet(bytes.fromhex("020000010900ffff"))
    assert str(info.value) == "packet message: attribute at offset 0 has bad length 9"


# --------------------------------------------------------------------------- kernel (root)

needs_kernel_nat = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "nft", "conntrack")),
    reason="needs root, iproute2, nft and conntrack",
)
LAB_NAME = f"ph-tn{os.getpid() % 100000:05d}"


@pytest.fixture(scope="module")
def kernel_lab() -> Iterator[NetnsLab]:
    lab = NetnsLab(load_topology(), name=LAB_NAME)
    try:
        lab.up()
        yield lab
    finally:
        pids = [pid for ns in lab.namespaces() for pid in pids_in_netns(ns)]
        lab.down()
        assert [ns for ns in lab_mod._netns_names() if ns.startswith(LAB_NAME + "-")] == []
        assert not lab.run_dir.exists()
        assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []


@dataclass
class Natgw:
    lab: NetnsLab
    ns: str
    nflog: NflogReader

    def udp(self, node: str, port: int) -> socket.socket:
        with in_netns(self.lab.ns(node)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.lab.address(node), port))
        sock.settimeout(2.0)
        return sock

    def counters(self) -> dict[str, int]:
        return {k: v["packets"] for k, v in ruleset.read_counters(netns=self.ns).items()}

    def ifindex(self, ifname: str) -> int:
        out = subprocess.run(
            ["ip", "-n", self.ns, "-j", "link", "show", ifname],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(json.loads(out)[0]["ifindex"])


@pytest.fixture
def natgw(kernel_lab: NetnsLab) -> Iterator[Natgw]:
    """The default ruleset in the lab's natgw, conntrack empty, an NFLOG reader on group 1."""
    lab = kernel_lab
    ns = lab.ns("natgw")
    ruleset.apply(render(NatBehaviour(), wan_address=WAN, lan_prefix=LAN), netns=ns)
    ruleset.set_mapping_timeout(NatBehaviour().mapping_timeout, netns=ns)
    conntrack.flush(netns=ns)
    try:
        with NflogReader(1, netns=ns) as reader:
            yield Natgw(lab, ns, reader)
    finally:
        ruleset.remove(netns=ns)
        conntrack.flush(netns=ns)


def _nothing_queued(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recvfrom(2048)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


@needs_kernel_nat
def test_unsolicited_udp_is_dropped_and_logged(natgw: Natgw) -> None:
    alice, bob = natgw.udp("alice", 43000), natgw.udp("bob", 5000)
    with alice, bob:
        bob.sendto(b"clienthello", (WAN, 43000))
        logged = natgw.nflog.wait(2.0)
        assert [(p.prefix, p.indev, p.hook) for p in logged] == [(DROP_PREFIX_INPUT, natgw.ifindex("wan0"), 1)]
        assert decode_ipv4_udp(logged[0].payload) == UdpDatagram(("203.0.113.40", 5000), (WAN, 43000), b"clienthello")
        assert logged[0].timestamp is None or logged[0].timestamp > 0
        assert _nothing_queued(alice)
    counters = natgw.counters()
    assert counters["inbound_dropped_input"] == 1
    assert counters["inbound_translated"] == 0
    assert conntrack.list_udp_mappings(WAN, netns=natgw.ns) == []  # a drop leaves no entry
    assert (natgw.nflog.odd, natgw.nflog.overruns) == (0, 0)


@needs_kernel_nat
def test_endpoint_independent_mapping_and_address_and_port_dependent_filtering(
    natgw: Natgw,
) -> None:
    alice = natgw.udp("alice", 43001)
    bob, bob_other = natgw.udp("bob", 5000), natgw.udp("bob", 5001)
    with alice, bob, bob_other:
        alice.sendto(b"stun check", ("203.0.113.40", 5000))
        assert bob.recvfrom(2048) == (b"stun check", (WAN, 43001))  # port preserved
        bob.sendto(b"clienthello", (WAN, 43001))
        assert alice.recvfrom(2048) == (b"clienthello", ("203.0.113.40", 5000))

        # Another port of the same remote address: filtered (address-and-port-dependent).
        bob_other.sendto(b"from elsewhere", (WAN, 43001))
        logged = natgw.nflog.wait(2.0)
        assert [p.prefix for p in logged] == [DROP_PREFIX_INPUT]
        assert decode_ipv4_udp(logged[0].payload) == UdpDatagram(
            ("203.0.113.40", 5001), (WAN, 43001), b"from elsewhere"
        )
        assert _nothing_queued(alice)

        # The same inside endpoint towards a new destination reuses the mapping (EIM).
        alice.sendto(b"second", ("203.0.113.40", 5001))
        assert bob_other.recvfrom(2048) == (b"second", (WAN, 43001))
        bob_other.sendto(b"now allowed", (WAN, 43001))
        assert alice.recvfrom(2048) == (b"now allowed", ("203.0.113.40", 5001))

    mappings = conntrack.list_udp_mappings(WAN, netns=natgw.ns)
    assert sorted((m.internal, m.external, m.remote) for m in mappings) == [
        (("10.10.1.10", 43001), (WAN, 43001), ("203.0.113.40", 5000)),
        (("10.10.1.10", 43001), (WAN, 43001), ("203.0.113.40", 5001)),
    ]
    assert all(250 < m.timeout <= 300 for m in mappings)  # the 300 s timeout, not 30 s
    assert natgw.counters() == {
        "mappings_created": 2,
        "outbound_translated": 2,
        "inbound_translated": 2,
        "inbound_dropped_input": 1,
        "inbound_dropped_forward": 0,
    }
    conntrack.flush(netns=natgw.ns)
    assert conntrack.list_udp_mappings(WAN, netns=natgw.ns) == []


@needs_kernel_nat
def test_packet_routed_towards_the_lan_is_dropped_in_forward(natgw: Natgw) -> None:
    from pyroute2 import IPRoute

    bob_ns = natgw.lab.ns("bob")
    alice, bob = natgw.udp("alice", 43002), natgw.udp("bob", 5002)
    with IPRoute(netns=bob_ns) as ipr, alice, bob:
        ipr.route("add", dst=LAN, gateway=WAN)
        try:
            bob.sendto(b"straight in", ("10.10.1.10", 43002))
            logged = natgw.nflog.wait(2.0)
        finally:
            ipr.route("del", dst=LAN, gateway=WAN)
        assert [(p.prefix, p.hook) for p in logged] == [(DROP_PREFIX_FORWARD, 2)]
        assert drop_hook(logged[0].prefix) == "forward"
        assert decode_ipv4_udp(logged[0].payload) == UdpDatagram(
            ("203.0.113.40", 5002), ("10.10.1.10", 43002), b"straight in"
        )
        assert _nothing_queued(alice)
    assert natgw.counters()["inbound_dropped_forward"] == 1


@needs_kernel_nat
def test_mapping_timeout_is_per_namespace(natgw: Natgw) -> None:
    assert ruleset.get_mapping_timeout(netns=natgw.ns) == {
        "nf_conntrack_udp_timeout": 300,
        "nf_conntrack_udp_timeout_stream": 300,
    }
    bob = ruleset.get_mapping_timeout(netns=natgw.lab.ns("bob"))
    host = ruleset.get_mapping_timeout()
    ruleset.set_mapping_timeout(301, netns=natgw.ns)
    assert ruleset.get_mapping_timeout(netns=natgw.ns)["nf_conntrack_udp_timeout"] == 301
    assert ruleset.get_mapping_timeout(netns=natgw.lab.ns("bob")) == bob
    assert ruleset.get_mapping_timeout() == host
    with pytest.raises(RulesetError) as info:
        ruleset.set_mapping_timeout(0, netns=natgw.ns)
    assert str(info.value) == "mapping timeout 0 is not a positive integer"


@needs_kernel_nat
def test_mapping_timer_comes_from_the_ruleset_not_the_sysctl(natgw: Natgw) -> None:
    """With the namespace's UDP timeouts at 30 s, a mapping still lives 300 s: the ruleset's ct timeout."""
    ruleset.set_mapping_timeout(30, netns=natgw.ns)
    alice, bob = natgw.udp("alice", 43010), natgw.udp("bob", 5010)
    with alice, bob:
        alice.sendto(b"stun check", ("203.0.113.40", 5010))
        assert bob.recvfrom(2048)[0] == b"stun check"
        bob.sendto(b"reply", (WAN, 43010))
        assert alice.recvfrom(2048)[0] == b"reply"
    (mapping,) = conntrack.list_udp_mappings(WAN, netns=natgw.ns)
    assert 290 <= mapping.timeout <= 300, mapping


@needs_kernel_nat
def test_address_and_port_dependent_mapping_loads_and_translates(natgw: Natgw) -> None:
    script = render(NatBehaviour(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT), wan_address=WAN, lan_prefix=LAN)
    ruleset.apply(script, netns=natgw.ns)
    listing = subprocess.run(
        ["ip", "netns", "exec", natgw.ns, "nft", "list", "table", "inet", "pinhole_nat"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "masquerade fully-random" in listing
    alice, bob = natgw.udp("alice", 43003), natgw.udp("bob", 5003)
    with alice, bob:
        alice.sendto(b"out", ("203.0.113.40", 5003))
        data, (address, port) = bob.recvfrom(2048)
        assert (data, address) == (b"out", WAN)
        bob.sendto(b"back", (WAN, port))
        assert alice.recvfrom(2048) == (b"back", ("203.0.113.40", 5003))
    [mapping] = conntrack.list_udp_mappings(WAN, netns=natgw.ns)
    assert mapping.external == (WAN, port)


@needs_kernel_nat
def test_nflog_group_is_bound_once(natgw: Natgw) -> None:
    with pytest.raises(NflogError) as info:
        NflogReader(1, netns=natgw.ns)
    assert str(info.value) == (
        "NFLOG group 1: bind refused (EPERM): another socket in this namespace holds the group, "
        "or the process lacks CAP_NET_ADMIN"
    )
    with NflogReader(2, netns=natgw.ns) as other:
        assert other.read() == []


@needs_kernel_nat
def test_apply_reports_nft_errors(natgw: Natgw) -> None:
    with pytest.raises(NftError) as info:
        ruleset.apply("table inet pinhole_nat { chain c { bogus } }\n", netns=natgw.ns)
    assert str(info.value).startswith("nft -f - failed (1): /dev/stdin:1:")
    assert "bogus" in str(info.value)
    ruleset.remove(netns=natgw.ns)
    ruleset.remove(netns=natgw.ns)  # idempotent
    with pytest.raises(NftError) as info:
        ruleset.read_counters(netns=natgw.ns)
    assert "No such file or directory" in str(info.value)


def test_ruleset_module_is_importable_without_the_lab() -> None:
    # The service runs inside its namespace and must not need the lab backend.
    code = "import sys, services.natgw.ruleset, services.natgw.nflog, services.natgw.conntrack; "
    code += "assert 'netns.lab' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_parse_flow_counts_reads_both_directions():
    from services.natgw.conntrack import parse_flow_counts

    line = (
        "udp      17 298 src=10.10.1.10 dst=203.0.113.40 sport=40000 dport=50000 packets=53 bytes=9000 "
        "src=203.0.113.40 dst=203.0.113.1 sport=50000 dport=40000 packets=54 bytes=9100 [ASSURED] mark=0 use=1"
    )
    (count,) = parse_flow_counts(line + "\nconntrack v1.4.7: 1 flow entries have been shown.", "203.0.113.1")
    assert (count.outbound_packets, count.inbound_packets) == (53, 54)
    assert count.mapping.external == ("203.0.113.1", 40000) and count.mapping.remote == ("203.0.113.40", 50000)
    assert parse_flow_counts(line.replace("packets=53 ", "").replace("packets=54 ", ""), "203.0.113.1") == []


def test_wan_services_are_admitted_before_the_unsolicited_drop():
    """In a pod the gateway's outside address also carries its gRPC probes and Alice's VXLAN link."""
    from services.natgw import ruleset

    script = ruleset.render(
        ruleset.NatBehaviour(),
        wan_address="203.0.113.1",
        lan_prefix="10.10.1.0/24",
        wan_services=[("tcp", 50051), ("udp", 4789)],
    )
    input_chain = script[script.index("chain input") :]
    admitted = input_chain.index('iifname "wan0" ip daddr 203.0.113.1 tcp dport 50051 accept')
    assert admitted < input_chain.index("udp dport 4789 accept") < input_chain.index("drop")
    with pytest.raises(ruleset.RulesetError, match="sctp/9 is not tcp/PORT or udp/PORT"):
        ruleset.render(
            ruleset.NatBehaviour(), wan_address="203.0.113.1", lan_prefix="10.10.1.0/24", wan_services=[("sctp", 9)]
        )
