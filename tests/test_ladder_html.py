"""The HTML ladder: structure and escaping on the saved evidence, then the page in headless Chromium.

The browser tests load the file with `#select=N` (the page's hook that selects arrow N on load)
and read the DOM after the scripts ran; the screenshot is compared on structure (size, colors of
the protocols present), never pixel for pixel.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from pinhole.controller import ladder
from pinhole.controller.ladder_html import arrows, render_html, write_html

DATA = Path(__file__).parent / "data" / "evidence"
SVG_NS = "{http://www.w3.org/2000/svg}"
PAYLOAD = "</script><script>document.title='pwned'</script><b>bold</b> & \"q\" 'a'"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def load(name: str = "rfc5763-7.3") -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def svg_root(page: str) -> ET.Element:
    """The <svg> element of the page, parsed as XML (fails the test if it is not well-formed)."""
    start, end = page.index("<svg"), page.index("</svg>") + len("</svg>")
    return ET.fromstring(page[start:end])


def messages(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG_NS}g") if "message" in g.get("class", "").split()]


def embedded_data(page: str) -> list[dict[str, Any]]:
    m = re.search(r'<script type="application/json" id="ladder-data">(.*?)</script>', page, re.S)
    assert m, "no ladder-data script"
    return json.loads(m.group(1))


def with_payload(evidence: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The evidence with network-controlled text in Alice's INVITE; returns it and that arrow's index."""
    evidence = copy.deepcopy(evidence)
    invite = next(e for e in evidence["events"] if e["kind"] == "sip.send" and e["attrs"].get("sip.method") == "INVITE")
    invite["attrs"]["summary"] = PAYLOAD
    invite["attrs"]["sip.request_uri"] = "sip:<b>x</b>@b.example\x01"
    index = next(a.index for a in arrows(evidence) if a.event is invite)
    return evidence, index


# --- pure tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rfc5763-7.3", "bad-fingerprint", "no-stun-check"])
def test_one_message_group_per_arrow_of_the_terminal_ladder(name: str) -> None:
    evidence = load(name)
    page = render_html(evidence)
    groups = messages(svg_root(page))
    expected = len(ladder.render(evidence).splitlines()) - 1  # the terminal ladder: header + one line per arrow
    assert len(groups) == expected == len(arrows(evidence))
    assert [int(g.get("data-index")) for g in groups] == list(range(expected))
    assert len(embedded_data(page)) == expected


def test_every_arrow_is_selectable_and_has_a_tooltip_and_data() -> None:
    evidence = load()
    events = {(e["t"], e["service"], e["kind"]) for e in evidence["events"]}
    for g in messages(svg_root(render_html(evidence))):
        assert g.get("tabindex") == "0"
        assert g.get("data-kind") and g.get("data-service")
        title = g.find(f"{SVG_NS}title")
        assert title is not None and title.text
        classes = g.get("class", "").split()
        assert set(classes) & {"sip", "stun", "dtls", "srtp"}, classes
    data = embedded_data(render_html(evidence))
    assert all((d["time"], d["service"], d["kind"]) in events for d in data)
    times = [d["time"] for d in data]
    assert times == sorted(times)


def test_the_nat_drop_ends_in_an_x_at_the_nat_column() -> None:
    root = svg_root(render_html(load()))
    drops = [g for g in messages(root) if "drop" in g.get("class", "").split()]
    assert len(drops) == 1
    (drop,) = drops
    assert drop.get("data-kind") == "nat.drop" and "dtls" in drop.get("class", "")
    crosses = [x for x in drop.iter(f"{SVG_NS}g") if x.get("class") == "drop-x"]
    assert len(crosses) == 1 and len(crosses[0].findall(f"{SVG_NS}line")) == 2
    nat = next(g for g in root.iter(f"{SVG_NS}g") if g.get("class") == "lifeline" and g.get("data-column") == "natgw")
    nat_x = float(nat.find(f"{SVG_NS}line").get("x1"))
    cross_xs = [(float(ln.get("x1")) + float(ln.get("x2"))) / 2 for ln in crosses[0].findall(f"{SVG_NS}line")]
    assert cross_xs == [nat_x, nat_x]
    shaft = drop.find(f"{SVG_NS}line")
    assert float(shaft.get("x2")) == nat_x
    # the dropped send is not drawn a second time as a delivered ClientHello
    others = [g for g in messages(root) if g is not drop and g.get("data-kind") == "dtls.send"]
    labels = [g.find(f"{SVG_NS}text[@class='label']").text for g in others]
    assert labels.count("ClientHello") == 0 and labels.count("ClientHello (re)") == 1


