"""SIP messages as evidence: the flat attributes every hop records for each message.

The UA and the proxies describe what they send and receive the same way, so the verdict can
follow one INVITE across hops (Max-Forwards, Record-Route, Via depth) and compare the SDP body
end to end (its SHA-256) without shipping whole messages around.
"""

from __future__ import annotations

import hashlib

from pinhole import sdp
from pinhole.sip.message import Request, Response


def message_event(
    direction: str, message: Request | Response, peer: tuple[str, int]
) -> tuple[str, str, dict[str, str]]:
    """-> (event kind "sip.send"/"sip.recv", Call-ID, attributes)."""
    headers = message.headers
    cseq = message.cseq
    attrs: dict[str, str] = {
        "peer": f"{peer[0]}:{peer[1]}",
        "sip.cseq": str(cseq.number),
        "sip.cseq_method": cseq.method,
        "sip.via_count": str(len(message.vias)),
        "sip.branch": message.top_via.branch or "",
    }
    if isinstance(message, Request):
        attrs["sip.method"] = message.method
        attrs["sip.request_uri"] = message.uri
        attrs["sip.max_forwards"] = headers.get("Max-Forwards") or ""
        attrs["summary"] = message.method
    else:
        attrs["sip.status_code"] = str(message.status_code)
        attrs["sip.reason"] = message.reason
        attrs["summary"] = f"{message.status_code} {message.reason} ({cseq.method})"
    attrs["sip.record_route_count"] = str(len(headers.get_all("Record-Route")))
    if headers.get("traceparent"):
        attrs["sip.traceparent"] = headers.get("traceparent") or ""
    if message.body:
        attrs.update(_sdp_attributes(message.body))
        attrs["summary"] += " + SDP"
    return f"sip.{direction}", message.call_id or "", attrs


def _sdp_attributes(body: bytes) -> dict[str, str]:
    attrs = {"sdp.sha256": hashlib.sha256(body).hexdigest()}
    try:
        session = sdp.parse(body)
    except sdp.SdpError as error:
        attrs["sdp.error"] = str(error)
        return attrs
    if not session.media:
        return attrs
    media = session.media[0]
    connection = media.connection or session.connection or ""
    address = connection.split()[-1] if connection else ""
    attrs["sdp.media"] = f"{address}:{media.port}"
    attrs["sdp.proto"] = media.proto
    attrs["sdp.setup"] = media.attribute("setup") or ""
    fingerprints = media.attributes_named("fingerprint") or [v for k, v in session.attributes if k == "fingerprint"]
    attrs["sdp.fingerprint"] = ",".join(str(f) for f in fingerprints if f)
    attrs["sdp.rtcp_mux"] = str(
        media.attribute("rtcp-mux") is not None or any(k == "rtcp-mux" for k, _ in media.attributes)
    )
    return attrs
