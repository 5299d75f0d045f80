"""pinhole's evidence vocabulary: every event kind (span name) and attribute name, and what each means.

Services record what they sent, received and decided as events (pinhole/events.py); each event is also a
span named after its kind, with its attributes. The verdict, the ladders and a person reading a trace in
Jaeger must agree on what a name means, so every name is declared here once, with its meaning (and the
RFC section where it is an RFC field); tests/test_semconv.py fails on a name emitted but not declared.

Event attribute names are short where they are pinhole's own (`peer`, `reason`) and carry a protocol's
namespace where they are that protocol's field (`sip.branch`, `stun.transaction_id`). On a span every key
is namespaced, as OpenTelemetry asks of application attributes: a name without a dot is exported as
`pinhole.<name>` (`span_key`) and read back without it (`event_key`), a namespaced one as it is. So an event
name never starts with `pinhole.`: that namespace is the one a plain name gets on its span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

NAMESPACE = "pinhole"
# the namespaces an attribute name may carry: the protocols' fields, and OpenTelemetry's network.* convention
NAMESPACES = frozenset({NAMESPACE, "sip", "sdp", "stun", "dtls", "rtp", "rtcp", "turn", "network"})

KINDS: dict[str, str] = {}  # event kind (= span name) -> meaning
ATTRIBUTES: dict[str, str] = {}  # event attribute name -> meaning; its span key is span_key(name)
RESOURCE_ATTRIBUTES: dict[str, str] = {}  # resource attribute key -> meaning (a service's, not an event's)

V = TypeVar("V")


def span_key(name: str) -> str:
    """The span attribute key of an event attribute: a name with no namespace goes into pinhole's."""
    return name if "." in name else f"{NAMESPACE}.{name}"


def event_key(key: str) -> str:
    """The event attribute name of a span attribute key (span_key's inverse); a trace written before the
    keys were namespaced (`peer`, not `pinhole.peer`) reads the same."""
    namespace, _, name = key.partition(".")
    return name if namespace == NAMESPACE and name and "." not in name else key


def span_attributes(attributes: Mapping[str, V]) -> dict[str, V]:
    """Event attributes as a span's."""
    return {span_key(name): value for name, value in attributes.items()}


def _declare(table: dict[str, str], name: str, meaning: str) -> str:
    if name in table:
        raise ValueError(f"{name} is declared twice")
    table[name] = meaning
    return name


def _kind(name: str, meaning: str) -> str:
    return _declare(KINDS, name, meaning)


def _attribute(name: str, meaning: str) -> str:
    return _declare(ATTRIBUTES, name, meaning)


def _resource(key: str, meaning: str) -> str:
    return _declare(RESOURCE_ATTRIBUTES, key, meaning)


# =========================================================================== the call (RFC 3261 dialogs)

CALL = _kind("call", "A user agent's whole call, from INVITE to its end: the parent of the call's later spans.")
CALL_INCOMING = _kind("call.incoming", "An INVITE arrived and the call rings (RFC 3261 §13.3.1).")
CALL_STATE = _kind("call.state", "The call moved to another state (`state`).")
CALL_FAILED = _kind("call.failed", "The call failed; `reason` says why.")
CALL_TERMINATED = _kind("call.terminated", "The call ended by a BYE, sent or received (RFC 3261 §15).")
CALL_REFUSED = _kind("call.refused", "An INVITE was answered with an error before the call began.")
CALL_FORK = _kind("call.fork", "Another 2xx with a new To tag: another dialog of a forked INVITE (RFC 5763 §6.3).")
CALL_FORK_FAILED = _kind("call.fork_failed", "One dialog of a forked INVITE failed; the call goes on without it.")
CALL_FORK_TERMINATED = _kind("call.fork_terminated", "One dialog of a forked INVITE ended (its BYE).")
CALL_REINVITE = _kind("call.reinvite", "A re-INVITE sent or received: a new offer in the dialog (RFC 3261 §14).")
CALL_REINVITE_REJECTED = _kind("call.reinvite_rejected", "A re-INVITE answered with an error (RFC 3261 §14.2).")
CALL_MODIFIED = _kind("call.modified", "A re-INVITE's offer/answer completed (RFC 5763 §6.6: maybe a new association).")