def test_retransmissions_are_marked_and_styled() -> None:
    root = svg_root(render_html(load()))
    re_groups = [g for g in messages(root) if "retransmission" in g.get("class", "").split()]
    assert len(re_groups) == 1
    assert re_groups[0].find(f"{SVG_NS}text[@class='label']").text.endswith("(re)")
    assert ".message.retransmission .shaft" in render_html(load())


def test_attribute_values_from_the_network_are_escaped() -> None:
    evidence, index = with_payload(load())
    page = render_html(evidence, title="<i>title</i>")
    assert page.count("</script>") == 2  # the data element and the script element, nothing injected
    assert "<script>document.title" not in page
    assert "<b>" not in page and "<i>title</i>" not in page
    assert "&lt;i&gt;title&lt;/i&gt;" in page
    root = svg_root(page)  # still well-formed XML, with the control character replaced
    group = messages(root)[index]
    assert PAYLOAD.startswith(group.find(f"{SVG_NS}text[@class='label']").text.rstrip("…"))
    assert PAYLOAD in group.find(f"{SVG_NS}title").text
    data = embedded_data(page)[index]  # the JSON round-trips exactly
    assert data["attrs"]["summary"] == PAYLOAD
    assert data["attrs"]["sip.request_uri"] == "sip:<b>x</b>@b.example\x01"


def test_header_shows_title_verdict_and_legend() -> None:
    evidence = load()
    page = render_html(evidence)
    assert "rfc5763-7.3" in page.split("</h1>")[0]
    assert 'id="verdict"' not in page  # no verdict in the saved evidence: none shown
    evidence["verdict"] = {
        "verdict": "fail",
        "checks": [
            {"message": "1", "title": "INVITE offer", "rfc": "§7.3", "passed": True, "detail": "ok"},
            {"message": "4", "title": "ClientHello <dropped>", "rfc": "§7.3", "passed": False, "detail": "late"},
        ],
    }
    page = render_html(evidence, title="My run")
    assert "<h1>My run</h1>" in page
    verdict = page[page.index('id="verdict"') :]
    assert 'class="verdict fail"' in page and '<span class="badge">FAIL</span>' in verdict
    assert "2 checks, 1 failed" in verdict and "ClientHello &lt;dropped&gt;" in verdict
    legend = page[page.index('class="legend"') :]
    for word in ("SIP", "STUN", "DTLS", "SRTP", "retransmission", "dropped on the way"):
        assert word in legend
    assert 'id="details"' in page and page.count("<aside") == 1


def test_page_is_self_contained() -> None:
    page = render_html(load())
    assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://(?!www\.w3\.org/2000/svg")""", page)


def test_empty_evidence_still_renders() -> None:
    page = render_html({"events": [], "address_map": {}})
    assert messages(svg_root(page)) == [] and "(no messages)" in page


def test_write_html(tmp_path: Path) -> None:
    path = write_html(load(), tmp_path / "ladder.html", title="t")
    assert path.read_text(encoding="utf-8") == render_html(load(), title="t")


# --- headless Chromium ------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)


def chromium(tmp_path: Path, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium once, bounded; its whole process group is ended if it overruns."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-breakpad",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout}s: {command}")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # helpers of this run that outlived the browser
    except ProcessLookupError:
        pass
    assert proc.returncode == 0, err[-2000:]
    return out


