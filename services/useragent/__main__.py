"""SIP user agent service (runs as alice and as bob): agent.py behind a gRPC control plane."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from pinhole import dtls, sdp, telemetry
from pinhole.address import Address, fmt
from pinhole.deviations import USER_AGENT, DeviationError, checked
from pinhole.events import Counters, EventLog
from pinhole.media import AssociationRecord, MediaSession, MediaTimers
from pinhole.rpc.v1 import useragent_pb2, useragent_pb2_grpc
from pinhole.service import (
    EvidenceServicer,
    parse_hostport,
    positive_seconds,
    serve,
    setup_observability,
)
from pinhole.sip import SipParseError, SipTimers, identity
from pinhole.sip.message import check_display_name, check_sip_uri
from pinhole.timers import DTLS_INITIAL, DTLS_MAX_TRANSMISSIONS, DTLS_MAXIMUM, STUN_RTO
from services.useragent import cli
from services.useragent.agent import (
    MAX_CALLS,
    AgentConfig,
    Call,
    CallLimitError,
    CallStateError,
    ConfigError,
    Fork,
    IdentityPolicy,
    Modification,
    ReinviteSetup,
    UserAgent,
)

log = logging.getLogger("useragent")

T = TypeVar("T")

SETUPS = {
    useragent_pb2.DTLS_SETUP_UNSPECIFIED: sdp.Setup.ACTIVE,
    useragent_pb2.DTLS_SETUP_ACTIVE: sdp.Setup.ACTIVE,
    useragent_pb2.DTLS_SETUP_PASSIVE: sdp.Setup.PASSIVE,
}


def config_from_proto(request: useragent_pb2.UserAgentConfig) -> AgentConfig:
    """Validate a Configure request field by field; unset fields take RFC defaults.

    The strings that reach the wire keep to their RFC 3261 grammar here, not only where they are
    written: the aor goes in From and Contact, the display name between the DQUOTEs of From.
    """
    try:
        if check_sip_uri(request.aor, "aor").user is None:
            raise ConfigError(f"aor: expected a sip: URI with a user, got {request.aor!r}")
        check_display_name(request.display_name, "display_name")
    except SipParseError as error:
        raise ConfigError(str(error)) from None
    t = request.timers
    try:
        for name in ("sip_t1_seconds", "dtls_initial_seconds", "dtls_maximum_seconds", "stun_rto_seconds"):
            positive_seconds(getattr(t, name), f"timers.{name}")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    initial = t.dtls_initial_seconds or DTLS_INITIAL
    maximum = t.dtls_maximum_seconds or DTLS_MAXIMUM
    if maximum < initial:
        raise ConfigError(f"timers.dtls_maximum_seconds: {maximum} is below dtls_initial_seconds {initial}")
    if request.answer_setup not in SETUPS:
        raise ConfigError(f"answer_setup: unknown value {request.answer_setup}")
    if request.max_calls > 100_000:
        raise ConfigError(f"max_calls: {request.max_calls} is above 100000 (each call holds sockets and a handshake)")
    if not 0 <= request.ring_seconds <= 60:  # also refuses NaN
        raise ConfigError(f"ring_seconds: {request.ring_seconds} is not between 0 and 60")
    try:
        deviations = checked(request.deviations, USER_AGENT)
    except DeviationError as error:
        raise ConfigError(str(error)) from None
    policy = identity_from_proto(request.identity, request.aor)
    try:
        outbound = parse_hostport(request.outbound_proxy, "outbound_proxy") if request.outbound_proxy else None
        stun_server = parse_hostport(request.stun_server, "stun_server") if request.stun_server else None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return AgentConfig(
        aor=request.aor,
        display_name=request.display_name,
        outbound_proxy=outbound,
        stun_server=stun_server,
        answer_setup=SETUPS[request.answer_setup],
        auto_answer=request.auto_answer,
        ring_seconds=request.ring_seconds,
        max_calls=request.max_calls or MAX_CALLS,
        deviations=deviations,
        srtp_profiles=tuple(request.srtp_profiles) or AgentConfig.srtp_profiles,
        sip_timers=SipTimers.scaled(t.sip_t1_seconds) if t.sip_t1_seconds else SipTimers(),
        media_timers=MediaTimers(
            dtls=dtls.RetransmitTimer(
                initial=initial, maximum=maximum, max_transmissions=t.dtls_max_transmissions or DTLS_MAX_TRANSMISSIONS
            ),
            stun_rto=t.stun_rto_seconds or STUN_RTO,
        ),
        media_packets=request.media_packets or 50,
        latching=request.latching,  # unset: off, RFC 5763 sends to the SDP address
        rtcp_mux=request.rtcp_mux if request.HasField("rtcp_mux") else True,
        rtcp_mux_fallback=request.rtcp_mux_fallback if request.HasField("rtcp_mux_fallback") else True,
        identity=policy,
    )


def identity_from_proto(message: useragent_pb2.Identity, aor: str) -> IdentityPolicy:
    """RFC 8224 credentials, each PEM field parsed and checked, and named when it does not fit: a key that
    signs ES256 (P-256), a chain whose first certificate is that key's and covers the aor, trust anchors."""

    def load(name: str, loader: Callable[[bytes], T], pem: bytes) -> T:
        try:
            return loader(pem)
        except ValueError as error:
            raise ConfigError(f"identity.{name}: {error}") from None

    key, chain = None, []
    if message.signing_key_pem or message.certificate_chain_pem:
        if not message.signing_key_pem:
            raise ConfigError("identity.signing_key_pem: a certificate chain to sign with needs its key")
        if not message.certificate_chain_pem:
            raise ConfigError("identity.certificate_chain_pem: a signing key needs its certificate (RFC 8224 §7)")
        key = load("signing_key_pem", identity.load_signing_key, message.signing_key_pem)
        chain = load("certificate_chain_pem", identity.load_certificates, message.certificate_chain_pem)
        problem = identity.signer_problem(key, chain, aor)
        if problem:
            raise ConfigError(f"identity.certificate_chain_pem: {problem}")
    anchors = (
        load("trust_anchors_pem", identity.load_certificates, message.trust_anchors_pem)
        if message.trust_anchors_pem
        else []
    )
    if message.require and not anchors:
        raise ConfigError("identity.require: an Identity can be required only with trust_anchors_pem to verify it")
    return IdentityPolicy(key, tuple(chain), tuple(anchors), message.require)


