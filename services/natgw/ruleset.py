"""The NAT gateway's kernel ruleset: RFC 4787 behaviours rendered as one nftables table.

What the kernel gives (measured, see FIELD-NOTES): nftables `masquerade` is endpoint-independent
mapping with port preservation and address-and-port-dependent filtering; `masquerade
fully-random` is address-and-port-dependent mapping. Unsolicited packets to the NAT's own outside
address go through the *input* hook (there is no conntrack entry to translate them), packets
aimed at inside addresses through *forward*. Drops never show up as conntrack events, so every
dropped inbound packet is counted and logged to NFLOG (`log group N queue-threshold 1`; without
the threshold the kernel batches log messages and they arrive late or not at all).

The rest is built in the same table from dynamic nft sets and maps whose element timeout is the
mapping timer (RFC 4787 REQ-5), filled from the packet path by the `record_mappings` chain
(postrouting, after srcnat: it sees each outbound packet already translated, so it learns the
external port the kernel picked, whatever way it picked it) and refreshed by every outbound packet
(REQ-6):

- endpoint-independent and address-dependent filtering (§5): a `prerouting` nat chain DNATs an
  inbound UDP packet to the outside address whose destination port is the external port of a
  mapping (`inbound_mappings`: external port -> internal ip . port) back to its internal endpoint:
  from anyone (EIF), or only from a remote address the mapping has sent to (ADF,
  `contacted_addresses`: remote ip . external port). The filtering state is kept per mapping
  (§5: "the NAT assigns a filtering rule for the mapping"), as conntrack does for APDF. The
  forward chain accepts what was DNATed (`ct status dnat`); everything else still falls through
  to the input hook and is dropped and logged as before.
- address-dependent mapping (§4.1), and endpoint-independent mapping without port preservation:
  a map internal ip . port [. remote ip] -> external ip . port makes every later flow of the
  internal endpoint (towards that remote address, for ADM) reuse the mapping (`snat ... map`);
  the first flow's port is the kernel's (`masquerade fully-random`, or `masquerade` to preserve it).
- port preservation for address(-and-port)-dependent mapping: the first mapping of an internal
  endpoint keeps its port (`masquerade`), later ones get random ports (`mapped_endpoints`).
- hairpinning (RFC 4787 §6, REQ-9; on unless asked off): a UDP packet from the inside to the
  outside address and the external port of a current mapping (`inbound_mappings`) is DNATed in
  `prerouting` to the mapping's internal endpoint and SNATed in `postrouting` to the sender's own
  external mapping for that destination, by the same rules as its outbound flows (REQ-9 a:
  "External source IP address and port"), so both ends see each other's mapped addresses; the
  flow's packets are forwarded inside -> inside (`hairpinned`), and its mappings recorded like
  outbound ones. The receiving mapping's filtering does NOT apply: §5 filters packets "originating
  from specific external endpoints", a hairpinned one originates inside, and §6 relays it to any
  mapping that is active; RFC 5780 §3.4's hairpinning test (a request to a mapping that only ever
  sent to the STUN server) would otherwise fail behind every NAT without endpoint-independent
  filtering. Whatever else comes from the inside for the outside address (any port with hairpinning
  off, an unmapped one with it on) is dropped, counted (`hairpin_dropped`) and NFLOG-logged with its
  own prefix, like the inbound drops.

Kernel limits (both measured in tests/test_natgw_kernel.py). Conntrack keeps an external port from being
used twice only *towards the same remote endpoint*, so a second inside host using the same port gets it
too towards other remotes (port overloading, which REQ-3 forbids), and another one towards a remote the
first already talks to (so its mapping is not endpoint-independent); EIF/ADF then deliver new remotes on
that port to the first host. The lab has one inside host. And with a mapping that is not endpoint-
independent and EIF/ADF, a remote endpoint that already talks to X:x through one mapping and then sends
to another of its mappings is admitted, but conntrack cannot hold two sessions with the same inside
tuple: the kernel gives the second one another remote port, so X:x sees the remote's port rewritten
(`inbound_remote_port_rewritten` counts those packets); X:x's answers to it still reach the remote, from
the mapping it sent to.

`render` is pure (text out); `apply`, `remove`, `read_counters`, `read_elements` and
`set_mapping_timeout` act on the network namespace of the calling thread, or on `netns` when given.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinhole.nat import MAX_MAPPING_TIMEOUT, Filtering, Mapping, NatBehaviour
from services.natgw.kernel import in_namespace, run_tool

__all__ = [
    "COUNTERS",
    "DROP_PREFIX_FORWARD",
    "DROP_PREFIX_HAIRPIN",
    "DROP_PREFIX_INPUT",
    "DYNAMIC_SETS",
    "HAIRPIN_COUNTERS",
    "TABLE",
    "Filtering",
    "KernelNatError",
    "Mapping",
    "NftError",
    "RulesetError",
    "SetElement",
    "apply",
    "drop_hook",
    "dynamic_sets",
    "get_mapping_timeout",
    "parse_counters",
    "parse_elements",
    "read_counters",
    "read_elements",
    "remove",
    "render",
    "set_mapping_timeout",
]

TABLE = "pinhole_nat"
FAMILY = "inet"

# Named counters (nft `counter` objects, read back with `nft -j list counters`).
COUNTER_MAPPINGS_CREATED = "mappings_created"  # first packet of each outbound flow (nat chain)
COUNTER_OUTBOUND = "outbound_translated"  # every packet forwarded LAN -> WAN
COUNTER_INBOUND = "inbound_translated"  # every packet forwarded WAN -> LAN (established/related, or admitted)
COUNTER_ADMITTED = "inbound_admitted"  # first packet of each inbound flow admitted by EIF/ADF (nat chain)
# an admitted inbound flow whose remote port the kernel had to change (see "Kernel limits" above): one per packet
COUNTER_REMOTE_PORT_REWRITTEN = "inbound_remote_port_rewritten"
COUNTER_DROPPED_INPUT = "inbound_dropped_input"  # unsolicited, to the NAT's outside address
COUNTER_DROPPED_FORWARD = "inbound_dropped_forward"  # unsolicited, routed towards the LAN
COUNTERS = (
    COUNTER_MAPPINGS_CREATED,
    COUNTER_OUTBOUND,
    COUNTER_INBOUND,
    COUNTER_ADMITTED,
    COUNTER_REMOTE_PORT_REWRITTEN,
    COUNTER_DROPPED_INPUT,
    COUNTER_DROPPED_FORWARD,
)
# RFC 4787 §6, only where something translates (a plain router has no mapping to hairpin through)
COUNTER_HAIRPINNED = "hairpinned"  # every packet relayed inside -> inside through a mapping, both ways
COUNTER_HAIRPIN_DROPPED = "hairpin_dropped"  # from inside to the outside address, not hairpinned
HAIRPIN_COUNTERS = (COUNTER_HAIRPINNED, COUNTER_HAIRPIN_DROPPED)

# Dynamic sets and maps (element timeout = the mapping timer), filled by the record_mappings chain.
SET_EIM = "endpoint_independent_mappings"  # internal ip . port : external ip . port
SET_ADM = "address_dependent_mappings"  # internal ip . port . remote ip : external ip . port
SET_MAPPED = "mapped_endpoints"  # internal ip . port holding at least one mapping
SET_INBOUND = "inbound_mappings"  # external port : internal ip . port
SET_CONTACTED = "contacted_addresses"  # remote ip . external port the mapping has sent to
DYNAMIC_SETS = (SET_EIM, SET_ADM, SET_MAPPED, SET_INBOUND, SET_CONTACTED)
SET_TYPES = {  # name -> (key type, data type or None for a set)
    SET_EIM: ("ipv4_addr . inet_service", "ipv4_addr . inet_service"),
    SET_ADM: ("ipv4_addr . inet_service . ipv4_addr", "ipv4_addr . inet_service"),
    SET_MAPPED: ("ipv4_addr . inet_service", None),
    SET_INBOUND: ("inet_service", "ipv4_addr . inet_service"),
    SET_CONTACTED: ("ipv4_addr . inet_service", None),
}

# NFLOG prefixes of the drop rules: they say in which hook the packet was dropped.
DROP_PREFIX_INPUT = "pinhole-nat drop input"
DROP_PREFIX_FORWARD = "pinhole-nat drop forward"
DROP_PREFIX_HAIRPIN = "pinhole-nat drop hairpin"  # from inside to the outside address, not hairpinned
SIP_PREFIX = "pinhole-nat sip"  # copies of forwarded SIP, for the gateway's passive SIP observer

IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
SYSCTL_DIR = Path("/proc/sys/net/netfilter")
UDP_TIMEOUT_SYSCTLS = ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream")


class RulesetError(ValueError):
    """A NAT behaviour or a render argument is invalid; the message says which and why."""


class KernelNatError(RuntimeError):
    """The kernel or a tool refused a NAT operation."""


class NftError(KernelNatError):
    """`nft` failed; the message carries its stderr."""


def dynamic_sets(behaviour: NatBehaviour) -> list[str]:
    """The sets and maps the ruleset of `behaviour` declares, in DYNAMIC_SETS order (pure)."""
    mapping, preserve = behaviour.mapping, behaviour.preserves_ports
    if not behaviour.translate:
        return []
    wanted = {
        SET_EIM: mapping is Mapping.ENDPOINT_INDEPENDENT and not preserve,
        SET_ADM: mapping is Mapping.ADDRESS_DEPENDENT,
        SET_MAPPED: mapping is not Mapping.ENDPOINT_INDEPENDENT and bool(preserve),
        # the filtering DNAT's and hairpinning's map from an external port to its internal endpoint
        SET_INBOUND: behaviour.filtering is not Filtering.ADDRESS_AND_PORT_DEPENDENT or behaviour.hairpins,
        SET_CONTACTED: behaviour.filtering is Filtering.ADDRESS_DEPENDENT,
    }
    return [name for name in DYNAMIC_SETS if wanted[name]]


def _mapping_rules(behaviour: NatBehaviour, match: str, *, first: str, kernel: str, remote: str) -> list[str]:
    """The srcnat rules giving a packet that matches `match` the mapping `behaviour` asks for (RFC 4787 §4.1):
    a mapping the dynamic sets remember, else the port `kernel` picks (`masquerade`, or `snat ip to` the
    outside address; `fully-random` for a new random port). `first` (a counter) goes on the first rule;
    `remote` is the expression of the remote address an address-dependent mapping is kept for."""
    mapping, preserve = behaviour.mapping, behaviour.preserves_ports
    head = f"{match} {first}" if first else match
    if mapping is Mapping.ENDPOINT_INDEPENDENT and preserve:
        return [f"{head} {kernel}"]
    if mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT and not preserve:
        return [f"{head} {kernel} fully-random"]
    rules = [head] if first else []
    if mapping is Mapping.ENDPOINT_INDEPENDENT:
        rules.append(f"{match} snat ip to ip saddr . udp sport map @{SET_EIM}")
    elif mapping is Mapping.ADDRESS_DEPENDENT:
        rules.append(f"{match} snat ip to ip saddr . udp sport . {remote} map @{SET_ADM}")
    if preserve:  # address(-and-port)-dependent: only X:x's first mapping can keep x
        rules.append(f"{match} ip saddr . udp sport @{SET_MAPPED} {kernel} fully-random")
        rules.append(f"{match} {kernel}")
    else:
        rules.append(f"{match} {kernel} fully-random")
    return rules


def render(
    behaviour: NatBehaviour,
    *,
    lan_if: str = "lan0",
    wan_if: str = "wan0",
    wan_address: str,
    lan_prefix: str,
    log_group: int = 1,
    sip_log_group: int | None = None,
    sip_port: int = 5060,
    wan_services: Sequence[tuple[str, int]] = (),
) -> str:
    """The nft script for table `inet pinhole_nat` implementing `behaviour`.

    With `sip_log_group`, a copy of every SIP datagram the NAT forwards goes to that NFLOG
    group (observation only: the NAT changes nothing in it, RFC 4787 REQ-10: no ALG).
    `wan_services` are (protocol, port) pairs the gateway itself serves on its outside address
    (in a pod: the gRPC port for the kubelet's probes, the VXLAN port of Alice's link); every other
    unsolicited packet there is dropped and logged as before, and no mapping admits packets to them.

    The script replaces any previous version of the table, its sets and their elements, in one
    transaction (conntrack entries stay: established flows keep their translation).
    """
    if not isinstance(behaviour, NatBehaviour):
        raise RulesetError(f"behaviour must be a NatBehaviour, not {type(behaviour).__name__}")
    for what, name in (("lan_if", lan_if), ("wan_if", wan_if)):
        if not isinstance(name, str) or not IFNAME_RE.match(name):
            raise RulesetError(f"{what} {name!r} is not an interface name (1-15 of [A-Za-z0-9_.-])")
    if lan_if == wan_if:
        raise RulesetError(f"lan_if and wan_if are both {lan_if!r}")
    try:
        wan = ipaddress.IPv4Address(wan_address)
    except (ValueError, TypeError):
        raise RulesetError(f"wan_address {wan_address!r} is not an IPv4 address") from None
    try:
        lan = ipaddress.IPv4Network(lan_prefix, strict=False)
    except (ValueError, TypeError):
        raise RulesetError(f"lan_prefix {lan_prefix!r} is not an IPv4 network") from None
    if wan in lan:
        raise RulesetError(f"wan_address {wan} lies inside lan_prefix {lan}")
    if isinstance(log_group, bool) or not isinstance(log_group, int) or not 0 <= log_group < 65536:
        raise RulesetError(f"log_group {log_group!r} is not an integer in 0..65535")

    admitted = ""
    udp_services = []
    for protocol, port in wan_services:
        if (
            protocol not in ("tcp", "udp")
            or isinstance(port, bool)
            or not isinstance(port, int)
            or not 0 < port < 65536
        ):
            raise RulesetError(f"wan service {protocol}/{port} is not tcp/PORT or udp/PORT")
        admitted += f'\t\tiifname "{wan_if}" ip daddr {wan} {protocol} dport {port} accept\n'
        if protocol == "udp":
            udp_services.append(str(port))

    def log(prefix: str) -> str:
        return f'log prefix "{prefix}" group {log_group} queue-threshold 1'

    inbound = f'iifname "{wan_if}" oifname "{lan_if}" ct state established,related'
    unsolicited = f'iifname "{wan_if}" ip daddr {wan}'

    observe = ""
    if sip_log_group is not None:
        copy = f'log prefix "{SIP_PREFIX}" group {sip_log_group} queue-threshold 1'
        observe = f"\t\tudp dport {sip_port} {copy}\n\t\tudp sport {sip_port} udp dport != {sip_port} {copy}\n"

    if not behaviour.translate:
        return _render_router(behaviour, lan_if, wan_if, lan, observe, admitted, unsolicited, log)

    mapping, filtering, preserve = behaviour.mapping, behaviour.filtering, behaviour.preserves_ports
    outbound = f'oifname "{wan_if}" ip saddr {lan}'
    created = f'counter name "{COUNTER_MAPPINGS_CREATED}"'
    sets = dynamic_sets(behaviour)
    if mapping is Mapping.ENDPOINT_INDEPENDENT and preserve:
        why = ["masquerade keeps the internal port x wherever it is free,", "so every flow of X:x leaves from port x"]
    elif mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT and not preserve:
        why = ["every flow gets a new mapping, on a random port"]
    else:
        ports = "X:x's first mapping keeps port x, later ones get random ports" if preserve else "on a random port"
        if mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT:
            why = ["every flow gets a new mapping;", ports]
        else:
            remote = " to the same remote address" if mapping is Mapping.ADDRESS_DEPENDENT else ""
            why = [f"a new flow of X:x{remote} reuses its mapping, else gets a new one", f"({ports})"]
    translate = _mapping_rules(behaviour, outbound, first=created, kernel="masquerade", remote="ip daddr")
    # RFC 4787 §6 hairpinning, the packets the prerouting chain turned back inside: still from inside
    # (their source is translated here), and DNATed towards an inside address
    hairpinned = f'oifname "{lan_if}" ip saddr {lan} ct status dnat'
    if behaviour.hairpins:
        translate.append("# RFC 4787 §6 hairpinned: from the sender's mapping towards the address it sent to (REQ-9 a)")
        translate += _mapping_rules(
            behaviour, hairpinned, first="", kernel=f"snat ip to {wan}", remote="ct original ip daddr"
        )

    declarations = ""
    for name in sets:
        key, data = SET_TYPES[name]
        kind, type_ = ("map", f"{key} : {data}") if data else ("set", key)
        declarations += (
            f"\t{kind} {name} {{\n\t\ttype {type_}\n\t\tflags dynamic,timeout\n"
            f"\t\ttimeout {behaviour.mapping_timeout}s\n\t}}\n\n"
        )

    explain: list[str] = []  # the prerouting chain's comment lines
    dstnat: list[str] = []  # and its rules
    admit_forward = ""
    if filtering is not Filtering.ADDRESS_AND_PORT_DEPENDENT:
        services = f" udp dport != {{ {', '.join(udp_services)} }}" if udp_services else ""
        contacted = f" ip saddr . udp dport @{SET_CONTACTED}" if filtering is Filtering.ADDRESS_DEPENDENT else ""
        who = "if the mapping has sent to its source address" if contacted else "whoever sent it"
        explain += [
            f"RFC 4787 §5 {filtering.value} filtering: an inbound packet to the external port of a mapping",
            f"goes to its internal endpoint, {who};",
            "anything else goes on to the input hook, where it is dropped and logged",
        ]
        dstnat.append(
            f'{unsolicited}{services} udp dport @{SET_INBOUND}{contacted} counter name "{COUNTER_ADMITTED}" '
            f"dnat ip to udp dport map @{SET_INBOUND}"
        )
    if behaviour.hairpins:
        explain += [
            "RFC 4787 §6 hairpinning: a packet from inside to the external port of a mapping goes to its",
            "internal endpoint, whatever the mapping's filtering (§6 asks only for an active mapping)",
        ]
        dstnat.append(
            f'iifname "{lan_if}" ip saddr {lan} ip daddr {wan} udp dport @{SET_INBOUND} '
            f"dnat ip to udp dport map @{SET_INBOUND}"
        )
    prerouting = ""
    if dstnat:
        comments = "".join(f"\t# {line}\n" for line in explain)
        rules = "".join(f"\t\t{rule}\n" for rule in dstnat)
        prerouting = (
            f"{comments}\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
            f"{rules}\t}}\n\n"
        )
    if filtering is not Filtering.ADDRESS_AND_PORT_DEPENDENT:
        admit_forward = (
            f'\t\tiifname "{wan_if}" oifname "{lan_if}" ct status dnat meta l4proto udp ct state new '
            'ct timeout set "mapping"\n'
            f'\t\tiifname "{wan_if}" oifname "{lan_if}" ct status dnat counter name "{COUNTER_INBOUND}" accept\n'
        )

    def updates(direction: str, remote: str, names: list[str]) -> str:
        """The set updates recording the mapping of a packet of `direction` sent by inside endpoint X:x to
        `remote` (an address); the packet is already translated (ip saddr . udp sport: X':x')."""
        inside = f"ct {direction} ip saddr . ct {direction} proto-src"
        update = {
            SET_EIM: f"update @{SET_EIM} {{ {inside} : ip saddr . udp sport }}",
            SET_ADM: f"update @{SET_ADM} {{ {inside} . {remote} : ip saddr . udp sport }}",
            SET_MAPPED: f"update @{SET_MAPPED} {{ {inside} }}",
            SET_INBOUND: f"update @{SET_INBOUND} {{ udp sport : {inside} }}",
            SET_CONTACTED: f"update @{SET_CONTACTED} {{ {remote} . udp sport }}",
        }
        return " ".join(update[name] for name in names)

    record = ""
    if sets:
        recording: list[str] = []
        for direction in ("original", "reply"):  # reply: X:x answering a flow it was sent (admitted by EIF/ADF)
            recording.append(
                f'\t\toifname "{wan_if}" ct direction {direction} ct {direction} ip saddr {lan} meta l4proto udp '
                + updates(direction, "ip daddr", sets)
                + "\n"
            )
        if behaviour.hairpins:
            # both ends of a hairpinned flow are inside, each sending through its own mapping (the reply
            # direction: X2 answering X1), to the NAT's outside address, not a contacted remote address
            mapped = [name for name in sets if name != SET_CONTACTED]
            for direction in ("original", "reply"):
                recording.append(
                    f'\t\toifname "{lan_if}" ct direction {direction} ct {direction} ip saddr {lan} ct status dnat '
                    f"meta l4proto udp {updates(direction, f'ct {direction} ip daddr', mapped)}\n"
                )
        if SET_INBOUND in sets and filtering is not Filtering.ADDRESS_AND_PORT_DEPENDENT:
            hairpins = f" ct original ip saddr != {lan}" if behaviour.hairpins else ""  # not one of those
            recording.append(
                f'\t\toifname "{lan_if}" ct direction original ct status dnat ct status snat{hairpins} '
                f'counter name "{COUNTER_REMOTE_PORT_REWRITTEN}"\n'
            )
        record = f"""\
