"""One function per parser of pinhole, driven the way pinhole drives it on what arrives from outside.

A target catches exactly the error its module documents, exactly where the module documents it
(``SipParseError`` from ``parse_message``, ``StunError`` from ``stun.decode``, ...). Anything that
escapes a target is a crash: another exception type, the documented one where the module promises
none ("never raises", "properties never fail after decode"), or a :class:`Violation` of a property
the module states (a lossless codec gives back what it read). Hangs are the engine's business.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzz import REPO, bundle, corpus
from pinhole import demux, dtls, pcapng, rtp, sdp, srtp, stun, wire
from pinhole.pcap import PcapError, decode_udp
from pinhole.sip.describe import message_event
from pinhole.sip.message import Request, SipParseError, make_response, parse_message
from pinhole.sip.transport import SipEndpoint

PEER = ("198.51.100.7", 5062)
LOCAL = ("203.0.113.5", 5060)
SRTP_KEYS = srtp.SrtpKeys(
    "SRTP_AES128_CM_SHA1_80", bytes(range(16)), bytes(range(14)), bytes(range(16, 32)), bytes(range(14, 28))
)
DTLS_KEYS = dtls.WriteKeys(bytes(range(16)), bytes(4))
STUN_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769's password, so its request's MESSAGE-INTEGRITY checks out


class Violation(Exception):
    """A property the module promises does not hold (not an exception it may raise)."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    kind: str  # what the mutator edits: binary, text, yaml, json or bundle

    @property
    def doc(self) -> str:
        """What it runs: the first paragraph of its function's docstring, on one line."""
        return " ".join((self.run.__doc__ or "").split("\n\n")[0].split())


def _demux(data: bytes) -> None:
    """demux.describe never raises because it catches everything: a datagram it gives up on is a crash
    of the describer it gave up in, so run that describer again to see it."""
    described = demux.describe(data)
    if described.get("summary") == "undescribable datagram":
        demux._DESCRIBERS[demux.classify(data)](bytes(data))
        raise Violation(f"demux.describe gave up on a datagram its describer handles: {described}")


# --------------------------------------------------------------------------- SIP


def sip_message(data: bytes) -> None:
    """SIP: parse_message (SipParseError), describe it (never raises), encode it and parse that again."""
    try:
        message = parse_message(data)
    except SipParseError:
        return
    message_event("recv", message, PEER)
    # parse_message checked these headers: their views must read them
    message.call_id, message.cseq, message.from_, message.to, message.vias, message.top_via  # noqa: B018
    message.contacts, message.routes, message.record_routes, message.content_type  # noqa: B018
    for via in message.vias:
        via.branch, via.received, via.rport, via.sent_by  # noqa: B018
    if isinstance(message, Request):
        message.max_forwards, message.request_uri  # noqa: B018
    str(message)
    try:
        again = parse_message(message.encode())
    except SipParseError as error:
        raise Violation(f"a message that parsed encodes to one that does not: {error}") from None
    if again.encode() != message.encode():
        raise Violation("encoding is not stable: parse(encode(m)) encodes differently")


class _Wire:
    """The transport of a SipEndpoint with no socket: records what the endpoint sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[Any, ...]]] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return LOCAL if name == "sockname" else default

    def sendto(self, data: bytes, address: tuple[Any, ...]) -> None:
        host, port = address  # what a UDP socket would refuse
        if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise Violation(f"answer sent to an address no socket takes: {address!r}")
        self.sent.append((data, address))

    def close(self) -> None:
        pass


class _NoClock:
    """Timers are never due: one datagram in, its answer out, nothing retransmitted."""

    class _Handle:
        def cancel(self) -> None:
            pass

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        return self._Handle()


class _Logged(logging.Handler):
    """The exceptions SipEndpoint logs instead of raising (it must not let a datagram take the socket down)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _answer(txn: Any) -> None:
    """A UA's answer: 180 then 200 with a To tag (a request is only ever answered once it parsed)."""
    if txn.stateless:
        return
    txn.respond(make_response(txn.request, 180, to_tag="fuzz"))
    txn.respond(make_response(txn.request, 200, to_tag="fuzz"))


