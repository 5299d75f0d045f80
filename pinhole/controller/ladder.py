"""A terminal ladder diagram of one call, drawn from the evidence.

A run's ladder is drawn from the wire (`evidence["wire"]`, pinhole.wire.describe_call): every datagram
is an arrow from its sender's column to its receiver's, with a `+` on each column it was captured
crossing on the way (the NAT, for everything of Alice's); one that died on the way ends in an X where
it was last seen (at the NAT, or at the node it was going to when a fault on that node's link took it).
SRTP is one arrow per side, with its packet count. Without a capture (a trace alone) the services'
own events are drawn instead: each message a service sent, and each the NAT dropped. Retransmissions
are marked with (re); a service the controller killed or started again is a mark on its own column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pinhole import semconv

SENT_KINDS = ("sip.send", "stun.send", "dtls.send", "srtp.first_sent")
RESTART_KINDS = (semconv.PINHOLE_KILL, semconv.PINHOLE_START)  # the controller restarting a service
PROTOCOLS = {"sip": "SIP", "stun": "STUN", "dtls": "DTLS", "srtp": "SRTP"}
COLUMNS = ["alice", "natgw", "stun", "proxy-a", "proxy-b", "bob"]
EXTRA_COLUMNS = ["bob2"]  # drawn only when the call reached them (forking, RFC 5763 §6.3)
ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS
TITLES = {
    "alice": "Alice",
    "natgw": "NAT",
    "stun": "STUN srv",
    "proxy-a": "Proxy A",
    "proxy-b": "Proxy B",
    "bob": "Bob",
    "bob2": "Bob 2",
}
WIDTH = 16


def _label(event: dict[str, Any]) -> str:
    a = event.get("attrs", {})
    kind = event["kind"]
    if kind.startswith("wire."):
        text = a.get("summary", kind[5:])
        if kind in ("wire.rtp", "wire.rtcp"):
            text = f"S{kind[5:].upper()} x{a.get('packets', '1')}"
        elif kind == "wire.dtls":
            text = text.replace("DTLS ", "")
        elif kind == "wire.stun":
            text = text.split(" ")[0] + " " + " ".join(text.split(" ")[1:3])
        if a.get("retransmission") == "True":
            text += " (re)"
        if a.get("fault"):
            text += f" [fault {a['fault']}]"
        return text
    if kind.startswith("sip."):
        return a.get("summary", "SIP")
    if kind.startswith("stun."):
        cls = a.get("stun.class", "")
        text = "STUN Binding " + ("request" if cls == "request" else "response")
        if a.get("attempt", "1") != "1":
            text += " (re)"
        return text
    if kind in RESTART_KINDS:
        node = a.get(semconv.NODE, "")
        if kind == semconv.PINHOLE_START:
            return f"{node} starting again"
        return f"{node} killed (SIGKILL)" if a.get("crash") in (True, "True", "true") else f"{node} stopped (SIGTERM)"
    if kind == "fault.injected":  # the fault's rule says why the message went missing
        return f"{a.get('summary', 'packet').replace('DTLS ', '')} [fault {a.get('rule', '')}]"
    if kind.startswith("dtls.") or kind == "nat.drop":
        text = a.get("summary", "DTLS").replace("DTLS ", "")
        if kind == "nat.drop":
            text = a.get("detail", text)
        elif a.get("retransmission") == "True":
            text += " (re)"
        return text
    if kind.startswith("srtp."):
        return f"SRTP ({a.get('profile', '')})"
    return kind


@dataclass(frozen=True)
class Arrow:
    """One message drawn on the ladder; `event` is the evidence event behind it."""

    index: int
    t: float  # seconds since the first arrow
    source: str
    target: str
    label: str
    protocol: str  # "sip" | "stun" | "dtls" | "srtp" | "other"
    retransmission: bool
    dropped: bool
    event: dict[str, Any]
    via: tuple[str, ...] = ()  # columns it was captured crossing between source and target


def arrows(evidence: dict[str, Any]) -> list[Arrow]:
    """The arrows of the call in time order: what both ladders (terminal and HTML) draw."""
    if evidence.get("wire"):
        return _wire_arrows(evidence)
    return _event_arrows(evidence)


def _wire_arrows(evidence: dict[str, Any]) -> list[Arrow]:
    """From the capture: each datagram of the call, and the controller's marks (kills, starts)."""
    faults = [e for e in evidence.get("events", []) if e["kind"] == "fault.injected"]
    picked: list[tuple[dict[str, Any], str, str, bool, tuple[str, ...]]] = []
    for entry in evidence["wire"]:
        source, to = entry["from"], entry["to"]
        dropped = bool(entry.get("dropped"))
        target = (entry.get("reached") if entry.get("reached") in TITLES else to) if dropped else to
        seen = [link.partition(":")[0] for link in entry.get("links", [])]
        via = tuple(dict.fromkeys(n for n in seen if n not in (source, target)))
        event = {"t": entry["t"], "service": source, "kind": f"wire.{entry['kind']}", "attrs": _wire_attrs(entry)}
        if dropped:
            fault = _fault_of(entry, faults)
            if fault is not None:
                event["attrs"]["fault"] = fault["attrs"].get("rule", "")
        picked.append((event, source, target, dropped, via))
    for e in evidence.get("events", []):
        if e["kind"] in RESTART_KINDS:
            node = e.get("attrs", {}).get(semconv.NODE, "")
            picked.append((e, node, node, False, ()))
    picked.sort(key=lambda p: p[0]["t"])
    t0 = picked[0][0]["t"] if picked else 0.0
    return [
        Arrow(i, e["t"] - t0, src, dst, _label(e), _protocol(e), _is_retransmission(e), dropped, e, via)
        for i, (e, src, dst, dropped, via) in enumerate(picked)
    ]


