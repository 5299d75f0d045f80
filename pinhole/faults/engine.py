"""Declared faults, applied to the real packets a service forwards (NFQUEUE): the one impairment engine.

Two services run it. The NAT gateway sits on both links of Alice's path (lan: her LAN; wan: the
public side), so every datagram to or from her crosses it; the switch bridges the public segment,
one port per public host, so every datagram between two public hosts crosses two of its ports.
Where a service sits is a `LinkMap`: it names the links a queued packet crosses and in which
direction (`RoutedLinks` for the gateway, `BridgePorts` for the switch); the rest is common. While
a fault plan is set, the UDP the service forwards goes through an NFQUEUE (nfqueue.py) and this
module decides, packet by packet, what happens to it:

* a **rule** = a match, an occurrence window, a probability and one action;
* **match**: `link` (a name: the packet crosses that link; the gateway's are lan and wan, the
  switch's are the public nodes at its ports), `direction` (inbound: toward the link's host, i.e.
  Alice for the gateway and the port's node for the switch; outbound: from it), `what` (a
  predicate over the datagram, see `What`) and `peer` (the far end of that link: "IP" or
  "IP:PORT"); an unset field matches everything;
* **occurrence**: the rule counts the packets its match selects (1, 2, ...); it may fire on the
  `nth` and later ones, at most `count` times (0: no limit), each time with `probability` (a
  seeded RNG per rule, so a plan with loss is reproducible given the same packets);
* **actions**: drop; delay(seconds); duplicate(copies: the original plus that many); reorder (hold
  the packet until the next packet of its flow has passed, at most `max_hold` seconds);
  expire-mapping (delete the conntrack entries, i.e. the NAT mapping, of the packet's internal
  endpoint, then let it pass).

Several rules may fire on one packet: a drop wins (and only the drop counts as fired); otherwise
delays add up, copies add up, and a reorder hold and an expiry apply too. Every rule counts its
occurrences on its own, whatever the others do, so "the 2nd STUN request" means the same packet
whichever other faults are planned.

Where the packet is when decided, on the gateway: in the forward hook, after the NAT's prerouting and before its
postrouting, so both directions carry Alice's *internal* address (10.x); `peer` is the outside
end. A forwarded packet crosses both links, so for forwarded traffic `link` lan and wan select
the same packets; the event reports the rule's link, or the link the packet came in on.

On the switch a bridged packet crosses its sender's port outbound and its receiver's port inbound
(br_netfilter hands bridged IPv4 to the same forward hook; the queue reports the ports as the
physical in/out devices), so `link: bob, direction: inbound` is what reaches Bob; `peer` is the
far end of the link the rule matched. The switch carries out drop, delay and reorder; duplicate
and expire-mapping are the gateway's (its dup table and conntrack), and a plan asking a service
for an action or a link it does not have is refused (FaultError) before any packet is queued.

How the verdicts become faults (see nfqueue.py for the queue itself): drop is a drop verdict;
delay and reorder hold the verdict (the kernel keeps the packet); expire-mapping runs `conntrack -D`
for the internal endpoint before the accept verdict (the packet itself still leaves with the mapping
it was translated with, later ones find none: inbound ones are dropped as unsolicited, the next
outbound one makes a new mapping; the gateway also deletes what its ruleset's sets keep of the
mapping, before and once more after the packet, which renews them on its way out); duplicate
accepts the packet with a mark (`dup_mark`) that an nftables rule in postrouting, after the NAT
(`render_dup_table`), turns into `dup to ip daddr device oif` copies: the kernel copies the packet
in its final, translated form (checked: the copies of an outbound packet carry the mapping's
source, no conntrack entry is made for them, and each is copied once). Re-injecting copies
from a raw socket was the alternative, but a copy of an outbound packet would leave before NAT
(the queue sees it untranslated) and a copy of an inbound one would make a second, clashing
conntrack entry; `dup` copies are untracked and exact. NF_REPEAT re-runs the hook for the same
packet and cannot make a second one.

The rules, the predicates and `FaultEngine` (the decisions) are pure; `FaultInjector` drives an
`NfQueue` from an asyncio loop; `expire_mapping` acts on conntrack in the calling thread's
namespace, or in `netns`. The kernel path itself is each service's: the gateway's ruleset
(ruleset.apply_faults / remove_faults: queue rules, dup table, and the mapping's set elements:
forget_mapping), the switch's one bridged queue rule (nfqueue.install_queue_rules(bridged=True)).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import random
import re
import shutil
import struct
import subprocess
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Protocol

from pinhole import demux, dtls
from pinhole.address import Address
from pinhole.faults.nfqueue import NfQueue, QueuedPacket
from pinhole.pcap import PcapError, decode_ipv4_udp

__all__ = [
    "DUP_MARK_MASK",
    "DUP_TABLE",
    "Decision",
    "Delay",
    "Direction",
    "Drop",
    "Duplicate",
    "ExpireMapping",
    "FaultEngine",
    "FaultError",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "Injected",
    "BridgePorts",
    "Bypassed",
    "Crossing",
    "LinkMap",
    "Match",
    "PacketView",
    "Reorder",
    "RoutedLinks",
    "What",
    "dup_mark",
    "expire_mapping",
    "render_dup_table",
]


MAX_RULES = 64
MAX_COPIES = 8
MAX_DELAY = 60.0
MAX_HOLD = 30.0
DUP_MARK_SHIFT = 24
DUP_MARK_MASK = 0x0F000000  # skb mark bits that carry "make N copies" from the verdict to the dup rules
DUP_TABLE = "pinhole_faults"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIP_METHOD_RE = re.compile(r"^[A-Z][A-Z0-9_.!%*+`'~-]*$")
SIP_STATUS_RE = re.compile(r"^([1-6])(\d\d|xx)$")
STUN_MAGIC = 0x2112A442


class FaultError(ValueError):
    """A fault plan is invalid; the message names the field (rules[2].what) and why."""


class Direction(str, Enum):
    INBOUND = "inbound"  # toward the link's host (the gateway's Alice, a switch port's node)
    OUTBOUND = "outbound"  # from it


LINK_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a topology node's name, or lan / wan
Crossing = tuple[str, Direction | None]  # (link, direction on it) of one packet


class LinkMap(Protocol):
    """Where a service's queue sits: the links it has, the actions it can carry out, and which
    links a queued packet crosses, in which direction (the link it came in by first)."""

    @property
    def links(self) -> frozenset[str]: ...

    @property
    def actions(self) -> frozenset[str]: ...

    def crossings(self, packet: QueuedPacket) -> tuple[Crossing, ...]: ...


@dataclass(frozen=True)
class RoutedLinks:
    """A router between an inside and an outside interface (the gateway: lan, wan). A forwarded
    packet crosses both; its direction is the same on each (relative to the inside host)."""

    inside: str
    inside_ifindex: int
    outside: str
    outside_ifindex: int
    actions: frozenset[str] = frozenset({"drop", "delay", "duplicate", "reorder", "expire-mapping"})

    @property
    def links(self) -> frozenset[str]:
        return frozenset({self.inside, self.outside})

    def crossings(self, packet: QueuedPacket) -> tuple[Crossing, ...]:
        by_index = {self.inside_ifindex: self.inside, self.outside_ifindex: self.outside}
        direction = None
        if packet.indev and packet.indev == self.inside_ifindex:
            direction = Direction.OUTBOUND
        elif packet.outdev and packet.outdev == self.inside_ifindex:
            direction = Direction.INBOUND
        ends = [by_index[i] for i in (packet.indev, packet.outdev) if i and i in by_index]
        return tuple((link, direction) for link in dict.fromkeys(ends))


@dataclass(frozen=True)
class BridgePorts:
    """A bridge's ports (the switch), ifindex -> the link (the node at the port's other end). A
    bridged packet leaves its sender's link (outbound) and enters its receiver's (inbound)."""

    ports: Mapping[int, str]
    actions: frozenset[str] = frozenset({"drop", "delay", "reorder"})

    @property
    def links(self) -> frozenset[str]:
        return frozenset(self.ports.values())

    def crossings(self, packet: QueuedPacket) -> tuple[Crossing, ...]:
        out: list[Crossing] = []
        if packet.physindev in self.ports:
            out.append((self.ports[packet.physindev], Direction.OUTBOUND))
        if packet.physoutdev in self.ports:
            out.append((self.ports[packet.physoutdev], Direction.INBOUND))
        return tuple(out)


def far_end(src: Address, dst: Address, direction: Direction | None) -> Address:
    """The end away from the link's host: where an outbound packet goes, where an inbound one comes from."""
    return src if direction is Direction.INBOUND else dst