@functools.cache
def _endpoint() -> tuple[SipEndpoint, _Wire]:
    async def create() -> SipEndpoint:
        return SipEndpoint(
            on_request=_answer, on_message=lambda *event: message_event(*event), on_malformed=lambda *_: None
        )

    loop = asyncio.new_event_loop()
    try:
        endpoint = loop.run_until_complete(create())
    finally:
        loop.close()
    endpoint.scheduler = _NoClock()
    transport = _Wire()
    endpoint.connection_made(transport)  # type: ignore[arg-type]
    return endpoint, transport


@contextmanager
def _logged(name: str) -> Iterator[_Logged]:
    handler, logger = _Logged(), logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def sip_transport(data: bytes) -> None:
    """SIP transport: SipEndpoint.datagram_received, as from a socket: parse, describe, answer (400 when
    malformed, else 180 + 200), every answer described. Nothing it logs as an error may happen."""
    endpoint, transport = _endpoint()
    transport.sent.clear()
    with _logged("pinhole.sip.transport") as logged:
        endpoint.datagram_received(data, PEER)
        endpoint.close()  # every transaction ends: the next datagram starts from nothing
    if logged.errors:
        raise logged.errors[0]


# --------------------------------------------------------------------------- SDP


_OFFER = sdp.read_offer(sdp.parse((corpus.DATA / "sdp" / "pinhole-offer.sdp").read_bytes()))
_FINGERPRINT = sdp.certificate_fingerprint((corpus.DATA / "sdp" / "bob-cert.der").read_bytes())


def sdp_parse(data: bytes) -> None:
    """SDP: parse (SdpError) and serialize (lossless), facts (never raises), read_offer and build_answer
    as the answerer does, read_answer alone and against an offer (SdpError)."""
    sdp.facts(data).parsed_fingerprints()
    try:
        sd = sdp.parse(data)
    except sdp.SdpError:
        return
    text = sdp.serialize(sd)
    sdp.line_numbers(sd)
    try:
        again = sdp.parse(text)
    except sdp.SdpError as error:
        raise Violation(f"serialize() of a parsed SDP does not parse: {error}") from None
    if again != sd:
        raise Violation("parse(serialize(sd)) != sd")
    try:
        offer = sdp.read_offer(sd)
    except sdp.SdpError:
        pass
    else:
        offer.rtcp_target(True), offer.rtcp_target(False)  # noqa: B018
        setup = sdp.Setup.PASSIVE if offer.setup == sdp.Setup.ACTIVE else sdp.Setup.ACTIVE
        try:
            answer = sdp.build_answer(
                sd,
                address="192.0.2.2",
                port=40000,
                fingerprints=[_FINGERPRINT],
                session_id=1,
                setup=setup,
                payload_types=(0, 8),
            )
        except sdp.SdpError:
            pass
        else:
            try:
                sdp.read_answer(sdp.parse(sdp.serialize(answer)), offer)
            except sdp.SdpError as error:
                raise Violation(f"our answer to an offer we accepted is refused: {error}") from None
    for offer_media in (None, _OFFER):
        try:
            sdp.read_answer(sd, offer_media).rtcp_target(False)
        except sdp.SdpError:
            pass


# --------------------------------------------------------------------------- STUN


_STUN_VIEWS = (
    "transaction_id_hex",
    "xor_mapped_address",
    "mapped_address",
    "change_request",
    "response_origin",
    "other_address",
    "response_port",
    "unknown_attributes",
    "software",
    "username",
    "error_code",
    "has_message_integrity",
    "has_fingerprint",
    "unknown_comprehension_required",
)


