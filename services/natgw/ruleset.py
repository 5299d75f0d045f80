"""The NAT gateway's kernel ruleset: RFC 4787 behaviours rendered as one nftables table.

What the kernel gives (measured, see FIELD-NOTES): nftables `masquerade` is endpoint-independent
mapping with port preservation and address-and-port-dependent filtering; `masquerade
fully-random` is address-and-port-dependent mapping. Unsolicited packets to the NAT's own outside
address go through the *input* hook (there is no conntrack entry to translate them), packets
aimed at inside addresses through *forward*. Drops never show up as conntrack events, so every
dropped inbound packet is counted and logged to NFLOG (`log group N queue-threshold 1`; without
the threshold the kernel batches log messages and they arrive late or not at all).

`render` is pure (text out); `apply`, `remove`, `read_counters` and `set_mapping_timeout` act on
the network namespace of the calling thread, or on `netns` when given.
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
from enum import Enum
from pathlib import Path
from typing import Any

from services.natgw.kernel import in_namespace, run_tool

__all__ = [
    "COUNTERS",
    "DROP_PREFIX_FORWARD",
    "DROP_PREFIX_INPUT",
    "TABLE",
    "Filtering",
    "KernelNatError",
    "Mapping",
    "NatBehaviour",
    "NftError",
    "RulesetError",
    "apply",
    "drop_hook",
    "get_mapping_timeout",
    "parse_counters",
    "read_counters",
    "remove",
    "render",
    "set_mapping_timeout",
]

TABLE = "pinhole_nat"
FAMILY = "inet"

# Named counters (nft `counter` objects, read back with `nft -j list counters`).
COUNTER_MAPPINGS_CREATED = "mappings_created"  # first packet of each outbound flow (nat chain)
COUNTER_OUTBOUND = "outbound_translated"  # every packet forwarded LAN -> WAN
COUNTER_INBOUND = "inbound_translated"  # every packet forwarded WAN -> LAN (established/related)
COUNTER_DROPPED_INPUT = "inbound_dropped_input"  # unsolicited, to the NAT's outside address
COUNTER_DROPPED_FORWARD = "inbound_dropped_forward"  # unsolicited, routed towards the LAN
COUNTERS = (
    COUNTER_MAPPINGS_CREATED,
    COUNTER_OUTBOUND,
    COUNTER_INBOUND,
    COUNTER_DROPPED_INPUT,
    COUNTER_DROPPED_FORWARD,
)

# NFLOG prefixes of the drop rules: they say in which hook the packet was dropped.
DROP_PREFIX_INPUT = "pinhole-nat drop input"
DROP_PREFIX_FORWARD = "pinhole-nat drop forward"
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


class Mapping(str, Enum):
    """RFC 4787 §4.1 mapping behaviour: what decides whether an outbound flow reuses a mapping."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(str, Enum):
    """RFC 4787 §5 filtering behaviour: which outside endpoints may send in through a mapping."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass
class NatBehaviour:
    """A NAT in RFC 4787 terms. The default is what §7.3 of RFC 5763 assumes and what Linux
    masquerading does: endpoint-independent mapping (REQ-1), address-and-port-dependent
    filtering; `mapping_timeout` in seconds (REQ-5: at least 120, 300 recommended)."""

    mapping: Mapping = Mapping.ENDPOINT_INDEPENDENT
    filtering: Filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
    mapping_timeout: int = 300

    def __post_init__(self) -> None:
        try:
            self.mapping = Mapping(self.mapping)
        except ValueError:
            names = ", ".join(m.value for m in Mapping)
            raise RulesetError(f"mapping {self.mapping!r} is not one of {names}") from None
        try:
            self.filtering = Filtering(self.filtering)
        except ValueError:
            names = ", ".join(f.value for f in Filtering)
            raise RulesetError(f"filtering {self.filtering!r} is not one of {names}") from None
        if (
            isinstance(self.mapping_timeout, bool)
            or not isinstance(self.mapping_timeout, int)
            or self.mapping_timeout < 1
        ):
            raise RulesetError(f"mapping_timeout {self.mapping_timeout!r} is not a positive integer")


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
    unsolicited packet there is dropped and logged as before.

    The script replaces any previous version of the table in one transaction. Behaviours the
    kernel's masquerade cannot express raise NotImplementedError instead of being faked.
    """
    if not isinstance(behaviour, NatBehaviour):
        raise RulesetError(f"behaviour must be a NatBehaviour, not {type(behaviour).__name__}")
    if behaviour.mapping is Mapping.ENDPOINT_INDEPENDENT:
        masquerade = "masquerade"
    elif behaviour.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT:
        masquerade = "masquerade fully-random"
    else:
        raise NotImplementedError(
            "address-dependent mapping (RFC 4787 §4.1) is not implemented: Linux masquerade "
            "maps either per endpoint (masquerade) or per flow (masquerade fully-random)"
        )
    if behaviour.filtering is not Filtering.ADDRESS_AND_PORT_DEPENDENT:
        raise NotImplementedError(
            f"{behaviour.filtering.value} filtering (RFC 4787 §5) is not implemented: conntrack "
            "only admits replies from the exact remote address and port; it needs an nft set "
            "filled by outbound packets and a prerouting DNAT for inbound packets matching it"
        )
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
    for protocol, port in wan_services:
        if (
            protocol not in ("tcp", "udp")
            or isinstance(port, bool)
            or not isinstance(port, int)
            or not 0 < port < 65536
        ):
            raise RulesetError(f"wan service {protocol}/{port} is not tcp/PORT or udp/PORT")
        admitted += f'\t\tiifname "{wan_if}" ip daddr {wan} {protocol} dport {port} accept\n'

    def log(prefix: str) -> str:
        return f'log prefix "{prefix}" group {log_group} queue-threshold 1'

    inbound = f'iifname "{wan_if}" oifname "{lan_if}" ct state established,related'
    unsolicited = f'iifname "{wan_if}" ip daddr {wan}'

    observe = ""
    if sip_log_group is not None:
        copy = f'log prefix "{SIP_PREFIX}" group {sip_log_group} queue-threshold 1'
        observe = f"\t\tudp dport {sip_port} {copy}\n\t\tudp sport {sip_port} udp dport != {sip_port} {copy}\n"

    counters = "\n".join(f"\tcounter {name} {{\n\t}}" for name in COUNTERS)
    return f"""\
# pinhole NAT gateway: RFC 4787 {behaviour.mapping.value} mapping, \
{behaviour.filtering.value} filtering
table {FAMILY} {TABLE}
delete table {FAMILY} {TABLE}
table {FAMILY} {TABLE} {{
{counters}

\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "{wan_if}" ip saddr {lan} counter name "{COUNTER_MAPPINGS_CREATED}" {masquerade}
\t}}

\t# RFC 4787 REQ-5: the mapping timer of this table's flows, set while a flow is new (before
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
    """ "input" or "forward" for the NFLOG prefix of one of our drop rules, else None."""
    return {DROP_PREFIX_INPUT: "input", DROP_PREFIX_FORWARD: "forward"}.get(prefix)


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


def set_mapping_timeout(seconds: int, *, netns: str | None = None) -> list[str]:
    """Set conntrack's UDP timeouts (unreplied and stream) to `seconds`, and turn accounting on.

    RFC 4787 REQ-5: a UDP mapping timer MUST NOT expire in less than two minutes; Linux
    defaults to 30 s (120 s once a flow is "stream"). Both sysctls are per namespace; the
    ruleset's `ct timeout` sets the same on each of its flows, so where /proc/sys is read-only (a
    container) only accounting (per-mapping packet counts) can be missing. Returns what could not
    be set and is not already so.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise RulesetError(f"mapping timeout {seconds!r} is not a positive integer")
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