\t# every outbound packet, already translated (after srcnat), records or refreshes its mapping
\t# (RFC 4787 REQ-6) under the external port the kernel gave it
\tchain record_mappings {{
\t\ttype filter hook postrouting priority srcnat + 100; policy accept;
{"".join(recording)}\t}}

"""

    counters = "\n".join(f"\tcounter {name} {{\n\t}}" for name in (*COUNTERS, *HAIRPIN_COUNTERS))
    explained = "\n\t# ".join(why)
    # RFC 4787 §6: what came in on the inside for the outside address was hairpinned (forward) or is refused
    inside_to_inside = f'\t\tiifname "{lan_if}" oifname "{lan_if}" '
    hairpin = (
        f'{inside_to_inside}ct status dnat meta l4proto udp ct state new ct timeout set "mapping"\n'
        f'{inside_to_inside}ct status dnat counter name "{COUNTER_HAIRPINNED}" accept\n'
        if behaviour.hairpins
        else ""
    ) + f'{inside_to_inside}counter name "{COUNTER_HAIRPIN_DROPPED}" {log(DROP_PREFIX_HAIRPIN)} drop\n'
    hairpin_input = (
        f'\t\tiifname "{lan_if}" ip daddr {wan} meta l4proto udp counter name "{COUNTER_HAIRPIN_DROPPED}" '
        f"{log(DROP_PREFIX_HAIRPIN)} drop\n"
    )
    translation = "".join(f"\t\t{rule}\n" for rule in translate)
    return f"""\
