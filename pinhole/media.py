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

One session is one *component* (RFC 5245 numbering: 1 RTP, 2 RTCP). With rtcp-mux (RFC 5761) a
call has only component 1 and RTCP shares its association; without it the call has a second
session on its own socket, with its own DTLS association and SRTCP keys (RFC 5764 §4: one
association per host/port quartet), its own §6.7.2 check, and RTCP sender reports. Every event
names its component and association. A session can replace its association mid-call (`renew`,
RFC 5763 §6.6); see `MediaSession` for what happens to the media in flight.

Forking (RFC 5763 §6.3, RFC 5764 §5.1.2): an offerer whose INVITE forked keeps ONE local port and
makes one association per answerer on it. The session that opened the socket demultiplexes every
datagram to the session of that socket whose peer (`remote`) sent it (`fork`); a ClientHello from a
transport address no session has yet starts a new one (`accept_forks`), whose certificate its
answer's a=fingerprint is checked against when the answer arrives. SRTP is demultiplexed the same
way, by source transport address, the host/port quartet DTLS itself runs on. RFC 5764 §5.1.2 keys
the choice on the SSRC instead (a table filled by trial decryption with each association's keys),
because an RTP receiver does not in general know the sender's transport address; here every fork's
answerer sends symmetric RTP (RFC 4961) from the address of its association, and forked sessions do
not latch, so the source address names the association exactly as an SSRC table would, without
trial decryption and without SSRC collisions across forks to resolve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pinhole import demux, dtls, rtp, srtp, stun
from pinhole.address import Address, fmt
from pinhole.events import EventLog
from pinhole.timers import STUN_RTO

log = logging.getLogger(__name__)



@dataclass
class MediaTimers:
    """Protocol timers, RFC defaults; tests shorten them."""

    dtls: dtls.RetransmitTimer = field(default_factory=dtls.RetransmitTimer)
    stun_rto: float = STUN_RTO


#: RFC 5245 §4.1.1.1 component IDs, and the names events carry.
RTP, RTCP = 1, 2
COMPONENT_NAMES = {RTP: "rtp", RTCP: "rtcp"}

#: Seconds the receive keys of a replaced association still decrypt after the switch (packets in
#: flight; RFC 5764 §5.2 has receivers keep both key sets for some time on a rekey).
RETIRED_KEYS_GRACE = 2.0


@dataclass
class AssociationRecord:
    """One DTLS association of a component: why it was made, how it ended, the media it keyed."""

    index: int  # 1 = the component's first
    role: str
    reason: str
    started: float  # unix seconds
    state: str = "handshaking"  # handshaking, connected, retired, failed, closed
    completed: float = 0.0
    exporter_digest: str = ""
    peer_fingerprint: str = ""
    ended: str = ""  # why it was retired or closed
    srtp_sent: int = 0
    srtp_received: int = 0
    srtcp_sent: int = 0
    srtcp_received: int = 0


@dataclass
class MediaStats:
    srtp_sent: int = 0
    srtp_received: int = 0
    srtp_auth_failed: int = 0
    srtp_replayed: int = 0
    srtcp_received: int = 0
    srtcp_sent: int = 0
    received_with_previous_keys: int = 0  # decrypted with a replaced association's keys (in flight at the switch)
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
    relayed: int = 0  # RTP/RTCP decrypted on a relay's other session and protected here to our peer
    relay_dropped: int = 0  # what came to relay before this session had keys and a peer


#: Early SRTP held while the peer is unverified (RFC 5763 §7.1): 5 s of 20 ms packets at most
MAX_HELD_SRTP = 250

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


MAX_SESSIONS_PER_PORT = 8  # forks (RFC 5763 §6.3) one port takes DTLS state for; more ClientHellos are dropped


class MediaClock:
    """One timer per event loop and packet time that sends every stream's next packet: a task per stream
    woke the loop once per packet, and the wake-up cost about as much CPU as the packet it sent."""

    _clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, MediaClock]] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, ptime: float) -> None:
        self.loop, self.ptime = loop, ptime
        self.senders: dict[object, Callable[[], bool]] = {}  # a stream's send: False once it is done
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, ptime: float) -> MediaClock:
        clocks = cls._clocks.setdefault(loop, {})
        return clocks.setdefault(ptime, cls(loop, ptime))

    def add(self, key: object, send: Callable[[], bool]) -> None:
        """Send a first packet now, then one per tick until `send` returns False or `remove(key)`."""
        if not send():
            return
        self.senders[key] = send
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run())

    def remove(self, key: object) -> None:
        self.senders.pop(key, None)

    async def _run(self) -> None:
        due = self.loop.time()
        while self.senders:
            due = max(due + self.ptime, self.loop.time() - self.ptime)  # late ticks are not made up in a burst
            await asyncio.sleep(max(0.0, due - self.loop.time()))
            for key, send in list(self.senders.items()):
                if key in self.senders and not send():
                    self.senders.pop(key, None)


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

    A new association mid-call (`renew`, RFC 5763 §6.6: the fingerprints or the roles changed in a
    re-INVITE). It runs on the same socket and 5-tuple as the old one, so the old association is
    retired first: its DTLS state is dropped without a close_notify (that alert would travel the
    same 5-tuple as the new handshake, and the peer could not tell which association it belongs
    to; RFC 5764 offers no demultiplexing of two associations on one 5-tuple), and every DTLS
    record from then on goes to the new association. The SRTP keys the old association exported
    stay in use, both ways, until the new handshake is complete and the peer's new certificate
    verified; then the session switches to the new keys at once (as RFC 5763 §6.8 does on a
    rekey: no gap in the media, and never a key that has not been verified). For
    `RETIRED_KEYS_GRACE` seconds after the switch, packets that fail under the new keys are tried
    with the old receive keys: the peer's packets in flight when it switched
    (`stats.received_with_previous_keys`). While the new handshake runs, packets that match
    neither key set are counted as `before_handshake`, not as authentication failures: the peer
    may have switched first. An offerer whose re-offer lets the answerer be active sets
    `expect_new_association`: a ClientHello with a new random then starts the new association as
    server before the answer arrives, like the initial ClientHello that can beat the answer
    (RFC 5763 §5), and its certificate is checked when the answer's fingerprints arrive.
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
        component: int = RTP,
        key_log: list[str] | None = None,
        deviations: frozenset[str] = frozenset(),
    ) -> None:
        if component not in COMPONENT_NAMES:
            raise ValueError(f"component {component}: expected 1 (RTP) or 2 (RTCP)")
        self.component = component
        self.component_name = COMPONENT_NAMES[component]
        self.association = 0  # index of the newest association (1 = the first)
        self.associations: list[AssociationRecord] = []
        self.expect_new_association = False  # a re-offer is pending that lets the peer be the DTLS client
        self.renewed_early = False  # a new ClientHello started the new association before the answer
        self.stream: rtp.RtpStream | None = None  # what we send on this component (RTP only)
        self._srtp_association = 0  # the association whose keys srtp_session holds
        self._previous_rx: tuple[srtp.SrtpSession, int, float] | None = None  # keys, association, until
        self._rtcp_task: asyncio.Task[None] | None = None
        self.certificate = certificate
        self.key_log = key_log if key_log is not None else []  # NSS key log lines of every association made here
        self.deviations = deviations  # pinhole.deviations this session carries out (misbehaviour on purpose)
        self._hello_waits = False  # hello-after-check: our first ClientHello waits for the peer's check
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
        # RFC 5763 §7.1 (6): early SRTP that arrives once the handshake is complete but before the answer's
        # a=fingerprint verified the peer: held undecrypted, decrypted once verified, dropped if not
        self._held: list[tuple[bytes, Address, demux.PacketKind]] = []
        self.srtp_held = 0
        self._tentative: set[int] = set()  # associations whose handshake completed before verification
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        # forking (RFC 5763 §6.3): every session on this socket, the one that opened it first
        self.socket_sessions: list[MediaSession] = [self]
        self.accept_forks = False  # on the opener: a ClientHello from a new address starts a new session
        self.fork_tag = ""  # the dialog (the answerer's To tag) this session belongs to; named in its events
        self.relay_to: MediaSession | None = None  # a media box: what this session decrypts goes on from there

    # -- socket -----------------------------------------------------------------------------------

    @classmethod
    async def open(cls, local_ip: str, **kwargs: object) -> MediaSession:
        loop = asyncio.get_running_loop()
        _, session = await loop.create_datagram_endpoint(lambda: cls(**kwargs), local_addr=(local_ip, 0))  # type: ignore[arg-type]
        return session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def fork(self) -> MediaSession:
        """Another session on this one's socket (RFC 5763 §6.3: one association per answerer on one
        local port), for another fork of the call. It never latches (see the module docstring)."""
        sibling = MediaSession(
            certificate=self.certificate,
            events=self.events,
            call_id=self.call_id,
            timers=self.timers,
            srtp_profiles=self.srtp_profiles,
            on_change=self.on_change,
            latching=False,
            component=self.component,
            key_log=self.key_log,
            deviations=self.deviations,
        )
        sibling.transport = self.transport
        sibling.socket_sessions = self.socket_sessions
        self.socket_sessions.append(sibling)
        return sibling

    @property
    def opener(self) -> MediaSession:
        """The session that opened the socket (it receives every datagram and demultiplexes them)."""
        return self.socket_sessions[0]

    def _session_for(self, data: bytes, source: Address) -> MediaSession | None:
        """The session of this socket whose peer is `source`; a ClientHello from an address that no
        session has starts a new one when forks are accepted (None: the port holds all it may);
        anything else is the opener's."""
        for session in self.socket_sessions:
            if not session.closed and session.remote == source:
                return session
        if (
            self.accept_forks
            and not self.latching  # a latching session follows its peer to a new address instead
            and self.endpoint is not None
            and demux.classify(data) == demux.PacketKind.DTLS
            and dtls.client_hello_random(data) is not None
        ):
            if len(self.socket_sessions) >= MAX_SESSIONS_PER_PORT:  # anyone may send ClientHellos: bounded
                self.stats.unexpected_source += 1
                return None
            sibling = self.fork()
            sibling.accept_early_client_hello = True  # its certificate waits for its answer (RFC 5763 §5)
            sibling._emit("media.fork_accepted", peer=fmt(source), reason="a ClientHello from a new transport address")
            return sibling
        return self

    @property
    def local_address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def _now(self) -> float:
        return self._loop.time()

    def _emit(
        self,
        kind: str,
        attributes: Mapping[str, object] | None = None,
        *,
        association: int | None = None,
        **more: object,
    ) -> None:
        """An event of this call, naming the component and (once there is one) the association."""
        index = self.association if association is None else association
        fork = {"fork": self.fork_tag} if self.fork_tag else {}
        self.events.emit(
            kind,
            self.call_id,
            {**(attributes or {}), "component": self.component_name, "association": index or None, **fork, **more},
        )

    @property
    def handshake_complete(self) -> bool:
        """The newest association's handshake is done (RFC 5763 §6.7.2 asks this of the passive side)."""
        return self.endpoint is not None and self.endpoint.state == "connected"

    @property
    def keys_association(self) -> int:
        """The association whose SRTP keys protect the media now (0: none yet)."""
        return self._srtp_association

    @property
    def renewing(self) -> bool:
        """A newer association than the one whose keys protect the media is being set up."""
        return self.srtp_session is not None and self._srtp_association < self.association

    def _send(self, data: bytes, address: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, address)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        source = (addr[0], addr[1])
        session = self._session_for(data, source) if len(self.socket_sessions) > 1 or self.accept_forks else self
        if session is not None:
            session.receive(data, source)

    def receive(self, data: bytes, source: Address) -> None:
        """One datagram from `source` for this session: STUN, DTLS or SRTP by its first byte."""
        if self.closed:
            return
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
        self._emit("media.malformed", peer=fmt(source), size=len(data), reason=reason)

    # -- STUN (RFC 5389; RFC 5763 §6.7.2) ---------------------------------------------------------

    def _stun_received(self, data: bytes, source: Address) -> None:
        try:
            message = stun.decode(data)
        except stun.StunError as error:
            self._malformed(data, source, f"STUN: {error}")
            return
        attrs = {"stun.transaction_id": message.transaction_id.hex(), "stun.class": message.message_class.name.lower()}
        if message.message_class == stun.MessageClass.REQUEST and message.method == stun.Method.BINDING:
            self._emit(
                "stun.recv",
                attrs,
                peer=fmt(source),
                local=fmt(self.local_address),
                authenticated=message.has_message_integrity,
            )
            self._deviate_on_check()
            if "no-stun-answer" in self.deviations:
                return  # the deviation: no answer, no latch
            response = stun.encode(stun.binding_success(message, source, software="pinhole"))
            self.stats.stun_requests_answered += 1
            self._emit(
                "stun.send",
                {**attrs, "stun.class": "success_response", "stun.xor_mapped_address": fmt(source)},
                peer=fmt(source),
                local=fmt(self.local_address),
            )
            self._send(response, source)
            if self._latch(source, LATCH_ON_STUN) and self.endpoint is not None:
                self._dtls_output(self.endpoint.resend_for_new_path(self._now()), cause="latched")
            return
        mapped = message.xor_mapped_address
        self._emit(
            "stun.recv",
            {**attrs, "stun.xor_mapped_address": fmt(mapped)},
            peer=fmt(source),
            local=fmt(self.local_address),
        )
        self._stun_client.receive(message)

    def _deviate_on_check(self) -> None:
        """What the deviations that react to the peer's STUN check do (pinhole.deviations)."""
        if self.endpoint is None or self.role is not dtls.Role.CLIENT:
            return
        if self._hello_waits:  # hello-after-check: only now the first ClientHello
            self._hello_waits = False
            self._dtls_output(self.endpoint.start(self._now()), cause="start")
        elif "resend-hello-on-check" in self.deviations:
            self._dtls_output(self.endpoint.resend_flight_now(self._now()), cause="check")

    def stun_binding(self, destination: Address, *, purpose: str) -> asyncio.Future[Address]:
        """Run one Binding transaction from this socket; resolves to XOR-MAPPED-ADDRESS."""
        if purpose != "connectivity-check":
            return self._stun_client.request(destination, label=purpose)
        self.stats.stun_checks_sent += 1
        if "authenticated-stun-check" in self.deviations:  # the deviation: credentials no ICE gave anyone
            return self._stun_client.request(
                destination, label=purpose, username="pinhole:peer", integrity_key=b"pinhole"
            )
        return self._stun_client.request(destination, label=purpose)

    def _stun_sent(self, tid: bytes, destination: Address, attempt: int, purpose: str) -> None:
        self._emit(
            "stun.send",
            {"stun.transaction_id": tid.hex(), "stun.class": "request"},
            peer=fmt(destination),
            local=fmt(self.local_address),
            attempt=attempt,
            purpose=purpose,
            authenticated=False,
        )

    def _stun_timed_out(self, tid: bytes, attempts: int, purpose: str) -> None:
        self._emit("stun.timeout", {"stun.transaction_id": tid.hex()}, attempts=attempts)

    # -- DTLS (RFC 6347, RFC 5764) ----------------------------------------------------------------

    def start_dtls(
        self, role: dtls.Role, remote: Address | None, *, from_sdp: bool = True, reason: str = "offer/answer"
    ) -> None:
        """Create the association; the client (active side) sends its ClientHello at once.

        `remote` is the peer's SDP address (`from_sdp`), or the source of a ClientHello that came
        before the SDP; with latching, an address already evidenced by the peer's packets wins.
        `reason` says why this association is made (its record and its dtls.start event)."""
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
            on_key_log=self.key_log.append,
            deviations=self.deviations,
        )
        self.association += 1
        self.associations.append(AssociationRecord(self.association, role.value, reason, started=time.time()))
        self._emit(
            "dtls.start",
            role=role.value,
            peer=fmt(remote),
            local_fingerprint=self.certificate.fingerprint("sha-256"),
            reason=reason,
        )
        if role is dtls.Role.CLIENT and "hello-after-check" in self.deviations and reason == "offer/answer":
            self._hello_waits = True  # the deviation: the ClientHello waits for the peer's check
            return
        self._dtls_output(self.endpoint.start(self._now()), cause="start")

    def renew(
        self,
        role: dtls.Role,
        remote: Address | None,
        *,
        reason: str,
        peer_fingerprints: list[tuple[str, bytes]] | None = None,
        certificate: dtls.Certificate | None = None,
        from_sdp: bool = True,
    ) -> None:
        """Replace the association (RFC 5763 §6.6): retire the current one, start a new one in `role`
        with `certificate` (default: the current one) against `peer_fingerprints` (None: keep the
        known ones; a server that starts before the answer checks them when they arrive). The media
        keys switch once the new handshake is verified (see the class docstring)."""
        self._retire(f"replaced: {reason}")
        self.expect_new_association = False
        if certificate is not None:
            self.certificate = certificate
        if peer_fingerprints is not None:
            self.peer_fingerprints = peer_fingerprints
        self.start_dtls(role, remote if remote is not None else self.remote, from_sdp=from_sdp, reason=reason)

    def _retire(self, reason: str) -> None:
        """Drop the current association's DTLS state; no close_notify (see the class docstring)."""
        endpoint = self.endpoint
        if endpoint is None:
            return
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        state = endpoint.state
        endpoint.close(self._now())  # its close_notify is not sent
        record = self.associations[-1]
        if record.state in ("handshaking", "connected"):
            record.state = "retired"
        record.ended = reason
        self.endpoint = None
        self._emit("dtls.retired", reason=reason, dtls_state=state, keys_in_use=self._srtp_association == record.index)

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
        self._emit(
            "media.latched",
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
        elif self.expect_new_association and self.endpoint is not None and self._new_client_hello(data):
            # our re-offer let the peer be active and its new handshake beat the answer (RFC 5763
            # §6.6: a new association "following the same rules as for initial exchanges")
            self.renewed_early = True
            self.peer_fingerprints = None  # tentative: the answer's a=fingerprint decides (RFC 5763 §5)
            self.renew(
                dtls.Role.SERVER,
                self.remote,
                reason="a new ClientHello before the answer to our re-offer",
                from_sdp=False,
            )
        if self.endpoint is None:
            self._emit(
                "dtls.recv",
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
            self._emit(
                "dtls.recv",
                description,
                peer=fmt(source),
                accepted=False,
                reason=reason,
            )
            return
        self._emit("dtls.recv", description, peer=fmt(source), local=fmt(self.local_address))
        if self.remote is None:
            self.remote = source
        self._dtls_output(self.endpoint.receive(data, self._now()), cause="response")

    def _new_client_hello(self, data: bytes) -> bool:
        """`data` holds a ClientHello of another handshake than the current association's."""
        assert self.endpoint is not None
        random = dtls.client_hello_random(data)
        current = self.endpoint.client_random
        return random is not None and current is not None and random != current

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
            self._emit(
                "dtls.send",
                dtls.describe(datagram),
                peer=fmt(self.remote),
                local=fmt(self.local_address),
                cause=cause,
                retransmission=cause in ("timer", "latched", "check", "peer-media"),
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
        record = self.associations[-1]
        if (
            endpoint.state == "connected"
            and not endpoint.fingerprint_verified
            and record.state == "handshaking"
            and record.index not in self._tentative
        ):
            self._tentative.add(record.index)
            self._emit(
                "dtls.handshake_complete",
                role=self.role.value if self.role else "",
                profile=endpoint.selected_profile,
                peer_fingerprint_verified=False,
                peer_fingerprint=_sha256(endpoint.peer_certificate_der),
                reason="the peer's certificate is accepted tentatively until its a=fingerprint arrives (RFC 5763 §5)",
            )
            if "early-srtp-before-verify" in self.deviations and self.srtp_session is None:
                # the deviation: media with a peer no a=fingerprint has vouched for yet, both ways
                self.srtp_session, self._srtp_association = self._srtp_session(endpoint), record.index
                self.connected.set()
        if endpoint.state == "connected" and endpoint.fingerprint_verified and record.state == "handshaking":
            record.state, record.completed = "connected", time.time()
            record.exporter_digest = endpoint.exporter_digest()
            record.peer_fingerprint = _sha256(endpoint.peer_certificate_der)
            previous, previous_association = self.srtp_session, self._srtp_association
            if previous is not None:  # the old keys decrypt what is still in flight, for a while
                self._previous_rx = (previous, previous_association, self._now() + RETIRED_KEYS_GRACE)
            self.srtp_session, self._srtp_association = self._srtp_session(endpoint), record.index
            self.connected.set()
            self._emit(
                "dtls.connected",
                role=self.role.value if self.role else "",
                profile=endpoint.selected_profile,
                peer_fingerprint_verified=endpoint.fingerprint_verified,
                peer_fingerprint=record.peer_fingerprint,
                exporter_digest=record.exporter_digest,
                retransmissions=endpoint.retransmissions,
                reason=record.reason,
                handshake_completed_before_verification=record.index in self._tentative,
            )
            if self._held:  # early media, now from a verified peer (RFC 5763 §7.1 messages 6 and 9)
                held, self._held = self._held, []
                self._emit("srtp.released", packets=len(held), reason="the peer's certificate matches a=fingerprint")
                for data, source, kind in held:
                    self._srtp_received(data, source, kind)
            if previous is not None:
                self._emit(
                    "srtp.switched",
                    {"from": previous_association, "to": record.index},
                    reason="the new association is verified: media now uses its keys",
                    previous_keys_accepted_for=RETIRED_KEYS_GRACE,
                )
            self._changed()
        elif endpoint.state == "failed" and self._tentative_failed(record, endpoint):
            pass
        elif endpoint.state == "failed" and not self.failed.is_set():
            record.state, record.ended = "failed", endpoint.failure_reason or ""
            if self._held:  # never decrypted: the keys came from a peer the answer did not vouch for
                self._emit("srtp.discarded", packets=len(self._held), reason="the peer's certificate was rejected")
                self.stats.before_handshake += len(self._held)
                self._held = []
            self.failed.set()
            self._emit(
                "dtls.failed",
                reason=endpoint.failure_reason,
                peer_fingerprint=_sha256(endpoint.peer_certificate_der),
            )
            self.teardown(f"DTLS failed: {endpoint.failure_reason}")
            self._changed()

    def _tentative_failed(self, record: AssociationRecord, endpoint: dtls.DtlsEndpoint) -> bool:
        """An association started by a ClientHello before the answer (RFC 5763 §5) failed before any
        a=fingerprint vouched for its peer: anyone may send such a ClientHello, so it fails alone.
        Its state is dropped and the session waits for the next ClientHello, as before the first."""
        if not self.accept_early_client_hello or self.sdp_remote is not None or self.peer_fingerprints is not None:
            return False
        record.state, record.ended = "failed", endpoint.failure_reason or ""
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        self.endpoint, self.role, self.remote, self._evidence = None, None, None, None
        self.srtp_session, self._srtp_association, self._held = None, 0, []  # nothing of it reaches the call
        self.connected.clear()
        self.stats.unexpected_source += 1
        if sum(r.state == "failed" for r in self.associations) >= MAX_SESSIONS_PER_PORT:
            self.accept_early_client_hello = False  # bounded, as forks are: the answer's peer still gets in
        self._emit(
            "dtls.failed_alone",
            reason=f"{endpoint.failure_reason}: an early ClientHello no answer vouches for fails alone",
            peer_fingerprint=_sha256(endpoint.peer_certificate_der),
        )
        return True

    # -- SRTP (RFC 3711 via libsrtp, keys from RFC 5764 §4.2) -------------------------------------

    def _srtp_session(self, endpoint: dtls.DtlsEndpoint) -> srtp.SrtpSession:
        """The association's SRTP keys (with swap-srtp-keys, on purpose, the peer's for ours and the reverse)."""
        keys = endpoint.srtp_keys()
        return srtp.SrtpSession(keys.mirrored() if "swap-srtp-keys" in self.deviations else keys)

    def _srtp_received(self, data: bytes, source: Address, kind: demux.PacketKind) -> None:
        elsewhere = self.remote is not None and source != self.remote
        if elsewhere and not (self.latching and self.srtp_session is not None):
            self.stats.unexpected_source += 1  # no latching: only the SDP address is our peer
            return
        endpoint = self.endpoint
        if (
            self.srtp_session is None
            and endpoint is not None
            and endpoint.state == "connected"
            and not endpoint.fingerprint_verified
        ):
            # the peer is not verified yet (RFC 5763 §7.1 message 6: Alice "can't yet trust the media"):
            # keep the packet, decrypt and play it only once the answer's fingerprint matches
            if len(self._held) < MAX_HELD_SRTP:
                self._held.append((data, source, kind))
                self.srtp_held += 1
                if self.srtp_held == 1:
                    self._emit(
                        "srtp.held",
                        peer=fmt(source),
                        reason="early media before the peer's a=fingerprint is known: held until verified"
                        " (RFC 5763 §7.1 message 6, §6.2)",
                    )
            else:
                self.stats.before_handshake += 1
            return
        if self.srtp_session is None:
            self.stats.before_handshake += 1
            if (
                endpoint is not None
                and endpoint.state == "handshaking"
                and endpoint.peer_certificate_der is not None  # the peer's flight came: keys may be its now
                and not elsewhere
            ):
                self._dtls_output(endpoint.resend_for_peer_media(self._now()), cause="peer-media")
            if self.stats.before_handshake == 1:
                self._emit(
                    "srtp.dropped",
                    peer=fmt(source),
                    reason="SRTP before the handshake completed (RFC 5764 §5.1)",
                )
            return
        is_rtcp = kind == demux.PacketKind.RTCP
        try:
            plain, association = self._unprotect(data, is_rtcp)
        except srtp.SrtpAuthError as error:
            if elsewhere:  # a forgery or replay from elsewhere is not the peer: no latch, not its failure
                self.stats.unexpected_source += 1
                return
            if "replay" in str(error):  # a duplicate, not a forgery: counted apart
                self.stats.srtp_replayed += 1
                return
            if self.renewing:  # the peer may have switched to keys we do not have verified yet
                self.stats.before_handshake += 1
                return
            self.stats.srtp_auth_failed += 1
            self._emit("srtp.auth_failed", peer=fmt(source), reason=str(error))
            return
        if elsewhere:
            self._latch(source, LATCH_ON_SRTP)
        if self.relay_to is not None:
            self.relay_to.relay(plain, is_rtcp)
        record = self.associations[association - 1]
        if is_rtcp:
            self.stats.srtcp_received += 1
            record.srtcp_received += 1
            if record.srtcp_received == 1:
                ssrc = int.from_bytes(plain[4:8], "big") if len(plain) >= 8 else 0
                self._emit(
                    "srtcp.first_received",
                    {"rtcp.ssrc": f"0x{ssrc:08x}", "rtcp.packet_type": str(plain[1]) if len(plain) > 1 else ""},
                    association=association,
                    peer=fmt(source),
                    profile=self.srtp_session.profile,
                )
            return
        self.stats.srtp_received += 1
        record.srtp_received += 1
        if self.stats.srtp_received == 1:
            self.stats.first_srtp_decrypted = time.time()
        if record.srtp_received == 1:  # the first packet under each association's keys
            packet = rtp.RtpPacket.decode(plain)
            self._emit(
                "srtp.first_received",
                {"rtp.ssrc": f"0x{packet.ssrc:08x}"},
                association=association,
                peer=fmt(source),
                profile=self.srtp_session.profile,
            )
            self._changed()

    def _unprotect(self, data: bytes, is_rtcp: bool) -> tuple[bytes, int]:
        """(plaintext, the association whose keys took it): the current keys, else for a while after a
        switch the previous ones (see the class docstring). Raises the current keys' SrtpAuthError."""
        assert self.srtp_session is not None
        try:
            if is_rtcp:
                return self.srtp_session.unprotect_rtcp(data), self._srtp_association
            return self.srtp_session.unprotect(data), self._srtp_association
        except srtp.SrtpAuthError:
            previous = self._previous_rx
            if previous is None:
                raise
            session, association, until = previous
            if self._now() > until:
                self._previous_rx = None
                raise
            try:
                plain = session.unprotect_rtcp(data) if is_rtcp else session.unprotect(data)
            except srtp.SrtpAuthError:
                pass
            else:
                self.stats.received_with_previous_keys += 1
                return plain, association
            raise

    def relay(self, packet: bytes, is_rtcp: bool) -> None:
        """Protect `packet` (RTP or RTCP in the clear, decrypted by another session) with this association's
        keys and send it to our peer: the media box of RFC 5763 §8's man in the middle, which terminates
        DTLS on both sides (pinhole's `mitm` proxy deviation)."""
        if self.srtp_session is None or self.remote is None or self.closed:
            self.stats.relay_dropped += 1
            return
        protect = self.srtp_session.protect_rtcp if is_rtcp else self.srtp_session.protect
        self._send(protect(packet), self.remote)
        self.stats.relayed += 1
        if self.stats.relayed == 1:
            self._emit("srtp.relayed", peer=fmt(self.remote), rtcp=is_rtcp)

    def start_media(self, packets: int, ptime: float = 0.02, *, keep_on: bool = False) -> None:
        """Send `packets` SRTP packets of PCMU silence, `ptime` apart, under the current keys (unless a stream
        is being sent already: an agent that started media early does not start a second one). With
        `keep_on`, go on after them until the session closes, as a call's media does: a peer whose
        handshake completes late (its last flight lost, its timer backed off) still gets some."""
        if self._media_task is None or self._media_task.done():
            self._media_task = self._loop.create_task(self._send_media(packets, ptime, keep_on))

    async def _send_media(self, packets: int, ptime: float, keep_on: bool) -> None:
        """The stream's life: it starts once connected, the clock of its packet time sends it, and this task
        ends when it is done (what RTCP and the agent wait on) or cancelled (teardown)."""
        await self.connected.wait()
        stream = self.stream = rtp.RtpStream(ssrc=int.from_bytes(os.urandom(4), "big"), payload_type=0)
        done: asyncio.Future[None] = self._loop.create_future()
        sent = 0

        def send() -> bool:
            nonlocal sent
            if self.closed or done.done():
                return False
            if sent >= packets and not keep_on:
                done.set_result(None)
                return False
            if not self.connected.is_set():
                return True  # keys being renewed: no packet this tick
            try:
                self._send_packet(stream)
            except Exception as error:  # this stream ends; the clock's other streams go on
                done.set_exception(error)
                return False
            sent += 1
            if sent == packets:  # the stream asked for is out (what the run waits on); a call's goes on
                self._emit("srtp.sent", packets=self.stats.srtp_sent, peer=fmt(self.remote))
            return True

        clock = MediaClock.of(self._loop, ptime)
        try:
            clock.add(self, send)
            if self in clock.senders:  # the first packet went and more are due
                await done
            elif done.done():
                done.result()  # what the first send raised, if it did
        finally:
            clock.remove(self)

    def _send_packet(self, stream: rtp.RtpStream) -> None:
        """One SRTP packet of PCMU silence under the current keys."""
        assert self.srtp_session is not None and self.remote is not None
        packet = stream.next_packet(b"\xff" * 160)
        self._send(self.srtp_session.protect(packet.encode()), self.remote)
        self.stats.srtp_sent += 1
        record = self.associations[self._srtp_association - 1]
        record.srtp_sent += 1
        if self.stats.srtp_sent == 1:
            self.stats.first_srtp_sent = time.time()
        if record.srtp_sent == 1:  # the first packet under each association's keys
            self._emit(
                "srtp.first_sent",
                {"rtp.ssrc": f"0x{packet.ssrc:08x}"},
                association=record.index,
                peer=fmt(self.remote),
                profile=self.srtp_session.profile,
            )

    # -- RTCP on its own component (no rtcp-mux) ---------------------------------------------------

    def start_rtcp(self, source: MediaSession, interval: float = 0.2, minimum: int = 3) -> None:
        """Send RTCP sender reports about `source`'s RTP stream from this session (the RTCP component),
        SRTCP-protected with this association's keys: one every `interval` seconds while `source`
        sends, at least `minimum` in all. RFC 3550 §6.2 would space them 5 s apart; a lab call is
        shorter than that, and the point is to exercise the second association's keys."""
        self._rtcp_task = self._loop.create_task(self._send_rtcp(source, interval, minimum))

    async def _send_rtcp(self, source: MediaSession, interval: float, minimum: int) -> None:
        sent = 0
        while not self.closed:
            await self.connected.wait()
            if source.stream is not None:
                self._send_sender_report(source.stream)
                sent += 1
                if sent >= minimum and source._media_task is not None and source._media_task.done():
                    break
            await asyncio.sleep(interval)
        self._emit("srtcp.sent", packets=self.stats.srtcp_sent, peer=fmt(self.remote))

    def _send_sender_report(self, stream: rtp.RtpStream) -> None:
        """One compound RTCP packet, SR + SDES CNAME (RFC 3550 §6.1), protected as SRTCP (RFC 3711 §3.4)."""
        assert self.srtp_session is not None and self.remote is not None
        report = rtp.sender_report(
            stream.ssrc, rtp.ntp_timestamp(time.time()), stream.timestamp, stream.packets_sent, stream.octets_sent
        )
        compound = report + _sdes_cname(stream.ssrc, f"pinhole-{stream.ssrc:08x}".encode())
        self._send(self.srtp_session.protect_rtcp(compound), self.remote)
        self.stats.srtcp_sent += 1
        record = self.associations[self._srtp_association - 1]
        record.srtcp_sent += 1
        if record.srtcp_sent == 1:
            self._emit(
                "srtcp.first_sent",
                {"rtcp.ssrc": f"0x{stream.ssrc:08x}", "rtcp.packet_type": str(rtp.RTCP_SR)},
                association=record.index,
                peer=fmt(self.remote),
                profile=self.srtp_session.profile,
            )

    # -- teardown ---------------------------------------------------------------------------------

    def teardown(self, reason: str, *, event: str = "media.closed") -> None:
        """Stop the media session at once (RFC 5763 §5 on a fingerprint mismatch; BYE otherwise).

        `event`: the kind of event that reports it (a fallback RTCP port released unused is not a
        closed media session: `media.released`)."""
        if self.closed:
            return
        if self.endpoint is not None and self.endpoint.state == "connected" and self.remote is not None:
            for datagram in self.endpoint.close(self._now()):
                self._send(datagram, self.remote)
        if self.endpoint is not None:
            self.endpoint.release()  # nothing drives it any more; an agent keeps ended calls to answer for them
        self._held.clear()
        if self.associations and self.associations[-1].state in ("handshaking", "connected"):
            self.associations[-1].state, self.associations[-1].ended = "closed", reason
        self.closed = True
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        self._stun_client.close(f"media session closed: {reason}")
        for task in (self._media_task, self._rtcp_task):
            if task is not None:
                task.cancel()
        self._emit(
            event,
            reason=reason,
            srtp_sent=self.stats.srtp_sent,
            srtp_received=self.stats.srtp_received,
            srtp_auth_failed=self.stats.srtp_auth_failed,
            srtcp_sent=self.stats.srtcp_sent,
            srtcp_received=self.stats.srtcp_received,
            malformed=self.stats.malformed,
            associations=self.association,
        )
        if self.transport is not None and all(session.closed for session in self.socket_sessions):
            self.transport.close()  # the last session on the socket (forks share it)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


def _sdes_cname(ssrc: int, cname: bytes) -> bytes:
    """An RTCP SDES packet with one chunk, CNAME only (RFC 3550 §6.5), padded to 32 bits."""
    chunk = ssrc.to_bytes(4, "big") + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return bytes([(rtp.RTP_VERSION << 6) | 1, 202]) + (len(chunk) // 4).to_bytes(2, "big") + chunk


def _sha256(der: bytes | None) -> str:
    return dtls.format_fingerprint(dtls.certificate_digest(der)) if der else ""
