"""An HTML ladder diagram of one call, drawn from the evidence.

The same arrows as the terminal ladder (ladder.py), but as one self-contained file (inline CSS,
SVG and JS, nothing fetched) that a reviewer can open from a CI artifact: every arrow is
selectable and shows every attribute of the event behind it, so a failed run can be read
without digging through events.jsonl. Attribute values come from the network, so everything
that reaches the page is escaped, and the embedded JSON cannot close its <script> element.

A URL fragment `#select=N` selects arrow N on load, which is also how the tests drive the page
in a headless browser.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from pinhole.controller.ladder import PROTOCOLS, Arrow, arrows, columns, title

GUTTER = 80  # room for the time column
COLUMN_WIDTH = 160
HEAD = 56  # column titles above the first row
ROW = 30
CHAR_WIDTH = 6.6  # rough width of one 12px sans-serif character, to shorten labels that do not fit

# XML 1.0 forbids these even as character references; the SVG must stay parseable whatever arrives.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def render_html(evidence: dict[str, Any], *, title: str = "") -> str:
    """The whole page: header (title, verdict, legend), the SVG ladder, the details panel, data, script."""
    drawn = arrows(evidence)
    title = title or _default_title(evidence)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_text(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            _header(evidence, title),
            "<main>",
            f'<div class="ladder">{_svg(drawn)}</div>',
            _details_panel(),
            "</main>",
            f'<script type="application/json" id="ladder-data">{_json_for_script(_data(drawn))}</script>',
            f"<script>{SCRIPT}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )


def write_html(evidence: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Write the page next to the other artifacts of a run (e.g. out/<run-id>/ladder.html)."""
    path = Path(path)
    path.write_text(render_html(evidence, title=title), encoding="utf-8")
    return path