REINVITE_SETUPS = {
    useragent_pb2.REINVITE_SETUP_KEEP: ReinviteSetup.KEEP,
    useragent_pb2.REINVITE_SETUP_FLIP: ReinviteSetup.FLIP,
    useragent_pb2.REINVITE_SETUP_ACTPASS: ReinviteSetup.ACTPASS,
}


def call_status(call: Call) -> useragent_pb2.CallStatus:
    status = useragent_pb2.CallStatus(
        call_id=call.call_id,
        state=call.state,
        reason=call.reason,
        direction=call.direction,
        invite_time=call.invite_time,
        modifications=[modification_proto(m) for m in call.modifications],
        forks=[fork_proto(fork) for fork in call.forks],
    )
    media = call.media
    if media is None:
        return status
    s, endpoint = media.stats, media.endpoint
    status.media.CopyFrom(
        useragent_pb2.MediaStats(
            profile=(endpoint.selected_profile or "") if endpoint else "",
            dtls_role=media.role.value if media.role else "",
            local_fingerprint_sent=not call.tampered_fingerprint,
            peer_fingerprint_verified=bool(endpoint and endpoint.fingerprint_verified),
            dtls_state=endpoint.state if endpoint else "",
            dtls_failure=(endpoint.failure_reason or "") if endpoint else "",
            handshake_started=_wall(endpoint.handshake_started_at if endpoint else None),
            handshake_completed=_wall(endpoint.handshake_completed_at if endpoint else None),
            srtp_sent=s.srtp_sent,
            srtp_received=s.srtp_received,
            srtp_auth_failed=s.srtp_auth_failed,
            dtls_retransmissions=endpoint.retransmissions if endpoint else 0,
            first_srtp_decrypted=s.first_srtp_decrypted,
            first_srtp_sent=s.first_srtp_sent,
            stun_checks_sent=s.stun_checks_sent,
            stun_requests_answered=s.stun_requests_answered,
            local_media=fmt(call.advertised),
            remote_media=fmt(call.remote_media),
            malformed=s.malformed,
            latched_to=s.latched_to,
            latches=s.latches,
            latched_on=s.latched_on,
            rtcp_mux=call.rtcp_mux,
            components=[
                component_proto(session, advertised, remote)
                for session, advertised, remote in (
                    (call.media, call.advertised, call.remote_media),
                    (call.rtcp, call.advertised_rtcp, call.remote_rtcp),
                )
                if session is not None
            ],
            dtls_associations=media.association,
            associations=[
                association_proto(session.component, record)
                for session in call.sessions()
                for record in session.associations
            ],
            srtcp_sent=sum(x.stats.srtcp_sent for x in call.sessions()),
            srtcp_received=sum(x.stats.srtcp_received for x in call.sessions()),
        )
    )
    return status