def near_end(src: Address, dst: Address, direction: Direction | None) -> Address:
    """The link host's end (the gateway's: Alice's inside address; the queue sees it untranslated)."""
    return dst if direction is Direction.INBOUND else src


# --------------------------------------------------------------------------- predicates

DTLS_HANDSHAKE_NAMES = {t.name: int(t) for t in dtls.HandshakeType}
DTLS_RECORD_NAMES = {"change_cipher_spec", "alert", "application_data"}
STUN_CLASSES = {
    "stun": frozenset({"request", "indication", "success_response", "error_response"}),
    "stun-request": frozenset({"request"}),
    "stun-response": frozenset({"success_response", "error_response"}),
    "stun-indication": frozenset({"indication"}),
}
WHAT_HELP = (
    "any, rtp, rtcp, stun, stun-request, stun-response, stun-indication, dtls, dtls:<handshake type> "
    "(client_hello, server_hello, hello_verify_request, certificate, ...) or dtls:<record type> "
    "(change_cipher_spec, alert, application_data), sip, sip:<METHOD> (a request), sip:<status> or "
    "sip:<status>/<METHOD> (a response, status like 200 or 2xx); stun*, dtls* and sip* may end in "
    "#retransmission"
)


@dataclass(frozen=True)
class What:
    """A predicate over one datagram, written as text (see WHAT_HELP).

    `#retransmission` selects a message this flow has carried before: the same STUN transaction
    id, the same SIP start line + Call-ID + CSeq + top Via branch, the same DTLS handshake
    message (type, message_seq and fragment offset). For DTLS, a handshake message with message_seq 0 in a record
    whose sequence number is above 0 is a retransmission too, even when the gateway never saw the
    first copy (it died at the NAT before the queue): an endpoint's first record of epoch 0 has
    sequence number 0 (RFC 6347 §4.1) and a resent flight gets new record numbers (§4.2.4).
    """

    text: str
    family: str  # any | rtp | rtcp | stun | dtls | sip
    stun_classes: frozenset[str] = frozenset()
    dtls_name: str = ""  # "" = any DTLS
    sip_method: str = ""  # a request's method, or the CSeq method of a response
    sip_status: str = ""  # "" = a request (when sip_method is set); "200" or "2xx"
    retransmission: bool = False

    @classmethod
    def parse(cls, text: str) -> What:
        if not isinstance(text, str):
            raise FaultError(f"{text!r} is not a string; expected one of: {WHAT_HELP}")
        base, sep, suffix = text.partition("#")
        if sep and suffix != "retransmission":
            raise FaultError(f"{text!r}: unknown suffix #{suffix} (only #retransmission)")
        retransmission = bool(sep)
        if retransmission and not base.startswith(("stun", "dtls", "sip")):
            raise FaultError(f"{text!r}: #retransmission applies to stun*, dtls* and sip* messages only")
        if base in ("any", "rtp", "rtcp"):
            return cls(text, base)
        if base in STUN_CLASSES:
            return cls(text, "stun", stun_classes=STUN_CLASSES[base], retransmission=retransmission)
        family, colon, detail = base.partition(":")
        if family == "dtls":
            if not colon:
                return cls(text, "dtls", retransmission=retransmission)
            if detail not in DTLS_HANDSHAKE_NAMES and detail not in DTLS_RECORD_NAMES:
                names = ", ".join([*DTLS_HANDSHAKE_NAMES, *sorted(DTLS_RECORD_NAMES)])
                raise FaultError(f"{text!r}: unknown DTLS message {detail!r} (one of {names})")
            if retransmission and detail not in DTLS_HANDSHAKE_NAMES:
                raise FaultError(f"{text!r}: #retransmission needs a handshake message, not a {detail} record")
            if detail == "finished":
                raise FaultError(f"{text!r}: Finished is encrypted (epoch 1) and cannot be recognised")
            return cls(text, "dtls", dtls_name=detail, retransmission=retransmission)
        if family == "sip":
            if not colon:
                return cls(text, "sip", retransmission=retransmission)
            status, slash, method = detail.partition("/")
            if SIP_STATUS_RE.match(status):
                if slash and not SIP_METHOD_RE.match(method):
                    raise FaultError(f"{text!r}: {method!r} is not a SIP method (upper case, like INVITE)")
                return cls(text, "sip", sip_status=status, sip_method=method, retransmission=retransmission)
            if slash:
                raise FaultError(f"{text!r}: {status!r} is not a SIP status (100..699, or a class like 2xx)")
            if not SIP_METHOD_RE.match(detail):
                raise FaultError(
                    f"{text!r}: {detail!r} is neither a SIP method (upper case, like INVITE) nor a status (200, 2xx)"
                )
            return cls(text, "sip", sip_method=detail, retransmission=retransmission)
        raise FaultError(f"{text!r} is not a packet predicate; expected one of: {WHAT_HELP}")

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SipView:
    first_line: str
    method: str  # of a request; "" for a response
    status: int  # of a response; 0 for a request
    cseq_method: str
    call_id: str
    identity: tuple[str, ...]


