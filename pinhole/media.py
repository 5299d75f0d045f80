"""One DTLS-SRTP media flow on one UDP socket: STUN, DTLS and SRTP demultiplexed by first byte.

This is the asyncio adapter around the pure modules (demux, stun, dtls, srtp, rtp). RFC 5763
asks three things of this socket that shape it:
- it answers every STUN Binding request, ICE or not, during the handshake (§6.7.2);
- the passive side can send one unauthenticated Binding check from it to open the NAT
  pinhole (§6.7.2), and never waits for that check's answer before its ServerHello;
- the peer certificate is checked against the SDP a=fingerprint and the media session is torn
  down at once on a mismatch (§5); SRTP is processed only after the handshake (RFC 5764 §5.1).

By default everything goes to the address in the peer's SDP and packets from anywhere else are
dropped, as RFC 5763 has it. With `latching` on (RFC 7362 latching, a.k.a. "comedia": it relies on
the peer sending symmetric RTP, RFC 4961, i.e. from the socket it receives on, as this one does)
the session follows the peer's packets instead, for a peer behind a NAT whose SDP address is not
where its packets come from; see `MediaSession` for what counts as the peer and why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pinhole import demux, dtls, rtp, srtp, stun
from pinhole.events import EventLog

log = logging.getLogger(__name__)

Address = tuple[str, int]


def fmt(address: Address | None) -> str:
    return "" if address is None else f"{address[0]}:{address[1]}"


@dataclass
class MediaTimers:
    """Protocol timers, RFC defaults; tests shorten them."""

    dtls: dtls.RetransmitTimer = field(default_factory=dtls.RetransmitTimer)
    stun_rto: float = 0.5


@dataclass
class MediaStats:
    srtp_sent: int = 0
    srtp_received: int = 0
    srtp_auth_failed: int = 0
    srtp_replayed: int = 0
    srtcp_received: int = 0
    malformed: int = 0
    unexpected_source: int = 0
    before_handshake: int = 0
    stun_checks_sent: int = 0
    stun_requests_answered: int = 0
    first_srtp_sent: float = 0.0
    first_srtp_decrypted: float = 0.0
    latches: int = 0  # times the remote moved to the peer's actual source (latching on)
    latched_to: str = ""  # ip:port media goes to since the last latch; "" = never latched (the SDP address)
    latched_on: str = ""  # the evidence of the last latch: one of LATCH_EVIDENCE


#: What may move a latching session's remote, weakest first (see MediaSession).
LATCH_ON_STUN = "stun-binding-request"
LATCH_ON_DTLS = "dtls-handshake"
LATCH_ON_SRTP = "srtp-authenticated"
LATCH_EVIDENCE = (LATCH_ON_STUN, LATCH_ON_DTLS, LATCH_ON_SRTP)

#: Epoch-0 handshake messages each role receives from its peer: the server gets flights 1/3/5 of
#: the client (RFC 6347 §4.2.4), the client gets the server's flights 2/4.
_FROM_PEER = {
    dtls.Role.SERVER: frozenset(
        {
            dtls.HandshakeType.client_hello,
            dtls.HandshakeType.certificate,
            dtls.HandshakeType.client_key_exchange,
            dtls.HandshakeType.certificate_verify,
        }
    ),
    dtls.Role.CLIENT: frozenset(
        {
            dtls.HandshakeType.hello_verify_request,
            dtls.HandshakeType.server_hello,
            dtls.HandshakeType.certificate,
            dtls.HandshakeType.server_key_exchange,
            dtls.HandshakeType.certificate_request,
            dtls.HandshakeType.server_hello_done,
        }
    ),
}


class MediaSession(asyncio.DatagramProtocol):
    """A single DTLS-SRTP association (rtcp-mux: RTP and RTCP share it).

    Latching (`latching=True`; off by default, RFC 5763 sends to the SDP address). The session sends
    its DTLS records, SRTP and STUN checks to `remote`; with latching, `remote` moves to the source of
    the first packet that is plausibly the peer's and comes from elsewhere. Plausibly the peer's:

    * before the handshake is complete and the peer's certificate verified against a=fingerprint:
      - a STUN Binding request (the §6.7.2 check; it carries no credentials, none exist without
        ICE), or
      - a datagram with an epoch-0 DTLS handshake record that parses and carries messages the peer
        sends in this association's role (ClientHello and flight 5 to a server; HelloVerifyRequest
        and flight 4 to a client); encrypted records (Finished, alerts) cannot be judged and do not
        count;
      the latest such evidence wins, so a peer whose path changes mid-handshake is followed;
    * once the handshake is verified (`connected`), only an SRTP or SRTCP packet that authenticates
      with the DTLS-SRTP keys (and is not a replay). STUN requests are still answered and DTLS from
      elsewhere is still dropped, but neither moves the remote any more.

    Each change of source emits one `media.latched` event (from, to, evidence) and counts in
    `stats.latches`; packets from the address already latched to change nothing. An address
    evidenced before the peer's SDP is known (an early ClientHello, an early check) is kept when
    the SDP address arrives (`set_remote`), which then counts as a latch away from the SDP address.

    When a STUN check moves the remote mid-handshake, the DTLS flight in progress is resent at once
    to the new address and its retransmission timer restarted at its current interval
    (`DtlsEndpoint.resend_for_new_path`: at most once per flight): every copy so far went where the
    peer cannot be reached, and waiting for the timer would cost up to its whole backed-off
    interval (seconds with RFC timers). After a latch on DTLS evidence no resend is needed: the
    peer's flight is fed to the endpoint, which answers it (to the new address) or resends our
    flight if it was a retransmission. Retransmissions by the timer go to `remote` as it is when
    they fire, so flights already queued follow the latch by themselves.

    Why latch on the unauthenticated STUN check at all: in the §7.3 flow with Bob active and Alice
    behind an address-and-port-dependent-mapping NAT, Alice's SDP carries the mapping the STUN
    server saw; Bob's ClientHellos to it die at her NAT, and her check to Bob leaves through a
    new mapping. The check is the only thing Alice sends Bob before a ClientHello reaches her,
    so a session that waits for DTLS or SRTP evidence never latches (deadlock: Alice, the DTLS
    server, sends nothing until she hears a ClientHello).

    Security: a STUN check or an epoch-0 handshake record is unauthenticated, so an off-path
    attacker who knows our media address and can spoof a source can redirect our media until the
    handshake is verified. What it gains is bounded: the keys stay safe, because the peer's
    certificate must still match the SDP a=fingerprint, which came over the signalling path
    (RFC 5763 §8); redirected DTLS flights reveal nothing secret; no SRTP is sent before the
    handshake is verified; and after it only authenticated SRTP can move the remote, so a spoofed
    check mid-call does nothing. What remains is denial of service (a redirected handshake fails or
    times out), which an attacker able to spoof the SDP address can cause without latching too
    (a forged ServerHello or alert), and reflection: one spoofed packet buys one STUN response and
    at most one extra DTLS flight per flight of ours towards the spoofed address. Authenticated SRTP
    is not proof against an on-path attacker who replays a genuine packet from elsewhere before
    the original arrives; the next genuine packet latches back (standard comedia limitation).
    """

    def __init__(
        self,
        *,
        certificate: dtls.Certificate,
        events: EventLog,
        call_id: str,
        timers: MediaTimers,
        srtp_profiles: Sequence[str],
        on_change: Callable[[MediaSession], None] | None = None,
        latching: bool = False,
    ) -> None:
        self.certificate = certificate
        self.events = events
        self.call_id = call_id
        self.timers = timers
        self.srtp_profiles = list(srtp_profiles)
        self.on_change = on_change
        self.stats = MediaStats()
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: Address | None = None  # where DTLS, SRTP and STUN checks go
        self.sdp_remote: Address | None = None  # the peer's address from its SDP
        self.latching = latching
        self._evidence: tuple[Address, str] | None = None  # the latest source plausibly the peer's
        self.endpoint: dtls.DtlsEndpoint | None = None
        self.role: dtls.Role | None = None
        self.peer_fingerprints: list[tuple[str, bytes]] | None = None
        self.srtp_session: srtp.SrtpSession | None = None
        self.closed = False
        self._loop = asyncio.get_event_loop()
        self._dtls_timer: asyncio.TimerHandle | None = None
        self._stun_client = stun.BindingClient(
            self._send, rto=timers.stun_rto, on_send=self._stun_sent, on_timeout=self._stun_timed_out
        )
        self._media_task: asyncio.Task[None] | None = None
        self.accept_early_client_hello = False  # the offerer (actpass) before the answer arrives
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()

    # -- socket -----------------------------------------------------------------------------------

    @classmethod
    async def open(cls, local_ip: str, **kwargs: object) -> MediaSession:
        loop = asyncio.get_running_loop()
        _, session = await loop.create_datagram_endpoint(lambda: cls(**kwargs), local_addr=(local_ip, 0))  # type: ignore[arg-type]
        return session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    @property
    def local_address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def _now(self) -> float:
        return self._loop.time()

    def _send(self, data: bytes, address: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, address)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed:
            return
        source = (addr[0], addr[1])
        kind = demux.classify(data)
        try:
            if kind == demux.PacketKind.STUN:
                self._stun_received(data, source)
            elif kind == demux.PacketKind.DTLS:
                self._dtls_received(data, source)
            elif kind in (demux.PacketKind.RTP, demux.PacketKind.RTCP):
                self._srtp_received(data, source, kind)
            else:
                self._malformed(
                    data, source, f"first byte {data[:1].hex() or 'none'} is not STUN, DTLS or RTP (RFC 7983)"
                )
        except Exception as error:  # a bad packet must never take the session down
            log.debug("while handling a %s datagram", kind, exc_info=True)
            self._malformed(data, source, f"{type(error).__name__}: {error}")

    def _malformed(self, data: bytes, source: Address, reason: str) -> None:
        self.stats.malformed += 1
        self.events.emit("media.malformed", self.call_id, peer=fmt(source), size=len(data), reason=reason)

    # -- STUN (RFC 5389; RFC 5763 §6.7.2) ---------------------------------------------------------

    def _stun_received(self, data: bytes, source: Address) -> None:
        try:
            message = stun.decode(data)
        except stun.StunError as error:
            self._malformed(data, source, f"STUN: {error}")
            return
        attrs = {"stun.transaction_id": message.transaction_id.hex(), "stun.class": message.message_class.name.lower()}
        if message.message_class == stun.MessageClass.REQUEST and message.method == stun.Method.BINDING:
            self.events.emit(
                "stun.recv",
                self.call_id,
                attrs,
                peer=fmt(source),
                local=fmt(self.local_address),
                authenticated=message.has_message_integrity,
            )
            response = stun.encode(stun.binding_success(message, source, software="pinhole"))
            self.stats.stun_requests_answered += 1
            self.events.emit(
                "stun.send",
                self.call_id,
                {**attrs, "stun.class": "success_response", "stun.xor_mapped_address": fmt(source)},
                peer=fmt(source),
                local=fmt(self.local_address),
            )
            self._send(response, source)
            if self._latch(source, LATCH_ON_STUN) and self.endpoint is not None:
                self._dtls_output(self.endpoint.resend_for_new_path(self._now()), cause="latched")
            return
        mapped = message.xor_mapped_address
        self.events.emit(
            "stun.recv",
            self.call_id,
            {**attrs, "stun.xor_mapped_address": fmt(mapped)},
            peer=fmt(source),
            local=fmt(self.local_address),
        )
        self._stun_client.receive(message)

    def stun_binding(self, destination: Address, *, purpose: str) -> asyncio.Future[Address]:
        """Run one Binding transaction from this socket; resolves to XOR-MAPPED-ADDRESS."""
        if purpose == "connectivity-check":
            self.stats.stun_checks_sent += 1
        return self._stun_client.request(destination, label=purpose)

    def _stun_sent(self, tid: bytes, destination: Address, attempt: int, purpose: str) -> None:
        self.events.emit(
            "stun.send",
            self.call_id,
            {"stun.transaction_id": tid.hex(), "stun.class": "request"},
            peer=fmt(destination),
            local=fmt(self.local_address),
            attempt=attempt,
            purpose=purpose,
            authenticated=False,
        )

    def _stun_timed_out(self, tid: bytes, attempts: int, purpose: str) -> None:
        self.events.emit("stun.timeout", self.call_id, {"stun.transaction_id": tid.hex()}, attempts=attempts)

    # -- DTLS (RFC 6347, RFC 5764) ----------------------------------------------------------------

    def start_dtls(self, role: dtls.Role, remote: Address | None, *, from_sdp: bool = True) -> None:
        """Create the association; the client (active side) sends its ClientHello at once.

        `remote` is the peer's SDP address (`from_sdp`), or the source of a ClientHello that came
        before the SDP; with latching, an address already evidenced by the peer's packets wins."""
        if from_sdp and remote is not None:
            self.sdp_remote = remote
        self.remote = remote
        self._apply_evidence()
        self.role = role
        self.endpoint = dtls.DtlsEndpoint(
            role,
            self.certificate,
            srtp_profiles=self.srtp_profiles,
            timer=self.timers.dtls,
            peer_fingerprints=self.peer_fingerprints,
        )
        self.events.emit(
            "dtls.start",
            self.call_id,
            role=role.value,
            peer=fmt(remote),
            local_fingerprint=self.certificate.fingerprint("sha-256"),
        )
        self._dtls_output(self.endpoint.start(self._now()), cause="start")

    def set_remote(self, remote: Address) -> None:
        """The peer's SDP address arrived; with latching, an address already evidenced by the peer's
        packets (an early ClientHello or STUN check) is kept instead, and counts as a latch."""
        self.sdp_remote = remote
        self.remote = remote
        self._apply_evidence()

    # -- latching (see the class docstring) -------------------------------------------------------

    def _latch(self, source: Address, evidence: str) -> bool:
        """`source` sent something that is plausibly the peer's, of kind `evidence`: latch onto it if
        the policy allows. True if the remote moved."""
        if not self.latching:
            return False
        if self.connected.is_set() and evidence != LATCH_ON_SRTP:
            return False  # verified: only authenticated media may move the remote now
        self._evidence = (source, evidence)
        return self._apply_evidence()

    def _apply_evidence(self) -> bool:
        if not self.latching or self._evidence is None or self.remote is None:
            return False  # no destination yet: start_dtls/set_remote will apply the evidence
        source, evidence = self._evidence
        if source == self.remote:
            return False
        previous, self.remote = self.remote, source
        self.stats.latches += 1
        self.stats.latched_to = fmt(source)
        self.stats.latched_on = evidence
        self.events.emit(
            "media.latched",
            self.call_id,
            {"from": fmt(previous), "to": fmt(source)},
            peer=fmt(source),
            local=fmt(self.local_address),
            evidence=evidence,
            sdp=fmt(self.sdp_remote),
            latches=self.stats.latches,
            dtls_state=self.endpoint.state if self.endpoint else "",
        )
        self._changed()
        return True

    def _peer_handshake(self, data: bytes) -> bool:
        """True if `data` holds an epoch-0 handshake record that parses and carries only messages our
        peer sends in this association (see _FROM_PEER). Unauthenticated, like the STUN check."""
        if self.endpoint is None or self.endpoint.state not in ("new", "handshaking"):
            return False
        try:
            messages = [
                message
                for record in dtls.parse_records(data)
                if record.content_type == dtls.ContentType.handshake and record.epoch == 0
                for message in dtls.handshake_messages(record)
            ]
        except dtls.DtlsError:
            return False
        expected = _FROM_PEER[self.endpoint.role]
        return bool(messages) and all(m.msg_type in expected for m in messages)

    def set_peer_fingerprints(self, fingerprints: list[tuple[str, bytes]]) -> None:
        """The answer (or offer) arrived: its a=fingerprint set decides whom we accept (RFC 8122 §5)."""
        self.peer_fingerprints = fingerprints
        if self.endpoint is not None:
            self._dtls_output(self.endpoint.set_peer_fingerprints(fingerprints, self._now()), cause="verify")

    def _dtls_received(self, data: bytes, source: Address) -> None:
        description = dtls.describe(data)
        if (
            self.endpoint is None
            and self.accept_early_client_hello
            and "client_hello" in description.get("dtls.handshake_types", "")
        ):
            # the answerer chose active and its ClientHello beat the answer: serve it now, and check
            # its certificate once the answer's fingerprint arrives (RFC 5763 §5 "tentatively")
            if self.latching:  # the answer's SDP address will not override where the peer is
                self._evidence = (source, LATCH_ON_DTLS)
            self.start_dtls(dtls.Role.SERVER, source, from_sdp=False)
        if self.endpoint is None:
            self.events.emit(
                "dtls.recv",
                self.call_id,
                description,
                peer=fmt(source),
                accepted=False,
                reason="no DTLS association for this flow yet",
            )
            return
        if (
            self.remote is not None
            and source != self.remote
            and not (self._peer_handshake(data) and self._latch(source, LATCH_ON_DTLS))
        ):
            self.stats.unexpected_source += 1
            if self.latching:
                why = "handshake verified: only SRTP latches" if self.connected.is_set() else "not a handshake record"
                reason = f"not from the peer's address {fmt(self.remote)} and nothing to latch on ({why})"
            else:
                reason = f"not from the SDP address {fmt(self.remote)} (no latching)"
            self.events.emit(
                "dtls.recv",
                self.call_id,
                description,
                peer=fmt(source),
                accepted=False,
                reason=reason,
            )
            return
        self.events.emit("dtls.recv", self.call_id, description, peer=fmt(source), local=fmt(self.local_address))
        if self.remote is None:
            self.remote = source
        self._dtls_output(self.endpoint.receive(data, self._now()), cause="response")

    def _dtls_timeout(self) -> None:
        self._dtls_timer = None
        if self.endpoint is not None and not self.closed:
            self._dtls_output(self.endpoint.on_deadline(self._now()), cause="timer")

    def _dtls_output(self, datagrams: list[bytes], *, cause: str) -> None:
        endpoint = self.endpoint
        assert endpoint is not None
        for datagram in datagrams:
            if self.remote is None:
                break
            self.events.emit(
                "dtls.send",
                self.call_id,
                dtls.describe(datagram),
                peer=fmt(self.remote),
                local=fmt(self.local_address),
                cause=cause,
                retransmission=cause in ("timer", "latched"),
            )
            self._send(datagram, self.remote)
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        deadline = endpoint.next_deadline
        if deadline is not None and endpoint.state == "handshaking":
            self._dtls_timer = self._loop.call_at(deadline, self._dtls_timeout)
        self._check_dtls_state()

    def _check_dtls_state(self) -> None:
        endpoint = self.endpoint
        assert endpoint is not None
        if endpoint.state == "connected" and not self.connected.is_set() and endpoint.fingerprint_verified:
            self.srtp_session = srtp.SrtpSession(endpoint.srtp_keys())
            self.connected.set()
            self.events.emit(
                "dtls.connected",
                self.call_id,
                role=self.role.value if self.role else "",
                profile=endpoint.selected_profile,
                peer_fingerprint_verified=endpoint.fingerprint_verified,
                peer_fingerprint=_sha256(endpoint.peer_certificate_der),
                exporter_digest=endpoint.exporter_digest(),
                retransmissions=endpoint.retransmissions,
            )
            self._changed()
        elif endpoint.state == "failed" and not self.failed.is_set():
            self.failed.set()
            self.events.emit(
                "dtls.failed",
                self.call_id,
                reason=endpoint.failure_reason,
                peer_fingerprint=_sha256(endpoint.peer_certificate_der),
            )
            self.teardown(f"DTLS failed: {endpoint.failure_reason}")
            self._changed()

    # -- SRTP (RFC 3711 via libsrtp, keys from RFC 5764 §4.2) -------------------------------------

    def _srtp_received(self, data: bytes, source: Address, kind: demux.PacketKind) -> None:
        elsewhere = self.remote is not None and source != self.remote
        if elsewhere and not (self.latching and self.srtp_session is not None):
            self.stats.unexpected_source += 1  # no latching: only the SDP address is our peer
            return
        if self.srtp_session is None:
            self.stats.before_handshake += 1
            if self.stats.before_handshake == 1:
                self.events.emit(
                    "srtp.dropped",
                    self.call_id,
                    peer=fmt(source),
                    reason="SRTP before the handshake completed (RFC 5764 §5.1)",
                )
            return
        try:
            if kind == demux.PacketKind.RTCP:
                self.srtp_session.unprotect_rtcp(data)
                self.stats.srtcp_received += 1
                if elsewhere:
                    self._latch(source, LATCH_ON_SRTP)
                return
            plain = self.srtp_session.unprotect(data)
        except srtp.SrtpAuthError as error:
            if elsewhere:  # a forgery or replay from elsewhere is not the peer: no latch, not its failure
                self.stats.unexpected_source += 1
                return
            if "replay" in str(error):  # a duplicate, not a forgery: counted apart
                self.stats.srtp_replayed += 1
                return
            self.stats.srtp_auth_failed += 1
            self.events.emit("srtp.auth_failed", self.call_id, peer=fmt(source), reason=str(error))
            return
        if elsewhere:
            self._latch(source, LATCH_ON_SRTP)
        self.stats.srtp_received += 1
        if self.stats.srtp_received == 1:
            self.stats.first_srtp_decrypted = time.time()
            packet = rtp.RtpPacket.decode(plain)
            self.events.emit(
                "srtp.first_received",
                self.call_id,
                {"rtp.ssrc": f"0x{packet.ssrc:08x}"},
                peer=fmt(source),
                profile=self.endpoint.selected_profile if self.endpoint else "",
            )
            self._changed()

    def start_media(self, packets: int, ptime: float = 0.02) -> None:
        """Send `packets` SRTP packets of PCMU silence, `ptime` apart, once the keys exist."""
        self._media_task = self._loop.create_task(self._send_media(packets, ptime))

    async def _send_media(self, packets: int, ptime: float) -> None:
        await self.connected.wait()
        assert self.srtp_session is not None and self.remote is not None
        stream = rtp.RtpStream(ssrc=int.from_bytes(os.urandom(4), "big"), payload_type=0)
        for index in range(packets):
            if self.closed:
                return
            packet = stream.next_packet(b"\xff" * 160)
            self._send(self.srtp_session.protect(packet.encode()), self.remote)
            self.stats.srtp_sent += 1
            if index == 0:
                self.stats.first_srtp_sent = time.time()
                self.events.emit(
                    "srtp.first_sent",
                    self.call_id,
                    {"rtp.ssrc": f"0x{packet.ssrc:08x}"},
                    peer=fmt(self.remote),
                    profile=self.endpoint.selected_profile if self.endpoint else "",
                )
            await asyncio.sleep(ptime)
        self.events.emit("srtp.sent", self.call_id, packets=self.stats.srtp_sent, peer=fmt(self.remote))

    # -- teardown ---------------------------------------------------------------------------------

    def teardown(self, reason: str) -> None:
        """Stop the media session at once (RFC 5763 §5 on a fingerprint mismatch; BYE otherwise)."""
        if self.closed:
            return
        if self.endpoint is not None and self.endpoint.state == "connected" and self.remote is not None:
            for datagram in self.endpoint.close(self._now()):
                self._send(datagram, self.remote)
        self.closed = True
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        self._stun_client.close(f"media session closed: {reason}")
        if self._media_task is not None:
            self._media_task.cancel()
        self.events.emit(
            "media.closed",
            self.call_id,
            reason=reason,
            srtp_sent=self.stats.srtp_sent,
            srtp_received=self.stats.srtp_received,
            srtp_auth_failed=self.stats.srtp_auth_failed,
            malformed=self.stats.malformed,
        )
        if self.transport is not None:
            self.transport.close()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


def _sha256(der: bytes | None) -> str:
    return dtls.format_fingerprint(dtls.certificate_digest(der)) if der else ""
