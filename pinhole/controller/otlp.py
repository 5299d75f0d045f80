"""OpenTelemetry traces of a run: an embedded OTLP/gRPC receiver and the span ↔ event mapping.

Every service event is also exported as a span (name = event kind, start = event time,
attributes = event attrs under their span keys + "pinhole.call_id", resource service.name = the
service instance; pinhole/semconv.py declares the names and maps them).
The controller runs `OtlpReceiver` itself so `pinhole run` needs no collector: the services sit
in other network namespaces and reach it through a unix socket file in the run directory
(OTEL_EXPORTER_OTLP_ENDPOINT=unix:/run/dir/otlp.sock, OTEL_EXPORTER_OTLP_INSECURE=true).
`spans_to_events` turns what arrived back into the evidence dicts that verdict.py and
ladder.py read (event kinds and attribute names, as the services emit them), so traces are a
second, independent path to the same evidence.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from pinhole import semconv

ExportTraceServiceRequest = trace_service_pb2.ExportTraceServiceRequest
ResourceSpans = trace_pb2.ResourceSpans
Span = trace_pb2.Span

CALL_ID_ATTR = semconv.span_key(semconv.CALL_ID)
SERVICE_NAME_ATTR = semconv.SERVICE_NAME

# OTLP batches are small, but a long run's forwarded or merged request can exceed gRPC's 4 MiB default.
_MAX_MESSAGE = 64 * 1024 * 1024
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]
# Same reason as services.CHANNEL_OPTIONS: a forward target that is not up yet must not cost minutes of backoff.
_FORWARD_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]
_FORWARD_QUEUE = 1024
_FORWARD_TIMEOUT = 5.0


# --------------------------------------------------------------------------- attribute helpers


def any_value_to_str(value: AnyValue) -> str:
    """An OTLP AnyValue as the string an event attr holds (events only carry strings)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return json.dumps(_any_value_to_py(value), separators=(",", ":"))


def _any_value_to_py(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value_to_py(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value_to_py(kv.value) for kv in value.kvlist_value.values}
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return any_value_to_str(value)


def attributes_to_dict(attributes: Iterable[KeyValue]) -> dict[str, str]:
    """OTLP KeyValue list → {key: string value}; a repeated key keeps its last value."""
    return {kv.key: any_value_to_str(kv.value) for kv in attributes}


def service_name(resource_spans: ResourceSpans) -> str:
    """The resource's service.name ("" when the exporter sent none)."""
    for kv in resource_spans.resource.attributes:
        if kv.key == SERVICE_NAME_ATTR:
            return any_value_to_str(kv.value)
    return ""


def _hex(raw: bytes) -> str:
    return raw.hex()


def _norm_trace_id(trace_id: str) -> str:
    return trace_id.strip().lower()


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver saw it, flattened so wait_for predicates stay one-liners."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attrs: dict[str, str]
    span: Span

    @property
    def call_id(self) -> str:
        return self.attrs.get(CALL_ID_ATTR, "")


def _iter_spans(resource_spans: Iterable[ResourceSpans]) -> Iterable[ReceivedSpan]:
    for rs in resource_spans:
        service = service_name(rs)
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield ReceivedSpan(
                    service=service,
                    name=span.name,
                    trace_id=_hex(span.trace_id),
                    span_id=_hex(span.span_id),
                    parent_span_id=_hex(span.parent_span_id),
                    start_time_unix_nano=span.start_time_unix_nano,
                    end_time_unix_nano=span.end_time_unix_nano,
                    attrs=attributes_to_dict(span.attributes),
                    span=span,
                )


def _as_resource_spans(source: Any) -> list[ResourceSpans]:
    """Accept an ExportTraceServiceRequest, a TracesData, or an iterable of ResourceSpans."""
    if hasattr(source, "resource_spans"):
        return list(source.resource_spans)
    return list(source)


# --------------------------------------------------------------------------- endpoints


def grpc_target(endpoint: str) -> tuple[str, bool]:
    """(gRPC target, secure?) for an OTLP endpoint, parsed the way the SDK's OTLPSpanExporter does.

    "http://h:p" → ("h:p", False); "https://h:p" → ("h:p", True); "unix:/path" and
    "unix:///path" stay as they are (gRPC's own unix target syntax); a bare "h:p" is insecure.
    """
    parsed = urlparse(endpoint)
    secure = parsed.scheme == "https"
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return parsed.netloc, secure
    return endpoint, secure


def export(request: ExportTraceServiceRequest, endpoint: str, timeout: float = 10.0) -> None:
    """Send a whole trace to another OTLP/gRPC endpoint (a Collector, Jaeger, Tempo) in one Export."""
    target, secure = grpc_target(endpoint)
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials()) if secure else grpc.insecure_channel(target)
    with channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=timeout)