# --- escaping ---------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Escaped for HTML/XML text and attribute values, with XML-illegal characters replaced."""
    return html.escape(_NOT_XML.sub("\ufffd", str(value)), quote=True)


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> element or open a comment: <, > and & become \\u escapes."""
    text = json.dumps(data, ensure_ascii=True, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- header -----------------------------------------------------------------------------------


def _default_title(evidence: dict[str, Any]) -> str:
    scenario = evidence.get("scenario")
    return f"pinhole ladder — {scenario}" if scenario else "pinhole ladder"


def _header(evidence: dict[str, Any], title: str) -> str:
    facts = [
        f"<span>{_text(name)}: <code>{_text(evidence[key])}</code></span>"
        for key, name in (("scenario", "scenario"), ("timers", "timers"), ("call_id", "Call-ID"))
        if evidence.get(key)
    ]
    return (
        "<header>"
        f"<h1>{_text(title)}</h1>"
        f'<div class="facts">{"".join(facts)}</div>'
        f"{_verdict(evidence.get('verdict'))}"
        f"{_legend()}"
        "</header>"
    )


def _verdict(verdict: dict[str, Any] | None) -> str:
    """PASS/FAIL badge and the checks, failed ones first so they are read first."""
    if not verdict:
        return ""
    passed = verdict.get("verdict") == "pass"
    checks = sorted(verdict.get("checks", []), key=lambda c: bool(c.get("passed")))
    failed = sum(1 for c in checks if not c.get("passed"))
    items = "".join(
        f'<li class="{"pass" if c.get("passed") else "fail"}">'
        f"<b>{'PASS' if c.get('passed') else 'FAIL'}</b> ({_text(c.get('message', ''))}) "
        f"{_text(c.get('title', ''))} <small>[{_text(c.get('rfc', ''))}]</small>"
        f"<div>{_text(c.get('detail', ''))}</div></li>"
        for c in checks
    )
    return (
        f'<div id="verdict" class="verdict {"pass" if passed else "fail"}">'
        f'<span class="badge">{"PASS" if passed else "FAIL"}</span>'
        f"<details{'' if passed else ' open'}><summary>{len(checks)} checks, {failed} failed</summary>"
        f"<ul>{items}</ul></details></div>"
    )


def _legend() -> str:
    protocols = "".join(f'<li><span class="swatch {key}"></span>{name}</li>' for key, name in PROTOCOLS.items())
    return (
        '<ul class="legend">'
        f"{protocols}"
        '<li><span class="swatch dashed"></span>retransmission (re)</li>'
        '<li><span class="x">✕</span>dropped on the way (at the NAT, or by a fault)</li>'
        "</ul>"
    )


# --- the SVG ----------------------------------------------------------------------------------


def _x(column: str, shown: list[str]) -> float:
    return GUTTER + shown.index(column) * COLUMN_WIDTH + COLUMN_WIDTH / 2


def _svg(drawn: list[Arrow]) -> str:
    shown = columns(drawn)
    width = GUTTER + len(shown) * COLUMN_WIDTH
    height = HEAD + max(len(drawn), 1) * ROW + 16
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="ladder diagram">',
        '<text class="time-head" x="8" y="40">time (s)</text>',
        *(_lifeline(column, height, shown) for column in shown),
        *(_message(arrow, shown) for arrow in drawn),
    ]
    if not drawn:
        parts.append(f'<text class="empty" x="{width / 2}" y="{HEAD + ROW / 2}">(no messages)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _lifeline(column: str, height: float, shown: list[str]) -> str:
    x = _x(column, shown)
    return (
        f'<g class="lifeline" data-column="{column}">'
        f'<rect x="{x - 56}" y="8" width="112" height="28" rx="4"/>'
        f'<text x="{x}" y="27">{_text(title(column))}</text>'
        f'<line x1="{x}" y1="36" x2="{x}" y2="{height - 8}"/>'
        "</g>"
    )


def _message(arrow: Arrow, shown: list[str]) -> str:
    """One arrow as a focusable <g>: hit area, shaft, head (or X), label, time and tooltip."""
    e = arrow.event
    top = HEAD + arrow.index * ROW
    y = top + ROW - 9
    x1, x2 = _x(arrow.source, shown), _x(arrow.target, shown)
    if x1 == x2:
        x2 = x1 + COLUMN_WIDTH / 3  # a service talking to itself: a short stub to the right
    lo, hi = sorted((x1, x2))
    classes = " ".join(
        ["message", arrow.protocol]
        + (["retransmission"] if arrow.retransmission else [])
        + (["drop"] if arrow.dropped else [])
    )
    tooltip = (
        f"{arrow.t:.3f} s  {title(arrow.source)} → {title(arrow.target)}: {arrow.label}"
        f"{'  (dropped on the way)' if arrow.dropped else ''}\n{e['kind']} from {e['service']}"
    )
    end = _cross(x2, y) if arrow.dropped else _head(x1, x2, y)
    return (
        f'<g class="{classes}" tabindex="0" role="button" data-index="{arrow.index}" '
        f'data-kind="{_text(e["kind"])}" data-service="{_text(e["service"])}" '
        f'aria-label="{_text(arrow.label)}">'
        f"<title>{_text(tooltip)}</title>"
        f'<rect class="hit" x="{GUTTER - 4}" y="{top}" width="{len(shown) * COLUMN_WIDTH + 4}" height="{ROW}"/>'
        f'<text class="time" x="8" y="{y + 4}">{arrow.t:.3f}</text>'
        f'<line class="shaft" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}"/>'
        + "".join(  # captured crossing these columns on the way
            f'<circle class="via" cx="{_x(c, shown)}" cy="{y}" r="3"/>' for c in arrow.via if c in shown
        )
        + f"{end}"
        f'<text class="label" x="{(lo + hi) / 2}" y="{y - 5}">{_text(_fit(arrow.label, hi - lo))}</text>'
        "</g>"
    )


def _head(x1: float, x2: float, y: float) -> str:
    d = 9 if x2 > x1 else -9
    return f'<polygon class="head" points="{x2},{y} {x2 - d},{y - 4.5} {x2 - d},{y + 4.5}"/>'


def _cross(x: float, y: float) -> str:
    r = 7
    return (
        f'<g class="drop-x" data-column="natgw">'
        f'<line x1="{x - r}" y1="{y - r}" x2="{x + r}" y2="{y + r}"/>'
        f'<line x1="{x - r}" y1="{y + r}" x2="{x + r}" y2="{y - r}"/>'
        "</g>"
    )


def _fit(label: str, span: float) -> str:
    """Shorten a label that would overflow its arrow; the full text is in the tooltip and panel."""
    room = max(int((span - 16) / CHAR_WIDTH), 4)
    return label if len(label) <= room else label[: room - 1] + "…"


# --- details panel and data -------------------------------------------------------------------


def _details_panel() -> str:
    return (
        '<aside id="details" aria-live="polite">'
        "<h2>Message details</h2>"
        '<p class="hint">Click or focus an arrow (Tab, ↑/↓) to see every attribute of its event.</p>'
        "</aside>"
    )


def _data(drawn: list[Arrow]) -> list[dict[str, Any]]:
    """What the script shows for each arrow: the event's identity and all its attributes."""
    return [
        {
            "index": a.index,
            "label": a.label,
            "from": title(a.source),
            "to": title(a.target),
            "dropped": a.dropped,
            "retransmission": a.retransmission,
            "relative": round(a.t, 6),
            "time": a.event["t"],
            "service": a.event["service"],
            "kind": a.event["kind"],
            "call_id": a.event.get("call_id", ""),
            "attrs": {str(k): str(v) for k, v in sorted(a.event.get("attrs", {}).items())},
        }
        for a in drawn
    ]


