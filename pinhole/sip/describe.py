"""SIP messages as evidence: the flat attributes every hop records, and the trace they carry.

The UA and the proxies describe what they send and receive the same way, so the verdict can
follow one INVITE across hops (Max-Forwards, Record-Route, Via depth) and compare the SDP body
end to end (its SHA-256) without shipping whole messages around. Every message also carries
W3C trace context in `traceparent`/`tracestate` headers: each hop's receive span is a child of
the previous hop's send span, and a request that arrives without one starts a new trace.
"""

from __future__ import annotations

import hashlib

from pinhole import sdp, telemetry
from pinhole.events import EventLog
from pinhole.sip.message import CSeq, Request, Response, SipParseError

TRACE_HEADERS = ("traceparent", "tracestate")


def record_message(events: EventLog, direction: str, message: Request | Response, peer: tuple[str, int]) -> None:
    """One SIP message sent or received, as an event and a span in its call's trace.

    Called by the transport before a message is encoded, so a sent message gets the
    traceparent of its own send span.
    """
    kind, call_id, attributes = message_event(direction, message, peer)
    if direction == "recv":
        received = {name: value for name in TRACE_HEADERS if (value := message.headers.get(name))}
        events.emit(kind, call_id, attributes, parent=telemetry.extract(received))
        events.bind_call(call_id, events.last_context)
        return
    events.emit(kind, call_id, attributes)
    events.bind_call(call_id, events.last_context)
    carrier: dict[str, str] = {}
    if events.last_context is not None:
        telemetry.inject(carrier, events.last_context)
    for name in TRACE_HEADERS:
        if name in carrier:
            message.headers.set(name, carrier[name])


def message_event(
    direction: str, message: Request | Response, peer: tuple[str, int]
) -> tuple[str, str, dict[str, str]]:
    """-> (event kind "sip.send"/"sip.recv", Call-ID, attributes); never raises.

    A 400 answering a request that did not parse copies that request's Via, Call-ID and CSeq as
    they came (RFC 3261 §8.2.6.2; RFC 4475 §3.1.2.4 and §3.3.1 still want the answer): what cannot
    be read is left empty and `sip.error` says why, and the answer is evidence like any other.
    """
    headers = message.headers
    errors: list[str] = []
    cseq: CSeq | None = None
    branch = ""
    try:
        cseq = message.cseq
    except SipParseError as error:
        errors.append(str(error))
    try:
        branch = message.top_via.branch or ""
    except SipParseError as error:
        errors.append(str(error))
    cseq_method = cseq.method if cseq is not None else ""
    attrs: dict[str, str] = {
        "peer": f"{peer[0]}:{peer[1]}",
        "sip.cseq": str(cseq.number) if cseq is not None else "",
        "sip.cseq_method": cseq_method,
        "sip.via_count": str(len(headers.get_all("Via"))),
        "sip.branch": branch,
    }
    if errors:
        attrs["sip.error"] = "; ".join(errors)
    if isinstance(message, Request):
        attrs["sip.method"] = message.method
        attrs["sip.request_uri"] = message.uri
        attrs["sip.max_forwards"] = headers.get("Max-Forwards") or ""
        attrs["summary"] = message.method
    else:
        attrs["sip.status_code"] = str(message.status_code)
        attrs["sip.reason"] = message.reason
        attrs["summary"] = f"{message.status_code} {message.reason} ({cseq_method})"
        if headers.get("Retry-After"):  # an overloaded or unavailable peer says when to come back (§20.33)
            attrs["sip.retry_after"] = headers.get("Retry-After") or ""
    attrs["sip.record_route_count"] = str(len(headers.get_all("Record-Route")))
    if headers.get("traceparent"):
        attrs["sip.traceparent"] = headers.get("traceparent") or ""
    if message.body:
        attrs.update(_sdp_attributes(message.body))
        attrs["summary"] += " + SDP"
    return f"sip.{direction}", (headers.get("Call-ID") or "").strip(), attrs


def _sdp_attributes(body: bytes) -> dict[str, str]:
    attrs = {"sdp.sha256": hashlib.sha256(body).hexdigest()}
    f = sdp.facts(body)  # media level, else session level (RFC 4566 §5.13)
    if f.error:
        attrs["sdp.error"] = f.error
        return attrs
    attrs["sdp.media"] = f.media
    attrs["sdp.proto"] = f.proto
    attrs["sdp.setup"] = f.setup
    attrs["sdp.a_connection"] = ",".join(f.connection)  # forbidden by RFC 5763 §5
    attrs["sdp.capneg"] = str(f.capneg)  # RFC 5939 potential configuration
    attrs["sdp.fingerprint"] = ",".join(f.fingerprints)
    attrs["sdp.rtcp_mux"] = str(f.rtcp_mux)
    attrs["sdp.rtcp"] = f.rtcp  # RFC 3605: RTCP's port when not port + 1
    return attrs