@dataclass
class PacketView:
    """One queued packet as the rules see it (pure; built once per packet by `FaultEngine.view`)."""

    src: Address
    dst: Address
    payload: bytes  # the UDP payload
    crossings: tuple[Crossing, ...]  # the links it crosses, the one it came in by first
    kind: demux.PacketKind
    stun_class: str = ""
    stun_transaction: bytes = b""
    dtls_names: tuple[str, ...] = ()  # handshake message and record type names in the datagram
    dtls_messages: tuple[tuple[str, int, int, int], ...] = ()  # (name, message_seq, record seq, fragment_offset)
    sip: SipView | None = None

    @property
    def flow(self) -> tuple[Address, Address]:
        return self.src, self.dst

    @property
    def direction(self) -> Direction | None:
        """Its direction on the link it came in by."""
        return self.crossings[0][1] if self.crossings else None

    @property
    def links(self) -> frozenset[str]:
        return frozenset(link for link, _ in self.crossings)

    @property
    def peer(self) -> Address:
        """The far end on the link it came in by (see far_end)."""
        return far_end(self.src, self.dst, self.direction)

    @property
    def internal(self) -> Address:
        """The near end on the link it came in by: the gateway's Alice (her inside address: the
        queue sees packets before SNAT, after de-NAT)."""
        return near_end(self.src, self.dst, self.direction)

    def summary(self) -> str:
        if self.sip is not None:
            return self.sip.first_line
        return demux.describe(self.payload).get("summary", "")

    def description(self) -> dict[str, str]:
        """Trace attributes of the datagram: demux.describe, or the SIP start line and Call-ID."""
        if self.sip is not None:
            attrs = {"kind": "sip", "summary": self.sip.first_line, "sip.call_id": self.sip.call_id}
            attrs["sip.cseq_method"] = self.sip.cseq_method
            if self.sip.method:
                attrs["sip.method"] = self.sip.method
            else:
                attrs["sip.status_code"] = str(self.sip.status)
            return attrs
        return demux.describe(self.payload)


def _stun_header(payload: bytes) -> tuple[str, bytes] | None:
    """(class, transaction id) of a datagram with a STUN header (RFC 5389 §6), else None."""
    if len(payload) < 20 or payload[0] > 3:
        return None
    message_type, _length, cookie = struct.unpack_from("!HHI", payload)
    if cookie != STUN_MAGIC:
        return None
    bits = ((message_type >> 7) & 0b10) | ((message_type >> 4) & 0b01)
    return ("request", "indication", "success_response", "error_response")[bits], payload[8:20]


def _dtls_messages(payload: bytes) -> tuple[tuple[str, ...], tuple[tuple[str, int, int, int], ...]]:
    try:
        records = dtls.parse_records(payload)
    except dtls.DtlsError:
        return (), ()
    names: list[str] = []
    messages: list[tuple[str, int, int, int]] = []
    for record in records:
        if record.content_type == dtls.ContentType.handshake and record.epoch == 0:
            try:
                headers = dtls.handshake_messages(record)
            except dtls.DtlsError:
                continue
            for h in headers:
                name = dtls.HandshakeType(h.msg_type).name if h.msg_type in DTLS_HANDSHAKE_NAMES.values() else ""
                name = name or f"handshake_type_{int(h.msg_type)}"
                names.append(name)
                messages.append((name, h.message_seq, record.sequence_number, h.fragment_offset))
        elif record.content_type != dtls.ContentType.handshake:
            names.append(dtls.ContentType(record.content_type).name)
    return tuple(names), tuple(messages)


def _sip_view(payload: bytes) -> SipView | None:
    """SIP starts with an upper-case letter (a method, or SIP/2.0), which RFC 7983 leaves to no
    other protocol of the media port... except TURN ChannelData (64-79): so parse, do not classify."""
    stripped = payload.lstrip(b"\r\n")
    if not stripped or not 65 <= stripped[0] <= 90:
        return None
    from pinhole.sip import Request, SipParseError, parse_message

    try:
        message = parse_message(payload)
        call_id, cseq, branch = message.call_id, message.cseq, message.top_via.branch or ""
    except (SipParseError, ValueError):
        return None
    first_line = payload.lstrip(b"\r\n").split(b"\r\n", 1)[0].decode("utf-8", errors="replace")
    if isinstance(message, Request):
        method, status = message.method, 0
    else:
        method, status = "", message.status_code
    identity = ("sip", first_line, call_id, str(cseq.number), cseq.method, branch)
    return SipView(first_line, method, status, cseq.method, call_id, identity)


# --------------------------------------------------------------------------- rules


def _peer(value: str) -> tuple[str, int | None]:
    if not isinstance(value, str):
        raise FaultError(f"{value!r} is not a string (expected IP or IP:PORT)")
    host, colon, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    try:
        ip = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise FaultError(f"{value!r}: {host!r} is not an IPv4 address (expected IP or IP:PORT)") from None
    if not colon:
        return ip, None
    if not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 < int(port) < 65536:
        raise FaultError(f"{value!r}: port {port!r} is not in 1..65535")
    return ip, int(port)


