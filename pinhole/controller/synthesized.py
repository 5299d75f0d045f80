"""One trace per call, whoever took part: spans for the nodes that emit none, synthesised from the capture.

A third party in the lab sends no spans, and a call it places carries no trace context, so pinhole's own
callee starts a trace of its own. Before the run's trace is written (and forwarded), the call's spans in
other traces join the run's trace under its root span, and every datagram an external node sent becomes a
span of that node, marked `pinhole.synthesized = true` with where the capture saw it (`pinhole.sightings`): a
trace viewer sees the whole call, and can tell what a service said from what the wire showed.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from pinhole import semconv, wire
from pinhole.controller.otlp import CALL_ID_ATTR, SERVICE_NAME_ATTR, attributes_to_dict

SCOPE = "pinhole.synthesized"


def _run_span(request: Any, call_id: str) -> Span | None:
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if (
                    span.name == semconv.PINHOLE_RUN
                    and attributes_to_dict(span.attributes).get(CALL_ID_ATTR) == call_id
                ):
                    return span
    return None


def stitch(request: Any, call_id: str) -> int:
    """Move the call's spans that started a trace of their own (an external caller sent no traceparent)
    into the run's trace, their roots under the run's span; returns how many spans moved."""
    run = _run_span(request, call_id)
    if run is None:
        return 0
    foreign = {
        span.trace_id
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if span.trace_id != run.trace_id and attributes_to_dict(span.attributes).get(CALL_ID_ATTR) == call_id
    }
    moved = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.trace_id in foreign:
                    span.trace_id = run.trace_id
                    if not span.parent_span_id:
                        span.parent_span_id = run.span_id
                    moved += 1
    return moved


def _value(value: Any) -> AnyValue:
    return AnyValue(string_value=value if isinstance(value, str) else str(value))


def synthesize(request: Any, on_the_wire: wire.Wire, call: wire.Call, call_id: str, nodes: dict[str, str]) -> int:
    """Add a span per datagram each of `nodes` (node -> what runs there) sent in `call`, under the run's span;
    returns how many were added."""
    run = _run_span(request, call_id)
    if run is None or not nodes:
        return 0
    added = 0
    entries = wire.describe_call(on_the_wire, call)
    for node, label in sorted(nodes.items()):
        spans = []
        for entry in entries:
            if entry["from"] != node:
                continue
            t = int(entry["t"] * 1e9)
            attributes = semconv.span_attributes(
                {
                    semconv.CALL_ID: call_id,
                    semconv.SYNTHESIZED: "true",
                    semconv.SIGHTINGS: "; ".join(entry["links"]),
                    semconv.TO: entry["to"],
                    **{k: v for k, v in entry.items() if k not in ("t", "from", "to", "links") and v not in (None, "")},
                }
            )
            spans.append(
                Span(
                    trace_id=run.trace_id,
                    span_id=os.urandom(8),
                    parent_span_id=run.span_id,
                    name=f"{entry['kind']}.send",
                    kind=Span.SPAN_KIND_INTERNAL,
                    start_time_unix_nano=t,
                    end_time_unix_nano=t,
                    attributes=[KeyValue(key=k, value=_value(v)) for k, v in attributes.items()],
                )
            )
        if spans:
            resource = Resource(
                attributes=[
                    KeyValue(key=SERVICE_NAME_ATTR, value=_value(node)),
                    KeyValue(key=semconv.IMPLEMENTATION, value=_value(label)),
                ]
            )
            scope = ScopeSpans(scope=InstrumentationScope(name=SCOPE), spans=spans)
            request.resource_spans.append(ResourceSpans(resource=resource, scope_spans=[scope]))
            added += len(spans)
    return added