def stun_decode(data: bytes) -> None:
    """STUN: decode (StunError), with and without the integrity key; after a decode every property reads
    (stun._check_attribute's promise), the message re-encodes to one that decodes the same, and a
    request gets its success and error answers."""
    _demux(data)
    try:
        message = stun.decode(data)
    except stun.StunError:
        return
    for name in _STUN_VIEWS:
        getattr(message, name)
    try:
        stun.decode(data, integrity_key=STUN_KEY)
    except stun.StunError:
        pass
    if not message.has_message_integrity:
        again = stun.decode(stun.encode(message, fingerprint=message.has_fingerprint))
        computed = (stun.AttributeType.FINGERPRINT,)
        if [a for a in again.attributes if a[0] not in computed] != [
            a for a in message.attributes if a[0] not in computed
        ]:
            raise Violation("decode(encode(m)) has other attributes than m")
    if message.message_class == stun.MessageClass.REQUEST:
        stun.decode(
            stun.encode(
                stun.binding_success(
                    message, PEER, "fuzz", mapped_address=True, response_origin=LOCAL, other_address=LOCAL
                )
            )
        )
        unknown = message.unknown_comprehension_required
        stun.decode(
            stun.encode(stun.binding_error(message, 420 if unknown else 400, "fuzz", unknown_attributes=unknown))
        )


# --------------------------------------------------------------------------- DTLS


def dtls_records(data: bytes) -> None:
    """DTLS: parse_records (DtlsError; records encode back to the datagram), handshake_messages and the
    hello parsers (DtlsError), unprotect_record (DtlsError), describe and client_hello_random (never raise)."""
    dtls.describe(data)
    dtls.client_hello_random(data)
    _demux(data)
    for parse in (dtls.parse_client_hello, dtls.parse_server_hello):  # the input as a hello body, too
        try:
            parse(data)
        except dtls.DtlsError:
            pass
    try:
        records = dtls.parse_records(data)
    except dtls.DtlsError:
        return
    if b"".join(record.encode() for record in records) != data:
        raise Violation("the records do not encode back to the datagram")
    for record in records:
        if record.epoch > 0:
            try:
                dtls.unprotect_record(DTLS_KEYS, record)
            except dtls.DtlsError:
                pass
            continue
        try:
            messages = dtls.handshake_messages(record)
        except dtls.DtlsError:
            continue
        for message in messages:
            if message.fragment_offset or message.fragment_length != message.length:
                continue
            try:
                if message.msg_type == dtls.HandshakeType.client_hello:
                    dtls.use_srtp_profiles(message.body)
                elif message.msg_type == dtls.HandshakeType.server_hello:
                    dtls.selected_srtp_profile(message.body)
            except dtls.DtlsError:
                pass


# --------------------------------------------------------------------------- RTP, RTCP, SRTP


def rtp_packet(data: bytes) -> None:
    """RTP/RTCP: demux.classify and describe (never raise), is_plain_rtcp, RtpPacket.decode (RtpError),
    and a decoded packet encodes to one that decodes the same."""
    demux.classify(data)
    _demux(data)
    rtp.is_plain_rtcp(data)
    try:
        packet = rtp.RtpPacket.decode(data)
    except rtp.RtpError:
        return
    if rtp.RtpPacket.decode(packet.encode()) != packet:
        raise Violation("decode(encode(p)) != p")


def srtp_session(data: bytes) -> None:
    """SRTP: SrtpSession.unprotect/unprotect_rtcp and protect/protect_rtcp on a fresh session (SrtpError)."""
    session = srtp.SrtpSession(SRTP_KEYS)
    for call in (session.unprotect, session.unprotect_rtcp, session.protect, session.protect_rtcp):
        try:
            call(data)
        except srtp.SrtpError:
            pass


# --------------------------------------------------------------------------- captures


def pcapng_read(data: bytes) -> None:
    """pcapng: parse_pcapng, what read_pcapng reads a file with (PcapngError); its frames' UDP (PcapError),
    its key log and run comment."""
    try:
        capture = pcapng.parse_pcapng(data)
    except pcapng.PcapngError:
        return
    capture.key_log()
    wire.RunInfo.from_comments(capture.comments)
    for packet in capture.packets:
        try:
            decode_udp(packet.data)
        except PcapError:
            pass


@functools.cache
def _template_wire() -> tuple[wire.Wire, list[dict[str, Any]]]:
    """The §7.3 run's wire and its ladder: what a trace is read against."""
    on_the_wire = wire.decode(pcapng.read_pcapng(bundle.RUNS / "rfc5763-7.3" / "capture.pcapng"))
    call = on_the_wire.call(on_the_wire.info.get("call_id"))
    return on_the_wire, wire.describe_call(on_the_wire, call) if call is not None else []


