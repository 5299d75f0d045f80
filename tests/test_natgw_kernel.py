# ruff: noqa: E501  (golden nft script and conntrack lines are kept verbatim)
"""The NAT gateway's kernel side: ruleset rendering, NFLOG and conntrack codecs (pure), and the
RFC 4787 behaviour of the rendered ruleset measured in a real lab (root, namespaces "ph-t*")."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import lab as lab_mod
from netns.lab import NetnsLab, pids_in_netns
from pinhole.lab import load_topology
from pinhole.nat import Filtering, Mapping, NatBehaviour
from pinhole.nsenter import in_netns
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
# pinhole NAT gateway: RFC 4787 endpoint-independent mapping, address-and-port-dependent filtering, ports preserved
table inet pinhole_nat
delete table inet pinhole_nat
table inet pinhole_nat {
\tcounter mappings_created {
\t}
\tcounter outbound_translated {
\t}
\tcounter inbound_translated {
\t}
\tcounter inbound_admitted {
\t}
\tcounter inbound_remote_port_rewritten {
\t}
\tcounter inbound_dropped_input {
\t}
\tcounter inbound_dropped_forward {
\t}
\tcounter hairpinned {
\t}
\tcounter hairpin_dropped {
\t}

\tmap inbound_mappings {
\t\ttype inet_service : ipv4_addr . inet_service
\t\tflags dynamic,timeout
\t\ttimeout 300s
\t}

\t# RFC 4787 §6 hairpinning: a packet from inside to the external port of a mapping goes to its
\t# internal endpoint, whatever the mapping's filtering (§6 asks only for an active mapping)
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname "lan0" ip saddr 10.10.1.0/24 ip daddr 203.0.113.1 udp dport @inbound_mappings dnat ip to udp dport map @inbound_mappings
\t}

\t# RFC 4787 §4.1 endpoint-independent mapping: masquerade keeps the internal port x wherever it is free,
\t# so every flow of X:x leaves from port x
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "wan0" ip saddr 10.10.1.0/24 counter name "mappings_created" masquerade
\t\t# RFC 4787 §6 hairpinned: from the sender's mapping towards the address it sent to (REQ-9 a)
\t\toifname "lan0" ip saddr 10.10.1.0/24 ct status dnat snat ip to 203.0.113.1
\t}

\t# every outbound packet, already translated (after srcnat), records or refreshes its mapping
\t# (RFC 4787 REQ-6) under the external port the kernel gave it
\tchain record_mappings {
\t\ttype filter hook postrouting priority srcnat + 100; policy accept;
\t\toifname "wan0" ct direction original ct original ip saddr 10.10.1.0/24 meta l4proto udp update @inbound_mappings { udp sport : ct original ip saddr . ct original proto-src }
\t\toifname "wan0" ct direction reply ct reply ip saddr 10.10.1.0/24 meta l4proto udp update @inbound_mappings { udp sport : ct reply ip saddr . ct reply proto-src }
\t\toifname "lan0" ct direction original ct original ip saddr 10.10.1.0/24 ct status dnat meta l4proto udp update @inbound_mappings { udp sport : ct original ip saddr . ct original proto-src }
\t\toifname "lan0" ct direction reply ct reply ip saddr 10.10.1.0/24 ct status dnat meta l4proto udp update @inbound_mappings { udp sport : ct reply ip saddr . ct reply proto-src }
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
\t\tiifname "lan0" oifname "lan0" ct status dnat meta l4proto udp ct state new ct timeout set "mapping"
\t\tiifname "lan0" oifname "lan0" ct status dnat counter name "hairpinned" accept
\t\tiifname "lan0" oifname "lan0" counter name "hairpin_dropped" log prefix "pinhole-nat drop hairpin" group 1 queue-threshold 1 drop
\t\tiifname "wan0" counter name "inbound_dropped_forward" log prefix "pinhole-nat drop forward" group 1 queue-threshold 1 drop
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "wan0" ct state established,related accept
\t\tiifname "wan0" ip daddr 203.0.113.1 counter name "inbound_dropped_input" log prefix "pinhole-nat drop input" group 1 queue-threshold 1 drop
\t\tiifname "lan0" ip daddr 203.0.113.1 meta l4proto udp counter name "hairpin_dropped" log prefix "pinhole-nat drop hairpin" group 1 queue-threshold 1 drop
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
        "# pinhole NAT gateway: RFC 4787 address-and-port-dependent mapping, address-and-port-dependent filtering, "
        "ports not preserved"
    )
    assert (
        '\t\toifname "outside" ip saddr 192.168.0.0/16 counter name "mappings_created" '
        "masquerade fully-random" in script.splitlines()
    )
    assert 'log prefix "pinhole-nat drop input" group 7 queue-threshold 1 drop' in script
    assert "ip daddr 198.51.100.7" in script


GOLDEN_DIR = Path(__file__).parent / "data" / "natgw"
BEHAVIOURS = [
    NatBehaviour(mapping=mapping, filtering=filtering, port_preservation=preserve)
    for mapping in Mapping
    for filtering in Filtering
    for preserve in (True, False)
]


def _golden(behaviour: NatBehaviour) -> Path:
    ports = "ports-preserved" if behaviour.preserves_ports else "ports-not-preserved"
    return GOLDEN_DIR / f"{behaviour.mapping.value}-mapping_{behaviour.filtering.value}-filtering_{ports}.nft"


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: _golden(b).stem)
def test_render_golden_for_every_behaviour(behaviour: NatBehaviour) -> None:
    """Every RFC 4787 mapping x filtering x port preservation renders as its golden script
    (tests/data/natgw; PINHOLE_REGOLDEN=1 rewrites them, review the diff)."""
    script = render(behaviour, wan_address=WAN, lan_prefix=LAN)
    path = _golden(behaviour)
    if os.environ.get("PINHOLE_REGOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
    assert script == path.read_text()


ROUTER = NatBehaviour(translate=False)
ROUTER_GOLDEN = GOLDEN_DIR / "no-translation.nft"


def test_render_golden_without_translation() -> None:
    """RFC 5763 §7.1 (no NAT): the gateway routes lan <-> wan unchanged, filters nothing of the lab's traffic,
    still copies SIP to its observer and counts what it forwards (PINHOLE_REGOLDEN=1 rewrites it)."""
    script = render(ROUTER, wan_address=WAN, lan_prefix=LAN, sip_log_group=2)
    if os.environ.get("PINHOLE_REGOLDEN") == "1":
        ROUTER_GOLDEN.write_text(script)
    assert script == ROUTER_GOLDEN.read_text()
    assert "masquerade" not in script and "snat" not in script and "dnat" not in script
    assert "type nat hook" not in script  # no translation chain at all
    assert ruleset.dynamic_sets(ROUTER) == []
    assert ROUTER.preserves_ports  # nothing rewrites a port
    assert ROUTER.describe() == "no translation (a plain router)"


def test_render_without_hairpinning() -> None:
    """Hairpinning off: the default NAT's script less the hairpin DNAT, SNAT, forwarding and their set; what
    comes from inside for the outside address is still dropped, counted and logged (forward and input)."""
    off = NatBehaviour(hairpinning=False)
    assert (NatBehaviour().hairpins, off.hairpins, ROUTER.hairpins) == (True, False, False)
    assert off.describe() == (
        "endpoint-independent mapping, address-and-port-dependent filtering, ports preserved, no hairpinning"
    )
    script = render(off, wan_address=WAN, lan_prefix=LAN)
    assert script.splitlines()[0] == f"# pinhole NAT gateway: RFC 4787 {off.describe()}"
    lines, default = script.splitlines(), DEFAULT_SCRIPT.splitlines()
    assert [line for line in lines[1:] if line not in default] == []  # nothing the default NAT lacks
    missing = [line.strip() for line in default[1:] if line not in lines]
    assert [line for line in missing if not line.startswith("#")] == [
        "map inbound_mappings {",
        "type inet_service : ipv4_addr . inet_service",
        "flags dynamic,timeout",
        "timeout 300s",
        "chain prerouting {",
        "type nat hook prerouting priority dstnat; policy accept;",
        'iifname "lan0" ip saddr 10.10.1.0/24 ip daddr 203.0.113.1 udp dport @inbound_mappings dnat ip to udp dport '
        "map @inbound_mappings",
        'oifname "lan0" ip saddr 10.10.1.0/24 ct status dnat snat ip to 203.0.113.1',
        "chain record_mappings {",
        "type filter hook postrouting priority srcnat + 100; policy accept;",
        *(
            f'oifname "{interface}" ct direction {direction} ct {direction} ip saddr 10.10.1.0/24{dnat} meta l4proto '
            f"udp update @inbound_mappings {{ udp sport : ct {direction} ip saddr . ct {direction} proto-src }}"
            for interface, dnat in (("wan0", ""), ("lan0", " ct status dnat"))
            for direction in ("original", "reply")
        ),
        'iifname "lan0" oifname "lan0" ct status dnat meta l4proto udp ct state new ct timeout set "mapping"',
        'iifname "lan0" oifname "lan0" ct status dnat counter name "hairpinned" accept',
    ]
    assert ruleset.dynamic_sets(off) == []
    assert script.count('counter name "hairpin_dropped" log prefix "pinhole-nat drop hairpin" group 1') == 2
    assert '\t\tiifname "lan0" oifname "lan0" counter name "hairpin_dropped"' in script
    assert '\t\tiifname "lan0" ip daddr 203.0.113.1 meta l4proto udp counter name "hairpin_dropped"' in script
    assert 'counter name "hairpinned"' not in script and "\tcounter hairpinned {\n" in script


def test_golden_directory_holds_one_script_per_behaviour() -> None:
    assert sorted(GOLDEN_DIR.glob("*.nft")) == sorted([*(_golden(b) for b in BEHAVIOURS), ROUTER_GOLDEN])
    assert _golden(NatBehaviour()).read_text() == DEFAULT_SCRIPT


def test_render_only_builds_what_the_behaviour_needs() -> None:
    """The kernel's own behaviours stay plain masquerade; the sets appear only where they are used
    (hairpinning, on by default, needs `inbound_mappings` to find a mapping's internal endpoint)."""

    def sets(behaviour: NatBehaviour) -> list[str]:
        script = render(behaviour, wan_address=WAN, lan_prefix=LAN)
        return [name for name in ruleset.DYNAMIC_SETS if f" {name} {{" in script]

    eif, adf = Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT
    adm, apdm = Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT
    assert sets(NatBehaviour(hairpinning=False)) == []
    assert sets(NatBehaviour(mapping=apdm, hairpinning=False)) == []
    assert sets(NatBehaviour(port_preservation=False, hairpinning=False)) == ["endpoint_independent_mappings"]
    assert sets(NatBehaviour(mapping=adm, hairpinning=False)) == ["address_dependent_mappings"]
    assert sets(NatBehaviour(mapping=adm, port_preservation=True, hairpinning=False)) == [
        "address_dependent_mappings",
        "mapped_endpoints",
    ]
    assert sets(NatBehaviour(mapping=apdm, port_preservation=True, hairpinning=False)) == ["mapped_endpoints"]
    assert sets(NatBehaviour(filtering=eif)) == ["inbound_mappings"]
    assert sets(NatBehaviour(filtering=adf)) == ["inbound_mappings", "contacted_addresses"]
    assert sets(NatBehaviour()) == ["inbound_mappings"]
    assert sets(NatBehaviour(mapping=adm)) == ["address_dependent_mappings", "inbound_mappings"]
    assert "chain prerouting" not in render(
        NatBehaviour(mapping=adm, hairpinning=False), wan_address=WAN, lan_prefix=LAN
    )


def test_render_keeps_wan_services_out_of_the_filtering_dnat() -> None:
    script = render(
        NatBehaviour(filtering=Filtering.ENDPOINT_INDEPENDENT),
        wan_address=WAN,
        lan_prefix=LAN,
        wan_services=[("tcp", 50051), ("udp", 4789), ("udp", 4790)],
    )
    assert (
        '\t\tiifname "wan0" ip daddr 203.0.113.1 udp dport != { 4789, 4790 } udp dport @inbound_mappings '
        'counter name "inbound_admitted" dnat ip to udp dport map @inbound_mappings\n'
    ) in script


def test_render_timeouts_of_the_sets_are_the_mapping_timeout() -> None:
    script = render(
        NatBehaviour(mapping=Mapping.ADDRESS_DEPENDENT, filtering=Filtering.ADDRESS_DEPENDENT, mapping_timeout=137),
        wan_address=WAN,
        lan_prefix=LAN,
    )
    assert script.count("\t\tflags dynamic,timeout\n\t\ttimeout 137s\n") == 3
    assert "policy = { unreplied : 137, replied : 137 }" in script


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
    assert drop_hook(ruleset.DROP_PREFIX_HAIRPIN) == "hairpin"
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


# Sessions the remote opened (EIF/ADF admitted and DNATed them), as conntrack -L printed them here: bob
# from another port; stun towards a second mapping of the same inside endpoint (the kernel changed its
# port inside, 3478 -> 57011); and an unsolicited packet to the outside address itself (no mapping).
INBOUND_CONNTRACK_OUTPUT = """\
udp      17 299 src=203.0.113.40 dst=203.0.113.1 sport=5001 dport=42677 src=10.10.1.10 dst=203.0.113.40 sport=40000 dport=5001 mark=0 use=1
udp      17 299 src=203.0.113.30 dst=203.0.113.1 sport=3478 dport=22376 src=10.10.1.10 dst=203.0.113.30 sport=40011 dport=57011 mark=0 use=1
udp      17 29 src=203.0.113.31 dst=203.0.113.1 sport=3479 dport=42677 [UNREPLIED] src=203.0.113.1 dst=203.0.113.31 sport=42677 dport=3479 mark=0 use=1
"""


def test_parse_udp_mappings_of_sessions_opened_from_outside() -> None:
    assert parse_udp_mappings(INBOUND_CONNTRACK_OUTPUT, WAN) == [
        NatMapping(("10.10.1.10", 40000), (WAN, 42677), ("203.0.113.40", 5001), 299, False, inbound=True),
        NatMapping(("10.10.1.10", 40011), (WAN, 22376), ("203.0.113.30", 3478), 299, False, inbound=True),
    ]


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
        "inbound_admitted": 0,
        "inbound_remote_port_rewritten": 0,
        "inbound_dropped_input": 1,
        "inbound_dropped_forward": 0,
        "hairpinned": 0,
        "hairpin_dropped": 0,
    }
    conntrack.flush(netns=natgw.ns)
    assert conntrack.list_udp_mappings(WAN, netns=natgw.ns) == []