CALL_ID = _attribute(
    "call_id",
    "The Call-ID of the call an event belongs to (RFC 3261 §8.1.1.4): the event's own field, an attribute on its span.",
)
STATE = _attribute("state", "A call's state: calling, ringing, established, terminated, failed.")
REASON = _attribute("reason", "Why it happened, in words (a SIP reason phrase where there is one).")
DIRECTION = _attribute(
    "direction",
    "Which way: a call's (outgoing, incoming), a re-INVITE's (sent, received), a faulted packet's on its link.",
)
TARGET = _attribute("target", "The URI an outgoing call was placed to (its Request-URI, RFC 3261 §8.1.1.1).")
ENDED_BY = _attribute("ended_by", "What ended a call span that was still open (a stopping service).")
REMOTE_MEDIA = _attribute("remote_media", "The media address the peer's SDP announced, ip:port (RFC 4566 §5.7).")
WARNINGS = _attribute("warnings", "What in the peer's SDP pinhole tolerated but would not send, `;`-separated.")
FORK = _attribute(
    "fork",
    "Which fork: a proxy's branch index (RFC 3261 §16.6), or a user agent's dialog, by To tag (RFC 5763 §6.3).",
)
FORKS = _attribute("forks", "How many forks (a proxy's branches, a user agent's dialogs) the request has.")
REMOTE_TARGET = _attribute("remote_target", "A fork's remote target: the Contact of its 2xx (RFC 3261 §12.1.2).")
SETUP = _attribute("setup", "The a=setup a re-INVITE offers (RFC 4145 §4; RFC 5763 §5).")
ANSWER_SETUP = _attribute("answer_setup", "The a=setup the answerer picks (RFC 4145 §4): active, passive or keep.")
NEW_CERTIFICATE = _attribute("new_certificate", "The re-INVITE offers a new certificate (RFC 5763 §6.6).")
NEW_ASSOCIATION = _attribute("new_association", "The re-INVITE made a new DTLS association (RFC 5763 §6.6).")
DTLS_ROLE = _attribute("dtls_role", "Our DTLS role after a re-INVITE: client or server (RFC 5763 §5).")
STATUS = _attribute(
    "status",
    "A SIP status code (RFC 3261 §7.2): of a proxy's response, drop or fork, a re-INVITE's, an identity rejection's.",
)
METHOD = _attribute("method", "The SIP method of the request a proxy handled or an identity signed (RFC 3261 §7.1).")

# =========================================================================== SIP messages (RFC 3261)

SIP_SEND = _kind("sip.send", "A SIP message sent (RFC 3261 §18.1.1, §18.2.2), described by pinhole/sip/describe.py.")
SIP_RECV = _kind("sip.recv", "A SIP message received (RFC 3261 §18.1.2, §18.2.1); child of the sender's sip.send.")
SIP_MALFORMED = _kind("sip.malformed", "A datagram on a SIP socket that is no SIP message (RFC 3261 §18.3).")
SIP_TIMEOUT = _kind(
    "sip.timeout", "A client transaction got no final response (RFC 3261 §17.1.1.2 Timer B, §17.1.2.2 F)."
)
SIP_FORWARD = _kind("sip.forward", "A proxy forwarded a request (RFC 3261 §16.6), a CANCEL (§16.10) or a 2xx's ACK.")
SIP_RESPONSE = _kind("sip.response", "A proxy sent a response upstream (RFC 3261 §16.7 step 8).")
SIP_REJECT = _kind("sip.reject", "A proxy answered a request itself with an error (RFC 3261 §16.3, §16.4).")
SIP_DROP = _kind("sip.drop", "A proxy dropped a message it cannot forward (a stray response, an ACK with no route).")
SIP_CANCEL = _kind("sip.cancel", "A proxy received a CANCEL (RFC 3261 §16.10).")
SIP_FORK_FINAL = _kind("sip.fork_final", "A forked request's branch got its first final response (RFC 3261 §16.7).")
SIP_BODY_REWRITTEN = _kind("sip.body_rewritten", "A proxy rewrote a message's SDP (deviation proxy-rewrite-sdp).")

SIP_METHOD = _attribute("sip.method", "The request's method (RFC 3261 §7.1).")
SIP_REQUEST_URI = _attribute("sip.request_uri", "The request's Request-URI (RFC 3261 §7.1).")
SIP_STATUS_CODE = _attribute("sip.status_code", "The response's status code (RFC 3261 §7.2).")
SIP_REASON = _attribute("sip.reason", "The response's reason phrase (RFC 3261 §7.2).")
SIP_CALL_ID = _attribute("sip.call_id", "The Call-ID of a message a fault hit (RFC 3261 §8.1.1.4).")
SIP_CSEQ = _attribute("sip.cseq", "The CSeq sequence number (RFC 3261 §8.1.1.5).")
SIP_CSEQ_METHOD = _attribute("sip.cseq_method", "The CSeq method: the request a response answers (RFC 3261 §8.1.1.5).")
SIP_BRANCH = _attribute(
    "sip.branch",
    "The top Via's branch: the transaction's id (RFC 3261 §8.1.1.7, §17.2.3); on a proxy's sip.forward, "
    "sip.fork_final and sip.timeout, the branch of the Via it put on the request it forwarded (§16.6 step 8).",
)
SIP_VIA_COUNT = _attribute(
    "sip.via_count", "How many Via header field values: the hops a request took (RFC 3261 §8.1.1.7)."
)
SIP_MAX_FORWARDS = _attribute("sip.max_forwards", "The request's Max-Forwards (RFC 3261 §8.1.1.6).")
SIP_RECORD_ROUTE_COUNT = _attribute("sip.record_route_count", "How many Record-Route values (RFC 3261 §16.6 step 4).")
SIP_RETRY_AFTER = _attribute("sip.retry_after", "A response's Retry-After: when to come back (RFC 3261 §20.33).")
SIP_TRACEPARENT = _attribute("sip.traceparent", "The W3C Trace Context traceparent header the message carried.")
SIP_ERROR = _attribute("sip.error", "What of the message could not be read (its Via, its CSeq) (RFC 3261 §8.2.6.2).")

