"""Seed inputs of every target, from what the repo already holds: nothing is made up that a test,
a saved run or a scenario does not already say.

- tests/data: the RFC 4475 torture messages, the SDP goldens, the RFC 5769 STUN vectors, the saved runs'
  captures (every UDP payload in them: SIP, SDP bodies, STUN, DTLS handshakes, SRTP), their evidence;
- the tests' own vectors: every bytes or str literal of a test module, and simple expressions of them
  (``bytes.fromhex("...")``, ``b"\\x16\\xfe\\xfd" + bytes(8)``, ``"00" * 32``), read with ``ast``
  without importing the module;
- scenarios/**/*.yaml;
- a few messages built with the modules' own encoders where the tests build them the same way
  (RTP with CSRCs, extension and padding; SRTP protected with the fuzz keys; small pcapng files).

Every list is deterministic (sorted files, first occurrence kept) and cached per process.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fuzz import REPO, bundle

TESTS = REPO / "tests"
DATA = TESTS / "data"
MAX_SEED = 1 << 16  # bigger literals (a 100,000-deep nesting) are the tests' business, not a seed's


class _NotLiteral(Exception):
    pass


def _value(node: ast.AST) -> Any:
    """The value of a literal expression built from constants, +, *, bytes(n), bytes.fromhex(s), s.encode()."""
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (bytes, str, int))
        and not isinstance(node.value, bool)
    ):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _value(node.left), _value(node.right)
        try:
            value = left + right if isinstance(node.op, ast.Add) else left * right
        except TypeError:
            raise _NotLiteral from None
        if isinstance(value, (bytes, str)) and len(value) > MAX_SEED:
            raise _NotLiteral
        return value
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        func, arg = node.func, _value(node.args[0])
        if isinstance(func, ast.Name) and func.id == "bytes" and isinstance(arg, int) and 0 <= arg <= MAX_SEED:
            return bytes(arg)
        if isinstance(func, ast.Attribute) and func.attr == "fromhex" and isinstance(arg, str):
            try:
                return bytes.fromhex(arg)
            except ValueError:
                raise _NotLiteral from None
    if isinstance(node, ast.Call) and not node.args and isinstance(node.func, ast.Attribute):
        if node.func.attr == "encode" and isinstance(text := _value(node.func.value), str):
            return text.encode("utf-8", "surrogatepass")
    raise _NotLiteral


def test_literals(*modules: str) -> list[bytes]:
    """Every bytes/str literal (of 2+ bytes) of these test modules, outermost expressions first."""
    out: list[bytes] = []
    for module in modules:
        stack: list[ast.AST] = [ast.parse((TESTS / module).read_text())]
        while stack:
            node = stack.pop(0)
            if isinstance(node, ast.expr):
                try:
                    value = _value(node)
                except _NotLiteral:
                    pass
                else:
                    if isinstance(value, (bytes, str)) and len(value) >= 2:
                        out.append(value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass"))
                        continue
            if not isinstance(node, ast.JoinedStr):
                stack.extend(ast.iter_child_nodes(node))
    return out


def _files(pattern: str, root: Path = DATA) -> list[bytes]:
    return [path.read_bytes() for path in sorted(root.glob(pattern))]


def _unique(
    items: Iterable[bytes], keep: Callable[[bytes], bool] = lambda _: True, limit: int = MAX_SEED
) -> list[bytes]:
    return [item for item in dict.fromkeys(items) if len(item) <= limit and keep(item)]


@functools.cache
def captured() -> tuple[bytes, ...]:
    """Every UDP payload of the saved runs' captures, first occurrence, in capture order."""
    return tuple(dict.fromkeys(payload for run in bundle.runs() for _, payload in run.chunks))


def _captured(*kinds: str) -> list[bytes]:
    from pinhole import demux

    return [d for d in captured() if not d[:1].isalpha() and demux.classify(d).value in kinds]


def _is_sip(data: bytes) -> bool:
    return b"SIP/2.0" in data.upper()


def _body(message: bytes) -> bytes:
    return message.partition(b"\r\n\r\n")[2]


# --------------------------------------------------------------------------- per target


@functools.cache
def sip() -> list[bytes]:
    """RFC 4475's torture messages, the runs' SIP, and the SIP the tests write out."""
    literals = test_literals(
        "test_sip_message.py", "test_sip_transaction.py", "test_sip_dialog.py", "test_proxy.py", "test_robustness.py"
    )
    return _unique([*_files("sip/*.sip"), *(d for d in captured() if d[:1].isalpha()), *literals], _is_sip)


@functools.cache
def sdp() -> list[bytes]:
    """The SDP goldens, the bodies of the runs' and the torture messages' SIP, the tests' SDP."""
    bodies = [_body(message) for message in sip()]
    literals = test_literals("test_sdp.py", "test_sdp_rtcp.py", "test_media.py")
    return _unique([*_files("sdp/*.sdp"), *bodies, *literals], lambda d: b"v=" in d)