# pinhole NAT gateway: RFC 4787 {behaviour.describe()}
table {FAMILY} {TABLE}
delete table {FAMILY} {TABLE}
table {FAMILY} {TABLE} {{
{counters}

{declarations}{prerouting}\t# RFC 4787 §4.1 {mapping.value} mapping: {explained}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
{translation}\t}}

{record}\t# RFC 4787 REQ-5: the mapping timer of this table's flows, set while a flow is new (before
\t# conntrack confirms it), so no namespace-wide sysctl is needed (a container's /proc/sys is read-only)
\tct timeout mapping {{
\t\tprotocol udp;
\t\tl3proto ip;
\t\tpolicy = {{ unreplied : {behaviour.mapping_timeout}, replied : {behaviour.mapping_timeout} }}
\t}}

\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
{observe}\t\tiifname "{lan_if}" oifname "{wan_if}" ip saddr {lan} meta l4proto udp ct state new ct timeout set "mapping"
\t\tiifname "{lan_if}" oifname "{wan_if}" ip saddr {lan} counter name "{COUNTER_OUTBOUND}" accept
\t\t{inbound} counter name "{COUNTER_INBOUND}" accept
{admit_forward}{hairpin}\t\tiifname "{wan_if}" counter name "{COUNTER_DROPPED_FORWARD}" {log(DROP_PREFIX_FORWARD)} drop
\t}}

