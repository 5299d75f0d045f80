"""A terminal ladder diagram of one call, drawn from the evidence.

Columns are the lab's actors; every message a service sent is an arrow from its column to the
column of the address it went to (Alice's packets to the public side cross the NAT column), and
every packet the NAT dropped is an arrow that ends in an X at the NAT. Retransmissions are
marked with (re).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SENT_KINDS = ("sip.send", "stun.send", "dtls.send", "srtp.first_sent")
PROTOCOLS = {"sip": "SIP", "stun": "STUN", "dtls": "DTLS", "srtp": "SRTP"}
COLUMNS = ["alice", "natgw", "stun", "proxy-a", "proxy-b", "bob"]
TITLES = {
    "alice": "Alice",
    "natgw": "NAT",
    "stun": "STUN srv",
    "proxy-a": "Proxy A",
    "proxy-b": "Proxy B",
    "bob": "Bob",
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
            if source in COLUMNS and target in COLUMNS and index not in dropped_sends:
                picked.append((e, source, target, False))  # a dropped send is drawn as the NAT's drop
        elif _is_drop(e):
            source = where.get(_host(a.get("source", "")), "")
            if source in COLUMNS:
                picked.append((e, source, "natgw", True))
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


def render(data: dict[str, Any]) -> str:
    """Render the call's arrows; `data` is the evidence dict (events, address map)."""
    drawn = arrows(data)
    if not drawn:
        return "(no messages)"
    header = "  time(s) " + "".join(TITLES[c].center(WIDTH) for c in COLUMNS)
    lines = [header]
    for arrow in drawn:
        lines.append(f"{arrow.t:9.3f} " + _arrow(arrow.source, arrow.target, arrow.label, arrow.dropped))
    return "\n".join(lines)


def _arrow(source: str, target: str, label: str, dropped: bool) -> str:
    cells = [" " * (WIDTH // 2) + "|" + " " * (WIDTH // 2 - 1) for _ in COLUMNS]
    line = "".join(cells)
    i, j = COLUMNS.index(source), COLUMNS.index(target)
    x_from, x_to = i * WIDTH + WIDTH // 2, j * WIDTH + WIDTH // 2
    chars = list(line)
    lo, hi = sorted((x_from, x_to))
    for x in range(lo + 1, hi):
        chars[x] = "-"
    if x_to > x_from:
        chars[x_to - 1] = "X" if dropped else ">"
    elif x_to < x_from:
        chars[x_to + 1] = "X" if dropped else "<"
    text = f" {label} "
    start = lo + 1 + max(0, (hi - lo - 1 - len(text)) // 2)
    if hi - lo - 1 >= len(text):
        chars[start : start + len(text)] = text
        return "".join(chars).rstrip()
    return "".join(chars).rstrip() + "  " + label
