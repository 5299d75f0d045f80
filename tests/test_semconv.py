"""pinhole/semconv.py: every event kind and attribute name the code emits, and every key a real trace holds,
is declared; the span keys are namespaced; the mapping between event names and span keys goes both ways."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from pinhole import semconv
from pinhole.semconv import ATTRIBUTES, KINDS, RESOURCE_ATTRIBUTES, event_key, span_key

ROOT = Path(__file__).resolve().parent.parent
EVIDENCE = Path(__file__).parent / "data" / "evidence"

# EventLog.emit(kind, call_id, attributes, **more), the services' _emit wrappers, start_call and end_call
EMITTERS = {"emit", "_emit", "start_call", "end_call"}
PARAMETERS = {"call_id", "parent", "at_ns", "attributes"}  # keywords of the API, not attributes
SDK_RESOURCE = "telemetry.sdk."  # what the OpenTelemetry SDK adds to every resource


# --------------------------------------------------------------------------- the emit sites, read from the code


def _names(node: ast.expr | None) -> list[str]:
    """The literal strings an expression can be (a constant, either side of `a if c else b`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _names(node.body) + _names(node.orelse)
    return []


def _dict_keys(node: ast.expr, scope: ast.AST) -> list[str]:
    """The literal keys of a dict literal; of a name, those of the dict literals assigned to it in `scope`
    and of its `name["key"] = ...` stores (an attribute dict built over a few lines)."""
    if isinstance(node, ast.Dict):
        keys: list[str] = []
        for key, value in zip(node.keys, node.values):
            keys += _names(key) if key is not None else _dict_keys(value, scope)
        return keys
    if not isinstance(node, ast.Name):
        return []
    keys = []
    for child in ast.walk(scope):
        if isinstance(child, (ast.Assign, ast.AnnAssign)) and child.value is not None:
            targets = child.targets if isinstance(child, ast.Assign) else [child.target]
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets):
                keys += _dict_keys(child.value, ast.Module(body=[], type_ignores=[]))
        elif isinstance(child, ast.Subscript) and isinstance(child.ctx, ast.Store):
            if isinstance(child.value, ast.Name) and child.value.id == node.id:
                keys += _names(child.slice)
    return keys


def emitted(source: str) -> list[tuple[int, str, str]]:
    """(line, "kind" | "attribute", name) of every literal kind and attribute name at an emit site."""
    found: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, scope: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = node
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EMITTERS:
            args = list(node.args)
            if node.func.attr in ("emit", "_emit") and args:
                found.extend((node.lineno, "kind", name) for name in _names(args.pop(0)))
            names = [name for arg in args for name in _dict_keys(arg, scope)]
            for keyword in node.keywords:
                if keyword.arg is None or keyword.arg == "attributes":
                    names += _dict_keys(keyword.value, scope)
                elif keyword.arg not in PARAMETERS:
                    names.append(keyword.arg)
            found.extend((node.lineno, "attribute", name) for name in names)
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    tree = ast.parse(source)
    visit(tree, tree)
    return found


def undeclared(source: str, where: str) -> list[str]:
    """What `source` emits that pinhole/semconv.py does not declare, one line each."""
    tables = {"kind": KINDS, "attribute": ATTRIBUTES}
    return [
        f"{where}:{line}: {what} {name!r} is not declared in pinhole/semconv.py"
        for line, what, name in emitted(source)
        if name not in tables[what]
    ]


def _sources() -> list[Path]:
    return sorted(p for top in ("pinhole", "services") for p in (ROOT / top).rglob("*.py") if "rpc/v1" not in str(p))


def test_every_kind_and_attribute_name_the_code_emits_is_declared() -> None:
    problems, sites = [], 0
    for path in _sources():
        source = path.read_text()
        sites += len(emitted(source))
        problems += undeclared(source, str(path.relative_to(ROOT)))
    assert sites > 300, "the walk found the emit sites"
    assert problems == []


def test_an_undeclared_name_fails_the_walk() -> None:
    source = """
def stun_sent(self, destination):
    sent = {"stun.class": "request"}
    sent["stun.colour"] = "blue"
    self.events.emit("stun.send", self.call_id, sent, parent=None, peer=destination, mood="calm")
    self.events.emit("stun.sent" if self.retry else "stun.send", attributes={"stun.transaction_id": "ab", "x": 1})
    self.events.start_call(self.call_id, parent=None, direction="outgoing", **{"whence": "a"})
"""
    assert undeclared(source, "x.py") == [
        "x.py:5: attribute 'stun.colour' is not declared in pinhole/semconv.py",
        "x.py:5: attribute 'mood' is not declared in pinhole/semconv.py",
        "x.py:6: kind 'stun.sent' is not declared in pinhole/semconv.py",
        "x.py:6: attribute 'x' is not declared in pinhole/semconv.py",
        "x.py:7: attribute 'whence' is not declared in pinhole/semconv.py",
    ]