\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "{wan_if}" ct state established,related accept
{admitted}\t\t{unsolicited} counter name "{COUNTER_DROPPED_INPUT}" {log(DROP_PREFIX_INPUT)} drop
{hairpin_input}\t}}
}}
"""


def _render_router(
    behaviour: NatBehaviour,
    lan_if: str,
    wan_if: str,
    lan: ipaddress.IPv4Network,
    observe: str,
    admitted: str,
    unsolicited: str,
    log: Any,
) -> str:
    """The table without translation (RFC 5763 §7.1: no NAT between Alice and Bob): the gateway forwards
    lan -> wan from the lan prefix and wan -> lan to it, addresses and ports unchanged, and counts both
    (`outbound_translated` / `inbound_translated` then count forwarded packets; no mapping is ever created
    or admitted). What is neither, and unsolicited packets to its own outside address, are still dropped
    and logged; forwarded SIP is still copied to the SIP observer."""
    counters = "\n".join(f"\tcounter {name} {{\n\t}}" for name in COUNTERS)
    return f"""\
# pinhole NAT gateway: {behaviour.describe()}
table {FAMILY} {TABLE}
delete table {FAMILY} {TABLE}
table {FAMILY} {TABLE} {{
{counters}

\t# the conntrack timer of the flows the gateway forwards (it observes them, it does not translate them)
\tct timeout mapping {{
\t\tprotocol udp;
\t\tl3proto ip;
\t\tpolicy = {{ unreplied : {behaviour.mapping_timeout}, replied : {behaviour.mapping_timeout} }}
\t}}

\t# RFC 5763 §7.1: no NAT, no filtering: both ways between lan and wan, as a router
\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
{observe}\t\tmeta l4proto udp ct state new ct timeout set "mapping"
\t\tiifname "{lan_if}" oifname "{wan_if}" ip saddr {lan} counter name "{COUNTER_OUTBOUND}" accept
\t\tiifname "{wan_if}" oifname "{lan_if}" ip daddr {lan} counter name "{COUNTER_INBOUND}" accept
\t\tiifname "{wan_if}" counter name "{COUNTER_DROPPED_FORWARD}" {log(DROP_PREFIX_FORWARD)} drop
\t}}