@dataclass(frozen=True)
class Match:
    """Which packets a rule looks at; None / "" = any. `what` and `peer` may be given as text."""

    link: str | None = None
    direction: Direction | None = None
    what: What = field(default_factory=lambda: What.parse("any"))
    peer: tuple[str, int | None] | None = None

    def __post_init__(self) -> None:
        if self.link is not None and (not isinstance(self.link, str) or not LINK_RE.match(self.link)):
            raise FaultError(f"link: {self.link!r} is not a link name (lan, wan, or a public node like bob)")
        if self.direction is not None and not isinstance(self.direction, Direction):
            try:
                object.__setattr__(self, "direction", Direction(self.direction))
            except ValueError:
                raise FaultError(
                    f"direction: {self.direction!r} is not inbound (toward the link's host: Alice, or the "
                    "switch port's node) or outbound (from it)"
                ) from None
        if not isinstance(self.what, What):
            try:
                object.__setattr__(self, "what", What.parse(self.what))
            except FaultError as error:
                raise FaultError(f"what: {error}") from None
        if isinstance(self.peer, str):
            try:
                object.__setattr__(self, "peer", _peer(self.peer))
            except FaultError as error:
                raise FaultError(f"peer: {error}") from None

    def selects(self, view: PacketView, retransmitted: frozenset[str]) -> Crossing | None:
        """The crossing of `view` this match selects (the first: the link it came in by wins), or
        None; `retransmitted` names what in it this flow carried before ("stun", "sip", or DTLS
        handshake message names). A packet that crosses no link is selected only by a match
        without link and direction (its crossing is then ("", None))."""
        nowhere: Crossing = ("", None)
        crossing = next((c for c in view.crossings or [nowhere] if self._crosses(c, view)), None)
        if crossing is None or not self._what(view, retransmitted):
            return None
        return crossing

    def _crosses(self, crossing: Crossing, view: PacketView) -> bool:
        link, direction = crossing
        if self.link is not None and self.link != link:
            return False
        if self.direction is not None and self.direction is not direction:
            return False
        if self.peer is not None:
            ip, port = self.peer
            peer = far_end(view.src, view.dst, direction)
            if peer[0] != ip or (port is not None and peer[1] != port):
                return False
        return True

    def _what(self, view: PacketView, retransmitted: frozenset[str]) -> bool:
        what = self.what
        family = what.family
        if family == "any":
            return True
        if family in ("rtp", "rtcp"):
            return view.kind.value == family
        if family == "stun":
            if view.stun_class not in what.stun_classes:
                return False
            return not what.retransmission or "stun" in retransmitted
        if family == "dtls":
            if view.kind is not demux.PacketKind.DTLS or not view.dtls_names:
                return False
            if what.dtls_name and what.dtls_name not in view.dtls_names:
                return False
            if what.retransmission:
                return bool(retransmitted - {"stun", "sip"}) if not what.dtls_name else what.dtls_name in retransmitted
            return True
        sip = view.sip  # family == "sip"
        if sip is None:
            return False
        if what.sip_status:
            if not sip.status:
                return False
            code = str(sip.status)
            if what.sip_status.endswith("xx") and code[0] != what.sip_status[0]:
                return False
            if not what.sip_status.endswith("xx") and code != what.sip_status:
                return False
            if what.sip_method and sip.cseq_method != what.sip_method:
                return False
        elif what.sip_method and sip.method != what.sip_method:
            return False
        return not what.retransmission or "sip" in retransmitted


