"""OpenTelemetry for every service: one tracer provider per process, a trace per call.

Configuration is the standard one: spans are exported over OTLP/gRPC (batched) to
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); without either, spans are
still made (trace context still propagates) but nothing is exported. The lab points the
services at the controller's embedded receiver through a unix socket, which reaches the
controller from any namespace. `shutdown()` flushes, so a service stopped with SIGTERM loses
no span.

Trace context crosses SIP hops in `traceparent`/`tracestate` headers (W3C Trace Context).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None


def setup(service: str) -> TracerProvider | None:
    """Install this process's tracer provider, named after the service instance.

    OTEL_SDK_DISABLED=true (the standard switch) leaves the no-op API: no spans, no context.
    """
    global _provider
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    resource = Resource.create(
        {"service.name": service, "service.namespace": "pinhole", "service.instance.id": f"{service}-{os.getpid()}"}
    )
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def run_tracer(endpoint: str, name: str = "controller") -> tuple[TracerProvider, trace.Tracer]:
    """A tracer provider of its own for one controller run, exporting straight to `endpoint`.

    Not the global provider: one process may run many labs (tests), each with its receiver.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "service.namespace": "pinhole"}), sampler=ALWAYS_ON
    )
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    return provider, provider.get_tracer("pinhole.controller")


def grpc_metadata(context: Context | None = None) -> list[tuple[str, str]]:
    """traceparent/tracestate as gRPC metadata, for a call made under `context` (the server side
    reads them back with `extract(dict(context.invocation_metadata()))`)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=context)
    return list(carrier.items())


def flush(timeout_millis: int = 10_000) -> bool:
    """Export every span made so far; True when the exporter confirmed them all."""
    return _provider.force_flush(timeout_millis) if _provider is not None else True


def shutdown() -> None:
    if _provider is not None:
        _provider.shutdown()


def inject(headers: MutableMapping[str, str], context: Context) -> None:
    """Write traceparent (and tracestate) for `context` into a carrier."""
    PROPAGATOR.inject(headers, context=context)


def extract(headers: dict[str, str]) -> Context | None:
    """The remote span context a message carries, or None when it has none (or a broken one)."""
    context = PROPAGATOR.extract(headers)
    span_context = trace.get_current_span(context).get_span_context()
    return context if span_context.is_valid else None