\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "{wan_if}" ct state established,related accept
{admitted}\t\t{unsolicited} counter name "{COUNTER_DROPPED_INPUT}" {log(DROP_PREFIX_INPUT)} drop
\t}}
}}
"""


def drop_hook(prefix: str) -> str | None:
    """ "input" or "forward" for the NFLOG prefix of one of our drop rules ("hairpin": a packet from inside
    to the outside address that was not hairpinned, dropped in either), else None."""
    return {DROP_PREFIX_INPUT: "input", DROP_PREFIX_FORWARD: "forward", DROP_PREFIX_HAIRPIN: "hairpin"}.get(prefix)


# --------------------------------------------------------------------------- kernel side


def _nft(args: list[str], script: str | None, netns: str | None) -> str:
    return run_tool("nft", args, netns=netns, error=NftError, stdin=script, package="nftables")


def apply(script: str, *, netns: str | None = None) -> None:
    """Load an nft script (`nft -f -`) as one transaction."""
    _nft(["-f", "-"], script, netns)


def remove(*, netns: str | None = None) -> None:
    """Delete the table if present (idempotent)."""
    _nft(["-f", "-"], f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n", netns)


def read_counters(*, netns: str | None = None) -> dict[str, dict[str, int]]:
    """{counter name: {"packets": N, "bytes": N}} for the table's named counters."""
    return parse_counters(_nft(["-j", "list", "counters", "table", FAMILY, TABLE], None, netns))