@needs_kernel_nat
def test_packet_routed_towards_the_lan_is_dropped_in_forward(natgw: Natgw) -> None:
    from pyroute2 import IPRoute

    bob_ns = natgw.lab.ns("bob")
    alice, bob = natgw.udp("alice", 43002), natgw.udp("bob", 5002)
    with IPRoute(netns=bob_ns) as ipr, alice, bob:
        # the topology routes Alice's LAN through the gateway (for RFC 5763 §7.1, translation off)
        assert ipr.route("get", dst="10.10.1.10")[0].get_attr("RTA_GATEWAY") == WAN
        bob.sendto(b"straight in", ("10.10.1.10", 43002))
        logged = natgw.nflog.wait(2.0)
        assert [(p.prefix, p.hook) for p in logged] == [(DROP_PREFIX_FORWARD, 2)]
        assert drop_hook(logged[0].prefix) == "forward"
        assert decode_ipv4_udp(logged[0].payload) == UdpDatagram(
            ("203.0.113.40", 5002), ("10.10.1.10", 43002), b"straight in"
        )
        assert _nothing_queued(alice)
    assert natgw.counters()["inbound_dropped_forward"] == 1


@needs_kernel_nat
def test_without_translation_the_gateway_routes_both_ways(natgw: Natgw) -> None:
    """RFC 5763 §7.1 (no NAT): Bob reaches 10.10.1.10 directly, unsolicited (his early ClientHello), and
    Alice's packets keep their source address and port; SIP is still copied to the observer group."""
    ruleset.apply(render(ROUTER, wan_address=WAN, lan_prefix=LAN, sip_log_group=2), netns=natgw.ns)
    alice, bob = natgw.udp("alice", 43003), natgw.udp("bob", 5003)
    alice_sip, bob_sip = natgw.udp("alice", 5060), natgw.udp("bob", 5060)
    with NflogReader(2, netns=natgw.ns) as sip_log, alice, bob, alice_sip, bob_sip:
        bob.sendto(b"clienthello", ("10.10.1.10", 43003))  # nothing was sent to Bob before
        assert alice.recvfrom(2048) == (b"clienthello", ("203.0.113.40", 5003))
        alice.sendto(b"serverhello", ("203.0.113.40", 5003))
        assert bob.recvfrom(2048) == (b"serverhello", ("10.10.1.10", 43003))  # no translation
        alice.sendto(b"to another port", ("203.0.113.40", 5060))
        assert bob_sip.recvfrom(2048) == (b"to another port", ("10.10.1.10", 43003))
        bob_sip.sendto(b"INVITE", ("10.10.1.10", 5060))
        assert alice_sip.recvfrom(2048) == (b"INVITE", ("203.0.113.40", 5060))
        copies = sip_log.wait(2.0)
        assert [decode_ipv4_udp(p.payload).payload for p in copies][-1:] == [b"INVITE"]
        # the gateway's own outside address is still no way in
        bob.sendto(b"to the gateway", (WAN, 43003))
        assert [p.prefix for p in natgw.nflog.wait(2.0)] == [DROP_PREFIX_INPUT]
        assert _nothing_queued(alice)
    assert conntrack.list_udp_mappings(WAN, netns=natgw.ns) == []  # nothing translated
    assert natgw.counters() == {
        "mappings_created": 0,
        "outbound_translated": 2,  # forwarded lan -> wan
        "inbound_translated": 2,  # forwarded wan -> lan
        "inbound_admitted": 0,
        "inbound_remote_port_rewritten": 0,
        "inbound_dropped_input": 1,
        "inbound_dropped_forward": 0,
    }


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
    inbound = (
        "udp      17 298 src=203.0.113.40 dst=203.0.113.1 sport=50000 dport=40000 packets=7 bytes=900 "
        "src=10.10.1.10 dst=203.0.113.40 sport=40000 dport=50000 packets=5 bytes=700 [ASSURED] mark=0 use=1"
    )
    (count,) = parse_flow_counts(inbound, "203.0.113.1")  # Bob opened it: his packets are the original direction
    assert (count.mapping.inbound, count.outbound_packets, count.inbound_packets) == (True, 5, 7)
    table = "\n".join([line, inbound.replace("40000", "40002").replace("50000", "50002")])
    assert [c.mapping.external[1] for c in parse_flow_counts(table, "203.0.113.1", ports={50000})] == [40000]
    assert [c.mapping.external[1] for c in parse_flow_counts(table, "203.0.113.1", ports={40002})] == [40002]
    assert parse_flow_counts(table, "203.0.113.1", ports={4000, 500}) == []  # whole tokens, not prefixes