PROXY = _attribute("proxy", "The name of the proxy that handled the message (proxy-a, proxy-b).")
NEXT_HOP = _attribute("next_hop", "Where a proxy sent the request, ip:port (RFC 3261 §16.6 steps 6 and 7).")
MAX_FORWARDS = _attribute(
    "max_forwards", "The Max-Forwards a proxy forwarded the request with (RFC 3261 §16.6 step 3)."
)
RECORD_ROUTE = _attribute(
    "record_route", "The Record-Route a proxy put on a dialog-creating request (RFC 3261 §16.6 step 4)."
)
STATELESS = _attribute(
    "stateless", "Forwarded with no transaction: a 2xx's ACK or a stray response (RFC 3261 §16.7, §16.11)."
)
PENDING = _attribute("pending", "A CANCEL's INVITE had no final response yet, so its branches are cancelled (§16.10).")
ROUTES = _attribute("routes", "How many routes a proxy is configured with.")

# =========================================================================== SDP (RFC 4566, RFC 5763 §5)

SDP_TAMPERED = _kind("sdp.tampered", "A user agent changed the a=fingerprint of its own SDP (deviation tamper-*).")
SDP_REJECTED = _kind("sdp.rejected", "An offer or answer refused as not RFC 5763 §5 SDP (answered 488 or failed).")

SDP_SHA256 = _attribute("sdp.sha256", "SHA-256 of the message body, hex: the same SDP end to end.")
SDP_MEDIA = _attribute("sdp.media", "The media address, c= and m= port, ip:port (RFC 4566 §5.7, §5.14).")
SDP_PROTO = _attribute("sdp.proto", "The m= line's transport protocol, UDP/TLS/RTP/SAVP (RFC 5764 §8).")
SDP_SETUP = _attribute("sdp.setup", "a=setup: actpass, active or passive (RFC 4145 §4; RFC 5763 §5).")
SDP_A_CONNECTION = _attribute("sdp.a_connection", "a=connection values (RFC 4145 §5), which RFC 5763 §5 forbids.")
SDP_CAPNEG = _attribute("sdp.capneg", "The body offers potential configurations (RFC 5939).")
SDP_FINGERPRINT = _attribute("sdp.fingerprint", "a=fingerprint values, `hash value` (RFC 8122 §5; RFC 5763 §5).")
SDP_RTCP_MUX = _attribute("sdp.rtcp_mux", "a=rtcp-mux is present (RFC 5761 §5.1.1).")
SDP_RTCP = _attribute("sdp.rtcp", "a=rtcp: RTCP's port when it is not the RTP port + 1 (RFC 3605).")
SDP_ERROR = _attribute("sdp.error", "Why the body is no SDP pinhole can read.")

FINGERPRINT = _attribute(
    "fingerprint",
    "A certificate fingerprint pinhole sent (RFC 8122 §5): a service's own, a re-INVITE's, a tampered or MITM one.",
)

# =========================================================================== STUN (RFC 5389, RFC 5780)

STUN_SEND = _kind("stun.send", "A STUN message sent (RFC 5389 §7).")
STUN_RECV = _kind("stun.recv", "A STUN message received (RFC 5389 §7.3).")
STUN_TIMEOUT = _kind("stun.timeout", "A Binding request got no response after Rc transmissions (RFC 5389 §7.2.1).")
STUN_CHECK_SKIPPED = _kind("stun.check_skipped", "RFC 5763 §6.7.2's connectivity check not sent; `reason` says why.")
STUN_MALFORMED = _kind("stun.malformed", "A datagram the STUN server cannot decode (RFC 5389 §7.3).")
STUN_IGNORED = _kind("stun.ignored", "A STUN message the STUN server does not answer: not a Binding request.")
STUN_ALTERNATE_UNAVAILABLE = _kind(
    "stun.alternate_unavailable", "The STUN server's alternate address cannot be bound (RFC 5780 §4.3)."
)