def parse_counters(text: str) -> dict[str, dict[str, int]]:
    """Parse `nft -j list counters` output (pure)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RulesetError(f"nft JSON output is not JSON: {e}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RulesetError('nft JSON output has no "nftables" array')
    out: dict[str, dict[str, int]] = {}
    for item in items:
        counter: Any = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(counter, dict) or counter.get("table") != TABLE:
            continue
        try:
            out[str(counter["name"])] = {
                "packets": int(counter["packets"]),
                "bytes": int(counter["bytes"]),
            }
        except (KeyError, TypeError, ValueError):
            raise RulesetError(f"nft counter entry is malformed: {counter!r}") from None
    return out


@dataclass(frozen=True)
class SetElement:
    """One element of a dynamic set or map: key (and data) fields in nft's order, seconds left."""

    key: tuple[str | int, ...]
    data: tuple[str | int, ...] | None
    expires: int | None


def read_elements(name: str, *, netns: str | None = None) -> list[SetElement]:
    """The elements of one of the table's dynamic sets or maps (DYNAMIC_SETS)."""
    if name not in DYNAMIC_SETS:
        raise RulesetError(f"{name!r} is not one of the table's sets: {', '.join(DYNAMIC_SETS)}")
    kind = "set" if SET_TYPES[name][1] is None else "map"
    return parse_elements(_nft(["-j", "list", kind, FAMILY, TABLE, name], None, netns))