def test_wan_services_are_admitted_before_the_unsolicited_drop():
    """In a pod the gateway's outside address also carries its gRPC probes and Alice's VXLAN link."""
    from services.natgw import ruleset

    script = ruleset.render(
        NatBehaviour(),
        wan_address="203.0.113.1",
        lan_prefix="10.10.1.0/24",
        wan_services=[("tcp", 50051), ("udp", 4789)],
    )
    input_chain = script[script.index("chain input") :]
    admitted = input_chain.index('iifname "wan0" ip daddr 203.0.113.1 tcp dport 50051 accept')
    assert admitted < input_chain.index("udp dport 4789 accept") < input_chain.index("drop")
    with pytest.raises(ruleset.RulesetError, match="sctp/9 is not tcp/PORT or udp/PORT"):
        ruleset.render(NatBehaviour(), wan_address="203.0.113.1", lan_prefix="10.10.1.0/24", wan_services=[("sctp", 9)])


# --------------------------------------------------------------------------- RFC 4787 behaviours, measured (root)
#
# Alice (X:x, behind the NAT) sends to bob:5000 first; bob:5001 is the same remote address from another
# port, stun:3478 another remote address. The tables say what RFC 4787 defines; the tests send real
# packets through the kernel and compare.

REMOTES = {  # label -> (node, port)
    "bob:5000": ("bob", 5000),
    "bob:5001": ("bob", 5001),
    "stun:3478": ("stun", 3478),
}