STUN_CLASS = _attribute("stun.class", "request, indication, success_response or error_response (RFC 5389 §6).")
STUN_METHOD = _attribute("stun.method", "The method, binding (RFC 5389 §18.1).")
STUN_TRANSACTION_ID = _attribute("stun.transaction_id", "The transaction ID, hex (RFC 5389 §6).")
STUN_XOR_MAPPED_ADDRESS = _attribute(
    "stun.xor_mapped_address", "XOR-MAPPED-ADDRESS: the reflexive address (RFC 5389 §15.2)."
)
STUN_SOFTWARE = _attribute("stun.software", "SOFTWARE (RFC 5389 §15.10).")
STUN_FINGERPRINT = _attribute("stun.fingerprint", "FINGERPRINT is present, yes or no (RFC 5389 §15.5).")
STUN_MESSAGE_INTEGRITY = _attribute(
    "stun.message_integrity", "MESSAGE-INTEGRITY is present, yes or no (RFC 5389 §15.4)."
)
STUN_ERROR_CODE = _attribute("stun.error_code", "ERROR-CODE's number (RFC 5389 §15.6).")
STUN_ERROR_REASON = _attribute("stun.error_reason", "ERROR-CODE's reason phrase (RFC 5389 §15.6).")
STUN_UNKNOWN_ATTRIBUTES = _attribute("stun.unknown_attributes", "UNKNOWN-ATTRIBUTES, 0xNNNN,... (RFC 5389 §15.9).")
STUN_CHANGE_REQUEST = _attribute("stun.change_request", "CHANGE-REQUEST: change IP, change port (RFC 5780 §7.2).")
STUN_RESPONSE_PORT = _attribute("stun.response_port", "RESPONSE-PORT (RFC 5780 §7.5).")
STUN_RESPONSE_ORIGIN = _attribute(
    "stun.response_origin", "RESPONSE-ORIGIN: the address it was sent from (RFC 5780 §7.3)."
)
STUN_OTHER_ADDRESS = _attribute("stun.other_address", "OTHER-ADDRESS: the server's alternate (RFC 5780 §7.4).")

ATTEMPT = _attribute("attempt", "Which transmission of a STUN request this is, 1 the first (RFC 5389 §7.2.1).")
ATTEMPTS = _attribute("attempts", "Transmissions of a STUN request that got no response (RFC 5389 §7.2.1: Rc).")
PURPOSE = _attribute(
    "purpose",
    "Why a Binding request was sent: connectivity-check (RFC 5763 §6.7.2), reflexive-address, sip-reflexive-address.",
)
AUTHENTICATED = _attribute("authenticated", "The Binding request carries MESSAGE-INTEGRITY (RFC 5389 §10).")

# =========================================================================== DTLS (RFC 6347, RFC 5764)

DTLS_START = _kind("dtls.start", "A DTLS association begins in `role` (RFC 5763 §5, §6.6).")
DTLS_SEND = _kind("dtls.send", "A DTLS datagram sent (RFC 6347 §4.1).")
DTLS_RECV = _kind("dtls.recv", "A DTLS datagram received (RFC 6347 §4.1).")
DTLS_HANDSHAKE_COMPLETE = _kind(
    "dtls.handshake_complete", "The handshake completed before the peer's a=fingerprint arrived: accepted tentatively."
)
DTLS_CONNECTED = _kind("dtls.connected", "The handshake completed and the peer's certificate matches a=fingerprint.")
DTLS_FAILED = _kind("dtls.failed", "The handshake failed, or the certificate does not match (RFC 5763 §5).")
DTLS_FAILED_ALONE = _kind("dtls.failed_alone", "An early ClientHello's handshake failed; no answer vouched for it.")
DTLS_RETIRED = _kind("dtls.retired", "A DTLS association ended, replaced or closed (RFC 5763 §6.6).")
DTLS_KEPT = _kind("dtls.kept", "A re-INVITE kept the DTLS association (RFC 5763 §6.6).")

DTLS_CONTENT_TYPES = _attribute("dtls.content_types", "The records' content types (RFC 6347 §4.1).")
DTLS_EPOCHS = _attribute("dtls.epochs", "The records' epochs (RFC 6347 §4.1).")
DTLS_RECORD_SEQUENCE = _attribute("dtls.record_sequence", "The first record's sequence number (RFC 6347 §4.1).")
DTLS_HANDSHAKE_TYPES = _attribute(
    "dtls.handshake_types", "The handshake messages' types, epoch 0; encrypted later (RFC 6347 §4.2.2)."
)
DTLS_MESSAGE_SEQ = _attribute("dtls.message_seq", "The first handshake message's message_seq (RFC 6347 §4.2.2).")
DTLS_USE_SRTP = _attribute("dtls.use_srtp", "use_srtp's profiles, offered or selected (RFC 5764 §4.1.1).")
DTLS_ALERT = _attribute("dtls.alert", "An alert, level:description, or encrypted (RFC 5246 §7.2).")

ROLE = _attribute("role", "The DTLS role, client or server, as a=setup gives it (RFC 5763 §5; RFC 4145 §4).")
LOCAL_FINGERPRINT = _attribute("local_fingerprint", "Our certificate's SHA-256 fingerprint (RFC 8122 §5).")
PEER_FINGERPRINT = _attribute("peer_fingerprint", "The SHA-256 of the certificate the peer presented.")
PEER_FINGERPRINT_VERIFIED = _attribute(
    "peer_fingerprint_verified", "The peer's certificate matches its a=fingerprint (RFC 5763 §5)."
)
PROFILE = _attribute("profile", "The SRTP protection profile the handshake negotiated (RFC 5764 §4.1.2).")
EXPORTER_DIGEST = _attribute(
    "exporter_digest", "SHA-256 of the exported keying material (RFC 5764 §4.2): equal on both sides."
)
RETRANSMISSIONS = _attribute("retransmissions", "Flights resent by the handshake's timer (RFC 6347 §4.2.4).")
HANDSHAKE_COMPLETED_BEFORE_VERIFICATION = _attribute(
    "handshake_completed_before_verification", "The handshake completed before a=fingerprint arrived (RFC 5763 §7.1)."
)
CAUSE = _attribute(
    "cause", "Why a flight was sent: start, response, timer (RFC 6347 §4.2.4), latched, check, peer-media."
)
ACCEPTED = _attribute(
    "accepted", "false: a received DTLS datagram was not handed to an association; `reason` says why."
)
DTLS_STATE = _attribute("dtls_state", "The DTLS endpoint's state: new, handshaking, connected, failed, closed.")
KEYS_IN_USE = _attribute("keys_in_use", "The retired association's keys still protect the media.")
ASSOCIATION = _attribute("association", "Which DTLS association of the media session, 1 the first (RFC 5763 §6.6).")
ASSOCIATIONS = _attribute("associations", "How many DTLS associations the media session had.")

