"""A terminal ladder diagram of one call, drawn from the evidence.

Columns are the lab's actors; every message a service sent is an arrow from its column to the
column of the address it went to (Alice's packets to the public side cross the NAT column), and
every packet the NAT dropped is an arrow that ends in an X at the NAT (one an injected fault dropped
on another link ends in an X at the node it was going to). Retransmissions are marked with (re); a
service the controller killed or started again during the call is a mark on its own column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SENT_KINDS = ("sip.send", "stun.send", "dtls.send", "srtp.first_sent")
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
    if kind.startswith("sip."):
        return a.get("summary", "SIP")
    if kind.startswith("stun."):
        cls = a.get("stun.class", "")
        text = "STUN Binding " + ("request" if cls == "request" else "response")
        if a.get("attempt", "1") != "1":
            text += " (re)"
        return text
    if kind.startswith(("pinhole.kill ", "pinhole.start ")):  # the controller restarting a service
        node = kind.partition(" ")[2]
        if kind.startswith("pinhole.start "):
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


def arrows(evidence: dict[str, Any]) -> list[Arrow]:
    """The arrows of the call in time order: what both ladders (terminal and HTML) draw."""
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
        elif e["kind"].startswith(("pinhole.kill ", "pinhole.start ")):
            node = e["kind"].partition(" ")[2]
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
    if _is_drop(event):
        prefix = event.get("attrs", {}).get("classification") or event.get("attrs", {}).get("kind", "")
    else:
        prefix = event["kind"].partition(".")[0]
    return prefix if prefix in PROTOCOLS else "other"


def _is_retransmission(event: dict[str, Any]) -> bool:
    a = event.get("attrs", {})
    return a.get("attempt", "1") != "1" or a.get("retransmission") == "True"


def columns(drawn: list[Arrow]) -> list[str]:
    """The ladder's columns: the lab's usual actors, and an extra one only when an arrow touches it."""
    used = {a.source for a in drawn} | {a.target for a in drawn}
    return COLUMNS + [c for c in EXTRA_COLUMNS if c in used]


def render(data: dict[str, Any]) -> str:
    """Render the call's arrows; `data` is the evidence dict (events, address map)."""
    drawn = arrows(data)
    if not drawn:
        return "(no messages)"
    shown = columns(drawn)
    header = "  time(s) " + "".join(TITLES[c].center(WIDTH) for c in shown)
    lines = [header]
    for arrow in drawn:
        lines.append(f"{arrow.t:9.3f} " + _arrow(arrow.source, arrow.target, arrow.label, arrow.dropped, shown))
    return "\n".join(lines)


def _arrow(source: str, target: str, label: str, dropped: bool, shown: list[str]) -> str:
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
    text = f" {label} "
    start = lo + 1 + max(0, (hi - lo - 1 - len(text)) // 2)
    if hi - lo - 1 >= len(text):
        chars[start : start + len(text)] = text
        return "".join(chars).rstrip()
    return "".join(chars).rstrip() + "  " + label
