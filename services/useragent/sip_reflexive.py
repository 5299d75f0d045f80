"""Our SIP socket's public address, learned with a STUN Binding to the STUN server over that socket:
Contact names it, so that in-dialog requests reach us through the NAT. The SIP endpoint hands over
the STUN it receives on the SIP socket; each request and response is evidence, named after the call
it was made for."""

from __future__ import annotations

from collections.abc import Callable

from pinhole import stun
from pinhole.address import Address, fmt
from pinhole.events import Counters, EventLog


class SipReflexive:
    """STUN on the SIP socket, and the reflexive address it learned (None until then)."""

    def __init__(
        self,
        send: Callable[[bytes, Address], None],
        *,
        local: Address,
        events: EventLog,
        counters: Counters,
        on_malformed: Callable[[bytes, Address, str], None],
    ) -> None:
        self.address: Address | None = None
        self._local = local
        self._events, self._counters, self._on_malformed = events, counters, on_malformed
        self._client = stun.BindingClient(send, on_send=self._sent)
        self._calls: dict[bytes, str] = {}  # transaction id -> the call it was made for

    def receive(self, data: bytes, peer: Address) -> None:
        """A STUN message that arrived on the SIP socket."""
        try:
            message = stun.decode(data)
        except stun.StunError as error:
            self._counters["sip_socket_stun_malformed"] += 1
            self._on_malformed(data, peer, f"STUN: {error}")
            return
        self._events.emit(
            "stun.recv",
            self._calls.pop(message.transaction_id, ""),
            {
                "stun.transaction_id": message.transaction_id.hex(),
                "stun.class": message.message_class.name.lower(),
                "stun.xor_mapped_address": fmt(message.xor_mapped_address),
            },
            peer=fmt(peer),
            local=fmt(self._local),
        )
        self._client.receive(message)

    def _sent(self, tid: bytes, destination: Address, attempt: int, call_id: str) -> None:
        self._calls[tid] = call_id
        self._events.emit(
            "stun.send",
            call_id,
            {"stun.transaction_id": tid.hex(), "stun.class": "request"},
            peer=fmt(destination),
            local=fmt(self._local),
            purpose="sip-reflexive-address",
            authenticated=False,
            attempt=attempt,
        )

    async def learn(self, server: Address, rto: float, call_id: str) -> Address:
        """Ask `server` for our SIP socket's public address, for Contact; it is kept in `address`."""
        self._client.rto = rto
        self.address = await self._client.request(server, label=call_id)
        return self.address