def parse_elements(text: str) -> list[SetElement]:
    """Parse `nft -j list set|map` output (pure): elements with their expiry, nft 1.0.6 JSON schema 1."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RulesetError(f"nft JSON output is not JSON: {e}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RulesetError('nft JSON output has no "nftables" array')

    def fields(value: Any) -> tuple[str | int, ...]:
        if isinstance(value, dict) and isinstance(value.get("concat"), list):
            value = value["concat"]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise RulesetError(f"nft set element is malformed: {value!r}")
        return tuple(values)

    out = []
    for item in items:
        body: Any = None
        if isinstance(item, dict):
            body = item.get("set") or item.get("map")
        if not isinstance(body, dict) or body.get("table") != TABLE:
            continue
        for element in body.get("elem", []):
            key, data = element if isinstance(element, list) and len(element) == 2 else (element, None)
            expires = None
            if isinstance(key, dict) and isinstance(key.get("elem"), dict):
                expires = key["elem"].get("expires")
                key = key["elem"].get("val")
            if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
                raise RulesetError(f"nft set element has a bad expiry: {expires!r}")
            out.append(SetElement(fields(key), None if data is None else fields(data), expires))
    return out


def set_mapping_timeout(seconds: int, *, netns: str | None = None) -> list[str]:
    """Set conntrack's UDP timeouts (unreplied and stream) to `seconds`, and turn accounting on.

    RFC 4787 REQ-5: a UDP mapping timer MUST NOT expire in less than two minutes; Linux
    defaults to 30 s (120 s once a flow is "stream"). Both sysctls are per namespace; the
    ruleset's `ct timeout` sets the same on each of its flows, so where /proc/sys is read-only (a
    container) only accounting (per-mapping packet counts) can be missing. Returns what could not
    be set and is not already so.
    """
    _check_timeout(seconds, "mapping timeout")
    unset = []
    with in_namespace(netns):
        _ensure_conntrack()
        for name, value in [*((n, seconds) for n in UDP_TIMEOUT_SYSCTLS), ("nf_conntrack_acct", 1)]:
            path = SYSCTL_DIR / name
            try:  # accounting: per-mapping packet counts, for the translated-packet evidence
                path.write_text(f"{value}\n")
            except OSError as e:
                if e.errno != errno.EROFS:
                    raise KernelNatError(f"cannot write net.netfilter.{name}: {e.strerror}") from e
                if int(path.read_text()) != value:
                    unset.append(f"net.netfilter.{name}={value} (read-only here)")
    return unset


def _check_timeout(seconds: object, name: str) -> None:
    """At most MAX_MAPPING_TIMEOUT: the kernel would clamp or wrap a longer timer, or refuse it (the sysctl)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise RulesetError(f"{name} {seconds!r} is not a positive integer")
    if seconds > MAX_MAPPING_TIMEOUT:
        raise RulesetError(f"{name} {seconds} is not in 1..{MAX_MAPPING_TIMEOUT} (the seconds conntrack keeps)")


def get_mapping_timeout(*, netns: str | None = None) -> dict[str, int]:
    """The current UDP conntrack timeouts, {sysctl name: seconds}."""
    with in_namespace(netns):
        _ensure_conntrack()
        return {name: int((SYSCTL_DIR / name).read_text()) for name in UDP_TIMEOUT_SYSCTLS}


def _ensure_conntrack() -> None:
    if (SYSCTL_DIR / UDP_TIMEOUT_SYSCTLS[0]).exists():
        return
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        subprocess.run([modprobe, "nf_conntrack"], capture_output=True, check=False)
    if not (SYSCTL_DIR / UDP_TIMEOUT_SYSCTLS[0]).exists():
        raise KernelNatError(
            "net.netfilter.nf_conntrack_udp_timeout is missing: nf_conntrack is not loaded and could not be loaded"
        )


# --------------------------------------------------------------------------- faults (pinhole/faults/engine.py)
#
# While a fault plan is set, the forwarded UDP of the directions its rules can select goes to an
# NFQUEUE (the fault engine decides each packet), and a table `ip pinhole_faults` copies the packets
# the engine marks for duplication, after the NAT. No plan: neither exists (no queue, no cost).
# The queue needs an xtables rule (this kernel has no nftables `queue`, see nfqueue.py), so this part
# is not in the NAT table's script: loading the NAT table again (Configure) leaves the faults alone.