class DetailsPanel(HTMLParser):
    """Collects the <th>/<td> rows and tags inside <aside id="details"> of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.rows: list[list[str]] = []
        self.tags: list[str] = []
        self.cell: list[str] | None = None
        self.title = ""
        self.in_title = False  # the document's <title>, not the SVG tooltips' ones
        self.seen_title = False
        self.selected: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "title" and not self.seen_title:
            self.in_title = self.seen_title = True
        if "selected" in (a.get("class") or "").split():
            self.selected.append(a.get("data-index") or "")
        if tag == "aside" and a.get("id") == "details":
            self.depth = 1
        elif self.depth:
            self.depth += tag not in ("br", "img", "input")
            self.tags.append(tag)
            if tag == "tr":
                self.rows.append([])
            if tag in ("th", "td"):
                self.cell = []

    def handle_endtag(self, tag: str) -> None:
        self.in_title = False
        if self.depth:
            if tag in ("th", "td") and self.cell is not None:
                self.rows[-1].append("".join(self.cell))
                self.cell = None
            self.depth -= 1

    def sections(self) -> dict[str, dict[str, str]]:
        """{"event": {...}, "attributes": {...}}: a one-cell row starts a section."""
        out: dict[str, dict[str, str]] = {}
        current: dict[str, str] = {}
        for row in self.rows:
            if len(row) == 1:
                current = out.setdefault(row[0], {})
            else:
                key, value = row
                assert key not in current, f"{key} listed twice"
                current[key] = value
        return out

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        if self.cell is not None:
            self.cell.append(data)


def dumped_panel(tmp_path: Path, page: Path, index: int) -> DetailsPanel:
    dom = chromium(tmp_path, "--dump-dom", f"{page.as_uri()}#select={index}")
    parser = DetailsPanel()
    parser.feed(dom)
    return parser


@needs_chromium
def test_selecting_an_arrow_lists_all_its_attributes(tmp_path: Path) -> None:
    evidence = load()
    drawn = arrows(evidence)
    invite = next(a for a in drawn if a.event["attrs"].get("sip.method") == "INVITE" and a.source == "alice")
    page = write_html(evidence, tmp_path / "ladder.html")
    panel = dumped_panel(tmp_path, page, invite.index)
    sections = panel.sections()
    event, attrs = sections["event"], sections["attributes"]
    assert attrs["sip.method"] == "INVITE"
    assert event["service"] == "alice" and event["kind"] == "sip.send"
    assert event["call_id"] == invite.event["call_id"]
    assert event["time"].startswith(str(invite.event["t"]))
    assert attrs == invite.event["attrs"]  # every attribute, nothing else
    assert set(event) == {"time", "service", "kind", "call_id"}
    assert panel.selected == [str(invite.index)]


@needs_chromium
def test_the_drop_is_selectable_too(tmp_path: Path) -> None:
    evidence = load()
    drop = next(a for a in arrows(evidence) if a.dropped)
    panel = dumped_panel(tmp_path, write_html(evidence, tmp_path / "ladder.html"), drop.index)
    sections = panel.sections()
    assert sections["event"]["kind"] == "nat.drop" and sections["event"]["service"] == "natgw"
    assert sections["attributes"] == drop.event["attrs"]  # its own "kind" (dtls) stays an attribute
    assert sections["attributes"]["kind"] == "dtls"


@needs_chromium
def test_injected_markup_is_shown_as_text_not_run(tmp_path: Path) -> None:
    evidence, index = with_payload(load())
    page = write_html(evidence, tmp_path / "ladder.html", title="escaped")
    panel = dumped_panel(tmp_path, page, index)
    assert panel.title == "escaped"  # the injected script did not run
    attrs = panel.sections()["attributes"]
    assert attrs["summary"] == PAYLOAD
    assert attrs["sip.request_uri"].startswith("sip:<b>x</b>@b.example")
    assert "b" not in panel.tags and "script" not in panel.tags


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(blob):
        (length,), kind = struct.unpack(">I", blob[pos : pos + 4]), blob[pos + 4 : pos + 8]
        body = blob[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    if bpp == 4:  # drop alpha: the page is opaque
        rows = [bytes(b for i, b in enumerate(r) if i % 4 != 3) for r in rows]
    return width, height, rows


@needs_chromium
def test_screenshot_has_the_size_asked_and_the_protocol_colors(tmp_path: Path) -> None:
    page = write_html(load(), tmp_path / "ladder.html")
    shot = tmp_path / "ladder.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", f"{page.as_uri()}#select=4")
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1400, 1000)
    colors = {row[i : i + 3] for row in rows for i in range(0, len(row), 3)}
    assert len(colors) > 20, "the screenshot looks blank"

    def seen(rgb: tuple[int, int, int]) -> bool:
        return any(all(abs(c[k] - rgb[k]) <= 24 for k in range(3)) for c in colors)

    # SIP blue, STUN green, DTLS orange, SRTP purple and the red of the NAT's X are all on screen
    for name, rgb in {
        "sip": (0x25, 0x63, 0xEB),
        "stun": (0x05, 0x96, 0x69),
        "dtls": (0xC2, 0x41, 0x0C),
        "srtp": (0x7C, 0x3A, 0xED),
        "drop": (0xDC, 0x26, 0x26),
    }.items():
        assert seen(rgb), f"no {name} color in the screenshot"


def test_a_dropped_packet_hides_only_its_own_send_and_names_the_fault():
    """A fault's drop is drawn as an X at the NAT in place of the send it dropped; the retransmission of
    the same STUN transaction that got through is still an arrow of its own."""
    from pinhole.controller.ladder import arrows

    def send(t: float, attempt: str) -> dict:
        attrs = {
            "peer": "203.0.113.40:4000",
            "local": "10.10.1.10:5000",
            "stun.class": "request",
            "stun.transaction_id": "ab",
            "attempt": attempt,
        }
        return {"t": t, "service": "alice", "kind": "stun.send", "attrs": attrs}

    fault = {
        "t": 1.01,
        "service": "natgw",
        "kind": "fault.injected",
        "attrs": {
            "action": "drop",
            "rule": "lose-first-check",
            "summary": "STUN Binding request ab",
            "source": "10.10.1.10:5000",
            "stun.transaction_id": "ab",
            "classification": "stun",
        },
    }
    evidence = {
        "events": [send(1.0, "1"), fault, send(1.2, "2")],
        "address_map": {"10.10.1.10": "alice", "203.0.113.40": "bob"},
    }
    drawn = arrows(evidence)
    assert [(a.source, a.target, a.dropped) for a in drawn] == [("alice", "natgw", True), ("alice", "bob", False)]
    assert "[fault lose-first-check]" in drawn[0].label and drawn[1].retransmission


def test_a_restarted_service_is_marked_on_its_own_column():
    """The controller's pinhole.kill and pinhole.start spans name the node in an attribute (low-cardinality span
    names): each is a mark on that node's column, from the services' events as from the wire."""
    from pinhole.controller.ladder import arrows

    def restart(t: float, kind: str, **attrs: str) -> dict:
        return {"t": t, "service": "controller", "kind": kind, "attrs": {"node": "proxy-b", **attrs}}

    marks = [restart(1.0, "pinhole.kill", crash="true"), restart(2.0, "pinhole.start")]
    sent = {"t": 0.5, "service": "alice", "kind": "sip.send", "attrs": {"peer": "203.0.113.40:5060", "summary": "BYE"}}
    entry = {"t": 0.5, "kind": "sip", "from": "alice", "to": "bob", "summary": "BYE", "links": []}
    for evidence in (
        {"events": [sent, *marks], "address_map": {"203.0.113.40": "bob"}},
        {"events": marks, "wire": [entry]},
    ):
        drawn = [(a.source, a.target, a.label) for a in arrows(evidence)][1:]
        assert drawn == [
            ("proxy-b", "proxy-b", "proxy-b killed (SIGKILL)"),
            ("proxy-b", "proxy-b", "proxy-b starting again"),
        ]
