"""Which call a forwarded packet belongs to, learned from the SIP the forwarder sees.

Media packets carry no trace context, but the signalling announced them: the offer's c=/m=
is Alice's public media address (the NAT mapping she learned), the answer's is Bob's. The NAT
gateway reads a copy of every SIP datagram it forwards (NFLOG; it never changes one, so this
is no ALG), the switch the SIP its fault queue sees, and each keeps media address -> (Call-ID,
the trace context in the message's traceparent). A drop, a new mapping or an injected fault
that involves one of those addresses then lands in that call's trace, also when many calls run
at once (each has its own media ports).
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.context import Context

from pinhole import sdp, telemetry
from pinhole.address import Address
from pinhole.pcap import decode_ipv4_udp
from pinhole.sip import Request, Response, SipParseError, parse_message
from pinhole.sip.describe import TRACE_HEADERS


@dataclass(frozen=True)
class CallFlow:
    call_id: str
    context: Context | None


class CallDirectory:
    """Media address -> the call (and trace) whose SDP announced it."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._flows: dict[Address, CallFlow] = {}
        self.observed = 0
        self.unparsable = 0

    def observe(self, ip_packet: bytes) -> tuple[str, str] | None:
        """Learn from one forwarded SIP datagram (an IPv4 packet as NFLOG hands it over).

        Returns (Call-ID, method) of a request, or (Call-ID, "rejected") of a failed INVITE, so the
        gateway can act on the end of a call.
        """
        udp = decode_ipv4_udp(ip_packet)
        if udp is None:
            return None
        try:
            message = parse_message(udp.payload)
        except SipParseError:
            self.unparsable += 1
            return None
        self.observed += 1
        self._learn(message)
        if isinstance(message, Request):
            return message.call_id or "", message.method
        if message.status_code >= 300 and message.cseq.method == "INVITE":
            return message.call_id or "", "rejected"  # the call never started: its flows are void
        return None

    def _learn(self, message: Request | Response) -> None:
        if not message.body:
            return
        try:
            session = sdp.parse(message.body)
        except sdp.SdpError:
            self.unparsable += 1
            return
        if not session.media:
            return
        media = session.media[0]
        connection = media.connection or session.connection or ""
        if not connection:
            return
        carrier = {name: value for name in TRACE_HEADERS if (value := message.headers.get(name))}
        flow = CallFlow(message.call_id or "", telemetry.extract(carrier))
        address = connection.split()[-1]
        self._flows[(address, media.port)] = flow
        # the RTCP component's flow (RFC 3605 a=rtcp, else port + 1): its own mapping, drops and packets,
        # whether this SDP settles on rtcp-mux or keeps a port for when the answer declines it (RFC 5761)
        rtcp = media.attribute("rtcp")
        if rtcp or not media.has_attribute("rtcp-mux"):
            try:
                port, rtcp_address = sdp.read_rtcp_attribute(0, rtcp) if rtcp else (media.port + 1, "")
            except sdp.SdpError:
                self.unparsable += 1
            else:
                self._flows[(rtcp_address or address, port)] = flow
        while len(self._flows) > self.limit:
            del self._flows[next(iter(self._flows))]

    def addresses_of(self, call_id: str) -> list[Address]:
        """The media addresses this call's SDP announced."""
        return [address for address, flow in self._flows.items() if flow.call_id == call_id]

    def forget(self, call_id: str) -> None:
        """The call is over: its addresses may be reused by the next call (port reuse)."""
        for address in self.addresses_of(call_id):
            del self._flows[address]

    @staticmethod
    def of_message(payload: bytes) -> CallFlow | None:
        """The call of one SIP datagram itself: its Call-ID and the trace context it carries."""
        try:
            message = parse_message(payload)
            call_id = message.call_id
        except SipParseError:
            return None
        carrier = {name: value for name in TRACE_HEADERS if (value := message.headers.get(name))}
        return CallFlow(call_id, telemetry.extract(carrier))

    def call_of(self, payload: bytes, *addresses: Address, sip: bool = False) -> CallFlow | None:
        """The call of one datagram: a SIP message (`sip`) names its own; media is found by the first
        of `addresses` an SDP announced."""
        return (self.of_message(payload) if sip else None) or self.lookup(*addresses)

    def lookup(self, *addresses: Address) -> CallFlow | None:
        """The call of the first address that an SDP announced."""
        for address in addresses:
            flow = self._flows.get(address)
            if flow is not None:
                return flow
        return None
