"""What every part of the user agent shares: its configuration, evidence, SIP endpoint and calls, and
the moves any part makes on a call (change its state, fail it, end a dialog on the side).

UserAgent (agent.py) is built from mixins, one per concept (media, forking, offer_answer,
modification, outgoing, incoming), that all build on AgentBase; the attributes are set by
UserAgent.__init__.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pinhole import dtls
from pinhole.address import Address
from pinhole.events import Counters, EventLog
from pinhole.sip import Dialog, SipEndpoint, SipTimeout, SipUri, parse_uri
from services.useragent.call import Call, CallState
from services.useragent.config import AgentConfig, ConfigError
from services.useragent.identity_services import IdentityServices
from services.useragent.sip_reflexive import SipReflexive


class AgentBase:
    """The state the parts of UserAgent share, and the call outcomes they all reach."""

    name: str
    sip_address: Address
    media_ip: str
    events: EventLog
    counters: Counters
    config: AgentConfig
    certificate: dtls.Certificate
    calls: dict[str, Call]
    endpoint: SipEndpoint | None
    sip_reflexive: SipReflexive
    identity: IdentityServices
    _background: set[asyncio.Task[None]]  # BYEs sent on the side, kept until done
    # UserAgent's table of calls: how many are in progress, and remembering (then forgetting) ended ones
    in_progress: Callable[[], int]
    _finished_call: Callable[[Call], None]

    # -- call state and outcomes --------------------------------------------------------------------

    def _set_state(self, call: Call, state: CallState, reason: str = "") -> None:
        """Every change of a call's state: checked by Call.transition, then the call.state event."""
        call.transition(state, reason)
        self.events.emit("call.state", call.call_id, state=state, reason=reason)

    def _fail(self, call: Call, reason: str) -> None:
        """The call failed for `reason`: its events say so, its media stops."""
        self._set_state(call, CallState.FAILED, reason)
        self.events.emit("call.failed", call.call_id, reason=reason)
        self.events.end_call(call.call_id, state=CallState.FAILED, reason=reason)
        for session in call.sessions():
            session.teardown(reason)
        self._finished_call(call)

    def _bye_aside(self, call: Call, dialog: Dialog | None = None) -> None:
        """End a dialog without waiting for its BYE's answer: the INVITE's response loop must go on
        ACKing other forks' 2xx meanwhile (RFC 3261 §13.2.2.4)."""
        task = asyncio.get_running_loop().create_task(self._bye_after_failure(call, dialog))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bye_after_failure(self, call: Call, dialog: Dialog | None = None) -> None:
        dialog = dialog or call.dialog
        assert self.endpoint is not None and dialog is not None
        bye, destination = dialog.create_request("BYE")
        try:
            await self.endpoint.send_request(bye, destination).final_response()
        except SipTimeout:
            pass

    # -- how this UA names itself -------------------------------------------------------------------

    def _user(self) -> str:
        aor = parse_uri(self.config.aor)
        if not isinstance(aor, SipUri):  # configure() takes only a sip: URI
            raise ConfigError(f"aor: expected a sip: URI with a user, got {self.config.aor!r}")
        return aor.user or "-"

    def _contact(self) -> str:
        host, port = self.sip_reflexive.address or self.endpoint.advertised_address  # type: ignore[union-attr]
        return f"<sip:{self._user()}@{host}:{port}>"

    def _deviations(self) -> dict[str, str]:
        """The call span's deviations (pinhole.deviations on the span), when this agent deviates on purpose."""
        names = ",".join(sorted(self.config.deviations))
        return {"deviations": names} if names else {}
