"""The embedded OTLP receiver fed by the real OpenTelemetry SDK exporter, over TCP and unix sockets.

The services export with the SDK's OTLPSpanExporter from other network namespaces, so the unix
socket path is the one that matters; it is exercised the way the services configure it (the
standard OTEL_EXPORTER_OTLP_* variables) and with explicit arguments.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pinhole.controller.otlp import (
    OtlpReceiver,
    read_otlp_json,
    span_edges,
    spans_to_events,
    trace_of_call,
    traces,
    write_otlp_json,
)

T0 = 1_700_000_000_000_000_000  # ns; fixed so event times are exact


@pytest.fixture(autouse=True)
def _clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own OTEL_* settings must not steer the exporters under test."""
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_INSECURE",
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SERVICE_NAME",
    ]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sock_dir(tmp_path: Path) -> Path:
    """tmp_path, unless it is too long for a unix socket path (108 bytes on Linux)."""
    if len(str(tmp_path / "otlp.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="otlp", dir="/tmp"))


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.start()
    yield r
    r.stop()


def provider(service: str, exporter: OTLPSpanExporter) -> TracerProvider:
    p = TracerProvider(resource=Resource.create({"service.name": service, "service.namespace": "pinhole"}))
    p.add_span_processor(BatchSpanProcessor(exporter))
    return p


def emit_events(p: TracerProvider, n: int, call_id: str = "c1@10.10.1.10") -> None:
    """n event-spans (start == end, as the services record an event) with string attrs."""
    tracer = p.get_tracer("pinhole")
    for i in range(n):
        span = tracer.start_span(
            "sip.send",
            attributes={"pinhole.call_id": call_id, "sip.method": "INVITE", "seq": str(i)},
            start_time=T0 + i,
        )
        span.end(end_time=T0 + i)


# --------------------------------------------------------------------------- SDK → receiver


def test_tcp_loopback_batch_export_is_exact(receiver: OtlpReceiver) -> None:
    assert receiver.endpoint is not None and receiver.endpoint.startswith("http://127.0.0.1:")
    p = provider("alice", OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
    tracer = p.get_tracer("pinhole")
    with tracer.start_as_current_span("call", attributes={"pinhole.call_id": "c1"}) as parent:
        with tracer.start_as_current_span("sip.send", attributes={"sip.method": "INVITE", "network.peer.port": 5060}):
            pass
    emit_events(p, 40)
    p.shutdown()  # flushes the batch; the Export call returned, so the receiver has stored it

    assert receiver.span_count() == 42
    assert receiver.spans_by_service() == {"alice": 42}
    spans = {s.name: s for s in receiver.spans() if s.name in ("call", "sip.send") and "seq" not in s.attrs}
    assert spans["sip.send"].parent_span_id == spans["call"].span_id
    assert spans["call"].trace_id == format(parent.get_span_context().trace_id, "032x")
    assert spans["sip.send"].attrs["network.peer.port"] == "5060"  # int attribute → string
    resource = {kv.key: kv.value.string_value for kv in receiver.request().resource_spans[0].resource.attributes}
    assert resource["service.namespace"] == "pinhole"


@pytest.mark.parametrize("form", ["unix:{}", "unix://{}"])
def test_unix_socket_export_configured_by_env(form: str, sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the services do: endpoint and insecure from the standard variables, no arguments."""
    with OtlpReceiver(form.format(sock_dir / "otlp.sock")) as r:
        assert r.endpoint == form.format(sock_dir / "otlp.sock")
        assert (sock_dir / "otlp.sock").is_socket()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        p = provider("bob", OTLPSpanExporter())
        emit_events(p, 7)
        p.shutdown()
        assert r.span_count() == 7
        assert r.spans_by_service() == {"bob": 7}
    assert not (sock_dir / "otlp.sock").exists()  # stop() leaves no socket behind


def test_unix_socket_export_explicit_arguments(sock_dir: Path) -> None:
    with OtlpReceiver(f"unix:{sock_dir / 'otlp.sock'}") as r:
        p = provider("natgw", OTLPSpanExporter(endpoint=r.endpoint, insecure=True))
        emit_events(p, 3)
        p.shutdown()
        assert r.span_count() == 3


def test_stale_socket_file_is_replaced(sock_dir: Path) -> None:
    """A socket file left by a killed run must not stop the next run's receiver from binding."""
    path = sock_dir / "otlp.sock"
    first = OtlpReceiver(f"unix:{path}")
    first.start()
    first._server.stop(None).wait()  # type: ignore[union-attr]  # simulate a crash: no cleanup
    first._server = None
    with OtlpReceiver(f"unix:{path}") as r:
        p = provider("stun", OTLPSpanExporter(endpoint=r.endpoint, insecure=True))
        emit_events(p, 1)
        p.shutdown()
        assert r.span_count() == 1


def test_wait_for_is_event_driven(receiver: OtlpReceiver) -> None:
    assert not receiver.wait_for(lambda spans: len(spans) > 0, timeout=0.05)
    p = provider("proxy-a", OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
    emit_events(p, 5)
    p.force_flush()
    assert receiver.wait_for(lambda spans: sum(s.service == "proxy-a" for s in spans) == 5, timeout=10)
    p.shutdown()
    receiver.clear()
    assert receiver.span_count() == 0 and receiver.request().resource_spans == []


# --------------------------------------------------------------------------- a §7.3-like call


def _call_flow(endpoint: str) -> tuple[str, str]:
    """INVITE alice → proxy-a → proxy-b → bob as one trace, plus an unrelated call; returns both trace ids."""
    providers = {
        name: provider(name, OTLPSpanExporter(endpoint=endpoint, insecure=True))
        for name in ["alice", "proxy-a", "proxy-b", "bob"]
    }
    call = "abc@10.10.1.10"
    ctx = None
    spans = []
    for hop, name in enumerate(["alice", "proxy-a", "proxy-b", "bob"]):
        tracer = providers[name].get_tracer("pinhole")
        kind = "sip.send" if name == "alice" else "sip.recv"
        span = tracer.start_span(
            kind,
            context=ctx,
            attributes={
                "pinhole.call_id": call,
                "sip.method": "INVITE",
                "pinhole.peer": "203.0.113.10:5060",  # an event's `peer`, under its span key (pinhole/semconv.py)
                "network.peer.address": "203.0.113.10",
                "network.peer.port": 5060,
            },
            start_time=T0 + hop * 1000,
        )
        span.end(end_time=T0 + hop * 1000)
        spans.append(span)
        ctx = trace.set_span_in_context(span)
    # alice's own follow-up under her INVITE (same service edge), and another call in its own trace
    alice = providers["alice"].get_tracer("pinhole")
    child = alice.start_span(
        "dtls.handshake",
        context=trace.set_span_in_context(spans[0]),
        attributes={"pinhole.call_id": call},
        start_time=T0 + 10_000,
    )
    child.end(end_time=T0 + 20_000)
    other = alice.start_span("sip.send", attributes={"pinhole.call_id": "other@x"}, start_time=T0 + 5)
    other.end(end_time=T0 + 5)
    for p in providers.values():
        p.shutdown()
    return format(spans[0].get_span_context().trace_id, "032x"), format(other.get_span_context().trace_id, "032x")


def test_call_flow_edges_events_and_traces(receiver: OtlpReceiver) -> None:
    call_trace, other_trace = _call_flow(receiver.endpoint)  # type: ignore[arg-type]
    request = receiver.request()
    assert receiver.span_count() == 6

    assert span_edges(request, call_trace) == {
        ("alice", "proxy-a"),
        ("proxy-a", "proxy-b"),
        ("proxy-b", "bob"),
        ("alice", "alice"),
    }
    assert span_edges(request, other_trace) == set()
    assert span_edges(request, call_trace.upper()) == span_edges(request, call_trace)

    assert trace_of_call(request, "abc@10.10.1.10") == call_trace
    assert trace_of_call(request, "other@x") == other_trace
    assert trace_of_call(request, "nobody") is None

    grouped = traces(request)
    assert set(grouped) == {call_trace, other_trace}
    assert [s["service"] for s in grouped[call_trace]] == ["alice", "proxy-a", "proxy-b", "bob", "alice"]
    assert grouped[call_trace][-1]["end"] - grouped[call_trace][-1]["start"] == pytest.approx(10e-6, abs=1e-6)

    events = spans_to_events(request)
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    assert len(events) == 6
    first = events[0]
    assert set(first) == {"t", "service", "kind", "call_id", "attrs", "trace_id", "span_id", "parent_span_id"}
    assert first == {
        "t": T0 / 1e9,
        "service": "alice",
        "kind": "sip.send",
        "call_id": "abc@10.10.1.10",
        "attrs": {
            "sip.method": "INVITE",
            "peer": "203.0.113.10:5060",
            "network.peer.address": "203.0.113.10",
            "network.peer.port": "5060",
        },
        "trace_id": call_trace,
        "span_id": first["span_id"],
        "parent_span_id": "",
    }
    assert len(first["span_id"]) == 16
    assert all(isinstance(v, str) for e in events for v in e["attrs"].values())

    only_call = spans_to_events(request, trace_id=call_trace)
    assert [e["service"] for e in only_call] == ["alice", "proxy-a", "proxy-b", "bob", "alice"]
    assert only_call[1]["parent_span_id"] == only_call[0]["span_id"]
    assert spans_to_events(request, trace_id=other_trace)[0]["call_id"] == "other@x"


def _span(name: str, **attributes: str) -> trace_pb2.Span:
    kvs = [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()]
    return trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=name, attributes=kvs)


def test_a_trace_saved_before_the_names_were_namespaced_reads_the_same() -> None:
    """Spans written now (`pinhole.peer`, `pinhole.kill` + `pinhole.node`) and before (`peer`, "pinhole.kill
    proxy-b") come back as the same events."""

    def events(*spans: trace_pb2.Span) -> list[tuple[str, str, dict[str, str]]]:
        request = trace_service_pb2.ExportTraceServiceRequest(
            resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=spans)])]
        )
        return [(e["kind"], e["call_id"], e["attrs"]) for e in spans_to_events(request)]

    now = events(
        _span("sip.send", **{"pinhole.call_id": "c1", "pinhole.peer": "203.0.113.10:5060", "sip.branch": "z9hG4bK1"}),
        _span("pinhole.kill", **{"pinhole.node": "proxy-b", "pinhole.crash": "true"}),
        _span("pinhole.run", **{"pinhole.scenario": "rfc5763-7.3", "pinhole.flow": "rfc5763-7.3"}),
    )
    before = events(
        _span("sip.send", **{"pinhole.call_id": "c1", "peer": "203.0.113.10:5060", "sip.branch": "z9hG4bK1"}),
        _span("pinhole.kill proxy-b", crash="true"),
        _span("pinhole.run rfc5763-7.3", **{"pinhole.scenario": "rfc5763-7.3", "pinhole.flow": "rfc5763-7.3"}),
    )
    assert now == before
    assert now == [
        ("sip.send", "c1", {"peer": "203.0.113.10:5060", "sip.branch": "z9hG4bK1"}),
        ("pinhole.kill", "", {"node": "proxy-b", "crash": "true"}),
        ("pinhole.run", "", {"scenario": "rfc5763-7.3", "flow": "rfc5763-7.3"}),
    ]