# RFC 4787 §5: after X:x has sent to bob:5000 only, which remote endpoints may send in through its mapping.
FILTERING_ADMITS = {
    # "The NAT forwards any packets destined to X:x."
    Filtering.ENDPOINT_INDEPENDENT: {"bob:5000": True, "bob:5001": True, "stun:3478": True},
    # "... filter out packets from Y:y destined for X:x if X:x has not sent packets to Y:any previously"
    Filtering.ADDRESS_DEPENDENT: {"bob:5000": True, "bob:5001": True, "stun:3478": False},
    # "... if X:x has not sent packets to Y:y previously"
    Filtering.ADDRESS_AND_PORT_DEPENDENT: {"bob:5000": True, "bob:5001": False, "stun:3478": False},
}

# RFC 4787 §4.1: X:x sends to bob:5000, then bob:5001, then stun:3478; does each later flow reuse the
# mapping (external ip:port) of the flow to bob:5000?
MAPPING_REUSED = {
    # "the same mapping for subsequent packets sent from the same internal IP address and port (X:x) to any
    # external IP address and port"
    Mapping.ENDPOINT_INDEPENDENT: {"bob:5001": True, "stun:3478": True},
    # "... to the same external IP address (Y), regardless of the external port"
    Mapping.ADDRESS_DEPENDENT: {"bob:5001": True, "stun:3478": False},
    # "... to the same external IP address and port (Y:y) while the mapping is still active"
    Mapping.ADDRESS_AND_PORT_DEPENDENT: {"bob:5001": False, "stun:3478": False},
}

BEHAVIOUR_GRID = [(mapping, filtering) for mapping in Mapping for filtering in Filtering]


def _grid_id(value: tuple[Mapping, Filtering]) -> str:
    short = {"endpoint-independent": "EI", "address-dependent": "AD", "address-and-port-dependent": "APD"}
    return f"{short[value[0].value]}M-{short[value[1].value]}F"


def _load(natgw: Natgw, behaviour: NatBehaviour) -> None:
    ruleset.apply(render(behaviour, wan_address=WAN, lan_prefix=LAN), netns=natgw.ns)


def _remote_sockets(natgw: Natgw, stack: contextlib.ExitStack) -> dict[str, socket.socket]:
    return {label: stack.enter_context(natgw.udp(node, port)) for label, (node, port) in REMOTES.items()}


def _dropped_and_logged(natgw: Natgw, alice: socket.socket, datagram: UdpDatagram) -> None:
    """The packet was dropped in the input hook, logged to NFLOG as such, and never reached Alice."""
    logged = natgw.nflog.wait(2.0)
    assert [(p.prefix, p.hook, p.indev) for p in logged] == [(DROP_PREFIX_INPUT, 1, natgw.ifindex("wan0"))]
    assert drop_hook(logged[0].prefix) == "input"
    assert decode_ipv4_udp(logged[0].payload) == datagram
    assert _nothing_queued(alice)


