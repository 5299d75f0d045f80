"""What the STUN server answers, and from which of its sockets: sans-IO, so it is testable alone.

RFC 5389 Binding: every Binding request gets XOR-MAPPED-ADDRESS (the request's source) back to
where it came from. With a second address (`alternate`, RFC 5780 §6) the server listens on the
four combinations of its two IPs A1, A2 and two ports P1, P2, adds MAPPED-ADDRESS,
RESPONSE-ORIGIN and OTHER-ADDRESS to every success response, and honours CHANGE-REQUEST by
answering from another socket (Table 1 of §6.1):

    flags              source            OTHER-ADDRESS
    none               Da:Dp             Ca:Cp
    change IP          Ca:Dp             Ca:Cp
    change port        Da:Cp             Ca:Cp
    change IP + port   Ca:Cp             Ca:Cp

(Da:Dp is where the request arrived, Ca/Cp the other IP/port.) Without a second address the
server answers exactly as a plain RFC 5389 server: no OTHER-ADDRESS (§7.4 MUST NOT), and a 420
to CHANGE-REQUEST (§6.1 MUST). RESPONSE-PORT (§7.5, optional) is honoured either way; PADDING is
not supported (420). Malformed datagrams are counted and recorded, never answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from pinhole import stun
from pinhole.address import Address, fmt
from pinhole.events import Counters, EventLog


@dataclass(frozen=True)
class Reply:
    """One datagram to send: from the local socket `origin` to `destination`."""

    data: bytes
    origin: Address
    destination: Address
    message: stun.Message


class Responder:
    """Decides the answer to each datagram; `handle` is the whole server minus the sockets.

    `primary` is A1:P1 (the address clients are told about); `alternate` is A2:P2 or None.
    """

    def __init__(
        self,
        primary: Address,
        alternate: Address | None,
        events: EventLog,
        counters: Counters,
        software: str | None = None,
    ) -> None:
        if alternate is not None and (alternate[0] == primary[0] or alternate[1] == primary[1]):
            raise ValueError(
                f"the alternate address {fmt(alternate)} must differ from {fmt(primary)} in both IP and port "
                "(RFC 5780 §6)"
            )
        self.primary = primary
        self.alternate = alternate
        self.events = events
        self.counters = counters
        self.software = software

    @property
    def sockets(self) -> list[Address]:
        """Every (IP, port) to listen on: A1:P1, then with an alternate A1:P2, A2:P1, A2:P2."""
        if self.alternate is None:
            return [self.primary]
        (a1, p1), (a2, p2) = self.primary, self.alternate
        return [(a1, p1), (a1, p2), (a2, p1), (a2, p2)]

    def drop_alternate(self) -> None:
        """Go on as a single-address server (the alternate sockets could not be opened)."""
        self.alternate = None

    def _other(self, local: Address) -> Address:
        """Ca:Cp for a request received on Da:Dp = `local`."""
        assert self.alternate is not None
        (a1, p1), (a2, p2) = self.primary, self.alternate
        return (a2 if local[0] == a1 else a1, p2 if local[1] == p1 else p1)

    def handle(self, data: bytes, local: Address, peer: Address) -> Reply | None:
        """The reply to `data`, received on our socket `local` from `peer`; None when nothing is sent."""
        self.counters["datagrams_received"] += 1
        try:
            return self._handle(data, local, peer)
        except Exception as error:  # a datagram must never take the server down
            self.counters["malformed"] += 1
            self.events.emit(
                "stun.malformed",
                peer=fmt(peer),
                local=fmt(local),
                reason=f"{type(error).__name__}: {error}",
                size=len(data),
            )
            return None

    def _handle(self, data: bytes, local: Address, peer: Address) -> Reply | None:
        try:
            request = stun.decode(data)
        except stun.StunError as error:
            self.counters["malformed"] += 1
            self.events.emit("stun.malformed", peer=fmt(peer), local=fmt(local), reason=str(error), size=len(data))
            return None
        if request.message_class != stun.MessageClass.REQUEST or request.method != stun.Method.BINDING:
            self.counters["ignored"] += 1
            self.events.emit("stun.ignored", peer=fmt(peer), local=fmt(local), reason="not a Binding request")
            return None
        self.counters["binding_requests"] += 1
        tid = request.transaction_id.hex()
        change = request.change_request
        response_port = request.response_port
        received: dict[str, object] = {"stun.transaction_id": tid, "stun.class": "request"}
        if change is not None:
            self.counters["change_requests"] += 1
            received["stun.change_request"] = str(change)
        if response_port is not None:
            received["stun.response_port"] = response_port
        self.events.emit("stun.recv", peer=fmt(peer), local=fmt(local), attributes=received)

        unknown = list(request.unknown_comprehension_required)
        if change is not None and self.alternate is None:
            unknown.append(stun.AttributeType.CHANGE_REQUEST)  # §6.1: no second address, so 420
        if request.attribute(stun.AttributeType.PADDING) is not None:
            unknown.append(stun.AttributeType.PADDING)
        if unknown:
            return self._error(request, local, peer, 420, "Unknown Attribute", unknown)
        if response_port == 0:
            return self._error(request, local, peer, 400, "RESPONSE-PORT 0 is not a port")

        if self.alternate is None:
            origin, other = local, None
        else:
            other = self._other(local)
            change = change or stun.ChangeRequest()
            origin = (other[0] if change.change_ip else local[0], other[1] if change.change_port else local[1])
        destination = (peer[0], response_port or peer[1])
        response = stun.binding_success(
            request,
            peer,
            software=self.software,
            mapped_address=self.alternate is not None,
            response_origin=origin if self.alternate is not None else None,
            other_address=other,
        )
        self.counters["binding_responses"] += 1
        if origin[0] != local[0]:
            self.counters["responses_changed_ip"] += 1
        if origin[1] != local[1]:
            self.counters["responses_changed_port"] += 1
        attributes: dict[str, object] = {
            "stun.transaction_id": tid,
            "stun.class": "success_response",
            "stun.xor_mapped_address": fmt(peer),
        }
        if self.alternate is not None:
            attributes["stun.response_origin"] = fmt(origin)
            attributes["stun.other_address"] = fmt(other)  # set with an alternate
        self.events.emit("stun.send", peer=fmt(destination), local=fmt(origin), attributes=attributes)
        return Reply(stun.encode(response), origin, destination, response)

    def _error(
        self,
        request: stun.Message,
        local: Address,
        peer: Address,
        code: int,
        reason: str,
        unknown: list[int] | tuple[int, ...] = (),
    ) -> Reply:
        response = stun.binding_error(request, code, reason, unknown_attributes=unknown, software=self.software)
        self.counters["error_responses"] += 1
        attributes: dict[str, object] = {
            "stun.transaction_id": request.transaction_id.hex(),
            "stun.class": "error_response",
            "stun.error_code": code,
            "stun.error_reason": reason,
        }
        if unknown:
            attributes["stun.unknown_attributes"] = ",".join(f"0x{t:04X}" for t in unknown)
        self.events.emit("stun.send", peer=fmt(peer), local=fmt(local), attributes=attributes)
        return Reply(stun.encode(response), local, peer, response)