@dataclass(frozen=True)
class FaultPath:
    """Where the fault engine's packets come from: NFQUEUE `queue`, fed with the forwarded UDP of
    `directions` ("outbound": from Alice, lan -> wan; "inbound": toward her, wan -> lan)."""

    queue: int
    directions: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", frozenset(self.directions))
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) or not 0 <= self.queue < 65536:
            raise RulesetError(f"fault queue {self.queue!r} is not an integer in 0..65535")
        unknown = sorted(self.directions - {"inbound", "outbound"})
        if unknown or not self.directions:
            raise RulesetError(f"fault directions {sorted(self.directions)}: expected some of inbound, outbound")


def _fault_paths(path: FaultPath, lan_if: str, wan_if: str) -> list[tuple[str, str]]:
    for what, name in (("lan_if", lan_if), ("wan_if", wan_if)):
        if not isinstance(name, str) or not IFNAME_RE.match(name):
            raise RulesetError(f"{what} {name!r} is not an interface name (1-15 of [A-Za-z0-9_.-])")
    wanted = {"outbound": (lan_if, wan_if), "inbound": (wan_if, lan_if)}
    return [wanted[direction] for direction in ("outbound", "inbound") if direction in path.directions]


def render_faults(path: FaultPath, *, lan_if: str = "lan0", wan_if: str = "wan0") -> tuple[str, list[list[str]]]:
    """(the nft script of table ip pinhole_faults, the iptables argument lists of the queue rules) (pure)."""
    from pinhole.faults import engine as faults
    from pinhole.faults import nfqueue

    return faults.render_dup_table(), nfqueue.render_queue_rules(path.queue, _fault_paths(path, lan_if, wan_if))


def apply_faults(path: FaultPath, *, lan_if: str, wan_if: str, netns: str | None = None) -> None:
    """Load the dup table unless it is there, then (re)load the queue rules (idempotent: a new plan
    replaces the old path). The dup table never changes, and reloading it would re-register its hook,
    which makes the kernel drop every packet queued (held by the plan before) in the namespace."""
    from pinhole.faults import engine as faults
    from pinhole.faults import nfqueue

    try:
        _nft(["list", "table", "ip", faults.DUP_TABLE], None, netns)
    except NftError:
        _nft(["-f", "-"], faults.render_dup_table(), netns)
    nfqueue.install_queue_rules(path.queue, _fault_paths(path, lan_if, wan_if), netns=netns)


def remove_faults(*, netns: str | None = None, hooks: bool = True) -> int | None:
    """Queue nothing and copy nothing any more (idempotent; the queue rules first, so that no packet
    is queued after the engine has gone). Returns the queue rule's final count (remove_queue_rules).
    `hooks=False`: the queue rules only, while the engine still holds packets (deleting the tables'
    hooks would drop them); then again, once it has let them go."""
    from pinhole.faults import engine as faults
    from pinhole.faults import nfqueue

    rule_hits = nfqueue.remove_queue_rules(netns=netns, prune=hooks)
    if hooks:
        _nft(["-f", "-"], f"table ip {faults.DUP_TABLE}\ndelete table ip {faults.DUP_TABLE}\n", netns)
    return rule_hits


def forget_mapping(internal: tuple[str, int], behaviour: NatBehaviour, *, netns: str | None = None) -> int:
    """Delete what the dynamic sets remember of the mappings of inside endpoint `internal` (the
    fault engine's expire-mapping; conntrack's part is faults.expire_mapping): its external
    endpoint(s), the inbound mapping that EIF/ADF admit through, the addresses it contacted.
    Returns how many elements were deleted."""
    ip, port = str(internal[0]), int(internal[1])
    sets = dynamic_sets(behaviour)
    doomed: dict[str, list[tuple[str | int, ...]]] = {}
    external_ports: set[int] = set()
    for name in sets:
        for element in read_elements(name, netns=netns):
            key, data = element.key, element.data
            if name in (SET_EIM, SET_MAPPED, SET_ADM) and key[:2] == (ip, port):
                doomed.setdefault(name, []).append(key)
                if data is not None and len(data) == 2:
                    external_ports.add(int(data[1]))
            elif name == SET_INBOUND and data == (ip, port):
                doomed.setdefault(name, []).append(key)
                external_ports.add(int(key[0]))
    if SET_CONTACTED in sets and external_ports:
        for element in read_elements(SET_CONTACTED, netns=netns):
            if int(element.key[1]) in external_ports:
                doomed.setdefault(SET_CONTACTED, []).append(element.key)
    if not doomed:
        return 0
    script = "".join(
        f"delete element {FAMILY} {TABLE} {name} {{ {', '.join(' . '.join(str(f) for f in key) for key in keys)} }}\n"
        for name, keys in doomed.items()
    )
    _nft(["-f", "-"], script, netns)
    return sum(len(keys) for keys in doomed.values())