@needs_kernel_nat
@pytest.mark.parametrize(("mapping", "filtering"), BEHAVIOUR_GRID, ids=[_grid_id(v) for v in BEHAVIOUR_GRID])
def test_rfc4787_filtering_is_what_was_configured(natgw: Natgw, mapping: Mapping, filtering: Filtering) -> None:
    """Who can reach X:x's mapping after it sent to bob:5000: FILTERING_ADMITS, whatever the mapping.
    An admitted packet arrives from the remote's real endpoint, and X:x's answer leaves through the same
    mapping (the reverse NAT of the DNATed flow). A refused one is dropped and NFLOG-logged in input."""
    _load(natgw, NatBehaviour(mapping=mapping, filtering=filtering))
    port = 43100
    with contextlib.ExitStack() as stack:
        alice = stack.enter_context(natgw.udp("alice", port))
        remotes = _remote_sockets(natgw, stack)
        alice.sendto(b"open", remotes["bob:5000"].getsockname())
        data, (address, external) = remotes["bob:5000"].recvfrom(2048)
        assert (data, address) == (b"open", WAN)
        for label, remote in remotes.items():
            remote.sendto(label.encode(), (WAN, external))
            if FILTERING_ADMITS[filtering][label]:
                assert alice.recvfrom(2048) == (label.encode(), remote.getsockname()), label
                alice.sendto(b"answer", remote.getsockname())
                assert remote.recvfrom(2048) == (b"answer", (WAN, external)), label
            else:
                _dropped_and_logged(natgw, alice, UdpDatagram(remote.getsockname(), (WAN, external), label.encode()))
    admitted = [label for label, yes in FILTERING_ADMITS[filtering].items() if yes and label != "bob:5000"]
    remote_endpoints = {label: (natgw.lab.address(node), p) for label, (node, p) in REMOTES.items()}
    assert sorted(
        (m.remote, m.inbound, m.internal, m.external) for m in conntrack.list_udp_mappings(WAN, netns=natgw.ns)
    ) == sorted(
        [(remote_endpoints["bob:5000"], False, ("10.10.1.10", port), (WAN, external))]
        + [(remote_endpoints[label], True, ("10.10.1.10", port), (WAN, external)) for label in admitted]
    )
    counters = natgw.counters()
    assert counters["inbound_admitted"] == len(admitted)  # new inbound flows let in by EIF/ADF
    assert counters["inbound_dropped_input"] == len(REMOTES) - 1 - len(admitted)
    assert counters["inbound_translated"] == 1 + len(admitted)
    assert counters["inbound_remote_port_rewritten"] == 0
    assert (natgw.nflog.odd, natgw.nflog.overruns) == (0, 0)


@needs_kernel_nat
@pytest.mark.parametrize(("mapping", "filtering"), BEHAVIOUR_GRID, ids=[_grid_id(v) for v in BEHAVIOUR_GRID])
def test_rfc4787_mapping_is_what_was_configured(natgw: Natgw, mapping: Mapping, filtering: Filtering) -> None:
    """Which flows of X:x share an external port: MAPPING_REUSED, whatever the filtering; every mapping
    works for its own remote, and conntrack holds exactly those translations."""
    _load(natgw, NatBehaviour(mapping=mapping, filtering=filtering))
    port = 43200
    externals: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        alice = stack.enter_context(natgw.udp("alice", port))
        for label, remote in _remote_sockets(natgw, stack).items():
            alice.sendto(label.encode(), remote.getsockname())
            data, (address, externals[label]) = remote.recvfrom(2048)
            assert (data, address) == (label.encode(), WAN)
            remote.sendto(b"reply", (WAN, externals[label]))
            assert alice.recvfrom(2048) == (b"reply", remote.getsockname())
    reused = {label: externals[label] == externals["bob:5000"] for label in ("bob:5001", "stun:3478")}
    assert reused == MAPPING_REUSED[mapping], externals
    if mapping is not Mapping.ENDPOINT_INDEPENDENT:
        assert externals["stun:3478"] != externals["bob:5001"]  # a new remote address: a new mapping
    if mapping is Mapping.ENDPOINT_INDEPENDENT:
        assert externals["bob:5000"] == port  # masquerade's port preservation, the default here
    remote_endpoints = {label: (natgw.lab.address(node), p) for label, (node, p) in REMOTES.items()}
    assert sorted(
        (m.internal, m.external, m.remote) for m in conntrack.list_udp_mappings(WAN, netns=natgw.ns)
    ) == sorted((("10.10.1.10", port), (WAN, externals[label]), remote_endpoints[label]) for label in REMOTES)
    assert natgw.counters()["mappings_created"] == len(REMOTES)  # one conntrack flow per remote endpoint


# RFC 4787 §4.1 port preservation, for X:x's first mapping (towards bob:5000) and the second (stun:3478).
PORT_PRESERVATION = {  # (mapping, preservation) -> (first keeps x, second is the first's mapping)
    (Mapping.ENDPOINT_INDEPENDENT, True): (True, True),
    (Mapping.ENDPOINT_INDEPENDENT, False): (False, True),
    (Mapping.ADDRESS_DEPENDENT, True): (True, False),
    (Mapping.ADDRESS_DEPENDENT, False): (False, False),
    (Mapping.ADDRESS_AND_PORT_DEPENDENT, True): (True, False),
    (Mapping.ADDRESS_AND_PORT_DEPENDENT, False): (False, False),
}
PRESERVATION_IDS = [f"{m.value}-{'preserved' if p else 'random'}" for m, p in PORT_PRESERVATION]


@needs_kernel_nat
@pytest.mark.parametrize(("mapping", "preserve"), list(PORT_PRESERVATION), ids=PRESERVATION_IDS)
def test_port_preservation_is_what_was_configured(natgw: Natgw, mapping: Mapping, preserve: bool) -> None:
    """Three inside endpoints, each sending to bob:5000 then stun:3478. With preservation every first
    mapping keeps its port; without, the ports are random (all three kept by chance: ~1e-14)."""
    _load(natgw, NatBehaviour(mapping=mapping, port_preservation=preserve))
    ports = [43300, 43301, 43302]
    first, second = [], []
    with contextlib.ExitStack() as stack:
        bob, stun = stack.enter_context(natgw.udp("bob", 5000)), stack.enter_context(natgw.udp("stun", 3478))
        for port in ports:
            alice = stack.enter_context(natgw.udp("alice", port))
            for remote, externals in ((bob, first), (stun, second)):
                alice.sendto(b"out", remote.getsockname())
                data, (address, external) = remote.recvfrom(2048)
                assert (data, address) == (b"out", WAN)
                externals.append(external)
    keeps, same = PORT_PRESERVATION[(mapping, preserve)]
    if keeps:
        assert first == ports
    else:
        assert first != ports
    assert [a == b for a, b in zip(first, second, strict=True)] == [same] * len(ports), (first, second)