# =========================================================================== SRTP, RTP, RTCP (RFC 3711, RFC 3550)

SRTP_FIRST_SENT = _kind("srtp.first_sent", "The first SRTP packet sent under an association's keys (RFC 3711 §3.3).")
SRTP_FIRST_RECEIVED = _kind("srtp.first_received", "The first SRTP packet that authenticated (RFC 3711 §3.3).")
SRTP_SENT = _kind("srtp.sent", "A media stream ended: how many SRTP packets went.")
SRTP_HELD = _kind("srtp.held", "Early SRTP held until the peer's certificate is verified (RFC 5763 §7.1, §6.2).")
SRTP_RELEASED = _kind("srtp.released", "Held SRTP let through: the certificate matches a=fingerprint.")
SRTP_DISCARDED = _kind("srtp.discarded", "Held SRTP thrown away: the certificate was rejected.")
SRTP_DROPPED = _kind("srtp.dropped", "SRTP before the handshake completed, dropped (RFC 5764 §5.1).")
SRTP_AUTH_FAILED = _kind("srtp.auth_failed", "An SRTP or SRTCP packet failed authentication (RFC 3711 §3.3 step 5).")
SRTP_SWITCHED = _kind("srtp.switched", "Media moved to a new association's keys (RFC 5763 §6.6).")
SRTP_RELAYED = _kind("srtp.relayed", "The MITM box relayed a packet to the other side (RFC 5763 §8's attack).")
SRTCP_FIRST_SENT = _kind("srtcp.first_sent", "The first SRTCP packet sent (RFC 3711 §3.4).")
SRTCP_FIRST_RECEIVED = _kind("srtcp.first_received", "The first SRTCP packet that authenticated (RFC 3711 §3.4).")
SRTCP_SENT = _kind("srtcp.sent", "An RTCP stream ended: how many SRTCP packets went.")
RTP_SEND = _kind("rtp.send", "SRTP a third party sent, synthesized from the capture (`synthesized`).")
RTCP_SEND = _kind("rtcp.send", "SRTCP a third party sent, synthesized from the capture (`synthesized`).")

RTP_SSRC = _attribute("rtp.ssrc", "The RTP header's SSRC, 0x%08x (RFC 3550 §5.1).")
RTP_SEQ = _attribute("rtp.seq", "The RTP header's sequence number (RFC 3550 §5.1).")
RTP_TIMESTAMP = _attribute("rtp.timestamp", "The RTP header's timestamp (RFC 3550 §5.1).")
RTP_PAYLOAD_TYPE = _attribute("rtp.payload_type", "The RTP header's payload type (RFC 3550 §5.1).")
RTP_MARKER = _attribute("rtp.marker", "The RTP header's marker bit (RFC 3550 §5.1).")
RTCP_SSRC = _attribute("rtcp.ssrc", "The first RTCP packet's sender SSRC, 0x%08x (RFC 3550 §6.4.1).")
RTCP_PACKET_TYPE = _attribute("rtcp.packet_type", "The first RTCP packet's type, 200 for SR (RFC 3550 §12.1).")
RTCP_PACKET_TYPE_NAME = _attribute(
    "rtcp.packet_type_name", "That type's name: SR, RR, SDES, BYE, APP (RFC 3550 §12.1)."
)

PACKETS = _attribute("packets", "How many packets: sent, held, released, discarded, or a run of them on the wire.")
SRTP_SENT_COUNT = _attribute("srtp_sent", "SRTP packets the media session sent.")
SRTP_RECEIVED_COUNT = _attribute("srtp_received", "SRTP packets the media session received that authenticated.")
SRTP_AUTH_FAILED_COUNT = _attribute("srtp_auth_failed", "SRTP packets that failed authentication (RFC 3711 §3.3).")
SRTCP_SENT_COUNT = _attribute("srtcp_sent", "SRTCP packets the media session sent.")
SRTCP_RECEIVED_COUNT = _attribute("srtcp_received", "SRTCP packets the media session received that authenticated.")
MALFORMED = _attribute("malformed", "Datagrams on the media socket that were none of STUN, DTLS, SRTP (RFC 7983).")
PREVIOUS_KEYS_ACCEPTED_FOR = _attribute(
    "previous_keys_accepted_for", "Seconds the previous association's keys are still accepted after a switch."
)
RTCP = _attribute("rtcp", "The relayed packet is SRTCP.")

