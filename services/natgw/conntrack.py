"""The NAT's UDP mappings as conntrack sees them (`conntrack -L -p udp`).

A masqueraded UDP flow is one conntrack entry: the original tuple (inside host -> remote) and
the reply tuple (remote -> the NAT's outside address and port). RFC 4787 calls the pair of
inside and outside endpoints a mapping; the remote endpoint matters for filtering. A session the
remote opened (admitted by endpoint-independent or address-dependent filtering: the ruleset DNATs
it to the inside endpoint) is the other way round: the original tuple is remote -> the NAT's outside
address and port, the reply tuple inside host -> remote.

`parse_udp_mappings` is pure (text in, mappings out); `list_udp_mappings` and `flush` run the
conntrack tool in the calling thread's network namespace, or in `netns` when given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from services.natgw.kernel import run_tool

__all__ = [
    "ConntrackError",
    "NatMapping",
    "flush",
    "list_udp_mappings",
    "parse_udp_mappings",
]


class ConntrackError(ValueError):
    """conntrack output is malformed or the tool failed; the message says where."""


@dataclass(frozen=True)
class NatMapping:
    """One UDP mapping (RFC 4787 §4.1): `internal` -> `external` while talking to `remote`;
    `timeout` is the seconds left, `assured` whether conntrack saw traffic both ways long
    enough to call the flow a stream, `inbound` whether the remote opened the session (its first
    packet was admitted through the mapping by EIF/ADF) rather than the inside endpoint."""

    internal: tuple[str, int]
    external: tuple[str, int]
    remote: tuple[str, int]
    timeout: int
    assured: bool
    inbound: bool = False


def parse_udp_mappings(text: str, wan_address: str) -> list[NatMapping]:
    """Entries of `conntrack -L -p udp` output that are translated to `wan_address` (pure).

    A line reads `udp 17 TIMEOUT src= dst= sport= dport= [UNREPLIED] src= dst= sport= dport=
    [ASSURED] mark= use=1`: the first src/dst/sport/dport set is the original direction, the
    second the reply direction, whose destination is the NAT's outside endpoint. An inbound
    session's original destination is the outside endpoint and its reply source the inside one
    (an entry to and from the outside address itself, a local service, is no mapping).
    """
    wan = str(ipaddress.IPv4Address(wan_address))
    out: list[NatMapping] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "udp":
            continue
        if len(fields) < 3 or not fields[2].isdigit():
            raise ConntrackError(f"line {number}: no timeout after 'udp 17': {line!r}")
        timeout = int(fields[2])
        tuples: list[dict[str, str]] = [{}, {}]
        side = 0
        for token in fields[3:]:
            key, sep, value = token.partition("=")
            if not sep or key not in ("src", "dst", "sport", "dport"):
                continue
            if key in tuples[side]:
                side += 1
                if side > 1:
                    raise ConntrackError(f"line {number}: more than two tuples: {line!r}")
            tuples[side][key] = value
        orig, reply = tuples
        for name, tup in (("original", orig), ("reply", reply)):
            if set(tup) != {"src", "dst", "sport", "dport"}:
                raise ConntrackError(f"line {number}: incomplete {name} tuple: {line!r}")
        if reply["dst"] == wan:  # opened from inside, masqueraded: X:x -> Y:y, back Y:y -> X':x'
            inbound = False
            ends = [(orig["src"], orig["sport"]), (reply["dst"], reply["dport"]), (orig["dst"], orig["dport"])]
        elif orig["dst"] == wan and reply["src"] != wan:  # opened from outside, DNATed: Y:y -> X':x', back X:x -> Y:y'
            inbound = True  # (y' is y unless the kernel had to change it, see the ruleset's "Kernel limits")
            ends = [(reply["src"], reply["sport"]), (orig["dst"], orig["dport"]), (orig["src"], orig["sport"])]
        else:
            continue
        try:
            internal, external, remote = ((address, int(port)) for address, port in ends)
            out.append(NatMapping(internal, external, remote, timeout, "[ASSURED]" in fields, inbound))
        except ValueError:
            raise ConntrackError(f"line {number}: a port is not a number: {line!r}") from None
    return out


@dataclass(frozen=True)
class FlowCount:
    """Packets the NAT translated on one mapping: outbound (original direction) and inbound (reply)."""

    mapping: NatMapping
    outbound_packets: int
    inbound_packets: int


def parse_flow_counts(text: str, wan_address: str, ports: Iterable[int] | None = None) -> list[FlowCount]:
    """`conntrack -L -p udp` lines with accounting on (packets= after each tuple), pure. With `ports`, only
    the lines with one of them as a port are parsed (a token test: a call's few flows in a full table)."""
    wanted = {f"{end}={port}" for port in ports for end in ("sport", "dport")} if ports is not None else None
    out = []
    for line in text.splitlines():
        if wanted is not None and wanted.isdisjoint(line.split()):
            continue
        mappings = parse_udp_mappings(line, wan_address)
        packets = [int(token.partition("=")[2]) for token in line.split() if token.startswith("packets=")]
        if mappings and len(packets) >= 2:
            outbound, inbound = (packets[1], packets[0]) if mappings[0].inbound else (packets[0], packets[1])
            out.append(FlowCount(mappings[0], outbound, inbound))
    return out


def flow_counts(wan_address: str, *, netns: str | None = None, ports: Iterable[int] | None = None) -> list[FlowCount]:
    """Translated-packet counts of the current mappings (needs net.netfilter.nf_conntrack_acct=1); with `ports`,
    of those with one of them (a call's media ports: parsing the whole table at each BYE was half the
    gateway's CPU under load)."""
    return parse_flow_counts(_conntrack(["-L", "-p", "udp"], netns), wan_address, ports)


def _conntrack(args: list[str], netns: str | None) -> str:
    return run_tool("conntrack", args, netns=netns, error=ConntrackError, package="conntrack-tools")


def list_udp_mappings(wan_address: str, *, netns: str | None = None) -> list[NatMapping]:
    """The current UDP mappings onto `wan_address`."""
    return parse_udp_mappings(_conntrack(["-L", "-p", "udp"], netns), wan_address)


def flush(*, netns: str | None = None) -> None:
    """Delete every conntrack entry (all mappings) in the namespace."""
    _conntrack(["-F"], netns)