def fork_proto(fork: Fork) -> useragent_pb2.Fork:
    """One dialog of an outgoing call and its association (RFC 5763 §6.3)."""
    status = useragent_pb2.Fork(
        remote_tag=fork.tag,
        state=fork.state,
        reason=fork.reason,
        peer_media=fmt(fork.remote_media),
        answer_fingerprint=" ".join(
            f"{hash_function} {dtls.format_fingerprint(value)}" for hash_function, value in fork.answer_fingerprints
        ),
    )
    session = fork.media
    if session is None:
        return status
    endpoint = session.endpoint
    record = session.associations[-1] if session.associations else None
    status.dtls_state = endpoint.state if endpoint else (record.state if record else "")
    status.dtls_failure = (endpoint.failure_reason or "") if endpoint else ""
    status.fingerprint_verified = bool(endpoint and endpoint.fingerprint_verified)
    status.peer_fingerprint = record.peer_fingerprint if record else ""
    if not status.peer_fingerprint and endpoint is not None and endpoint.peer_certificate_der:
        status.peer_fingerprint = dtls.format_fingerprint(dtls.certificate_digest(endpoint.peer_certificate_der))
    status.srtp_sent, status.srtp_received = session.stats.srtp_sent, session.stats.srtp_received
    status.stun_checks_sent = session.stats.stun_checks_sent
    status.local_socket = fmt(session.local_address) if session.transport is not None else ""
    return status


def component_proto(
    session: MediaSession, advertised: Address | None, remote: Address | None
) -> useragent_pb2.MediaComponent:
    s, endpoint = session.stats, session.endpoint
    current = [r for r in session.associations if r.index == session.keys_association]
    return useragent_pb2.MediaComponent(
        component=session.component,
        name=session.component_name,
        local_media=fmt(advertised),
        remote_media=fmt(remote),
        local_socket=fmt(session.local_address) if session.transport is not None else "",
        dtls_role=session.role.value if session.role else "",
        dtls_state=endpoint.state if endpoint else "",
        dtls_failure=(endpoint.failure_reason or "") if endpoint else "",
        profile=(endpoint.selected_profile or "") if endpoint else "",
        peer_fingerprint_verified=bool(endpoint and endpoint.fingerprint_verified),
        dtls_associations=session.association,
        dtls_retransmissions=endpoint.retransmissions if endpoint else 0,
        stun_checks_sent=s.stun_checks_sent,
        stun_requests_answered=s.stun_requests_answered,
        srtp_sent=s.srtp_sent,
        srtp_received=s.srtp_received,
        srtcp_sent=s.srtcp_sent,
        srtcp_received=s.srtcp_received,
        srtp_auth_failed=s.srtp_auth_failed,
        received_with_previous_keys=s.received_with_previous_keys,
        before_handshake=s.before_handshake,
        malformed=s.malformed,
        exporter_digest=current[0].exporter_digest if current else "",
        latches=s.latches,
        latched_to=s.latched_to,
    )


def association_proto(component: int, record: AssociationRecord) -> useragent_pb2.DtlsAssociation:
    return useragent_pb2.DtlsAssociation(
        component=component,
        index=record.index,
        role=record.role,
        state=record.state,
        reason=record.reason,
        ended=record.ended,
        started=record.started,
        completed=record.completed,
        exporter_digest=record.exporter_digest,
        peer_fingerprint=record.peer_fingerprint,
        srtp_sent=record.srtp_sent,
        srtp_received=record.srtp_received,
        srtcp_sent=record.srtcp_sent,
        srtcp_received=record.srtcp_received,
    )


def modification_proto(m: Modification) -> useragent_pb2.SessionModification:
    return useragent_pb2.SessionModification(
        direction=m.direction,
        offered_setup=m.offered_setup,
        new_certificate=m.new_certificate,
        status_code=m.status_code,
        new_association=m.new_association,
        reason=m.reason,
        dtls_role=m.dtls_role,
        time=m.time,
    )


def _wall(loop_time: float | None) -> float:
    """Convert an event-loop timestamp into unix seconds for the API."""
    if not loop_time:
        return 0.0
    return time.time() - (asyncio.get_running_loop().time() - loop_time)


