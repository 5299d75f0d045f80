"""A call as the user agent keeps it: its state (CallState), the transitions a call may make
(TRANSITIONS, applied by Call.transition), and what it holds: its dialog(s), its media sessions and
the record of its offer/answer exchanges.

The states are a StrEnum whose values are the strings gRPC (CallStatus.state, Fork.state) and the
call.state events carry, so a CallState compares, prints and serializes as those strings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from pinhole import dtls, sdp
from pinhole.address import Address
from pinhole.media import MediaSession
from pinhole.sip import ClientTransaction, Dialog, ServerTransaction

if TYPE_CHECKING:
    from services.useragent.forking import Fork
    from services.useragent.modification import Modification
    from services.useragent.offer_answer import Negotiated


class CallStateError(RuntimeError):
    """The call is not in a state where that action makes sense."""


class CallState(StrEnum):
    """Where a call is: its INVITE's progress (RFC 3261 §13), then its outcome. A fork (one dialog of
    a forked call) is established, failed or terminated too."""

    CALLING = "calling"  # our INVITE is out, no 180 yet
    RINGING = "ringing"  # 180 sent or received: not answered yet
    ESTABLISHED = "established"  # a 2xx sent or received: the dialog and its media run
    FAILED = "failed"  # ended by an error: a final response >= 300, a timeout, media that failed...
    TERMINATED = "terminated"  # ended by a BYE, a CANCEL or a local hang-up


# The moves a call makes; Call.transition refuses any other. An outcome is not always final: a late
# response, or a race with a hang-up, moves an ended call on (the rows of FAILED and TERMINATED).
TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.CALLING: frozenset(
        {CallState.RINGING, CallState.ESTABLISHED, CallState.FAILED, CallState.TERMINATED}
    ),  # (an incoming INVITE whose Identity is refused is recorded as calling, then failed)
    CallState.RINGING: frozenset({CallState.ESTABLISHED, CallState.FAILED, CallState.TERMINATED}),
    CallState.ESTABLISHED: frozenset({CallState.FAILED, CallState.TERMINATED}),
    CallState.FAILED: frozenset(
        {
            CallState.FAILED,  # another failure reason (a final response after its media failed)
            CallState.ESTABLISHED,  # the first 2xx after its media failed on an early ClientHello
        }
    ),
    CallState.TERMINATED: frozenset(
        {
            CallState.TERMINATED,  # hung up again
            CallState.FAILED,  # the INVITE's outcome after our CANCEL (Timer B), or a re-INVITE's bad answer
            CallState.ESTABLISHED,  # answer() completing after a hang-up during it
        }
    ),
}


@dataclass
class Call:
    call_id: str
    direction: str
    invite_time: float
    state: CallState = CallState.CALLING
    reason: str = ""
    media: MediaSession | None = None
    dialog: Dialog | None = None
    invite_cseq: int = 1
    advertised: Address | None = None
    remote_media: Address | None = None
    ok_retransmitter: object | None = None
    invite_transaction: ServerTransaction | None = None  # an incoming call not answered yet
    offer: sdp.SessionDescription | None = None
    to_tag: str = ""
    invite_client: ClientTransaction | None = None  # our pending INVITE, for CANCEL
    tampered_fingerprint: bool = False  # our SDP carried a fingerprint that is not ours (a deviation)
    peer_fingerprints: list[tuple[str, bytes]] = field(default_factory=list)
    certificate: dtls.Certificate | None = None  # ours for this call (a re-INVITE may change it)
    rtcp: MediaSession | None = None  # component 2 without rtcp-mux (or the fallback reserved by an offer)
    rtcp_mux: bool = True
    advertised_rtcp: Address | None = None
    remote_rtcp: Address | None = None
    offer_media: sdp.DtlsSrtpMedia | None = None  # our initial offer, to check the answer against
    negotiated: Negotiated | None = None
    sdp_session_id: int = field(default_factory=lambda: int(time.time()))
    sdp_version: int = (
        0  # o= sess-version of our last SDP (starts at the session id); +1 per modification (RFC 3264 §8)
    )
    offer_pending: str = ""  # "sent" or "received" while a re-INVITE offer/answer runs (RFC 3261 §14)
    modifications: list[Modification] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)  # outgoing: every dialog our INVITE made, first first
    key_log: list[str] = field(default_factory=list)  # NSS key log lines of every DTLS association of the call

    def __post_init__(self) -> None:
        self.sdp_version = self.sdp_version or self.sdp_session_id

    def transition(self, state: CallState, reason: str = "") -> None:
        """Move to `state` for `reason`; CallStateError if TRANSITIONS has no such move."""
        allowed = TRANSITIONS[self.state]
        if state not in allowed:
            raise CallStateError(
                f"call {self.call_id} is {self.state}: it cannot become {state}"
                f" (from {self.state}: {', '.join(sorted(allowed))})"
            )
        self.state, self.reason = state, reason

    def sessions(self) -> list[MediaSession]:
        """The call's media sessions, RTP first (every fork's on the RTP socket, RFC 5763 §6.3)."""
        rtp = self.media.socket_sessions if self.media is not None else []
        return [*rtp, *([self.rtcp] if self.rtcp is not None else [])]

    def fork(self, tag: str | None) -> Fork | None:
        return next((f for f in self.forks if f.tag == tag), None)

    def fork_of(self, session: MediaSession) -> Fork | None:
        return next((f for f in self.forks if f.media is session), None)

    def components(self) -> list[tuple[MediaSession, Address | None]]:
        """Each media session with the peer's SDP address for it."""
        out: list[tuple[MediaSession, Address | None]] = []
        if self.media is not None:
            out.append((self.media, self.remote_media))
        if self.rtcp is not None:
            out.append((self.rtcp, self.remote_rtcp))
        return out