def wire_decode(data: bytes) -> None:
    """Wire: decode a saved run's capture carrying the input's datagrams (no error type: never raises), then
    everything the verdict and the ladder read of it, and the verdict itself."""
    from pinhole.controller import verdict

    on_the_wire = wire.decode(bundle.capture(data))
    on_the_wire.problems()
    for datagram in on_the_wire.datagrams:
        datagram.describe(), datagram.handshake_types  # noqa: B018
    for call_id in on_the_wire.call_ids()[:3]:
        call = on_the_wire.call(call_id)
        if call is None:
            continue
        wire.describe_call(on_the_wire, call)
        wire.srtp_key_entries(on_the_wire, call)
        call.messages(method="INVITE"), call.messages(status=200, cseq_method="INVITE", cseq=1)  # noqa: B018
        for association in call.associations:
            association.client_hellos, association.client_hello, association.profile  # noqa: B018
            for side in (association.client, association.server):
                association.certificate(side), association.finished(side), association.alerts(side)  # noqa: B018
                association.srtp_from(side)
    verdict.judge(on_the_wire)


# --------------------------------------------------------------------------- files


@functools.cache
def _scratch() -> Path:
    """Where input files are written: a copy of scenarios/ (a recipe names files beside it), gone at exit."""
    root = Path(tempfile.mkdtemp(prefix="pinhole-fuzz-"))
    shutil.copytree(REPO / "scenarios", root / "scenarios")
    atexit.register(cleanup)
    return root


def cleanup() -> None:
    """Remove the scratch directory (also for a process that ends without running atexit handlers)."""
    if _scratch.cache_info().currsize:
        shutil.rmtree(_scratch(), ignore_errors=True)


def scenario_load(data: bytes) -> None:
    """Scenario: controller.scenario.load of the input as a YAML file beside the interop recipes (ScenarioError)."""
    from pinhole.controller.scenario import ScenarioError, load

    path = _scratch() / "scenarios" / "interop" / "fuzz.yaml"
    path.write_bytes(data)
    try:
        load(path)
    except ScenarioError:
        pass


def trace_read(data: bytes) -> None:
    """Trace: `pinhole trace verdict|ladder` on the input as trace.json beside the §7.3 capture: from_trace.load
    (TraceError), evidence_from_trace, lost_spans, the verdict with the trace's reports, the text and HTML ladders."""
    from pinhole.controller import from_trace, ladder, ladder_html, verdict

    path = _scratch() / "trace.json"
    path.write_bytes(data)
    try:
        request = from_trace.load(path)
    except from_trace.TraceError:
        return
    on_the_wire, drawn = _template_wire()
    call_id = on_the_wire.info.get("call_id")
    evidence = from_trace.evidence_from_trace(request, call_id)
    from_trace.lost_spans(request, evidence["events"])
    result = verdict.judge(on_the_wire, call_id=call_id, reports=evidence["events"])
    evidence["wire"] = drawn
    ladder.render(evidence)
    ladder_html.render_html({**evidence, "verdict": result.to_dict()}, title=f"pinhole trace {evidence['trace_id']}")


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("sip", sip_message, corpus.sip, "text"),
        Target("sip-transport", sip_transport, corpus.sip, "text"),
        Target("sdp", sdp_parse, corpus.sdp, "text"),
        Target("stun", stun_decode, corpus.stun, "binary"),
        Target("dtls", dtls_records, corpus.dtls, "binary"),
        Target("rtp", rtp_packet, corpus.rtp, "binary"),
        Target("srtp", srtp_session, corpus.srtp, "binary"),
        Target("pcapng", pcapng_read, corpus.pcapng, "binary"),
        Target("wire", wire_decode, corpus.wire, "bundle"),
        Target("scenario", scenario_load, corpus.scenario, "yaml"),
        Target("trace", trace_read, corpus.trace, "json"),
    )
}