def _endpoint_for(address: str, port: int) -> str:
    """The URL services export to, for a server bound to `address` (port 0 resolved to `port`)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return f"http://{host}:{port}"


def _unix_path(address: str) -> Path | None:
    """The socket file of a "unix:" address (None for TCP and abstract sockets)."""
    if address.startswith("unix://"):
        return Path(address[len("unix://") :])
    if address.startswith("unix:"):
        return Path(address[len("unix:") :])
    return None


# --------------------------------------------------------------------------- the receiver


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext):  # noqa: N802
        self._receiver._accept(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """An OTLP/gRPC trace receiver the controller embeds, so a run needs no external collector.

    Keeps every ResourceSpans received (in arrival order), lets tests and the controller wait on
    what has arrived (a Condition, no polling), and optionally tees each request to another
    OTLP/gRPC endpoint (e.g. a Jaeger or collector the user runs) on a background thread so a
    slow or absent backend never delays the services' exporters.
    """

    def __init__(
        self, address: str = "127.0.0.1:0", *, forward_to: str | None = None, socket_mode: int | None = None
    ) -> None:
        """`socket_mode`: permissions of a unix socket (0o666 lets unprivileged container users export)."""
        self.address = address
        self.socket_mode = socket_mode
        self.forward_to = forward_to
        self.endpoint: str | None = None
        self._cond = threading.Condition()
        self._resource_spans: list[ResourceSpans] = []
        self._spans: list[ReceivedSpan] = []
        self._requests = 0
        self._server: grpc.Server | None = None
        self._forward_queue: queue.Queue[ExportTraceServiceRequest | None] = queue.Queue(_FORWARD_QUEUE)
        self._forward_thread: threading.Thread | None = None
        self._forward_channel: grpc.Channel | None = None
        self._forwarded = 0
        self._forward_errors = 0
        self._forward_idle = threading.Condition()
        self._forward_pending = 0

    # lifecycle

    def start(self) -> str:
        """Bind and serve; returns the endpoint URL for OTEL_EXPORTER_OTLP_ENDPOINT."""
        if self._server is not None:
            raise RuntimeError("OtlpReceiver already started")
        sock = _unix_path(self.address)
        if sock is not None:
            sock.parent.mkdir(parents=True, exist_ok=True)
            if sock.is_socket():
                sock.unlink()  # a stale socket of an earlier run would make the bind fail
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp"), options=_SERVER_OPTIONS
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        port = server.add_insecure_port(self.address)
        if port == 0:
            raise OSError(f"OTLP receiver cannot bind {self.address}")
        if sock is not None and self.socket_mode is not None:
            os.chmod(sock, self.socket_mode)
        server.start()
        self._server = server
        if self.forward_to:
            target, secure = grpc_target(self.forward_to)
            self._forward_channel = (
                grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=_FORWARD_CHANNEL_OPTIONS)
                if secure
                else grpc.insecure_channel(target, options=_FORWARD_CHANNEL_OPTIONS)
            )
            self._forward_thread = threading.Thread(target=self._forward_loop, name="otlp-forward", daemon=True)
            self._forward_thread.start()
        self.endpoint = _endpoint_for(self.address, port)
        return self.endpoint

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, drain the forward queue (bounded by its per-request timeout), remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()
        if self._forward_thread is not None:
            self._forward_queue.put(None)
            self._forward_thread.join()
            self._forward_thread = None
        if self._forward_channel is not None:
            self._forward_channel.close()
            self._forward_channel = None
        sock = _unix_path(self.address)
        if sock is not None and sock.is_socket():
            sock.unlink(missing_ok=True)

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # receiving

    def _accept(self, request: ExportTraceServiceRequest) -> None:
        spans = list(_iter_spans(request.resource_spans))
        with self._cond:
            self._requests += 1
            self._resource_spans.extend(request.resource_spans)
            self._spans.extend(spans)
            self._cond.notify_all()
        if self._forward_thread is not None:
            with self._forward_idle:
                self._forward_pending += 1
            try:
                self._forward_queue.put_nowait(request)
            except queue.Full:
                with self._forward_idle:
                    self._forward_pending -= 1
                    self._forward_errors += 1
                    self._forward_idle.notify_all()

    def _forward_loop(self) -> None:
        assert self._forward_channel is not None
        stub = trace_service_pb2_grpc.TraceServiceStub(self._forward_channel)
        while (request := self._forward_queue.get()) is not None:
            try:
                # no wait_for_ready: a target that is down fails fast and is counted, not waited on
                stub.Export(request, timeout=_FORWARD_TIMEOUT)
                ok = True
            except grpc.RpcError:
                ok = False
            with self._forward_idle:
                self._forward_pending -= 1
                if ok:
                    self._forwarded += 1
                else:
                    self._forward_errors += 1
                self._forward_idle.notify_all()

    # reading

    def span_count(self) -> int:
        with self._cond:
            return len(self._spans)

    def request_count(self) -> int:
        """Export calls received (an empty export counts too)."""
        with self._cond:
            return self._requests

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._cond:
            return list(self._spans)

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float) -> bool:
        """Block until predicate(spans received so far) holds; False if `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def spans_by_service(self) -> dict[str, int]:
        with self._cond:
            return dict(Counter(s.service for s in self._spans))

    def request(self) -> ExportTraceServiceRequest:
        """Everything received as one request (resource_spans concatenated in arrival order)."""
        with self._cond:
            return ExportTraceServiceRequest(resource_spans=self._resource_spans)

    def clear(self) -> None:
        with self._cond:
            self._resource_spans.clear()
            self._spans.clear()
            self._requests = 0

    # forwarding

    def forwarded(self) -> int:
        """Requests the forward target accepted."""
        with self._forward_idle:
            return self._forwarded

    def forward_errors(self) -> int:
        """Requests that could not be forwarded (target down, rejected, or queue full)."""
        with self._forward_idle:
            return self._forward_errors

    def flush_forward(self, timeout: float) -> bool:
        """Wait until every request received so far has been forwarded or given up on."""
        deadline = time.monotonic() + timeout
        with self._forward_idle:
            while self._forward_pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._forward_idle.wait(remaining)
            return True


# --------------------------------------------------------------------------- OTLP/JSON files

# OTLP/JSON differs from protobuf's canonical JSON in one place: these ids are hex, not base64.
_SPAN_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_LINK_ID_FIELDS = ("traceId", "spanId")


class TraceError(ValueError):
    """A trace file that is not OTLP/JSON (or JSON Lines of it): the message names the file and what is wrong."""


def _objects(obj: dict[str, Any], key: str, where: str) -> list[tuple[dict[str, Any], str]]:
    """The objects of the list under `key`, each with its place in the file (null: none). protobuf's parser
    would take a string there for an empty message, so this says it is wrong."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TraceError(f"{where}{key}: a list, not {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise TraceError(f"{where}{key}[{index}]: an object, not {type(item).__name__}")
    return [(item, f"{where}{key}[{index}].") for index, item in enumerate(value)]


def _convert_ids(doc: dict[str, Any], convert: Callable[[str], str]) -> None:
    for rs, at_rs in _objects(doc, "resourceSpans", ""):
        for ss, at_ss in _objects(rs, "scopeSpans", at_rs):
            for span, at_span in _objects(ss, "spans", at_ss):
                _convert_fields(span, _SPAN_ID_FIELDS, convert, at_span)
                for link, at_link in _objects(span, "links", at_span):
                    _convert_fields(link, _LINK_ID_FIELDS, convert, at_link)


def _convert_fields(obj: dict[str, Any], names: tuple[str, ...], convert: Callable[[str], str], where: str) -> None:
    for name in names:
        # readers accept the proto field name too, as protobuf's parser does
        for key in (name, _snake(name)):
            if isinstance(obj.get(key), str):
                try:
                    obj[key] = convert(obj[key])
                except ValueError:
                    raise TraceError(f"{where}{key}: {obj[key][:64]!r} is not an id in hex") from None


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_b64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def to_otlp_json(request_or_resource_spans: Any) -> dict[str, Any]:
    """The OTLP/JSON document ({"resourceSpans": [...]}) of a request or of ResourceSpans."""
    request = ExportTraceServiceRequest(resource_spans=_as_resource_spans(request_or_resource_spans))
    doc = json_format.MessageToDict(request, use_integers_for_enums=True)  # OTLP/JSON: enums as integers
    doc.setdefault("resourceSpans", [])
    _convert_ids(doc, _b64_to_hex)
    return doc


def from_otlp_json(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """Parse one OTLP/JSON document; unknown fields are ignored as the OTLP spec requires. TraceError if it
    is not one."""
    if not isinstance(doc, dict):
        raise TraceError(f"an OTLP/JSON document is an object with resourceSpans, not {type(doc).__name__}")
    doc = json.loads(json.dumps(doc))  # a private copy: ids are rewritten in place
    _convert_ids(doc, _hex_to_b64)
    try:
        return json_format.ParseDict(doc, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise TraceError(" ".join(str(error).split())) from None
    except SystemError as error:  # upb on a key it cannot encode (a lone surrogate): not a trace either
        raise TraceError(f"not an OTLP/JSON document: {error}") from None
    except OverflowError as error:  # a number like 1e999, which Python's json reads as infinity
        raise TraceError(f"not an OTLP/JSON document: {error}") from None


def write_otlp_json(request_or_resource_spans: Any, path: str | os.PathLike[str], *, indent: int | None = 1) -> Path:
    """Write spans as an OTLP/JSON file that Jaeger/collector tooling can load; returns the path. A load's
    trace is written with `indent` None: json's C encoder serves only unindented output (5x faster here)."""
    path = Path(path)
    path.write_text(json.dumps(to_otlp_json(request_or_resource_spans), indent=indent) + "\n")
    return path


def read_otlp_json(path: str | os.PathLike[str]) -> ExportTraceServiceRequest:
    """Read a file written by write_otlp_json, or a collector file exporter's JSON Lines (merged).

    A file that cannot be read or is neither raises TraceError: one line naming the file (and the line)."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as error:
        raise TraceError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise TraceError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return _parse_otlp_text(text)
    except TraceError as error:
        raise TraceError(f"{path}: {error}") from None
    except RecursionError:  # json and protobuf's parser recurse once per nested array or object
        raise TraceError(f"{path}: nested too deeply to be a trace") from None


def _parse_otlp_text(text: str) -> ExportTraceServiceRequest:
    try:
        return from_otlp_json(json.loads(text))
    except TraceError:
        raise
    except json.JSONDecodeError as error:
        whole = error
    except ValueError as error:  # json's int() refuses numbers of 4,300+ digits with its own ValueError
        raise TraceError(f"not a trace: {error}") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) < 2 or not _is_json(lines[0][1]):  # one document, broken: say where in it
        raise TraceError(f"not JSON: {whole}")
    merged = ExportTraceServiceRequest()
    for number, line in lines:
        try:
            merged.resource_spans.extend(from_otlp_json(json.loads(line)).resource_spans)
        except TraceError as error:
            raise TraceError(f"line {number}: {error}") from None
        except ValueError as error:  # JSONDecodeError, or json's int() refusing thousands of digits
            raise TraceError(f"line {number}: not JSON: {error}") from None
    return merged


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


# --------------------------------------------------------------------------- spans ↔ events


def spans_to_events(request: Any, *, trace_id: str | None = None) -> list[dict[str, Any]]:
    """The evidence events the spans stand for (inverse of the services' span convention), by time.

    Each event is {"t", "service", "kind", "call_id", "attrs", "trace_id", "span_id",
    "parent_span_id"}; attrs keep every span attribute as a string under its event name
    (semconv.event_key), except pinhole.call_id.
    """
    wanted = _norm_trace_id(trace_id) if trace_id is not None else None
    events: list[dict[str, Any]] = []
    for s in _iter_spans(_as_resource_spans(request)):
        if wanted is not None and s.trace_id != wanted:
            continue
        attrs = {semconv.event_key(key): value for key, value in s.attrs.items()}
        call_id = attrs.pop(semconv.CALL_ID, "")
        events.append(
            {
                "t": s.start_time_unix_nano / 1e9,
                "service": s.service,
                "kind": _event_kind(s.name, attrs),
                "call_id": call_id,
                "attrs": attrs,
                "trace_id": s.trace_id,
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
            }
        )
    events.sort(key=lambda e: e["t"])  # stable: same-instant events keep arrival order
    return events


# What the controller's spans were about, in their names before those were low-cardinality ("pinhole.kill proxy-b")
_SUBJECTS = {
    semconv.PINHOLE_RUN: semconv.SCENARIO,
    semconv.PINHOLE_KILL: semconv.NODE,
    semconv.PINHOLE_START: semconv.NODE,
    semconv.PINHOLE_STRANGER: semconv.NODE,
}


def _event_kind(name: str, attrs: dict[str, str]) -> str:
    """The span's name as an event kind; a trace saved with "pinhole.kill proxy-b" reads as the trace written
    now: kind pinhole.kill, node proxy-b."""
    kind, space, subject = name.partition(" ")
    if not space or kind not in _SUBJECTS:
        return name
    attrs.setdefault(_SUBJECTS[kind], subject)
    return kind


def traces(request: Any) -> dict[str, list[dict[str, Any]]]:
    """Span summaries grouped by trace id (hex), each trace's spans by start time."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in _iter_spans(_as_resource_spans(request)):
        out[s.trace_id].append(
            {
                "service": s.service,
                "name": s.name,
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "start": s.start_time_unix_nano / 1e9,
                "end": s.end_time_unix_nano / 1e9,
                "call_id": s.call_id,
            }
        )
    for spans in out.values():
        spans.sort(key=lambda x: x["start"])
    return dict(out)


def trace_of_call(request: Any, call_id: str) -> str | None:
    """The trace most spans of a SIP call belong to (ties: the trace that started first)."""
    count: Counter[str] = Counter()
    first: dict[str, int] = {}
    for s in _iter_spans(_as_resource_spans(request)):
        if s.call_id == call_id:
            count[s.trace_id] += 1
            first[s.trace_id] = min(first.get(s.trace_id, s.start_time_unix_nano), s.start_time_unix_nano)
    if not count:
        return None
    return min(count, key=lambda t: (-count[t], first[t]))


def span_edges(request: Any, trace_id: str) -> set[tuple[str, str]]:
    """(parent service, child service) of every span whose parent is in the same trace.

    Same-service pairs (a service's own child spans) are included; filter a != b for hops only.
    """
    wanted = _norm_trace_id(trace_id)
    spans = [s for s in _iter_spans(_as_resource_spans(request)) if s.trace_id == wanted]
    by_id = {s.span_id: s for s in spans}
    return {
        (by_id[s.parent_span_id].service, s.service) for s in spans if s.parent_span_id and s.parent_span_id in by_id
    }