@functools.cache
def stun() -> list[bytes]:
    """The RFC 5769 vectors, the runs' Binding requests and answers, the STUN of the tests."""
    from pinhole import stun as codec

    built = [
        codec.encode(
            codec.binding_request(
                bytes(12), "fuzz", change_request=codec.ChangeRequest(True, True), response_port=5060, padding=8
            )
        ),
    ]
    literals = test_literals("test_stun.py", "test_demux.py", "test_natprobe.py")
    return _unique([*_files("stun/*.bin"), *_captured("stun"), *built, *literals], lambda d: len(d) >= 4)


@functools.cache
def dtls() -> list[bytes]:
    """The runs' handshakes (ClientHello to Finished, alerts) and the records and hello bodies of the tests."""
    return _unique([*_captured("dtls"), *test_literals("test_dtls.py", "test_demux.py")])


@functools.cache
def rtp() -> list[bytes]:
    """The runs' SRTP and SRTCP, the tests' RTP, and packets using every optional header field."""
    from pinhole.rtp import HeaderExtension, RtpPacket, sender_report

    built = [
        RtpPacket(0, 1, 2, 3, b"payload", True, (1, 2, 3), HeaderExtension(0xBEDE, bytes(8)), 4).encode(),
        RtpPacket(96, 65535, 2**32 - 1, 2**32 - 1, bytes(160)).encode(),
        sender_report(0x11223344, 1 << 63, 160, 10, 1600),
    ]
    literals = test_literals("test_rtp.py", "test_demux.py", "test_srtp.py")
    return _unique([*_captured("rtp", "rtcp"), *built, *literals])


@functools.cache
def srtp() -> list[bytes]:
    """RTP and RTCP, and the same protected with the fuzz keys (so that unprotect gets past the tag)."""
    from fuzz.targets import SRTP_KEYS
    from pinhole.srtp import SrtpError, SrtpSession

    protected = []
    for packet in rtp()[:64]:
        session = SrtpSession(SRTP_KEYS.mirrored())
        for protect in (session.protect, session.protect_rtcp):
            try:
                protected.append(protect(packet))
            except SrtpError:
                pass
    return _unique([*rtp(), *protected])


@functools.cache
def pcapng() -> list[bytes]:
    """Small captures first (the tests' golden bytes, each run's first blocks), then the runs' whole files."""
    whole = _files("runs/*/capture.pcapng")
    heads = [_first_blocks(data, count) for data in whole for count in (4, 12)]
    return _unique([*test_literals("test_pcapng.py"), *heads, *whole], limit=len(max(whole, key=len)))


def _first_blocks(data: bytes, count: int) -> bytes:
    offset = 0
    for _ in range(count):
        if offset + 8 > len(data):
            break
        offset += int.from_bytes(data[offset + 4 : offset + 8], "little")
    return data[:offset]


def wire() -> list[bytes]:
    return bundle.seeds()


@functools.cache
def scenario() -> list[bytes]:
    """Every shipped scenario file, and the scenario texts of the tests."""
    shipped = [path.read_bytes() for path in sorted((REPO / "scenarios").rglob("*.yaml"))]
    literals = test_literals("test_scenario.py")
    return _unique([*shipped, *literals], lambda d: b":" in d)


@functools.cache
def trace() -> list[bytes]:
    """The saved runs' events (tests/data/evidence) as the trace.json a run writes: a few spans, and all."""
    out = []
    for path in sorted((DATA / "evidence").glob("*.json")):
        events = json.loads(path.read_text())["events"]
        for count in (8, 24, len(events)):
            out.append(json.dumps(otlp_json(events[:count]), indent=1).encode())
    return _unique(out, limit=1 << 24) + _unique(test_literals("test_trace_input.py"), lambda d: d[:1] in b"{[")


def otlp_json(events: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP/JSON of evidence events, as a run writes trace.json: one resource per service, one span per event
    carrying its attributes and the call's Call-ID under their span keys (pinhole/events.py's convention)."""
    from pinhole import semconv

    spans: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        attrs = semconv.span_attributes({**e["attrs"], semconv.CALL_ID: e["call_id"]})
        nanos = str(round(e["t"] * 1e9))
        span = {
            "traceId": e["trace_id"],
            "spanId": e["span_id"],
            "name": e["kind"],
            "kind": 1,
            "startTimeUnixNano": nanos,
            "endTimeUnixNano": nanos,
            "attributes": [{"key": k, "value": {"stringValue": str(v)}} for k, v in attrs.items()],
        }
        if e.get("parent_span_id"):
            span["parentSpanId"] = e["parent_span_id"]
        spans.setdefault(e["service"], []).append(span)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "pinhole"}, "spans": service_spans}],
            }
            for service, service_spans in spans.items()
        ]
    }