def test_the_saved_evidence_fixtures_speak_the_vocabulary() -> None:
    """The saved runs the verdict and trace tests read are in today's names, not in names since renamed."""
    for path in sorted(EVIDENCE.glob("*.json")):
        events = json.loads(path.read_text())["events"]
        assert {e["kind"] for e in events} <= KINDS.keys(), path.name
        assert {name for e in events for name in e["attrs"]} <= ATTRIBUTES.keys(), path.name


# --------------------------------------------------------------------------- a trace, read from the file


def undeclared_in_trace(doc: dict[str, Any]) -> list[str]:
    """What an OTLP/JSON trace holds that pinhole/semconv.py does not declare: span names, span keys (each
    namespaced), resource keys; one line each, once each."""
    span_keys = {span_key(name) for name in ATTRIBUTES}
    problems: dict[str, None] = {}
    for rs in doc["resourceSpans"]:
        for kv in rs["resource"].get("attributes", []):
            if kv["key"] not in RESOURCE_ATTRIBUTES and not kv["key"].startswith(SDK_RESOURCE):
                problems[f"resource key {kv['key']!r}"] = None
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                if span["name"] not in KINDS:
                    problems[f"span name {span['name']!r}"] = None
                for kv in span.get("attributes", []):
                    if kv["key"] not in span_keys:
                        problems[f"span key {kv['key']!r} (on {span['name']})"] = None
    return list(problems)


def test_an_undeclared_or_plain_span_key_is_found_in_a_trace() -> None:
    span = {"name": "sip.send", "attributes": [{"key": k, "value": {"stringValue": "x"}} for k in ("peer", "sip.x")]}
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "alice"}}]},
                "scopeSpans": [{"spans": [span, {"name": "pinhole.run rfc5763-7.3"}]}],
            }
        ]
    }
    assert undeclared_in_trace(doc) == [
        "span key 'peer' (on sip.send)",  # declared as an event name: on a span it is pinhole.peer
        "span key 'sip.x' (on sip.send)",
        "span name 'pinhole.run rfc5763-7.3'",
    ]


@pytest.mark.lab
def test_every_name_in_a_real_calls_trace_is_declared(lab, tmp_path) -> None:
    """The §7.3 flow once, with short timers: every span name, span key and resource key of its trace.json."""
    from pinhole.controller.run import run

    running, _, _ = lab
    result, out_dir = run("rfc5763-7.3", timers_name="short", lab_name=running.name, out_root=tmp_path, progress=False)
    assert result.passed, result.render()
    doc = json.loads((out_dir / "trace.json").read_text())
    names = {span["name"] for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]}
    assert {semconv.PINHOLE_RUN, semconv.CALL, semconv.SIP_SEND, semconv.DTLS_CONNECTED, semconv.NAT_DROP} <= names
    assert undeclared_in_trace(doc) == []


# --------------------------------------------------------------------------- the mapping and the tables


def test_a_name_without_a_namespace_goes_into_pinholes_on_the_span() -> None:
    assert span_key("peer") == "pinhole.peer" and event_key("pinhole.peer") == "peer"
    assert span_key("call_id") == "pinhole.call_id" and event_key("pinhole.call_id") == "call_id"
    assert span_key("sip.branch") == "sip.branch" and event_key("sip.branch") == "sip.branch"
    assert span_key("network.peer.port") == "network.peer.port" == event_key("network.peer.port")


def test_event_key_reads_an_older_traces_keys_and_leaves_deeper_ones() -> None:
    assert event_key("peer") == "peer"  # written before span keys were namespaced
    assert event_key("pinhole.a.b") == "pinhole.a.b"  # not a span_key of any event name: left as it is
    assert event_key("pinhole.") == "pinhole."


def test_span_attributes_maps_every_key() -> None:
    assert semconv.span_attributes({"peer": "203.0.113.1:5060", "sip.method": "INVITE"}) == {
        "pinhole.peer": "203.0.113.1:5060",
        "sip.method": "INVITE",
    }


def test_every_declared_name_survives_the_round_trip_to_its_own_span_key() -> None:
    keys = {span_key(name) for name in ATTRIBUTES}
    assert len(keys) == len(ATTRIBUTES), "two event names on one span key"
    assert all(event_key(span_key(name)) == name for name in ATTRIBUTES)
    assert not [name for name in ATTRIBUTES if name.startswith(f"{semconv.NAMESPACE}.")]  # the implied namespace
    assert {key.partition(".")[0] for key in keys} <= semconv.NAMESPACES


def test_each_name_has_one_constant_and_a_one_line_meaning() -> None:
    tables = {**KINDS, **ATTRIBUTES, **RESOURCE_ATTRIBUTES}
    assert len(tables) == len(KINDS) + len(ATTRIBUTES) + len(RESOURCE_ATTRIBUTES), "a kind named as an attribute"
    constants = [value for name, value in vars(semconv).items() if name.isupper() and isinstance(value, str)]
    assert sorted(c for c in constants if c in tables) == sorted(tables), "a constant shadowed by another"
    assert all(meaning.strip() and "\n" not in meaning for meaning in tables.values())