# =========================================================================== media sessions (RFC 7983 demultiplexing)

MEDIA_OPEN = _kind("media.open", "A call's media socket(s) opened, and what the SDP announces for them.")
MEDIA_CLOSED = _kind("media.closed", "A media session closed (BYE, or RFC 5763 §5 on a mismatch), with its counts.")
MEDIA_RELEASED = _kind("media.released", "A fallback RTCP port released unused (the answer took rtcp-mux, RFC 5761).")
MEDIA_LATCHED = _kind("media.latched", "The media destination moved to where the peer's packets come from (latching).")
MEDIA_MALFORMED = _kind(
    "media.malformed", "A datagram on the media socket that is none of STUN, DTLS, SRTP (RFC 7983)."
)
MEDIA_FORK = _kind("media.fork", "A fork's dialog got its own association on the call's media port (RFC 5763 §6.3).")
MEDIA_FORK_ACCEPTED = _kind("media.fork_accepted", "A ClientHello from a new address starts another fork's session.")
MEDIA_RTCP_UNAVAILABLE = _kind("media.rtcp_unavailable", "No RTCP port for the call: the peer declined rtcp-mux.")

PEER = _attribute(
    "peer", "The other end of a datagram or message, ip:port; also exported as network.peer.address and .port."
)
LOCAL = _attribute("local", "Our socket's address, ip:port.")
COMPONENT = _attribute("component", "The media component a session carries: rtp or rtcp (RFC 5763 §5; RFC 5761).")
ADVERTISED = _attribute("advertised", "The media address our SDP announced, ip:port (RFC 4566 §5.7, §5.14).")
RTCP_LOCAL = _attribute("rtcp_local", "Our RTCP socket's address, without rtcp-mux.")
RTCP_ADVERTISED = _attribute("rtcp_advertised", "The RTCP address our SDP announced (RFC 3605).")
RTCP_MUX = _attribute("rtcp_mux", "RTP and RTCP share one port (RFC 5761): offered, or agreed for the call.")
RTCP_MUX_FALLBACK = _attribute("rtcp_mux_fallback", "An offer with rtcp-mux also opens an RTCP port (RFC 5761 §5.1.1).")
LATCHING = _attribute("latching", "The user agent latches: sends media where the peer's packets come from.")
LATCHES = _attribute("latches", "How many times the media session latched.")
EVIDENCE = _attribute("evidence", "What the latch followed: stun-binding-request, dtls-handshake, srtp-authenticated.")
SDP = _attribute("sdp", "The media address the peer's SDP announced, which a latch leaves.")
FROM = _attribute("from", "What it was before: a latch's previous destination, a switch's previous association.")
TO = _attribute(
    "to", "Where it went: a latch's new destination, a switch's new association, a sent message's destination."
)
TENTATIVE = _attribute("tentative", "The fork's association is accepted before its answer vouches for it.")
ANSWER_FINGERPRINT = _attribute("answer_fingerprint", "The a=fingerprint of a fork's answer (RFC 8122 §5).")

# =========================================================================== a datagram, described (pinhole/demux.py)

KIND = _attribute("kind", "What a datagram is: sip, stun, dtls, rtp, rtcp, zrtp, turn_channel, unknown (RFC 7983).")
SUMMARY = _attribute("summary", "The datagram or message in one line, as a ladder labels it.")
ERROR = _attribute("error", "Why a datagram could not be described in full.")
SIZE = _attribute("size", "Bytes: of a malformed datagram, a dropped packet, an Identity header field.")
RETRANSMISSION = _attribute("retransmission", "The datagram repeats one sent before.")
TURN_CHANNEL = _attribute("turn.channel", "A TURN ChannelData message's channel number (RFC 8656 §12.4).")
TURN_LENGTH = _attribute("turn.length", "A TURN ChannelData message's length (RFC 8656 §12.4).")

# =========================================================================== NAT (RFC 4787)

NAT_CONFIGURED = _kind("nat.configured", "The gateway's behaviour was set (RFC 4787 §4, §5).")
NAT_MAPPING = _kind("nat.mapping", "The gateway created a mapping (RFC 4787 §4.1).")
NAT_ADMITTED = _kind("nat.admitted", "The gateway's filtering let a remote in through a mapping (RFC 4787 §5).")
NAT_TRANSLATED = _kind("nat.translated", "At a call's end: packets translated through one of its mappings.")
NAT_DROP = _kind("nat.drop", "The gateway dropped an inbound packet: its filtering (RFC 4787 §5) or no mapping.")
NAT_FLUSHED = _kind("nat.flushed", "The gateway forgot its mappings.")
NAT_WARNING = _kind("nat.warning", "A NAT setting the kernel would not take.")
NAT_ERROR = _kind("nat.error", "The gateway could not report a call's mappings.")
NAT_CALL_ENDED = _kind("nat.call_ended", "The gateway saw a call's BYE and reported its mappings.")

