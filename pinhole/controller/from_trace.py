"""What pinhole's services said about a call, read back from a trace file (OTLP JSON, as a run writes trace.json).

Every event a service records is also a span (pinhole/events.py), so the call's trace holds the
services' own word: what the verdict may use only where the wire cannot show a thing, what the
ladder marks (faults injected, services restarted), and what the outcome of a matrix cell reads.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from pinhole import semconv
from pinhole.controller.otlp import TraceError, read_otlp_json, service_name, spans_to_events, trace_of_call

__all__ = ["TraceError", "evidence_from_trace", "load", "lost_spans", "service_name"]


def load(path: Path) -> Any:
    """A trace file, or a run directory holding trace.json; TraceError if it is no OTLP/JSON trace."""
    return read_otlp_json(path / "trace.json" if path.is_dir() else path)


def call_ids(request: Any) -> list[str]:
    """Call-IDs in the file, the one with the most spans first."""
    counts = Counter(e["call_id"] for e in spans_to_events(request) if e["call_id"])
    return [call_id for call_id, _ in counts.most_common()]


def evidence_from_trace(request: Any, call_id: str | None = None) -> dict[str, Any]:
    """The evidence dict the verdict reads, rebuilt from spans: the call's trace plus its
    Call-ID's spans anywhere else in the file."""
    call_id = call_id or next(iter(call_ids(request)), "")
    trace_id = trace_of_call(request, call_id) or ""
    everything = spans_to_events(request)
    events = [e for e in everything if e["trace_id"] == trace_id or (call_id and e["call_id"] == call_id)]
    # The STUN server cannot know the call (no signalling reaches it): its spans join by the
    # transaction ids of the call's own Binding requests.
    ours = {e["attrs"]["stun.transaction_id"] for e in events if e["attrs"].get("stun.transaction_id")}
    have = {e["span_id"] for e in events}
    events += [e for e in everything if e["span_id"] not in have and e["attrs"].get("stun.transaction_id") in ours]
    # NAT events the gateway could not tie to the call (it had not seen the SDP yet) join by the
    # address the offer announced: Alice's mapping on the NAT
    offer = next(
        (
            e
            for e in events
            if e["service"] == "alice" and e["attrs"].get("sip.method") == "INVITE" and e["kind"] == "sip.send"
        ),
        None,
    )
    advertised = offer["attrs"].get("sdp.media") if offer else None
    have = {e["span_id"] for e in events}
    events += [
        e
        for e in everything
        if advertised
        and e["span_id"] not in have
        and e["service"] == "natgw"
        and advertised in (e["attrs"].get("destination"), e["attrs"].get("external"))
    ]
    events.sort(key=lambda e: e["t"])
    flows = [e["attrs"][semconv.FLOW] for e in everything if e["attrs"].get(semconv.FLOW)]
    return {
        "source": "trace",
        **({"flow": flows[0]} if flows else {}),  # the figure the controller's run judged against
        "call_id": call_id,
        "trace_id": trace_id,
        "events": events,
        # NAT mappings made before the call's SIP (Alice asking the STUN server) have no call yet;
        # the verdict matches them to the call by Alice's media socket
        "mappings": [e["attrs"] for e in everything if e["kind"] == "nat.mapping"],
        "address_map": address_map(everything),
    }


def address_map(events: list[dict[str, Any]]) -> dict[str, str]:
    """IP -> ladder column, from what services said about themselves (service.started, local addresses).

    The NAT's outside address stands for Alice, as seen from the public side.
    """
    mapping: dict[str, str] = {}
    for e in events:  # the controller's run span names the lab's addresses (also for a lab up before the run)
        if e["kind"] == semconv.PINHOLE_RUN and e["attrs"].get(semconv.ADDRESS_MAP):
            with contextlib.suppress(ValueError, RecursionError):  # a file's word: only {IP: column} is taken
                told = json.loads(e["attrs"][semconv.ADDRESS_MAP])
                if isinstance(told, dict):
                    mapping.update((k, v) for k, v in told.items() if isinstance(v, str))
    for e in events:
        a = e["attrs"]
        for key in ("sip", "listen", "local"):
            if a.get(key) and (e["kind"] == "service.started" or key == "local"):
                mapping.setdefault(a[key].rpartition(":")[0], e["service"])
    for e in events:
        if e["kind"] == "service.started" and e["attrs"].get("wan_address"):
            mapping[e["attrs"]["wan_address"]] = "alice"
    return mapping


def lost_spans(request: Any, events: list[dict[str, Any]]) -> list[str]:
    """ "service kind" of each event (collected over gRPC, with its span id) whose span is not in the trace."""
    present = {e["span_id"] for e in spans_to_events(request)}
    return [f"{e['service']} {e['kind']}" for e in events if e.get("span_id") and e["span_id"] not in present]