CSS = """
:root { --sip: #2563eb; --stun: #059669; --dtls: #c2410c; --srtp: #7c3aed; --other: #525252; --drop: #dc2626; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1f2328; background: #fff; }
header { padding: 12px 16px; border-bottom: 1px solid #d0d7de; background: #f6f8fa; }
h1 { font-size: 18px; margin: 0 0 4px; }
.facts span { margin-right: 16px; color: #57606a; }
.verdict { margin: 8px 0; }
.verdict .badge { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 700; color: #fff; }
.verdict.pass .badge { background: #1a7f37; }
.verdict.fail .badge { background: var(--drop); }
.verdict details { display: inline-block; margin-left: 10px; vertical-align: top; }
.verdict ul { margin: 4px 0; padding-left: 18px; }
.verdict li.fail b { color: var(--drop); }
.verdict li.pass b { color: #1a7f37; }
.verdict li div { color: #57606a; font-size: 12px; }
.legend { list-style: none; margin: 6px 0 0; padding: 0; display: flex; gap: 18px; flex-wrap: wrap; }
.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 28px; height: 0; border-top: 3px solid; }
.swatch.sip { border-color: var(--sip); } .swatch.stun { border-color: var(--stun); }
.swatch.dtls { border-color: var(--dtls); } .swatch.srtp { border-color: var(--srtp); }
.swatch.dashed { border-top-style: dashed; border-color: #57606a; }
.legend .x { color: var(--drop); font-weight: 700; }
main { display: flex; align-items: flex-start; gap: 12px; padding: 12px; }
.ladder { flex: 1 1 auto; overflow-x: auto; }
#details { flex: 0 0 320px; position: sticky; top: 12px; max-height: calc(100vh - 24px); overflow: auto;
  border: 1px solid #d0d7de; border-radius: 6px; padding: 10px; background: #fff; font-size: 12px; }
#details h2 { font-size: 15px; margin: 0 0 6px; }
#details table { border-collapse: collapse; width: 100%; }
#details th, #details td { text-align: left; vertical-align: top; padding: 2px 4px; border-bottom: 1px solid #eaeef2;
  word-break: break-all; font-family: ui-monospace, monospace; }
#details th { color: #57606a; font-weight: 400; white-space: nowrap; word-break: normal; }
#details tbody th[colspan] { color: #1f2328; font-weight: 600; padding-top: 8px; font-family: system-ui, sans-serif; }
svg text { font: 12px system-ui, sans-serif; fill: #1f2328; }
.lifeline rect { fill: #f6f8fa; stroke: #57606a; }
.lifeline text { text-anchor: middle; font-weight: 600; }
.lifeline line { stroke: #8c959f; stroke-dasharray: 4 4; }
.time-head, .time { fill: #57606a; font-family: ui-monospace, monospace; }
.message { --c: var(--other); cursor: pointer; outline: none; }
.message.sip { --c: var(--sip); } .message.stun { --c: var(--stun); }
.message.dtls { --c: var(--dtls); } .message.srtp { --c: var(--srtp); }
.message .hit { fill: transparent; }
.message:hover .hit { fill: #f6f8fa; }
.message:focus .hit, .message.selected .hit { fill: #fff8c5; }
.message.selected .hit { stroke: #d4a72c; }
.message .shaft { stroke: var(--c); stroke-width: 2; }
.message .head { fill: var(--c); }
.message .via { fill: var(--c); }
.message .label { fill: var(--c); text-anchor: middle; }
.message.retransmission .shaft { stroke-dasharray: 6 4; }
.message.retransmission .label { font-style: italic; }
.message.drop .shaft { stroke-dasharray: 2 3; }
.drop-x line { stroke: var(--drop); stroke-width: 3; }
.empty { text-anchor: middle; fill: #57606a; }
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("ladder-data").textContent);
  var panel = document.getElementById("details");
  var arrows = Array.prototype.slice.call(document.querySelectorAll("g.message"));

  function section(table, name) {
    var body = table.createTBody();
    body.className = name;
    var th = document.createElement("th");
    th.colSpan = 2;
    th.textContent = name;
    body.insertRow().appendChild(th);
    return body;
  }

  function row(body, key, value) {
    var tr = body.insertRow();
    var th = document.createElement("th");
    th.textContent = key;
    tr.appendChild(th);
    tr.insertCell().textContent = value;
  }

  function show(item) {
    panel.textContent = "";
    var h = document.createElement("h2");
    h.textContent = "#" + item.index + " " + item.label;
    panel.appendChild(h);
    var p = document.createElement("p");
    p.textContent = item.from + " \\u2192 " + item.to + (item.dropped ? " (dropped on the way)" : "") +
      (item.retransmission ? " (retransmission)" : "");
    panel.appendChild(p);
    var table = document.createElement("table");
    table.id = "details-table";
    var event = section(table, "event");
    row(event, "time", item.time + " (+" + item.relative.toFixed(3) + " s)");
    row(event, "service", item.service);
    row(event, "kind", item.kind);
    row(event, "call_id", item.call_id);
    var attrs = section(table, "attributes");  // kept apart: attrs may reuse a name such as "kind"
    Object.keys(item.attrs).sort().forEach(function (k) { row(attrs, k, item.attrs[k]); });
    panel.appendChild(table);
  }

  function select(index) {
    var item = data[index];
    if (!item) { return; }
    arrows.forEach(function (g) { g.classList.toggle("selected", Number(g.dataset.index) === index); });
    show(item);
    try { history.replaceState(null, "", "#select=" + index); } catch (e) { /* file:// may refuse */ }
  }

  arrows.forEach(function (g) {
    var index = Number(g.dataset.index);
    g.addEventListener("click", function () { select(index); });
    g.addEventListener("focus", function () { select(index); });
    g.addEventListener("keydown", function (ev) {
      var next = { ArrowDown: index + 1, ArrowUp: index - 1 }[ev.key];
      if (ev.key === "Enter" || ev.key === " ") { select(index); ev.preventDefault(); }
      else if (next !== undefined && arrows[next]) { arrows[next].focus(); ev.preventDefault(); }
    });
  });

  function fromHash() {
    var m = /^#select=(\\d+)$/.exec(location.hash);
    if (m) { select(Number(m[1])); }
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""