INTERNAL = _attribute("internal", "The mapping's internal endpoint, X:x (RFC 4787 §3).")
EXTERNAL = _attribute("external", "The mapping's external endpoint, X1':x1' (RFC 4787 §3).")
REMOTE = _attribute("remote", "The remote endpoint of the session, Y:y (RFC 4787 §3).")
MAPPING = _attribute("mapping", "Mapping behaviour (RFC 4787 §4.1): endpoint-independent, address-dependent, ...")
FILTERING = _attribute("filtering", "Filtering behaviour (RFC 4787 §5): endpoint-independent, address-dependent, ...")
MAPPING_TIMEOUT = _attribute("mapping_timeout", "Seconds a UDP mapping lives idle (RFC 4787 §4.3).")
PORT_PRESERVATION = _attribute("port_preservation", "The external port is the internal one when free (RFC 4787 §4.1).")
TRANSLATION = _attribute("translation", "off: the gateway routes without translating.")
HAIRPINNING = _attribute("hairpinning", "off: the gateway does not hairpin (RFC 4787 §6).")
WAN_ADDRESS = _attribute("wan_address", "The gateway's outside address.")
LAN_PREFIX = _attribute("lan_prefix", "The inside network the gateway translates.")
MEDIA_FLOWS = _attribute("media_flows", "How many of the call's mappings the gateway reported.")
INBOUND_PACKETS = _attribute("inbound_packets", "Packets translated from the outside through the mapping.")
OUTBOUND_PACKETS = _attribute("outbound_packets", "Packets translated from the inside through the mapping.")
HOOK = _attribute("hook", "The netfilter hook of the rule that dropped the packet: input, forward, hairpin.")
CLASSIFICATION = _attribute("classification", "The dropped packet's kind: stun, dtls, rtp, rtcp or other.")
DETAIL = _attribute("detail", "More on it: a dropped packet's summary, an identity rejection's detail.")
SOURCE = _attribute("source", "The packet's source address, ip:port.")
DESTINATION = _attribute("destination", "The packet's destination address, ip:port.")

# =========================================================================== faults (pinhole/faults)

FAULT_INJECTED = _kind("fault.injected", "A fault plan's rule hit a packet: dropped, delayed, duplicated ...")
FAULT_BYPASSED = _kind("fault.bypassed", "Packets passed the fault engine unjudged (NFQUEUE fail-open).")
NAT_FAULTS_SET = _kind("nat.faults_set", "The gateway took a fault plan.")
NAT_FAULTS_CLEARED = _kind("nat.faults_cleared", "The gateway's fault plan was cleared.")
SWITCH_FAULTS_SET = _kind("switch.faults_set", "The switch took a fault plan.")
SWITCH_FAULTS_CLEARED = _kind("switch.faults_cleared", "The switch's fault plan was cleared.")

RULE = _attribute("rule", "The name of the fault plan's rule that hit the packet.")
ACTION = _attribute("action", "What the rule did: drop, delay, duplicate, reorder, expire-mapping.")
LINK = _attribute("link", "The lab link the packet crossed where the fault hit it.")
OCCURRENCE = _attribute("occurrence", "Which match of the rule this was, 1 the first.")
DELAY_SECONDS = _attribute("delay_seconds", "How long a delay rule held the packet.")
COPIES = _attribute("copies", "How many copies a duplicate rule added.")
MAX_HOLD_SECONDS = _attribute("max_hold_seconds", "The longest a reorder rule holds a packet.")
RULES = _attribute("rules", "How many rules the fault plan has.")
SEED = _attribute("seed", "The fault plan's random seed: the same seed, the same faults.")
PLAN = _attribute("plan", "The fault plan, as JSON.")
DIRECTIONS = _attribute("directions", "The directions the gateway queues packets for its fault plan.")
LINKS = _attribute("links", "Lab links, comma-separated: those a switch bridges, those a fault plan is set on.")
INJECTED = _attribute("injected", "How many faults the plan injected.")
BYPASSED = _attribute("bypassed", "How many packets passed the fault engine unjudged.")
QUEUE = _attribute("queue", "The NFQUEUE number of the fault engine.")
NEW = _attribute("new", "How many more packets than at the previous report.")
RECEIVED = _attribute("received", "How many packets the fault engine judged.")

# =========================================================================== identity (RFC 8224, RFC 8225)

IDENTITY_SIGNED = _kind("identity.signed", "The user agent signed its INVITE (RFC 8224 §5).")
IDENTITY_VERIFIED = _kind("identity.verified", "An INVITE's Identity header verified (RFC 8224 §6.2).")
IDENTITY_REJECTED = _kind("identity.rejected", "An INVITE's Identity header did not verify (RFC 8224 §6.2.2).")

