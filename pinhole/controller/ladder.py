"""A terminal ladder diagram of one call, drawn from the evidence.

Columns are the lab's actors; every message a service sent is an arrow from its column to the
column of the address it went to (Alice's packets to the public side cross the NAT column), and
every packet the NAT dropped is an arrow that ends in an X at the NAT. Retransmissions are
marked with (re).
"""

from __future__ import annotations

from typing import Any

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


def render(data: dict[str, Any]) -> str:
    """Render the call's arrows; `data` is the evidence dict (events, address map)."""
    where: dict[str, str] = data.get("address_map", {})
    events = sorted(data.get("events", []), key=lambda e: e["t"])
    dropped = {
        (e["attrs"].get("source"), e["attrs"].get("dtls.record_sequence"), e["attrs"].get("stun.transaction_id"))
        for e in events
        if e["kind"] == "nat.drop"
    }
    arrows = []
    for e in events:
        kind = e["kind"]
        a = e.get("attrs", {})
        if kind in ("sip.send", "stun.send", "dtls.send", "srtp.first_sent"):
            source, peer = e["service"], a.get("peer", "").rpartition(":")[0]
            target = where.get(peer)
            if source not in COLUMNS or target not in COLUMNS:
                continue
            if (a.get("local"), a.get("dtls.record_sequence"), a.get("stun.transaction_id")) in dropped:
                continue  # drawn as the NAT's drop instead
            arrows.append((e["t"], source, target, _label(e), False))
        elif kind == "nat.drop":
            source = where.get(a.get("source", "").rpartition(":")[0], "")
            if source in COLUMNS:
                arrows.append((e["t"], source, "natgw", _label(e), True))
    if not arrows:
        return "(no messages)"
    t0 = arrows[0][0]
    header = "  time(s) " + "".join(TITLES[c].center(WIDTH) for c in COLUMNS)
    lines = [header]
    for t, source, target, label, dropped in arrows:
        lines.append(f"{t - t0:9.3f} " + _arrow(source, target, label, dropped))
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