# --------------------------------------------------------------------------- OTLP/JSON


def test_otlp_json_round_trip_with_hex_ids(receiver: OtlpReceiver, tmp_path: Path) -> None:
    call_trace, _ = _call_flow(receiver.endpoint)  # type: ignore[arg-type]
    request = receiver.request()
    path = write_otlp_json(request, tmp_path / "traces.json")

    doc = json.loads(path.read_text())
    assert set(doc) == {"resourceSpans"}
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert {s["traceId"] for s in spans} >= {call_trace}
    assert all(len(s["traceId"]) == 32 and len(s["spanId"]) == 16 for s in spans)
    assert all(int(s["spanId"], 16) >= 0 for s in spans)
    assert any(len(s.get("parentSpanId", "")) == 16 for s in spans)
    b64 = base64.b64encode(bytes.fromhex(call_trace)).decode()
    assert b64 not in path.read_text()
    assert all(isinstance(s["kind"], int) for s in spans)  # OTLP/JSON: enums as integers
    assert "startTimeUnixNano" in spans[0]

    again = read_otlp_json(path)
    assert again == request
    assert spans_to_events(again) == spans_to_events(request)

    # the same API takes the ResourceSpans alone
    write_otlp_json(list(request.resource_spans), tmp_path / "rs.json")
    assert read_otlp_json(tmp_path / "rs.json") == request