def _wire_attrs(entry: dict[str, Any]) -> dict[str, str]:
    """What the HTML ladder's panel lists for a datagram: every link it crossed, with its addresses there."""
    attrs = {k: str(v) for k, v in entry.items() if k not in ("links", "t")}
    for number, link in enumerate(entry.get("links", []), 1):
        attrs[f"link {number}"] = link
    return attrs


def _fault_of(entry: dict[str, Any], faults: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The injected drop that took this datagram: the same addresses on one of its links, at that moment."""
    addresses = {tuple(link.split(" ", 2)[2].split(" > ")) for link in entry.get("links", [])}
    for fault in faults:
        a = fault.get("attrs", {})
        if a.get("action") == "drop" and (a.get("source"), a.get("destination")) in addresses:
            if abs(fault["t"] - entry["t"]) < 1.0:
                return fault
    return None


def _event_arrows(evidence: dict[str, Any]) -> list[Arrow]:
    """From the services' events alone (a trace without its capture)."""
    where: dict[str, str] = evidence.get("address_map", {})
    events = sorted(evidence.get("events", []), key=lambda e: e["t"])
    # each drop stands for the latest send of the same packet before it (a retransmission of the same
    # STUN transaction or DTLS record number that got through is still drawn)
    dropped_sends: set[int] = set()
    for drop in (e for e in events if _is_drop(e)):
        key = _drop_key(drop.get("attrs", {}), "source")
        candidates = [
            i
            for i, e in enumerate(events)
            if e["kind"] in SENT_KINDS
            and e["t"] <= drop["t"]
            and i not in dropped_sends
            and _drop_key(e.get("attrs", {}), "local") == key
        ]
        if candidates:
            dropped_sends.add(candidates[-1])
    picked: list[tuple[dict[str, Any], str, str, bool]] = []
    for index, e in enumerate(events):
        a = e.get("attrs", {})
        if e["kind"] in SENT_KINDS:
            source, target = e["service"], where.get(_host(a.get("peer", "")))
            if source in ALL_COLUMNS and target in ALL_COLUMNS and index not in dropped_sends:
                picked.append((e, source, target, False))  # a dropped send is drawn as the NAT's drop
        elif _is_drop(e):
            source = where.get(_host(a.get("source", "")), "")
            # the NAT drops at its own column; the switch on the link to where the packet was going
            target = "natgw" if e["service"] == "natgw" else where.get(_host(a.get("destination", "")), "natgw")
            if source in ALL_COLUMNS and target in ALL_COLUMNS:
                picked.append((e, source, target, True))
        elif e["kind"] in RESTART_KINDS:
            node = a.get(semconv.NODE, "")
            if node in ALL_COLUMNS:
                picked.append((e, node, node, False))
    t0 = picked[0][0]["t"] if picked else 0.0
    return [
        Arrow(i, e["t"] - t0, src, dst, _label(e), _protocol(e), _is_retransmission(e), dropped, e)
        for i, (e, src, dst, dropped) in enumerate(picked)
    ]


def _is_drop(event: dict[str, Any]) -> bool:
    """A packet that died at the NAT: refused by its filtering, or dropped by an injected fault."""
    return event["kind"] == "nat.drop" or (
        event["kind"] == "fault.injected" and event.get("attrs", {}).get("action") == "drop"
    )


def _host(address: str) -> str:
    return address.rpartition(":")[0]


def _drop_key(attrs: dict[str, Any], address: str) -> tuple[Any, Any, Any]:
    """What pairs a send with the NAT's drop of the same packet."""
    return attrs.get(address), attrs.get("dtls.record_sequence"), attrs.get("stun.transaction_id")


def _protocol(event: dict[str, Any]) -> str:
    if event["kind"].startswith("wire."):
        kind = event["kind"][5:]
        return "srtp" if kind in ("rtp", "rtcp") else kind if kind in PROTOCOLS else "other"
    if _is_drop(event):
        prefix = event.get("attrs", {}).get("classification") or event.get("attrs", {}).get("kind", "")
    else:
        prefix = event["kind"].partition(".")[0]
    return prefix if prefix in PROTOCOLS else "other"


def _is_retransmission(event: dict[str, Any]) -> bool:
    a = event.get("attrs", {})
    return a.get("attempt", "1") != "1" or a.get("retransmission") == "True"


def columns(drawn: list[Arrow]) -> list[str]:
    """The ladder's columns: the lab's usual actors, and an extra one only when an arrow touches it
    (bob2, or a node the lab does not know by name)."""
    used = list(dict.fromkeys([n for a in drawn for n in (a.source, a.target, *a.via)]))
    return COLUMNS + [c for c in EXTRA_COLUMNS if c in used] + [c for c in used if c not in TITLES]


def title(column: str) -> str:
    return TITLES.get(column, column)


def render(data: dict[str, Any]) -> str:
    """Render the call's arrows; `data` is the evidence dict (events, address map)."""
    drawn = arrows(data)
    if not drawn:
        return "(no messages)"
    shown = columns(drawn)
    header = "  time(s) " + "".join(title(c).center(WIDTH) for c in shown)
    lines = [header]
    for arrow in drawn:
        line = _arrow(arrow.source, arrow.target, arrow.label, arrow.dropped, shown, arrow.via)
        lines.append(f"{arrow.t:9.3f} " + line)
    return "\n".join(lines)


def _arrow(source: str, target: str, label: str, dropped: bool, shown: list[str], via: tuple[str, ...] = ()) -> str:
    cells = [" " * (WIDTH // 2) + "|" + " " * (WIDTH // 2 - 1) for _ in shown]
    line = "".join(cells)
    i, j = shown.index(source), shown.index(target)
    x_from, x_to = i * WIDTH + WIDTH // 2, j * WIDTH + WIDTH // 2
    chars = list(line)
    lo, hi = sorted((x_from, x_to))
    for x in range(lo + 1, hi):
        chars[x] = "-"
    if x_to == x_from:  # a mark on the column itself
        chars[x_to] = "*"
    elif x_to > x_from:
        chars[x_to - 1] = "X" if dropped else ">"
    elif x_to < x_from:
        chars[x_to + 1] = "X" if dropped else "<"
    for node in via:  # captured crossing this column on the way
        at = shown.index(node) * WIDTH + WIDTH // 2 if node in shown else None
        if at is not None and lo < at < hi:
            chars[at] = "+"
    text = f" {label} "
    crossings = [shown.index(n) * WIDTH + WIDTH // 2 for n in via if n in shown]
    start = lo + 1 + max(0, (hi - lo - 1 - len(text)) // 2)
    fits = hi - lo - 1 >= len(text) and not any(start <= x < start + len(text) for x in crossings)
    if not fits:  # between the last crossing and the end, if it fits there
        segments = sorted([lo, *[x for x in crossings if lo < x < hi], hi])
        wide = max(zip(segments, segments[1:]), key=lambda p: p[1] - p[0])
        if wide[1] - wide[0] - 1 >= len(text):
            start, fits = wide[0] + 1 + (wide[1] - wide[0] - 1 - len(text)) // 2, True
    if fits:
        chars[start : start + len(text)] = text
        return "".join(chars).rstrip()
    return "".join(chars).rstrip() + "  " + label
