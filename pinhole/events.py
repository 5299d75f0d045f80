"""Evidence every service emits: an append-only event log, named counters, and their spans.

Each service records what it sent, received and decided as `Event`s (the contract in
proto/pinhole/rpc/v1/events.proto). Every event is also an OpenTelemetry span in its call's
trace: span name = event kind, attributes = event attributes under their span keys (+ pinhole.call_id
and the semantic-convention network.peer.*), as pinhole/semconv.py declares and maps them. A call's
trace context at a service is bound to its Call-ID, so media events (STUN, DTLS, SRTP) join the call's
trace although packets carry none. The controller can therefore judge a call from the events over
gRPC or from the trace alone.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter as _Counter
from collections.abc import AsyncIterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind

from pinhole import semconv
from pinhole.rpc.v1 import events_pb2

_SPAN_KINDS = {"send": SpanKind.PRODUCER, "recv": SpanKind.CONSUMER}


def _sequence(event: events_pb2.Event) -> int:
    return event.sequence


def _call_attributes(attributes: Mapping[str, object]) -> dict[str, str]:
    """A call span's attributes: stringified as an event's are, under their span keys."""
    return semconv.span_attributes({name: str(value) for name, value in attributes.items()})


class EventLog:
    """Append-only log of one service's events with live followers, bounded per call: it keeps the events of
    the `calls` most recent calls and the latest `limit` events that belong to no call, so memory stays flat
    however many calls a service carries (an agent answers for its last 1,000 ended calls, the same). The trace
    contexts of calls are kept for as many calls: each holds its call's latest span."""

    def __init__(
        self, service: str, *, calls: int = 1_000, limit: int = 5_000, tracer: trace.Tracer | None = None
    ) -> None:
        self.service = service
        self.calls, self.limit = calls, limit
        self._events: list[events_pb2.Event] = []
        self._logged: dict[str, None] = {}  # Call-IDs with events in the log, oldest first
        self._callless = 0  # events in the log with no Call-ID
        self._sequence = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._tracer = tracer or trace.get_tracer("pinhole")  # the process's provider unless given one
        self._calls: dict[str, Context] = {}
        self._call_spans: dict[str, Span] = {}
        self.last_context: Context | None = None  # the span of the latest emit(), as a parent

    def emit(
        self,
        kind: str,
        call_id: str = "",
        attributes: Mapping[str, object] | None = None,
        *,
        parent: Context | None = None,
        at_ns: int | None = None,
        **more: object,
    ) -> events_pb2.Event:
        """Record one event (and its span); attribute values are stringified.

        Dotted attribute names (dtls.handshake_types) go in `attributes`, plain ones may be keywords.
        The span's parent is `parent` if given, else the call's bound context, else a new trace.
        `at_ns` is when it happened, if known better than now (a kernel timestamp).
        """
        merged = {**(attributes or {}), **more}
        self._sequence += 1
        event = events_pb2.Event(
            time_unix_nano=at_ns or time.time_ns(),
            service=self.service,
            kind=kind,
            call_id=call_id,
            attributes={k: str(v) for k, v in merged.items() if v is not None},
            sequence=self._sequence,
        )
        self.last_context = self._span(event, parent)
        self._events.append(event)
        if call_id:
            self._logged[call_id] = None
        else:
            self._callless += 1
        if len(self._logged) > self.calls + self.calls // 8 or self._callless > self.limit + self.limit // 8:
            self._trim()  # in batches: one pass per calls/8 calls or limit/8 call-less events
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return event

    def _span(self, event: events_pb2.Event, parent: Context | None) -> Context:
        attributes: dict[str, str | int] = semconv.span_attributes({**event.attributes, semconv.CALL_ID: event.call_id})
        host, sep, port = event.attributes.get(semconv.PEER, "").rpartition(":")
        if sep and port.isdigit():
            attributes[semconv.NETWORK_PEER_ADDRESS], attributes[semconv.NETWORK_PEER_PORT] = host, int(port)
        span = self._tracer.start_span(
            event.kind,
            context=parent or self._calls.get(event.call_id),
            kind=_SPAN_KINDS.get(event.kind.rpartition(".")[2], SpanKind.INTERNAL),
            attributes=attributes,
            start_time=event.time_unix_nano,
        )
        span.end(end_time=event.time_unix_nano)
        span_context = span.get_span_context()
        if span_context.is_valid:
            event.trace_id = trace.format_trace_id(span_context.trace_id)
            event.span_id = trace.format_span_id(span_context.span_id)
        return trace.set_span_in_context(span)

    # -- a call's trace at this service ------------------------------------------------------------

    def bind_call(self, call_id: str, context: Context | None) -> None:
        """Make `context` the parent of this call's later spans here, unless the call has one."""
        if call_id and context is not None and call_id not in self._calls:
            self._remember(call_id, context)

    def _remember(self, call_id: str, context: Context) -> None:
        """The call's context, the oldest forgotten beyond `calls` (junk Call-IDs must not grow this forever)."""
        self._calls[call_id] = context
        if len(self._calls) > self.calls:
            del self._calls[next(iter(self._calls))]

    def start_call(self, call_id: str, parent: Context | None = None, **attributes: object) -> Context:
        """Open the long "call" span (child of the bound context, else of `parent`: the context
        of the RPC that asked for the call); later spans of the call go under it."""
        span = self._tracer.start_span(
            semconv.CALL,
            context=self._calls.get(call_id) or parent,
            attributes=_call_attributes({semconv.CALL_ID: call_id, **attributes}),
        )
        self._call_spans[call_id] = span
        context = trace.set_span_in_context(span)
        self._remember(call_id, context)
        return context

    def end_call(self, call_id: str, **attributes: object) -> None:
        span = self._call_spans.pop(call_id, None)
        if span is not None:
            span.set_attributes(_call_attributes(attributes))
            span.end()

    def close(self) -> None:
        """End every open call span, so a stopping service still exports them."""
        for call_id in list(self._call_spans):
            self.end_call(call_id, ended_by="service stop")

    def _trim(self) -> None:
        """Forget the events of the oldest calls beyond `calls`, and the oldest call-less beyond `limit`."""
        over = len(self._logged) - self.calls
        forgotten = set(list(self._logged)[:over]) if over > 0 else set()
        for call_id in forgotten:
            del self._logged[call_id]
        callless_over = max(0, self._callless - self.limit)
        kept = []
        for event in self._events:
            if event.call_id:
                if event.call_id in forgotten:
                    continue
            elif callless_over:
                callless_over -= 1
                continue
            kept.append(event)
        self._events, self._callless = kept, min(self._callless, self.limit)

    # -- reading -----------------------------------------------------------------------------------

    def since(self, after_sequence: int = 0) -> list[events_pb2.Event]:
        """The events after `after_sequence`: a slice found by bisection (each follower asks at every new
        event; a scan of the whole log made followers quadratic under load)."""
        return self._events[bisect.bisect_right(self._events, after_sequence, key=_sequence) :]

    async def follow(
        self, after_sequence: int = 0, follow: bool = True, since_unix_nano: int = 0
    ) -> AsyncIterator[events_pb2.Event]:
        """Replay events after `after_sequence` (and not older than `since_unix_nano`), then (if
        follow) stream new ones as they come."""
        last = after_sequence
        while True:
            for event in self.since(last):
                last = event.sequence
                if event.time_unix_nano >= since_unix_nano:
                    yield event
            if not follow:
                return
            if self._sequence == last:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter


class Counters(_Counter[str]):
    """Named monotonic counters (packets, malformed input, retransmissions...)."""

    def as_reply(self) -> events_pb2.CountersReply:
        return events_pb2.CountersReply(
            counters=[events_pb2.Counter(name=name, value=value) for name, value in sorted(self.items())]
        )