def test_read_otlp_json_lines(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """A collector file exporter writes one OTLP/JSON object per line; reading merges them."""
    _call_flow(receiver.endpoint)  # type: ignore[arg-type]
    request = receiver.request()
    halves = [list(request.resource_spans)[:2], list(request.resource_spans)[2:]]
    lines = []
    for i, half in enumerate(halves):
        write_otlp_json(half, tmp_path / f"{i}.json")
        lines.append(json.dumps(json.loads((tmp_path / f"{i}.json").read_text())))
    (tmp_path / "lines.jsonl").write_text("\n".join(lines) + "\n")
    assert read_otlp_json(tmp_path / "lines.jsonl") == request


# --------------------------------------------------------------------------- forwarding and robustness


def test_forwarding_to_a_second_receiver(sock_dir: Path) -> None:
    with OtlpReceiver(f"unix:{sock_dir / 'backend.sock'}") as backend:
        with OtlpReceiver(forward_to=backend.endpoint) as front:
            p = provider("proxy-b", OTLPSpanExporter(endpoint=front.endpoint, insecure=True))
            emit_events(p, 12)
            p.shutdown()
            assert backend.wait_for(lambda spans: len(spans) == 12, timeout=10)
            assert front.flush_forward(timeout=10)
            assert front.forwarded() == front.request_count() and front.forward_errors() == 0
            assert backend.request() == front.request()


def test_forwarding_to_a_dead_endpoint_counts_errors(receiver: OtlpReceiver, sock_dir: Path) -> None:
    with OtlpReceiver(forward_to=f"unix:{sock_dir / 'nobody.sock'}") as front:
        p = provider("alice", OTLPSpanExporter(endpoint=front.endpoint, insecure=True))
        emit_events(p, 2)
        p.shutdown()  # the services' export succeeds although the forward target is down
        assert front.span_count() == 2
        assert front.flush_forward(timeout=10)
        assert front.forward_errors() == front.request_count() >= 1 and front.forwarded() == 0


def test_malformed_and_empty_exports_do_not_break_the_receiver(receiver: OtlpReceiver) -> None:
    target = receiver.endpoint.removeprefix("http://")  # type: ignore[union-attr]
    with grpc.insecure_channel(target) as ch:
        raw = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError):
            raw(b"\xff\xff\xff\xff not a protobuf", timeout=5)

        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=5)
        assert receiver.request_count() == 1 and receiver.span_count() == 0

        # a span with no ids and a resource with no service.name is stored, and maps to empty fields
        bare = trace_pb2.ResourceSpans(
            resource=ResourcePb(attributes=[KeyValue(key="host", value=AnyValue(int_value=1))]),
            scope_spans=[trace_pb2.ScopeSpans(spans=[trace_pb2.Span(name="x")])],
        )
        stub.Export(trace_service_pb2.ExportTraceServiceRequest(resource_spans=[bare]), timeout=5)

    assert receiver.span_count() == 1
    assert spans_to_events(receiver.request()) == [
        {
            "t": 0.0,
            "service": "",
            "kind": "x",
            "call_id": "",
            "attrs": {},
            "trace_id": "",
            "span_id": "",
            "parent_span_id": "",
        }
    ]
    p = provider("stun", OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
    emit_events(p, 1)
    p.shutdown()
    assert receiver.spans_by_service() == {"": 1, "stun": 1}


def test_export_sends_a_whole_trace_to_another_endpoint(receiver: OtlpReceiver, sock_dir: Path) -> None:
    """What `pinhole run --otlp-forward` does with a run's trace."""
    from pinhole.controller.otlp import export

    _call_flow(receiver.endpoint)  # type: ignore[arg-type]
    with OtlpReceiver(f"unix:{sock_dir / 'jaeger.sock'}") as backend:
        export(receiver.request(), backend.endpoint)  # type: ignore[arg-type]
        assert backend.request() == receiver.request()
