"""A call's media sessions (pinhole.media.MediaSession): opening them, starting SRTP and RTCP, and the
single STUN check of RFC 5763 §6.7.2 from the passive side.

A call has one media session per component: RTP, and without rtcp-mux (RFC 5761) RTCP on its own
socket, each with its own DTLS association (RFC 5764 §4), its own §6.7.2 check from the passive side
and, behind the NAT, its own reflexive address learned from the STUN server. Whoever is passive sends
that check when the peer's SDP arrives and the handshake is not complete.

With `latching` configured (off by default) the media session follows the peer's packets rather than
its SDP address (symmetric RTP; see pinhole.media.MediaSession for what counts as the peer).
"""

from __future__ import annotations

from collections.abc import Callable

from pinhole.address import Address, fmt
from pinhole.media import RTP, MediaSession
from services.useragent.base import AgentBase
from services.useragent.call import Call


class Media(AgentBase):
    """Opens and drives the media sessions of the agent's calls."""

    # forking.Forking: what a media session's failure ends, its fork or the call (RFC 5763 §6.3)
    _media_changed: Callable[[Call, MediaSession], None]

    async def _open_media(self, call: Call, component: int) -> MediaSession:
        session = await MediaSession.open(
            self.media_ip,
            certificate=call.certificate or self.certificate,
            events=self.events,
            call_id=call.call_id,
            timers=self.config.media_timers,
            srtp_profiles=self.config.srtp_profiles,
            on_change=lambda media: self._media_changed(call, media),
            latching=self.config.latching,
            component=component,
            key_log=call.key_log,
            deviations=self.config.deviations,
        )
        if component == RTP:
            call.media = session
        else:
            call.rtcp = session
        return session

    def _media_opened(self, call: Call) -> None:
        assert call.media is not None
        self.events.emit(
            "media.open",
            call.call_id,
            local=fmt(call.media.local_address),
            advertised=fmt(call.advertised),
            component=call.media.component_name,
            rtcp_mux=self.config.rtcp_mux if call.direction == "outgoing" else call.rtcp_mux,
            rtcp_local=fmt(call.rtcp.local_address) if call.rtcp is not None else None,
            rtcp_advertised=fmt(call.advertised_rtcp) if call.rtcp is not None else None,
        )

    def _start_media(self, call: Call) -> None:
        assert call.media is not None
        call.media.start_media(self.config.media_packets, keep_on=True)
        if call.rtcp is not None:
            call.rtcp.start_rtcp(call.media)

    def _stun_checks(self, call: Call) -> None:
        """RFC 5763 §6.7.2: no ICE and the handshake not complete → one unauthenticated check, per
        component (each DTLS flow needs its own pinhole)."""
        for media, sdp_remote in call.components():
            self._stun_check(call, media, sdp_remote)

    def _stun_check(self, call: Call, media: MediaSession, sdp_remote: Address | None) -> None:
        """The §6.7.2 check of one session (one component, or one fork's association)."""
        fork = {"fork": media.fork_tag} if media.fork_tag else {}
        if media.handshake_complete:
            self.events.emit(
                "stun.check_skipped",
                call.call_id,
                {"component": media.component_name, "reason": "handshake already complete", **fork},
            )
            return
        if "no-stun-check" in self.config.deviations:
            self.events.emit(
                "stun.check_skipped",
                call.call_id,
                {"component": media.component_name, "reason": "deviation no-stun-check", **fork},
            )
            return
        destination = media.remote or sdp_remote  # the SDP address, unless latched elsewhere already
        assert destination is not None
        future = media.stun_binding(destination, purpose="connectivity-check")
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # the outcome is in the events