@needs_kernel_nat
def test_a_remote_sending_to_another_mapping_of_the_same_endpoint(natgw: Natgw) -> None:
    """Address-and-port-dependent mapping with endpoint-independent filtering: X:x talks to stun:3478
    through one mapping, and stun:3478 sends to its other mapping (the one towards bob). EIF admits it,
    but conntrack cannot hold two sessions X:x <-> stun:3478: the kernel gives the second one another
    remote port, so Alice sees stun:3478 as stun:<other port> (counted); her answer to that still
    reaches stun:3478 from the mapping it sent to."""
    _load(natgw, NatBehaviour(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT, filtering=Filtering.ENDPOINT_INDEPENDENT))
    with contextlib.ExitStack() as stack:
        alice = stack.enter_context(natgw.udp("alice", 43400))
        remotes = _remote_sockets(natgw, stack)
        bob, stun = remotes["bob:5000"], remotes["stun:3478"]
        alice.sendto(b"to bob", bob.getsockname())
        towards_bob = bob.recvfrom(2048)[1][1]
        alice.sendto(b"to stun", stun.getsockname())
        towards_stun = stun.recvfrom(2048)[1][1]
        assert towards_bob != towards_stun
        stun.sendto(b"to the other mapping", (WAN, towards_bob))
        data, (address, seen_port) = alice.recvfrom(2048)
        assert (data, address) == (b"to the other mapping", "203.0.113.30")
        assert seen_port != 3478  # the kernel's clash resolution, not RFC 4787
        alice.sendto(b"answer", (address, seen_port))
        assert stun.recvfrom(2048) == (b"answer", (WAN, towards_bob))
        alice.sendto(b"again", stun.getsockname())
        assert stun.recvfrom(2048) == (b"again", (WAN, towards_stun))  # her own mapping towards stun is intact
    counters = natgw.counters()
    assert (counters["inbound_admitted"], counters["inbound_remote_port_rewritten"]) == (1, 1)


@needs_kernel_nat
def test_address_dependent_filtering_is_kept_per_mapping(natgw: Natgw) -> None:
    """With address-and-port-dependent mapping, X:x has a mapping towards bob and one towards stun. ADF's
    state belongs to the mapping (RFC 4787 §5: "the NAT assigns a filtering rule for the mapping"), as
    conntrack's APDF does: stun may not use the mapping towards bob; bob from another port may."""
    _load(natgw, NatBehaviour(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT, filtering=Filtering.ADDRESS_DEPENDENT))
    with contextlib.ExitStack() as stack:
        alice = stack.enter_context(natgw.udp("alice", 43410))
        remotes = _remote_sockets(natgw, stack)
        alice.sendto(b"to bob", remotes["bob:5000"].getsockname())
        towards_bob = remotes["bob:5000"].recvfrom(2048)[1][1]
        alice.sendto(b"to stun", remotes["stun:3478"].getsockname())
        remotes["stun:3478"].recvfrom(2048)
        remotes["stun:3478"].sendto(b"wrong mapping", (WAN, towards_bob))
        _dropped_and_logged(natgw, alice, UdpDatagram(("203.0.113.30", 3478), (WAN, towards_bob), b"wrong mapping"))
        remotes["bob:5001"].sendto(b"other port", (WAN, towards_bob))
        assert alice.recvfrom(2048) == (b"other port", ("203.0.113.40", 5001))


def _expected_elements(name: str, external: int) -> tuple[tuple[object, ...], tuple[object, ...] | None]:
    inside, remote = ("10.10.1.10", 43500), "203.0.113.40"
    return {
        ruleset.SET_EIM: (inside, (WAN, external)),
        ruleset.SET_ADM: ((*inside, remote), (WAN, external)),
        ruleset.SET_MAPPED: (inside, None),
        ruleset.SET_INBOUND: ((external,), inside),
        ruleset.SET_CONTACTED: ((remote, external), None),
    }[name]


@needs_kernel_nat
@pytest.mark.parametrize(
    "behaviour",
    [
        NatBehaviour(filtering=Filtering.ENDPOINT_INDEPENDENT, port_preservation=False, mapping_timeout=137),
        NatBehaviour(
            mapping=Mapping.ADDRESS_DEPENDENT,
            filtering=Filtering.ADDRESS_DEPENDENT,
            port_preservation=True,
            mapping_timeout=137,
        ),
    ],
    ids=["EIM-EIF-random", "ADM-ADF-preserved"],
)
def test_set_elements_live_as_long_as_the_mapping(natgw: Natgw, behaviour: NatBehaviour) -> None:
    """Every set element the packet path adds carries the mapping timer (REQ-5), like the conntrack entries
    of the mapping and of a session bob opens from another port (the namespace's sysctl says 30 s)."""
    ruleset.set_mapping_timeout(30, netns=natgw.ns)
    _load(natgw, behaviour)
    with natgw.udp("alice", 43500) as alice, natgw.udp("bob", 5000) as bob, natgw.udp("bob", 5001) as bob_other:
        alice.sendto(b"out", ("203.0.113.40", 5000))
        external = bob.recvfrom(2048)[1][1]
        bob_other.sendto(b"in", (WAN, external))
        assert alice.recvfrom(2048) == (b"in", ("203.0.113.40", 5001))
    names = ruleset.dynamic_sets(behaviour)
    assert len(names) in (2, 4)  # between them the two behaviours use all five sets
    for name in names:
        [element] = ruleset.read_elements(name, netns=natgw.ns)
        assert (element.key, element.data) == _expected_elements(name, external), name
        assert element.expires is not None and 130 <= element.expires <= 137, element
    mappings = conntrack.list_udp_mappings(WAN, netns=natgw.ns)
    assert sorted(m.inbound for m in mappings) == [False, True]
    assert all(130 <= m.timeout <= 137 for m in mappings), mappings