class UserAgentServicer(EvidenceServicer, useragent_pb2_grpc.UserAgentServicer):
    def __init__(self, agent: UserAgent) -> None:
        self.agent = agent
        self.events = agent.events

    async def Configure(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            config = config_from_proto(request)
            self.agent.configure(config)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        effective = useragent_pb2.UserAgentConfig()
        effective.CopyFrom(request)
        effective.latching = config.latching  # explicit even when left unset: the default is off
        effective.rtcp_mux = config.rtcp_mux  # the defaults (on) made explicit too
        effective.rtcp_mux_fallback = config.rtcp_mux_fallback
        effective.max_calls = config.max_calls  # and the limit in force
        if effective.HasField("identity"):
            effective.identity.ClearField("signing_key_pem")  # a private key is not echoed
        return useragent_pb2.ConfigureReply(effective=effective)

    async def PlaceCall(self, request, context):  # noqa: N802
        if not self.agent.config.aor:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Configure the user agent (aor) first")
        if not request.target.startswith("sip:"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"target: expected a sip: URI, got {request.target!r}"
            )
        try:
            check_sip_uri(request.target, "target")  # written as it is in the Request-URI and the To
        except SipParseError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            parent = telemetry.extract(dict(context.invocation_metadata() or ()))  # the caller's trace
            call_id = await self.agent.place_call(request.target, parent)
        except SipParseError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"target: {error}")
        except ConfigError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except CallLimitError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except (TimeoutError, OSError) as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not prepare the call: {error}")
        return useragent_pb2.CallHandle(call_id=call_id)

    async def Answer(self, request, context):  # noqa: N802
        try:
            await self.agent.answer(request.call_id)
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"call_id: no call {request.call_id!r}")
        except CallStateError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except ValueError as error:  # an offer we cannot answer (SdpError)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot answer: {error}")
        return call_status(self.agent.calls[request.call_id])

    async def HangUp(self, request, context):  # noqa: N802
        try:
            await self.agent.hang_up(request.call_id)
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"call_id: no call {request.call_id!r}")
        return useragent_pb2.HangUpReply()

    async def Reinvite(self, request, context):  # noqa: N802
        if request.setup not in REINVITE_SETUPS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"setup: unknown value {request.setup}")
        try:
            modification = await self.agent.reinvite(
                request.call_id, new_certificate=request.new_certificate, setup=REINVITE_SETUPS[request.setup]
            )
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"call_id: no call {request.call_id!r}")
        except CallStateError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return useragent_pb2.ReinviteReply(
            modification=modification_proto(modification), call=call_status(self.agent.calls[request.call_id])
        )

    async def GetCall(self, request, context):  # noqa: N802
        call = self.agent.calls.get(request.call_id)
        if call is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"call_id: no call {request.call_id!r}")
        return call_status(call)

    async def ListCalls(self, request, context):  # noqa: N802
        return useragent_pb2.ListCallsReply(calls=[call_status(c) for c in self.agent.calls.values()])

    async def GetKeyLog(self, request, context):  # noqa: N802
        if request.call_id and request.call_id not in self.agent.calls:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"call_id: no call {request.call_id!r}")
        calls = [self.agent.calls[request.call_id]] if request.call_id else list(self.agent.calls.values())
        return useragent_pb2.KeyLog(lines=[line for call in calls for line in call.key_log])

    async def collect_counters(self) -> Counters:
        counters = Counters(self.agent.counters)
        if self.agent.endpoint is not None:
            counters.update({f"sip_{k}": v for k, v in self.agent.endpoint.stats.items()})
        for call in self.agent.calls.values():
            for session in call.sessions():
                counters["media_malformed"] += session.stats.malformed
                counters["srtp_auth_failed"] += session.stats.srtp_auth_failed
                counters["media_latched"] += session.stats.latches
        return counters


async def main() -> None:
    args = cli.parser().parse_args()
    setup_observability(args.log_level, args.name)
    agent = UserAgent(
        name=args.name,
        sip_address=parse_hostport(args.sip_listen, "--sip-listen"),
        media_ip=args.media_ip,
        events=EventLog(args.name),
        counters=Counters(),
    )
    await agent.start()
    name = useragent_pb2.DESCRIPTOR.services_by_name["UserAgent"].full_name

    async def stop() -> None:
        agent.close()

    await serve(
        args.grpc, [(useragent_pb2_grpc.add_UserAgentServicer_to_server, UserAgentServicer(agent), name)], on_stop=stop
    )


if __name__ == "__main__":
    asyncio.run(main())
