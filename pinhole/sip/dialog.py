"""SIP dialogs (RFC 3261 §12): the state two UAs share after an INVITE is answered.

A dialog fixes what every later request between the same two UAs carries: the Call-ID, both
tags, the CSeq counters, the remote target (the peer's Contact) and the route set (the
Record-Route of the dialog-creating exchange). The route set is why the ACK and the BYE of
pinhole's call go through the proxies that Record-Routed, while responses follow the Via path.
Pure: no sockets, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pinhole.address import Address
from pinhole.sip.message import Headers, Request, Response, SipUri, parse_name_addr, parse_uri

__all__ = ["Dialog", "DialogError"]


TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
"""§12.2.1.1 / RFC 6665: requests that carry a Contact and may change the remote target."""

_NOT_IN_REQUEST_URI = frozenset({"method", "maddr", "ttl", "transport", "lr"})
"""§19.1.1 table 1: URI parameters that may not appear in a Request-URI."""


class DialogError(ValueError):
    """A message cannot create or continue a dialog (no To tag, no Contact, stale CSeq ...)."""


def _uri_destination(uri_text: str) -> Address:
    uri = parse_uri(uri_text)
    if not isinstance(uri, SipUri):
        raise DialogError(f"cannot send to non-SIP URI {uri_text!r}")
    return uri.hostport


@dataclass
class Dialog:
    """Dialog state of §12.1; build it with :meth:`from_uac` or :meth:`from_uas`."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int | None = None
    remote_cseq: int | None = None
    local_contact: str | None = None

    @property
    def id(self) -> tuple[str, str, str]:
        """§12: Call-ID, local tag, remote tag."""
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """§12.1.2: the UAC side, from the request it sent and a 101-2xx response with a To tag.

        The route set is the response's Record-Route in *reverse* order; the remote target is
        the response's Contact.
        """
        remote_tag = response.to.tag
        if remote_tag is None:
            raise DialogError(f"{response.status_code} response has no To tag: no dialog (§12.1.2)")
        local_tag = request.from_.tag
        if local_tag is None:
            raise DialogError("request has no From tag (§8.1.1.3)")
        contacts = response.contacts
        if not contacts:
            raise DialogError(f"{response.status_code} response has no Contact: no remote target (§12.1.2)")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=str(request.from_.uri),
            remote_uri=str(request.to.uri),
            remote_target=str(contacts[0].uri),
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_cseq=request.cseq.number,
            remote_cseq=None,
            local_contact=request.headers.get("Contact"),
        )

    @classmethod
    def from_uas(cls, request: Request, local_tag: str, local_contact: str) -> Dialog:
        """§12.1.1: the UAS side, from the dialog-creating request and the tag it puts in To.

        The route set is the request's Record-Route in order; the remote target its Contact.
        ``local_contact`` is the Contact value (``<sip:...>``) sent in the response.
        """
        remote_tag = request.from_.tag
        if remote_tag is None:
            raise DialogError("request has no From tag (§8.1.1.3)")
        contacts = request.contacts
        if not contacts:
            raise DialogError(f"{request.method} has no Contact: no remote target (§12.1.1)")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=str(request.to.uri),
            remote_uri=str(request.from_.uri),
            remote_target=str(contacts[0].uri),
            route_set=list(request.headers.get_all("Record-Route")),
            local_cseq=None,
            remote_cseq=request.cseq.number,
            local_contact=local_contact,
        )

    def matches(self, request: Request) -> bool:
        """Whether a received request belongs to this dialog (§12.2.2: Call-ID, To tag, From tag)."""
        return (
            request.call_id == self.call_id
            and request.to.tag == self.local_tag
            and request.from_.tag == self.remote_tag
        )

    def _routing(self) -> tuple[str, list[str], Address]:
        """§12.2.1.1: Request-URI, Route values and the next hop (§8.1.2: the first Route, else the target)."""
        if not self.route_set:
            return self.remote_target, [], _uri_destination(self.remote_target)
        first = parse_name_addr(self.route_set[0], "Route")
        if not isinstance(first.uri, SipUri):
            raise DialogError(f"route set entry {self.route_set[0]!r} is not a SIP URI")
        destination = first.uri.hostport
        if first.uri.lr:
            return self.remote_target, list(self.route_set), destination
        # Strict routing (RFC 2543 proxy): the first route becomes the Request-URI without
        # parameters that are not allowed there, and the remote target goes last in Route.
        allowed = {k: v for k, v in first.uri.params.items() if k.lower() not in _NOT_IN_REQUEST_URI}
        strict = SipUri(first.uri.scheme, first.uri.user, first.uri.host, first.uri.port, allowed)
        return str(strict), [*self.route_set[1:], f"<{self.remote_target}>"], destination

    def _build(self, method: str, cseq: int, body: bytes, content_type: str | None) -> tuple[Request, Address]:
        uri, routes, destination = self._routing()
        headers = Headers()
        for route in routes:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{self.local_uri}>;tag={self.local_tag}")
        headers.add("To", f"<{self.remote_uri}>;tag={self.remote_tag}")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        if method in TARGET_REFRESH and self.local_contact:
            headers.add("Contact", self.local_contact)
        if body:
            headers.add("Content-Type", content_type or "application/sdp")
        return Request(method, uri, headers, body), destination

    def create_request(
        self, method: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[Request, Address]:
        """A request within the dialog (§12.2.1.1), without Via (the endpoint adds it).

        Increments the local CSeq (choosing 1 if it was empty). Returns the request and where to
        send it: the first route's host:port if there is a route set, else the remote target's.
        """
        if method in ("ACK", "CANCEL"):
            raise DialogError(f"{method} reuses the CSeq of the request it refers to: use create_ack / make_cancel")
        self.local_cseq = 1 if self.local_cseq is None else self.local_cseq + 1
        return self._build(method, self.local_cseq, body, content_type)

    def create_ack(
        self, invite_cseq: int, body: bytes = b"", content_type: str | None = None
    ) -> tuple[Request, Address]:
        """The ACK for a 2xx (§13.2.2.4): CSeq number of the INVITE, routed like any in-dialog request.

        Send it with ``endpoint.send_stateless(ack, destination)``, which adds a Via with a new
        branch; send it again for every retransmission of the 2xx.
        """
        return self._build("ACK", invite_cseq, body, content_type)

    def receive_request(self, request: Request) -> None:
        """Check and record an in-dialog request (§12.2.2): CSeq must grow; a target refresh moves the target.

        Raises :class:`DialogError` for a CSeq lower than the last one (answer 500).
        """
        number = request.cseq.number
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_cseq is not None and number < self.remote_cseq:
                raise DialogError(f"CSeq {number} is lower than the remote sequence number {self.remote_cseq}")
            self.remote_cseq = number
        if request.method in TARGET_REFRESH and request.contacts:
            self.remote_target = str(request.contacts[0].uri)

    def receive_response(self, response: Response) -> None:
        """A 2xx to a target refresh request moves the remote target (§12.2.1.2)."""
        if 200 <= response.status_code < 300 and response.cseq.method in TARGET_REFRESH and response.contacts:
            self.remote_target = str(response.contacts[0].uri)