@needs_kernel_nat
def test_outbound_packets_refresh_a_mapping_and_it_expires_without_them(natgw: Natgw) -> None:
    """REQ-6: outbound packets keep the mapping (and so EIF's admission) alive past its timer; once they
    stop, the mapping's element expires and a new remote is dropped and logged again. A 2 s timer."""
    _load(natgw, NatBehaviour(filtering=Filtering.ENDPOINT_INDEPENDENT, mapping_timeout=2))
    with contextlib.ExitStack() as stack:
        alice = stack.enter_context(natgw.udp("alice", 43600))
        remotes = _remote_sockets(natgw, stack)
        bob, stun = remotes["bob:5000"], remotes["stun:3478"]
        for _ in range(4):  # 3 s of traffic: longer than the timer
            alice.sendto(b"keepalive", bob.getsockname())
            assert bob.recvfrom(2048) == (b"keepalive", (WAN, 43600))
            time.sleep(1.0)
        stun.sendto(b"still mapped", (WAN, 43600))
        assert alice.recvfrom(2048) == (b"still mapped", stun.getsockname())
        time.sleep(3.0)  # no outbound packet for longer than the timer
        assert ruleset.read_elements(ruleset.SET_INBOUND, netns=natgw.ns) == []
        remotes["bob:5001"].sendto(b"too late", (WAN, 43600))
        _dropped_and_logged(natgw, alice, UdpDatagram(("203.0.113.40", 5001), (WAN, 43600), b"too late"))


@needs_kernel_nat
def test_reloading_the_ruleset_starts_every_set_empty(natgw: Natgw) -> None:
    """A new behaviour is a new table generation: no element of the old one survives (the flows in
    conntrack do, and their next outbound packet records their mapping again)."""
    _load(natgw, NatBehaviour(filtering=Filtering.ADDRESS_DEPENDENT, port_preservation=False))
    with contextlib.ExitStack() as stack:
        alice = stack.enter_context(natgw.udp("alice", 43700))
        remotes = _remote_sockets(natgw, stack)
        alice.sendto(b"out", remotes["bob:5000"].getsockname())
        external = remotes["bob:5000"].recvfrom(2048)[1][1]
        for name in (ruleset.SET_EIM, ruleset.SET_INBOUND, ruleset.SET_CONTACTED):
            assert len(ruleset.read_elements(name, netns=natgw.ns)) == 1, name

        _load(natgw, NatBehaviour(mapping=Mapping.ADDRESS_DEPENDENT, filtering=Filtering.ENDPOINT_INDEPENDENT))
        assert ruleset.read_elements(ruleset.SET_ADM, netns=natgw.ns) == []
        assert ruleset.read_elements(ruleset.SET_INBOUND, netns=natgw.ns) == []
        with pytest.raises(NftError, match="No such file or directory"):
            ruleset.read_elements(ruleset.SET_CONTACTED, netns=natgw.ns)
        remotes["stun:3478"].sendto(b"early", (WAN, external))
        _dropped_and_logged(natgw, alice, UdpDatagram(("203.0.113.30", 3478), (WAN, external), b"early"))

        alice.sendto(b"again", remotes["bob:5000"].getsockname())  # the same conntrack flow, recorded anew
        assert remotes["bob:5000"].recvfrom(2048) == (b"again", (WAN, external))
        remotes["stun:3478"].sendto(b"now", (WAN, external))
        assert alice.recvfrom(2048) == (b"now", ("203.0.113.30", 3478))


@needs_kernel_nat
def test_two_inside_hosts_can_share_an_external_port(natgw: Natgw) -> None:
    """A kernel limit, not RFC 4787 (REQ-3 forbids port overloading): masquerade keeps a port unique only
    towards one remote endpoint. A second inside host (10.10.1.11) on the same port gets the same
    external port towards another remote, and another port towards the first host's remote."""
    _load(natgw, NatBehaviour(filtering=Filtering.ENDPOINT_INDEPENDENT))
    alice_ns = natgw.lab.ns("alice")
    subprocess.run(["ip", "-n", alice_ns, "addr", "add", "10.10.1.11/24", "dev", "eth0"], check=True)
    try:
        with in_netns(alice_ns):
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("10.10.1.11", 43900))
        other.settimeout(2.0)
        with other, natgw.udp("alice", 43900) as alice, natgw.udp("bob", 5000) as bob, natgw.udp("stun", 3478) as stun:
            alice.sendto(b"first host", ("203.0.113.40", 5000))
            assert bob.recvfrom(2048) == (b"first host", (WAN, 43900))
            other.sendto(b"second host", ("203.0.113.30", 3478))
            assert stun.recvfrom(2048) == (b"second host", (WAN, 43900))  # overloaded
            other.sendto(b"second host", ("203.0.113.40", 5000))
            data, (address, port) = bob.recvfrom(2048)
            assert (data, address) == (b"second host", WAN) and port != 43900  # not endpoint-independent
        inbound = {e.key: e.data for e in ruleset.read_elements(ruleset.SET_INBOUND, netns=natgw.ns)}
        assert inbound == {(43900,): ("10.10.1.10", 43900), (port,): ("10.10.1.11", 43900)}  # the first host's
    finally:
        subprocess.run(["ip", "-n", alice_ns, "addr", "del", "10.10.1.11/24", "dev", "eth0"], check=True)


# --------------------------------------------------------------------------- RFC 4787 §6 hairpinning (root)
#
# Two endpoints of Alice's host behind the NAT: X2 (43601) has a mapping made towards stun:3478, X3 (43602)
# one towards bob:5000; X1 (43600) has sent to bob:5000 only. X1 then sends to X2's and X3's external
# endpoints: the same address (the NAT's), two ports.

