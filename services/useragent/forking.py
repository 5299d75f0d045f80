"""Forking (RFC 5763 §6.3): the dialogs our INVITE makes (Fork), the association each answer gets on the
call's one media port, and how a fork ends alone.

As the offerer, every 2xx with a new To tag is a dialog of its own: it is ACKed (RFC 3261 §13.2.2.4),
its answer read, and its association made on the call's ONE media port (pinhole.media: one session per
answerer on the socket, demultiplexed by the answerer's transport address). Each fork's association is
matched to its answer by the peer certificate's hash against the answer's a=fingerprint: a session
whose handshake already completed tentatively (its ClientHello came before the answer) is claimed by
the answer its certificate matches; otherwise the session at the answer's address (a new one for a new
address) checks the answerer's certificate against that answer. As passive side Alice sends the §6.7.2
check to each answer's address, and SRTP runs both ways on each fork. A fork whose association fails,
or that Bob ends with BYE, ends alone (its dialog gets a BYE); the call fails only when no fork is
left. HangUp sends BYE on every confirmed dialog. Forking needs rtcp-mux (an answer that declines it
fails its fork, beyond the first) and is not offered to a re-INVITE (a forked call cannot be
modified). A call that does not fork runs exactly as without this: its one dialog is `dialog`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from pinhole import dtls, sdp
from pinhole.address import Address, fmt
from pinhole.media import MediaSession
from pinhole.sip import Dialog, Response
from services.useragent.call import Call, CallState
from services.useragent.media import Media
from services.useragent.offer_answer import offerer_role, peer_fingerprints


@dataclass
class Fork:
    """One dialog of our INVITE (RFC 3261 §13.2.2.4: each 2xx with a new To tag) and its media
    (RFC 5763 §6.3: its own answer, its own association on the call's one media port)."""

    tag: str  # the answerer's To tag: the dialog's remote tag, named in the fork's events
    dialog: Dialog
    state: CallState = CallState.ESTABLISHED  # established, failed, terminated
    reason: str = ""
    media: MediaSession | None = None
    remote_media: Address | None = None  # the answer's media address
    answer_fingerprints: list[tuple[str, bytes]] = field(default_factory=list)


class Forking(Media):
    """Gives each fork of an outgoing call its association, and ends a fork alone when it fails."""

    def _media_changed(self, call: Call, media: MediaSession) -> None:
        if media.failed.is_set() and call.state not in (CallState.FAILED, CallState.TERMINATED):
            reason = media.endpoint.failure_reason if media.endpoint else "media failed"
            fork = call.fork_of(media)
            if fork is None and media is not call.media and media is not call.rtcp:
                return  # an association no answer claimed (RFC 5763 §6.3): it fails alone, in its events
            others = [f for f in call.forks if f.state == CallState.ESTABLISHED and f is not fork]
            if fork is not None and (others or self._fork_pending(call)):
                # RFC 5763 §6.3: a fork whose association fails fails alone
                asyncio.get_running_loop().create_task(
                    self._fork_failed(call, fork, f"media session torn down: {reason}")
                )
                return
            if fork is not None:
                fork.state, fork.reason = CallState.FAILED, f"media session torn down: {reason}"
            self._fail(call, f"media session torn down: {reason}")
            dialog = fork.dialog if fork is not None else call.dialog
            if dialog is not None:
                self._bye_aside(call, dialog)

    async def _answered_fork(self, call: Call, fork: Fork, response: Response) -> None:
        """Another 2xx, a new To tag: another dialog with its own answer and its own association on
        our one media port (RFC 5763 §6.3). It fails alone; see the module docstring."""
        self.counters["forks"] += 1
        self.events.emit(
            "call.fork", call.call_id, fork=fork.tag, forks=len(call.forks), remote_target=fork.dialog.remote_target
        )
        if call.state in (CallState.TERMINATED, CallState.FAILED):  # the call is over: acknowledge, then end it
            await self._fork_failed(call, fork, f"the call is {call.state} already")
            return
        try:
            answer = sdp.read_answer(sdp.parse(response.body), call.offer_media)
            if not (answer.rtcp_mux and call.rtcp_mux):
                raise sdp.SdpError("pinhole forks media only with rtcp-mux (RFC 5761): one port, one association")
        except sdp.SdpError as error:
            await self._fork_failed(call, fork, f"bad SDP answer: {error}")
            return
        remote = (answer.address, answer.port)
        fingerprints = peer_fingerprints(answer)
        role = offerer_role(answer.setup)
        session = self._claim_session(call, remote, fingerprints)
        fork.media, fork.remote_media, fork.answer_fingerprints = session, remote, fingerprints
        session.fork_tag = fork.tag
        session.accept_early_client_hello = False
        self.events.emit(
            "media.fork",
            call.call_id,
            fork=fork.tag,
            peer=fmt(remote),
            local=fmt(session.local_address),
            role=role.value,
            answer_fingerprint=str(sdp.select_fingerprints(answer.fingerprints)[0]) if fingerprints else "",
            tentative=session.endpoint is not None,
        )
        if session.endpoint is None:
            session.set_peer_fingerprints(fingerprints)
            session.start_dtls(role, remote)
        elif session.role != role:
            await self._fork_failed(
                call, fork, f"answer a=setup:{answer.setup.value} but a ClientHello already made us the server"
            )
            return
        else:  # its ClientHello came first: the answer's fingerprint now decides (RFC 5763 §5, §6.3)
            session.sdp_remote = remote
            session.set_peer_fingerprints(fingerprints)
        if role == dtls.Role.SERVER:
            self._stun_check(call, session, remote)
        session.start_media(self.config.media_packets, keep_on=True)

    def _claim_session(
        self, call: Call, remote: Address, fingerprints: list[tuple[str, bytes]], *, first: bool = False
    ) -> MediaSession:
        """The media session on our port for an answer (RFC 5763 §6.3): one no fork has claimed whose
        peer certificate (accepted tentatively) matches the answer's a=fingerprint; else, for the first
        answer, the call's session unless it already runs an association with another address (that
        of another fork); else the one at the answer's address; else a new one."""
        assert call.media is not None
        claimed = [f.media for f in call.forks if f.media is not None]
        unclaimed = [s for s in call.media.socket_sessions if not s.closed and all(s is not c for c in claimed)]
        for session in unclaimed:
            der = session.endpoint.peer_certificate_der if session.endpoint is not None else None
            if der is not None and _certificate_matches(der, fingerprints):
                return session
        media = call.media
        if first and (media.endpoint is None or media.remote in (None, remote) or media.latching):
            return media  # the call that does not fork: as it always was
        for session in unclaimed:
            if session.remote == remote:
                return session
        return call.media.opener.fork()

    def _fork_pending(self, call: Call) -> bool:
        """Another answerer's association runs on our port and its 2xx may still come (RFC 5763 §6.3)."""
        if call.media is None or not call.media.opener.accept_forks:
            return False
        claimed = [f.media for f in call.forks if f.media is not None]
        return any(
            not s.closed and s.endpoint is not None and all(s is not c for c in claimed)
            for s in call.media.socket_sessions
        )

    async def _fork_failed(self, call: Call, fork: Fork, reason: str) -> None:
        """One fork ends on its own (RFC 5763 §6.3): its media stops, its dialog gets a BYE."""
        if fork.state != CallState.ESTABLISHED:
            return
        fork.state, fork.reason = CallState.FAILED, reason
        self.counters["forks_failed"] += 1
        self.events.emit("call.fork_failed", call.call_id, fork=fork.tag, reason=reason)
        if fork.media is not None:
            fork.media.teardown(reason)
        self._bye_aside(call, fork.dialog)


def _certificate_matches(der: bytes, fingerprints: list[tuple[str, bytes]]) -> bool:
    """Whether a certificate's hash is one of an answer's a=fingerprint values (RFC 5763 §6.3)."""
    for hash_function, digest in fingerprints:
        with contextlib.suppress(dtls.DtlsError):
            if dtls.certificate_digest(der, hash_function) == digest:
                return True
    return False