ORIG = _attribute("orig", "The PASSporT's orig claim: the caller (RFC 8225 §5.2.1).")
DEST = _attribute("dest", "The PASSporT's dest claim: the callee(s) (RFC 8225 §5.2.1).")
IAT = _attribute("iat", "The PASSporT's iat claim: when it was signed (RFC 8225 §5.1.1).")
MKY = _attribute("mky", "The PASSporT's mky claim: the media key fingerprints it signs (RFC 8225 §5.2.2).")
SIGNER = _attribute("signer", "Whose certificate signed the PASSporT (RFC 8224 §7).")
FORM = _attribute("form", "The Identity header's form: compact or full (RFC 8224 §4).")

# =========================================================================== the MITM deviation (RFC 5763 §8)

MITM_OFFER_REWRITTEN = _kind("mitm.offer_rewritten", "The MITM proxy replaced the offer's media and fingerprint.")
MITM_ANSWER_REWRITTEN = _kind("mitm.answer_rewritten", "The MITM proxy replaced the answer's media and fingerprint.")

CALLER_MEDIA = _attribute("caller_media", "The media address the caller's offer announced.")
CALLER_FINGERPRINT = _attribute("caller_fingerprint", "The a=fingerprint of the caller's offer.")
CALLEE_MEDIA = _attribute("callee_media", "The media address the callee's answer announced.")
CALLEE_FINGERPRINT = _attribute("callee_fingerprint", "The a=fingerprint of the callee's answer.")
MEDIA = _attribute("media", "The media address the MITM put in its place.")

# =========================================================================== services

SERVICE_STARTED = _kind("service.started", "A service is up, and where it listens.")
UA_CONFIGURED = _kind("ua.configured", "A user agent took its configuration.")
PROXY_CONFIGURED = _kind("proxy.configured", "A proxy took its configuration.")

SIP = _attribute("sip", "The service's SIP address, ip:port.")
LISTEN = _attribute("listen", "The STUN server's address.")
ALTERNATE = _attribute("alternate", "The STUN server's alternate address (RFC 5780 §4.3).")
SOCKETS = _attribute("sockets", "The STUN server's sockets, comma-separated.")
BRIDGE = _attribute("bridge", "The switch's bridge device.")
AOR = _attribute("aor", "The user agent's address of record (RFC 3261 §10).")
IDENTITY_SIGNS = _attribute("identity_signs", "The user agent signs its INVITEs (RFC 8224 §5).")
IDENTITY_VERIFIES = _attribute("identity_verifies", "The user agent verifies Identity headers (RFC 8224 §6).")
IDENTITY_REQUIRE = _attribute(
    "identity_require", "The user agent refuses an INVITE with no valid Identity (RFC 8224 §6.2)."
)
DEVIATIONS = _attribute("deviations", "The deviations from the RFCs on purpose, comma-separated: a service's, a run's.")

# =========================================================================== the controller's run (pinhole run)

PINHOLE_RUN = _kind("pinhole.run", "A scenario's run: the root span of the call's trace.")
PINHOLE_KILL = _kind("pinhole.kill", "The controller stopped a service (a restart step): `node`, `crash`.")
PINHOLE_START = _kind("pinhole.start", "The controller started a stopped service again: `node`.")
PINHOLE_STRANGER = _kind("pinhole.stranger", "The controller sent a stranger's datagrams from `node`.")

SCENARIO = _attribute("scenario", "The scenario run.")
FLOW = _attribute("flow", "The figure the run is judged against: 7.3 or 7.1 (RFC 5763).")
ADDRESS_MAP = _attribute("address_map", "The lab's addresses, JSON {ip: ladder column}.")
EXTERNALS = _attribute(
    "externals", "Third-party implementations in the lab, `node:label, ...`: judged by their packets."
)
NODE = _attribute("node", "The lab node a controller step acts on.")
CRASH = _attribute("crash", "true: a kill by SIGKILL; false: SIGTERM.")
STRANGER = _attribute("stranger", "What a stranger step sends (pinhole.stranger.KINDS).")
SYNTHESIZED = _attribute("synthesized", "true: the span is a third party's datagram, made from the capture.")
SIGHTINGS = _attribute(
    "sightings", "Where the capture saw a synthesized datagram: link, in/out, addresses; `; `-separated."
)
REACHED = _attribute("reached", "The node a synthesized datagram's last sighting took it to.")
DROPPED = _attribute("dropped", "The synthesized datagram never reached its destination.")

# OpenTelemetry's network semantic conventions: set on a span from `peer`, read back as they are
NETWORK_PEER_ADDRESS = _attribute("network.peer.address", "OpenTelemetry: the peer's IP address, from `peer`.")
NETWORK_PEER_PORT = _attribute("network.peer.port", "OpenTelemetry: the peer's port, from `peer`.")

# =========================================================================== resources

SERVICE_NAME = _resource("service.name", "OpenTelemetry: the service instance (alice, proxy-a, natgw, ...).")
SERVICE_NAMESPACE = _resource("service.namespace", "OpenTelemetry: pinhole.")
SERVICE_INSTANCE_ID = _resource("service.instance.id", "OpenTelemetry: the service and its process id.")
IMPLEMENTATION = _resource(
    "pinhole.implementation", "The third-party implementation a node runs: its spans are synthesized from the capture."
)