# RFC 4787 §4.1 applied to X1's hairpinned flows: which mapping does each leave from?
HAIRPIN_SOURCE = {  # mapping -> (X1 -> X2' uses X1's mapping towards bob, X1 -> X3' reuses X1 -> X2's)
    Mapping.ENDPOINT_INDEPENDENT: (True, True),  # one mapping for every destination
    Mapping.ADDRESS_DEPENDENT: (False, True),  # a new remote address (the NAT's own), then the same one
    Mapping.ADDRESS_AND_PORT_DEPENDENT: (False, False),  # a new one per remote endpoint
}


def _hairpin_endpoints(natgw: Natgw, stack: contextlib.ExitStack) -> tuple[list[socket.socket], list[int]]:
    """X1, X2, X3 and the external ports of X1's mapping towards bob, X2's towards stun, X3's towards bob."""
    x1, x2, x3 = (stack.enter_context(natgw.udp("alice", port)) for port in (43600, 43601, 43602))
    bob, stun = stack.enter_context(natgw.udp("bob", 5000)), stack.enter_context(natgw.udp("stun", 3478))
    externals = []
    for inside, remote in ((x1, bob), (x2, stun), (x3, bob)):
        inside.sendto(b"out", remote.getsockname())
        data, (address, external) = remote.recvfrom(2048)
        assert (data, address) == (b"out", WAN)
        externals.append(external)
    return [x1, x2, x3], externals


def _hairpin_dropped_and_logged(natgw: Natgw, receiver: socket.socket, datagram: UdpDatagram) -> None:
    """Dropped in the input hook (it was addressed to the NAT itself), logged as a refused hairpin."""
    logged = natgw.nflog.wait(2.0)
    assert [(p.prefix, p.hook, p.indev) for p in logged] == [(ruleset.DROP_PREFIX_HAIRPIN, 1, natgw.ifindex("lan0"))]
    assert drop_hook(logged[0].prefix) == "hairpin"
    assert decode_ipv4_udp(logged[0].payload) == datagram
    assert _nothing_queued(receiver)


@needs_kernel_nat
@pytest.mark.parametrize(("mapping", "filtering"), BEHAVIOUR_GRID, ids=[_grid_id(v) for v in BEHAVIOUR_GRID])
def test_hairpinning_presents_the_senders_external_mapping(
    natgw: Natgw, mapping: Mapping, filtering: Filtering
) -> None:
    """REQ-9: X1's packet to X2's external endpoint reaches X2 from X1's own external mapping for that
    destination (HAIRPIN_SOURCE), whatever X2's filtering (X2 never sent to the NAT's address), and X2's
    answer reaches X1 from X2's external endpoint. A packet to an external port no mapping holds is
    dropped and logged as a refused hairpin."""
    _load(natgw, NatBehaviour(mapping=mapping, filtering=filtering))
    with contextlib.ExitStack() as stack:
        (x1, x2, x3), (x1_bob, x2_ext, x3_ext) = _hairpin_endpoints(natgw, stack)
        x1.sendto(b"hairpin", (WAN, x2_ext))
        data, (address, x1_towards_x2) = x2.recvfrom(2048)
        assert (data, address) == (b"hairpin", WAN)  # "External source IP address and port"
        x2.sendto(b"answer", (WAN, x1_towards_x2))
        assert x1.recvfrom(2048) == (b"answer", (WAN, x2_ext))
        x1.sendto(b"hairpin", (WAN, x3_ext))
        data, (address, x1_towards_x3) = x3.recvfrom(2048)
        assert (data, address) == (b"hairpin", WAN)
        assert (x1_towards_x2 == x1_bob, x1_towards_x3 == x1_towards_x2) == HAIRPIN_SOURCE[mapping]
        if mapping is Mapping.ENDPOINT_INDEPENDENT:
            assert x1_towards_x2 == 43600  # masquerade's port preservation, the default here
        assert x1_towards_x2 not in (x2_ext, x3_ext)
        unmapped = next(port for port in range(43690, 43700) if port not in (x1_bob, x2_ext, x3_ext, x1_towards_x3))
        x1.sendto(b"nobody", (WAN, unmapped))
        _hairpin_dropped_and_logged(natgw, x2, UdpDatagram(("10.10.1.10", 43600), (WAN, unmapped), b"nobody"))
    counters = natgw.counters()
    assert (counters["hairpinned"], counters["hairpin_dropped"]) == (3, 1)
    assert counters["inbound_remote_port_rewritten"] == 0
    assert counters["inbound_dropped_input"] == 0
    assert (natgw.nflog.odd, natgw.nflog.overruns) == (0, 0)


@needs_kernel_nat
@pytest.mark.parametrize("mapping", list(Mapping), ids=[m.value for m in Mapping])
def test_without_hairpinning_the_packet_is_dropped_and_counted(natgw: Natgw, mapping: Mapping) -> None:
    """Hairpinning off (REQ-9 broken on purpose): X1's packet to X2's external endpoint never reaches X2; it
    is dropped in the input hook, counted and NFLOG-logged like the other refused packets."""
    behaviour = NatBehaviour(mapping=mapping, hairpinning=False)
    _load(natgw, behaviour)
    with contextlib.ExitStack() as stack:
        (x1, x2, _), (_, x2_ext, _) = _hairpin_endpoints(natgw, stack)
        for attempt in (b"hairpin", b"again"):
            x1.sendto(attempt, (WAN, x2_ext))
            _hairpin_dropped_and_logged(natgw, x2, UdpDatagram(("10.10.1.10", 43600), (WAN, x2_ext), attempt))
    counters = natgw.counters()
    assert (counters["hairpinned"], counters["hairpin_dropped"]) == (0, 2)
    assert counters["inbound_dropped_input"] == 0
    assert ruleset.SET_INBOUND not in ruleset.dynamic_sets(behaviour)  # nothing to look mappings up in