@dataclass(frozen=True)
class Drop:
    name: ClassVar[str] = "drop"

    def parameters(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class Delay:
    seconds: float
    name: ClassVar[str] = "delay"

    def __post_init__(self) -> None:
        if not _number(self.seconds) or not 0 < self.seconds <= MAX_DELAY:
            raise FaultError(f"seconds: {self.seconds!r} is not a number of seconds in (0, {MAX_DELAY:g}]")

    def parameters(self) -> dict[str, str]:
        return {"delay_seconds": f"{self.seconds:g}"}


@dataclass(frozen=True)
class Duplicate:
    copies: int = 1
    name: ClassVar[str] = "duplicate"

    def __post_init__(self) -> None:
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or not 1 <= self.copies <= MAX_COPIES:
            raise FaultError(f"copies: {self.copies!r} is not an integer in 1..{MAX_COPIES}")

    def parameters(self) -> dict[str, str]:
        return {"copies": str(self.copies)}


@dataclass(frozen=True)
class Reorder:
    max_hold: float = 1.0
    name: ClassVar[str] = "reorder"

    def __post_init__(self) -> None:
        if not _number(self.max_hold) or not 0 < self.max_hold <= MAX_HOLD:
            raise FaultError(f"max_hold: {self.max_hold!r} is not a number of seconds in (0, {MAX_HOLD:g}]")

    def parameters(self) -> dict[str, str]:
        return {"max_hold_seconds": f"{self.max_hold:g}"}


@dataclass(frozen=True)
class ExpireMapping:
    name: ClassVar[str] = "expire-mapping"

    def parameters(self) -> dict[str, str]:
        return {}


Action = Drop | Delay | Duplicate | Reorder | ExpireMapping
ACTIONS: dict[str, type[Action]] = {a.name: a for a in (Drop, Delay, Duplicate, Reorder, ExpireMapping)}
ACTION_FIELDS = {"drop": set(), "delay": {"seconds"}, "duplicate": {"copies"}, "reorder": {"max_hold"}}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class FaultRule:
    """One fault: fires on the `nth` and later packets `match` selects, at most `count` times
    (0: no limit), each time with `probability`."""

    name: str
    match: Match
    action: Action
    nth: int = 1
    count: int = 0
    probability: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise FaultError(f"name: {self.name!r} is not 1-64 of [A-Za-z0-9_.-] starting with a letter or digit")
        if not isinstance(self.match, Match):
            raise FaultError(f"match: expected a Match, not {type(self.match).__name__}")
        if not isinstance(self.action, (Drop, Delay, Duplicate, Reorder, ExpireMapping)):
            raise FaultError(f"action: expected one of {', '.join(ACTIONS)}, not {type(self.action).__name__}")
        if isinstance(self.nth, bool) or not isinstance(self.nth, int) or self.nth < 1:
            raise FaultError(f"nth: {self.nth!r} is not an integer >= 1 (1 = the first matching packet)")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise FaultError(f"count: {self.count!r} is not an integer >= 0 (0 = no limit)")
        if not _number(self.probability) or not 0 < self.probability <= 1:
            raise FaultError(f"probability: {self.probability!r} is not a number in (0, 1]")


RULE_FIELDS = {"name", "link", "direction", "what", "peer", "nth", "count", "probability", "action"}


@dataclass(frozen=True)
class FaultPlan:
    """The faults of one scenario: `rules` in order, `seed` for their random draws."""

    rules: tuple[FaultRule, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise FaultError(f"seed: {self.seed!r} is not an integer in 0..2^64-1")
        if len(self.rules) > MAX_RULES:
            raise FaultError(f"rules: {len(self.rules)} rules, at most {MAX_RULES}")
        names: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if not isinstance(rule, FaultRule):
                raise FaultError(f"rules[{index}]: expected a FaultRule, not {type(rule).__name__}")
            if rule.name in names:
                raise FaultError(f"rules[{index}].name: {rule.name!r} is already the name of rules[{names[rule.name]}]")
            names[rule.name] = index

    def links(self) -> set[str]:
        """The links the rules name (a rule without one may select any)."""
        return {rule.match.link for rule in self.rules if rule.match.link}

    def directions(self) -> set[Direction]:
        """The directions whose packets some rule may select (only these need queueing)."""
        out: set[Direction] = set()
        for rule in self.rules:
            out |= {rule.match.direction} if rule.match.direction else set(Direction)
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FaultPlan:
        """A plan from plain data (a scenario file's table, or a gRPC FaultPlan turned into a dict):

            {"seed": 7, "rules": [{"name": "lose-check", "direction": "outbound", "what": "stun-request",
              "peer": "203.0.113.40", "nth": 1, "count": 1, "action": "drop"},
             {"name": "late-200", "what": "sip:200/INVITE", "action": "delay", "seconds": 2.5}, ...]}

        Action parameters sit next to `action`: delay `seconds`, duplicate `copies` (default 1),
        reorder `max_hold` (default 1.0). A rule without a name is called rule<N> (N from 1).
        Errors name the field: "rules[1].seconds: ...".
        """
        if not isinstance(doc, Mapping):
            raise FaultError(f"a fault plan is a table with rules and seed, not {type(doc).__name__}")
        unknown = sorted(set(doc) - {"rules", "seed"})
        if unknown:
            raise FaultError(f"{unknown[0]}: unknown field of a fault plan (expected rules, seed)")
        rules_doc = doc.get("rules", [])
        if not isinstance(rules_doc, Sequence) or isinstance(rules_doc, (str, bytes)):
            raise FaultError(f"rules: expected a list of rules, not {type(rules_doc).__name__}")
        rules = [_rule_from_dict(index, item) for index, item in enumerate(rules_doc)]
        return cls(tuple(rules), doc.get("seed", 0))

    def to_dict(self) -> dict[str, Any]:
        rules = []
        for rule in self.rules:
            item: dict[str, Any] = {"name": rule.name, "action": rule.action.name}
            m = rule.match
            if m.link:
                item["link"] = m.link
            if m.direction:
                item["direction"] = m.direction.value
            item["what"] = str(m.what)
            if m.peer:
                item["peer"] = m.peer[0] + (f":{m.peer[1]}" if m.peer[1] else "")
            item.update(nth=rule.nth, count=rule.count, probability=rule.probability)
            if isinstance(rule.action, Delay):
                item["seconds"] = rule.action.seconds
            elif isinstance(rule.action, Duplicate):
                item["copies"] = rule.action.copies
            elif isinstance(rule.action, Reorder):
                item["max_hold"] = rule.action.max_hold
            rules.append(item)
        return {"seed": self.seed, "rules": rules}


def _rule_from_dict(index: int, item: object) -> FaultRule:
    where = f"rules[{index}]"
    if not isinstance(item, Mapping):
        raise FaultError(f"{where}: a rule is a table, not {type(item).__name__}")
    action_name = item.get("action")
    if action_name is None:
        raise FaultError(f"{where}.action: missing (one of {', '.join(ACTIONS)})")
    if action_name not in ACTIONS:
        raise FaultError(f"{where}.action: {action_name!r} is not one of {', '.join(ACTIONS)}")
    allowed = RULE_FIELDS | ACTION_FIELDS.get(action_name, set())
    unknown = sorted((str(key) for key in set(item) - allowed), key=str)  # YAML keys need not be strings
    if unknown:
        other = [name for name, fields in ACTION_FIELDS.items() if unknown[0] in fields]
        hint = f" (a parameter of {other[0]}, not of {action_name})" if other else ""
        raise FaultError(f"{where}.{unknown[0]}: unknown field{hint}")
    try:
        if action_name == "delay":
            if "seconds" not in item:
                raise FaultError("seconds: missing (a delay needs seconds)")
            action: Action = Delay(item["seconds"])
        elif action_name == "duplicate":
            action = Duplicate(item.get("copies", 1))
        elif action_name == "reorder":
            action = Reorder(item.get("max_hold", 1.0))
        elif action_name == "drop":
            action = Drop()
        elif action_name == "expire-mapping":
            action = ExpireMapping()
        else:  # an action added to ACTIONS and not read here
            raise FaultError(f"action: {action_name!r} cannot be read from a table yet")
        match = Match(
            link=item.get("link") or None,
            direction=item.get("direction") or None,
            what=item.get("what") or What.parse("any"),
            peer=item.get("peer") or None,
        )
        return FaultRule(
            name=item.get("name") or f"rule{index + 1}",
            match=match,
            action=action,
            nth=item.get("nth", 1),
            count=item.get("count", 0),
            probability=item.get("probability", 1.0),
        )
    except FaultError as error:
        raise FaultError(f"{where}.{error}") from None


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Fired:
    rule: FaultRule
    index: int  # the rule's place in the plan
    occurrence: int  # the rule's count of matching packets, this one included
    crossing: Crossing = ("", None)  # the link and direction the rule selected the packet on


@dataclass
class Decision:
    """What happens to one packet: drop it, or accept it after `expire`, `delay` and a reorder
    `hold` (max seconds), with `copies` duplicates. `fired` are the rules that did it."""

    fired: list[Fired] = field(default_factory=list)
    drop: bool = False
    delay: float = 0.0
    copies: int = 0
    hold: float | None = None
    expire: bool = False

    @property
    def untouched(self) -> bool:
        return not self.fired


class FaultEngine:
    """The decisions of one plan, packet by packet (pure: no clock, no I/O)."""

    FLOWS_KEPT = 4096  # flows whose message identities are remembered (for #retransmission)
    IDENTITIES_KEPT = 256  # per flow

    def __init__(self, plan: FaultPlan, links: LinkMap) -> None:
        check_plan(plan, links)
        self.plan = plan
        self.link_map = links
        self.matched = [0] * len(plan.rules)
        self.fired = [0] * len(plan.rules)
        self._random = [random.Random(plan.seed * 1_000_003 + index) for index in range(len(plan.rules))]
        self._seen: OrderedDict[tuple[Address, Address], OrderedDict[tuple[Any, ...], None]] = OrderedDict()

    def view(self, packet: QueuedPacket) -> PacketView | None:
        """The packet as the rules see it; None if it is not an unfragmented IPv4 UDP datagram."""
        try:
            udp = decode_ipv4_udp(packet.payload)
        except PcapError:
            return None
        if udp is None:
            return None
        return view_of(udp.src, udp.dst, udp.payload, self.link_map.crossings(packet))

    def _retransmitted(self, view: PacketView) -> frozenset[str]:
        """What in `view` this flow carried before (see What), and remember what it carries now."""
        identities: list[tuple[tuple[Any, ...], str]] = []
        out: set[str] = set()
        if view.stun_class:
            identities.append((("stun", view.stun_transaction), "stun"))
        if view.sip is not None:
            identities.append((view.sip.identity, "sip"))
        for name, message_seq, record_seq, fragment_offset in view.dtls_messages:
            identities.append((("dtls", name, message_seq, fragment_offset), name))
            if message_seq == 0 and fragment_offset == 0 and record_seq > 0 and name != "hello_verify_request":
                out.add(name)  # a first message in a record that is not the sender's first one
        seen = self._seen.get(view.flow)
        for identity, name in identities:
            if seen is not None and identity in seen:
                out.add(name)
        if identities:
            if seen is None:
                seen = self._seen[view.flow] = OrderedDict()
                if len(self._seen) > self.FLOWS_KEPT:
                    self._seen.popitem(last=False)
            else:
                self._seen.move_to_end(view.flow)
            for identity, _ in identities:
                seen[identity] = None
            while len(seen) > self.IDENTITIES_KEPT:
                seen.popitem(last=False)
        return frozenset(out)

    def decide(self, view: PacketView) -> Decision:
        retransmitted = self._retransmitted(view)
        wanting: list[Fired] = []
        for index, rule in enumerate(self.plan.rules):
            crossing = rule.match.selects(view, retransmitted)
            if crossing is None:
                continue
            self.matched[index] += 1
            occurrence = self.matched[index]
            if occurrence < rule.nth or (rule.count and self.fired[index] >= rule.count):
                continue
            if rule.probability < 1 and self._random[index].random() >= rule.probability:
                continue
            wanting.append(Fired(rule, index, occurrence, crossing))
        decision = Decision()
        drops = [f for f in wanting if isinstance(f.rule.action, Drop)]
        fired = drops[:1] if drops else wanting
        for f in fired:
            self.fired[f.index] += 1
            action = f.rule.action
            if isinstance(action, Drop):
                decision.drop = True
            elif isinstance(action, Delay):
                decision.delay += action.seconds
            elif isinstance(action, Duplicate):
                decision.copies = min(decision.copies + action.copies, MAX_COPIES)
            elif isinstance(action, Reorder):
                decision.hold = max(decision.hold or 0.0, action.max_hold)
            elif isinstance(action, ExpireMapping):
                decision.expire = True
        decision.fired = fired
        return decision


def view_of(
    src: Address,
    dst: Address,
    payload: bytes,
    crossings: Sequence[Crossing] = (),
) -> PacketView:
    """A PacketView of one UDP datagram crossing `crossings` (pure; for the engine and for tests)."""
    kind = demux.classify(payload)
    view = PacketView(src, dst, payload, tuple(crossings), kind)
    if kind is demux.PacketKind.STUN:
        header = _stun_header(payload)
        if header is not None:
            view.stun_class, view.stun_transaction = header
    elif kind is demux.PacketKind.DTLS:
        view.dtls_names, view.dtls_messages = _dtls_messages(payload)
    elif kind in (demux.PacketKind.UNKNOWN, demux.PacketKind.TURN_CHANNEL):
        view.sip = _sip_view(payload)
    return view


def check_plan(plan: FaultPlan, links: LinkMap) -> None:
    """Refuse a plan that names a link `links` does not have, or an action it cannot carry out."""
    for index, rule in enumerate(plan.rules):
        if rule.match.link is not None and rule.match.link not in links.links:
            raise FaultError(
                f"rules[{index}].link: {rule.match.link!r} is not a link here (one of {', '.join(sorted(links.links))})"
            )
        if rule.action.name not in links.actions:
            only = ", ".join(sorted(links.actions))
            raise FaultError(f"rules[{index}].action: {rule.action.name} is not carried out here (only {only})")


def dup_mark(copies: int) -> int:
    """The skb mark that makes the dup rules send `copies` copies of an accepted packet."""
    if not 0 < copies <= MAX_COPIES:
        raise FaultError(f"copies {copies} is not in 1..{MAX_COPIES}")
    return copies << DUP_MARK_SHIFT


def render_dup_table(max_copies: int = MAX_COPIES) -> str:
    """nft script of table `ip pinhole_faults`: in postrouting, after the NAT (srcnat is 100), a
    packet whose mark asks for N copies is duplicated N times where it goes (`dup` is an ip-family
    statement, hence a table of its own next to the inet NAT table). The copies are untracked and
    skip every hook's dup (the kernel's nf_skb_duplicated guard), so they are not copied again."""
    lines = [
        f"table ip {DUP_TABLE}",
        f"delete table ip {DUP_TABLE}",
        f"table ip {DUP_TABLE} {{",
        "\tchain duplicate {",
        "\t\ttype filter hook postrouting priority 300; policy accept;",
    ]
    for copies in range(1, max_copies + 1):
        dups = " ".join(["dup to ip daddr device oif"] * copies)
        lines.append(f"\t\tmeta mark & 0x{DUP_MARK_MASK:08x} == 0x{dup_mark(copies):08x} {dups}")
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the kernel side


def expire_mapping(internal: Address, *, netns: str | None = None) -> int:
    """Delete every UDP conntrack entry of Alice's inside endpoint `internal`: the sessions she
    opened (original source: masqueraded) and those a remote opened through her mapping (reply
    source: DNATed by endpoint-independent or address-dependent filtering). Together they are her
    NAT mapping, toward every remote. Returns how many entries were deleted."""
    from pinhole.faults.nfnetlink import in_namespace

    tool = shutil.which("conntrack")
    if tool is None:
        raise FaultError("conntrack (conntrack-tools) is not installed: expire-mapping needs it")
    deleted = 0
    ip, port = internal[0], str(internal[1])
    for selector in (["--orig-src", ip, "--orig-port-src", port], ["--reply-src", ip, "--reply-port-src", port]):
        with in_namespace(netns):
            result = subprocess.run([tool, "-D", "-p", "udp", *selector], capture_output=True, text=True, check=False)
        found = re.search(r"(\d+) flow entries have been deleted", result.stderr)
        if found:
            deleted += int(found.group(1))
        elif result.returncode != 0:
            raise FaultError(f"conntrack -D for {ip}:{port} failed: {result.stderr.strip()}")
    return deleted


# --------------------------------------------------------------------------- the asyncio driver


@dataclass(frozen=True)
class Injected:
    """One fault injected into one packet: what the gateway turns into a `fault.injected` event."""

    rule: str
    action: str
    link: str
    direction: str
    summary: str
    attributes: dict[str, str]  # the datagram's description (demux.describe, or SIP start line + Call-ID)
    source: Address
    destination: Address
    peer: Address
    internal: Address
    occurrence: int
    parameters: dict[str, str]
    at: float  # when the packet reached the gateway (the kernel's timestamp if it gave one)
    payload: bytes = b""  # the UDP payload (SIP: for its Call-ID and trace context)

    def event_attributes(self) -> dict[str, str]:
        """The event's attributes: the description, then rule, action, link, direction, summary ..."""
        return {
            **self.attributes,
            "rule": self.rule,
            "action": self.action,
            "link": self.link,
            "direction": self.direction,
            "summary": self.summary,
            "source": f"{self.source[0]}:{self.source[1]}",
            "destination": f"{self.destination[0]}:{self.destination[1]}",
            "peer": f"{self.peer[0]}:{self.peer[1]}",
            "occurrence": str(self.occurrence),
            **self.parameters,
        }


@dataclass(frozen=True)
class Bypassed:
    """Packets sent to the queue that the engine never judged (NFQUEUE fail-open: queue or receive
    buffer full; or no socket bound): what a service turns into a `fault.bypassed` event."""

    queue: int
    bypassed: int  # in all, since the engine started
    new: int  # since the previous report
    received: int  # packets the engine did get

    def event_attributes(self) -> dict[str, str]:
        return {
            "queue": str(self.queue),
            "bypassed": str(self.bypassed),
            "new": str(self.new),
            "received": str(self.received),
            "summary": f"{self.new} more packets passed the fault engine unjudged (NFQUEUE fail-open)",
        }


@dataclass
class _Held:
    packet: QueuedPacket
    view: PacketView
    mark: int | None
    timer: asyncio.TimerHandle | None = None


class FaultInjector:
    """Reads the queue on the running asyncio loop, decides with a FaultEngine, issues verdicts.

    `on_fault` gets one `Injected` per fired rule, when the packet is decided. `expire(internal)`
    deletes a mapping before its packet goes on (default: `expire_mapping` in a worker thread, in
    this namespace); `settle(internal)`, if given, runs once that packet has passed, for what the
    packet itself renews on its way out (the ruleset's sets: an outbound packet refreshes them in
    postrouting, while conntrack's entry it carries is already dead); `observe(packet, view)`, if
    given, sees every UDP packet before it is decided (the switch learns calls from the SIP). `counts`
    holds faults_* counters: packets queued / passed untouched / not UDP, injected faults in all
    and per action and rule, reorder holds released by the next packet or by their timeout,
    expiries that failed, and the queue's own (received, bypassed, missed, overruns, verdict errors).

    `rule_hits()`, if given, reads the queue rule's counter (nfqueue.queue_rule_hits; run in a worker
    thread): then every BYPASS_CHECK_INTERVAL the packets that went past the engine unjudged are
    counted (faults_queue_bypassed, NfQueue.bypassed) and, when their number grew, `on_bypass` gets
    a `Bypassed`: one report per interval at most, whatever the packet rate.
    """

    BYPASS_CHECK_INTERVAL = 1.0  # seconds

    def __init__(
        self,
        queue: NfQueue,
        engine: FaultEngine,
        *,
        on_fault: Callable[[Injected], None],
        expire: Callable[[Address], Awaitable[int]] | None = None,
        settle: Callable[[Address], Awaitable[int]] | None = None,
        counts: Counter[str] | None = None,
        observe: Callable[[QueuedPacket, PacketView], None] | None = None,
        rule_hits: Callable[[], int | None] | None = None,
        on_bypass: Callable[[Bypassed], None] | None = None,
    ) -> None:
        self.queue = queue
        self.engine = engine
        self.on_fault = on_fault
        self.rule_hits = rule_hits
        self.on_bypass = on_bypass
        self.bypassed = 0  # the highest count seen (each a lower bound; exact at stop)
        self.expire = expire or (lambda internal: asyncio.to_thread(expire_mapping, internal))
        self.settle = settle
        self.observe = observe
        self._settle_after: dict[int, Address] = {}  # packet id -> inside endpoint to settle once it passed
        self.counts: Counter[str] = Counter() if counts is None else counts  # shared: it may outlive us
        self._held: dict[int, _Held] = {}  # packet id -> a packet waiting for its delay / expiry
        self._reordered: dict[tuple[Address, Address], list[_Held]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.queue.fileno(), self._readable)
        if self.rule_hits is not None:
            self._watch = self._loop.create_task(self._watch_bypass())

    def replace(self, engine: FaultEngine) -> None:
        """A new plan for the packets to come (those held now keep their fate)."""
        self.engine = engine

    @classmethod
    def running(
        cls, current: FaultInjector | None, engine: FaultEngine, open_queue: Callable[[], Any], **hooks: Any
    ) -> FaultInjector:
        """`current` deciding with `engine` from now on, or, if none runs, a new one started on
        `open_queue()` (a service's SetFaults: the queue is bound before its rules feed it)."""
        if current is not None:
            current.replace(engine)
            return current
        injector = cls(open_queue(), engine, **hooks)
        injector.start()
        return injector

    def stop(self, rule_hits: int | None = None) -> None:
        """Stop reading; what is queued is judged first, then every packet still held is accepted at
        once; the queue is closed. `rule_hits`: the queue rule's final count (nfqueue.remove_queue_rules:
        nothing feeds the queue any more), which makes the bypass count exact."""
        if self._watch is not None:
            self._watch.cancel()
        if self._loop is not None:
            self._loop.remove_reader(self.queue.fileno())
            drained = 0  # what crossed while the plan was set is judged (at most a queue's worth: a rule may feed it)
            while self._loop.is_running() and drained < self.queue.max_length and (read := self._readable()):
                drained += read
            self._loop = None
        if rule_hits is not None:  # drained: whatever the rule sent that did not arrive was never judged
            self._note_bypass(rule_hits - self.queue.received)
        for task in list(self._tasks):
            task.cancel()
        for held in list(self._held.values()) + [h for hs in self._reordered.values() for h in hs]:
            if held.timer is not None:
                held.timer.cancel()
        self._held.clear()
        self._reordered.clear()
        self._settle_after.clear()
        self.queue.close()  # accepts what is pending

    def stats(self) -> Counter[str]:
        out = Counter(self.counts)
        out["faults_queue_received"] = self.queue.received
        out["faults_queue_bypassed"] = self.bypassed
        out["faults_queue_missed"] = self.queue.missed
        out["faults_queue_overruns"] = self.queue.overruns
        out["faults_queue_verdict_errors"] = self.queue.verdict_errors
        out["faults_queue_odd"] = self.queue.odd
        out["faults_held"] = len(self.queue.pending)
        return out

    def _readable(self) -> int:
        packets = self.queue.read()
        for packet in packets:
            try:
                self.handle(packet)
            except Exception:  # a verdict must never be lost: accept what could not be decided
                self.counts["faults_errors"] += 1
                with contextlib.suppress(OSError):
                    if packet.packet_id in self.queue.pending:
                        self.queue.accept(packet.packet_id)
        return len(packets)

    async def check_bypass(self) -> int:
        """Count the packets that went past the engine unjudged until now (faults_queue_bypassed)."""
        if self.rule_hits is not None:
            count = await asyncio.to_thread(self._count_bypass)
            if count is not None:
                self._note_bypass(count)
        return self.bypassed

    def _count_bypass(self) -> int | None:
        assert self.rule_hits is not None
        hits = self.rule_hits()  # before the ids the kernel gave: the count is never too high
        return None if hits is None else self.queue.bypassed(hits)

    async def _watch_bypass(self) -> None:
        while True:
            await asyncio.sleep(self.BYPASS_CHECK_INTERVAL)
            try:
                await self.check_bypass()
            except Exception:  # iptables or /proc unreadable for a moment: try again next time
                self.counts["faults_bypass_check_failed"] += 1

    def _note_bypass(self, count: int) -> None:
        if count <= self.bypassed:
            return
        new, self.bypassed = count - self.bypassed, count
        if self.on_bypass is not None:
            self.on_bypass(Bypassed(self.queue.queue, count, new, self.queue.received))

    def handle(self, packet: QueuedPacket) -> Decision | None:
        self.counts["faults_queued"] += 1
        view = self.engine.view(packet)
        if view is None:
            self.counts["faults_not_udp"] += 1
            self._accept(packet, None, None)
            return None
        if self.observe is not None:
            self.observe(packet, view)
        decision = self.engine.decide(view)
        if decision.untouched:
            self.counts["faults_untouched"] += 1
            self._accept(packet, view, None)
            return decision
        at = packet.timestamp or packet.received or time.time()
        for fired in decision.fired:
            rule = fired.rule
            self.counts["faults_injected"] += 1
            self.counts[f"faults_injected_{rule.action.name.replace('-', '_')}"] += 1
            self.counts[f"fault_rule_{rule.name}"] += 1
            link, direction = fired.crossing
            self.on_fault(
                Injected(
                    rule=rule.name,
                    action=rule.action.name,
                    link=link,
                    direction=direction.value if direction else "",
                    summary=view.summary(),
                    attributes=view.description(),
                    source=view.src,
                    destination=view.dst,
                    peer=far_end(view.src, view.dst, direction),
                    internal=near_end(view.src, view.dst, direction),
                    occurrence=fired.occurrence,
                    parameters=rule.action.parameters(),
                    at=at,
                    payload=view.payload,
                )
            )
        if decision.drop:
            self.queue.drop(packet.packet_id)
            return decision
        mark = dup_mark(decision.copies) if decision.copies else None
        held = _Held(packet, view, mark)
        if decision.expire:
            if self.settle is not None:
                self._settle_after[packet.packet_id] = view.internal
            self._held[packet.packet_id] = held
            task = asyncio.get_running_loop().create_task(self._expire_then(held, decision))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._after_expiry(held, decision)
        return decision

    async def _expire_then(self, held: _Held, decision: Decision) -> None:
        try:
            deleted = await self.expire(held.view.internal)
            self.counts["faults_mappings_expired"] += deleted
        except Exception:
            self.counts["faults_expire_failed"] += 1
        if self._held.pop(held.packet.packet_id, None) is not None:
            self._after_expiry(held, decision)

    def _after_expiry(self, held: _Held, decision: Decision) -> None:
        loop = asyncio.get_running_loop()
        if decision.delay > 0:
            self._held[held.packet.packet_id] = held
            held.timer = loop.call_later(decision.delay, self._after_delay, held, decision)
        else:
            self._after_delay(held, decision)

    def _after_delay(self, held: _Held, decision: Decision) -> None:
        self._held.pop(held.packet.packet_id, None)
        if decision.hold is not None:
            held.timer = asyncio.get_running_loop().call_later(decision.hold, self._hold_expired, held)
            self._reordered.setdefault(held.view.flow, []).append(held)
            return
        self._accept(held.packet, held.view, held.mark)

    def _hold_expired(self, held: _Held) -> None:
        waiting = self._reordered.get(held.view.flow, [])
        if held in waiting:
            waiting.remove(held)
            if not waiting:
                del self._reordered[held.view.flow]
            self.counts["faults_reorder_timeouts"] += 1
            self._accept(held.packet, held.view, held.mark)

    def _accept(self, packet: QueuedPacket, view: PacketView | None, mark: int | None) -> None:
        self._pass(packet.packet_id, mark)
        if view is None:
            return
        for waiting in self._reordered.pop(view.flow, []):  # the next packet of the flow passed
            if waiting.timer is not None:
                waiting.timer.cancel()
            self.counts["faults_reordered"] += 1
            self._pass(waiting.packet.packet_id, waiting.mark)

    def _pass(self, packet_id: int, mark: int | None) -> None:
        self.queue.accept(packet_id, mark=mark)  # the kernel sends it on before this returns
        internal = self._settle_after.pop(packet_id, None)
        if internal is not None and self.settle is not None:
            task = asyncio.get_running_loop().create_task(self._settle(internal))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _settle(self, internal: Address) -> None:
        assert self.settle is not None
        try:
            self.counts["faults_mappings_expired"] += await self.settle(internal)
        except Exception:
            self.counts["faults_expire_failed"] += 1
