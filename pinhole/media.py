"""One DTLS-SRTP media flow on one UDP socket: STUN, DTLS and SRTP demultiplexed by first byte.

This is the asyncio adapter around the pure modules (demux, stun, dtls, srtp, rtp). RFC 5763
asks three things of this socket that shape it:
- it answers every STUN Binding request, ICE or not, during the handshake (§6.7.2);
- the passive side can send one unauthenticated Binding check from it to open the NAT
  pinhole (§6.7.2), and never waits for that check's answer before its ServerHello;
- the peer certificate is checked against the SDP a=fingerprint and the media session is torn
  down at once on a mismatch (§5); SRTP is processed only after the handshake (RFC 5764 §5.1).
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


class MediaSession(asyncio.DatagramProtocol):
    """A single DTLS-SRTP association (rtcp-mux: RTP and RTCP share it)."""

    def __init__(
        self,
        *,
        certificate: dtls.Certificate,
        events: EventLog,
        call_id: str,
        timers: MediaTimers,
        srtp_profiles: Sequence[str],
        on_change: Callable[[MediaSession], None] | None = None,
    ) -> None:
        self.certificate = certificate
        self.events = events
        self.call_id = call_id
        self.timers = timers
        self.srtp_profiles = list(srtp_profiles)
        self.on_change = on_change
        self.stats = MediaStats()
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: Address | None = None
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

    def start_dtls(self, role: dtls.Role, remote: Address | None) -> None:
        """Create the association; the client (active side) sends its ClientHello at once."""
        self.remote = remote
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
        self.remote = remote

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
            self.start_dtls(dtls.Role.SERVER, source)
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
        if self.remote is not None and source != self.remote:
            self.stats.unexpected_source += 1
            self.events.emit(
                "dtls.recv",
                self.call_id,
                description,
                peer=fmt(source),
                accepted=False,
                reason=f"not from the SDP address {fmt(self.remote)} (no latching)",
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
                retransmission=cause == "timer",
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
        if self.remote is not None and source != self.remote:
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
                return
            plain = self.srtp_session.unprotect(data)
        except srtp.SrtpAuthError as error:
            if "replay" in str(error):  # a duplicate, not a forgery: counted apart
                self.stats.srtp_replayed += 1
                return
            self.stats.srtp_auth_failed += 1
            self.events.emit("srtp.auth_failed", self.call_id, peer=fmt(source), reason=str(error))
            return
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
