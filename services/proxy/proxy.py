"""A transaction-stateful SIP proxy (RFC 3261 §16) for pinhole's call path.

Each request is validated (§16.3), its Route header preprocessed (§16.4), a next hop chosen
from a static route table (§16.5), and a copy forwarded with Max-Forwards decremented, a
Record-Route (so the ACK and BYE come through here too) and this proxy's Via (§16.6) over a
client transaction. Responses come back on that transaction, lose our Via and go upstream
through the server transaction (§16.7), i.e. to the received/rport of the upstream Via: that
is what gets the 200 OK back through Alice's NAT (RFC 3581). The ACK for a 2xx is forwarded
statelessly (§16.11); the ACK for a non-2xx is absorbed by the server transaction. CANCEL is
answered here and re-issued downstream (§16.10).

Forking (§16.6-16.7, RFC 5763 §6.3): a route with several next hops forks an INVITE that is not
in a dialog in parallel, one client transaction and branch per target, all under one response
context. Every 1xx but 100 and every 2xx goes upstream as it arrives (several 2xx make several
dialogs at the caller); the best final non-2xx (§16.7 step 6) goes upstream only once every
branch has ended without a 2xx; once a 2xx or a 6xx has arrived, the branches still pending are
CANCELled (§16.7 steps 5 and 10; a branch with no provisional response yet gets its CANCEL when
one comes, §9.1). Each branch is its own `sip.forward` event (`fork` = its index of `forks`).

Every decision is reported through ``on_event(kind, attributes)`` and counted in ``stats``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pinhole.address import Address
from pinhole.events import EventLog
from pinhole.semconv import SIP_BRANCH
from pinhole.sip.message import (
    MAGIC_COOKIE,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    make_cancel,
    make_response,
    parse_name_addr,
)
from pinhole.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    SipTimeout,
    SipTransactionError,
)
from pinhole.sip.transport import SipEndpoint, response_destination
from services.proxy.mitm import MediaInTheMiddle

__all__ = ["Route", "StatefulProxy"]

EventSink = Callable[[str, dict[str, object]], None]

DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
"""Requests that may create a dialog, on which the proxy Record-Routes (§16.6 step 4)."""


@dataclass(frozen=True)
class Route:
    """Static routing: requests for ``user@domain`` (any user when None) go to ``next_hop``; an
    INVITE outside a dialog is forked to ``next_hop`` and every ``fork_to`` (see the module docstring)."""

    domain: str
    next_hop: Address
    user: str | None = None
    fork_to: tuple[Address, ...] = ()

    @property
    def targets(self) -> tuple[Address, ...]:
        return (self.next_hop, *self.fork_to)

    def matches(self, uri: SipUri) -> bool:
        if uri.host.lower() != self.domain.lower():
            return False
        return self.user is None or uri.user == self.user


class _Reject(Exception):
    """A request cannot be forwarded: answer it with this status (§16.3, §16.5)."""

    def __init__(self, status: int, reason: str | None = None, extra: dict[str, str] | None = None) -> None:
        super().__init__(reason or str(status))
        self.status = status
        self.reason = reason
        self.extra = extra or {}


@dataclass
class _Branch:
    """One target of a forwarded request: its client transaction (§16.6) and how it ended."""

    client: ClientTransaction
    index: int
    cancel_requested: bool = False  # CANCEL it once it has a provisional response (§9.1)
    cancel_sent: bool = False
    final: int = 0  # status of its final response (408 when Timer B fired); 0 while pending

    @property
    def pending(self) -> bool:
        return self.client.state.value in ("calling", "proceeding")


@dataclass
class _Forwarded:
    """The response context (§16.7) of one forwarded request: the upstream server transaction and
    one branch per target (a single branch unless the request was forked)."""

    server: ServerTransaction
    branches: list[_Branch]
    best: Response | None = None  # the best final non-2xx so far (§16.7 step 6)
    two_xx: bool = False  # a 2xx went upstream


def _via_branch(client: ClientTransaction) -> dict[str, object]:
    """`sip.branch` of a request this proxy sent: the branch of the Via it put on top (§16.6 step 8), which
    names its client transaction (§17.1.3), as the same message's sip.send event names it."""
    return {SIP_BRANCH: client.key[0]}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_host(a: str, b: str) -> bool:
    if _is_ip(a) and _is_ip(b):
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    return a.lower() == b.lower()


class StatefulProxy:
    """Stateful proxy bound to a :class:`SipEndpoint` (it takes over ``on_request``/``on_response``)."""

    supported_extensions: frozenset[str] = frozenset()
    """Option tags accepted in Proxy-Require (§16.3 step 5): none."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        *,
        name: str,
        record_route: bool = True,
        routes: list[Route],
        on_event: EventSink | None = None,
        media_events: EventLog | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.media_events = media_events or EventLog(name)  # the mitm deviation's media box reports here
        self.mitm: MediaInTheMiddle | None = None
        self.name = name
        self.record_route = record_route
        self.deviations: frozenset[str] = frozenset()  # pinhole.deviations: misbehaviour on purpose, by name
        self.routes = list(routes)
        self.on_event = on_event
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests", "forwarded", "acks_forwarded", "responses_forwarded", "rejected",
             "cancels", "timeouts", "stray_responses", "dropped"), 0,
        )  # fmt: skip
        self._pending: dict[ServerTransaction, _Forwarded] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        endpoint.on_request = self.handle
        endpoint.on_response = self.handle_stray_response

    # -- identity ------------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        return self.endpoint.advertised_address

    @property
    def record_route_value(self) -> str:
        host, port = self.address
        return f"<sip:{host}:{port};lr>"

    def _is_own_uri(self, uri: object) -> bool:
        """Whether a URI names this proxy itself (no user part)."""
        return isinstance(uri, SipUri) and uri.user is None and self._is_own_host(uri)

    def _is_own_host(self, uri: SipUri) -> bool:
        """Whether a URI's host and port are this proxy's (its advertised or bound address, port 5060 by default)."""
        host, port = uri.hostport
        return any(
            _same_host(host, own_host) and port == own_port
            for own_host, own_port in (self.address, self.endpoint.local_address)
        )

    def _branch(self, request: Request, fork: int = 0) -> str:
        """§16.6 step 8 / §16.11: the same request always gets the same branch.

        The first part identifies the upstream transaction (its top Via) and, when forked, the
        fork's index (§16.6: each target its own branch); the part after the dot hashes what
        routing depends on; a Via of ours with that second part means a loop (§16.3).
        """
        via = request.top_via
        method = "ACK" if request.method == "ACK" else ""
        fork_part = f"|fork{fork}" if fork else ""
        txn = hashlib.sha256(f"{self.name}|{via.branch}|{via.host}:{via.port}|{method}{fork_part}".encode()).hexdigest()
        return f"{MAGIC_COOKIE}{txn[:16]}.{self._loop_hash(request)}"

    @staticmethod
    def _loop_hash(request: Request) -> str:
        fields = (request.uri, request.from_.tag, request.to.tag, request.call_id, request.cseq.number)
        return hashlib.sha256("|".join(str(f) for f in fields).encode()).hexdigest()[:10]

    # -- events --------------------------------------------------------------------------------

    def _emit(self, kind: str, message: Request | Response, **attributes: object) -> None:
        if self.on_event is None:
            return
        try:
            call_id = message.call_id
        except SipParseError:
            call_id = ""
        self.on_event(kind, {"proxy": self.name, "call_id": call_id, **attributes})

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- requests ------------------------------------------------------------------------------

    def handle(self, txn: ServerTransaction) -> None:
        """Entry point from the endpoint for every new server transaction and every 2xx ACK."""
        request = txn.request
        self.stats["requests"] += 1
        if txn.stateless:
            self._forward_ack(request)
        elif request.method == "CANCEL":
            self._handle_cancel(txn)
        else:
            try:
                self._forward(txn)
            except _Reject as reject:
                self._reject(txn, reject)

    def _validate(self, request: Request) -> None:
        """§16.3 request validation (step 1, syntax, was done by the parser)."""
        if not isinstance(request.request_uri, SipUri):
            raise _Reject(416, f"Unsupported URI Scheme {request.uri.partition(':')[0]}")
        if request.max_forwards == 0:
            raise _Reject(483)
        loop = f".{self._loop_hash(request)}"
        for via in request.vias:
            if via.sent_by == self.address and (via.branch or "").endswith(loop):
                raise _Reject(482)
        required = [tag.strip() for value in request.headers.get_all("Proxy-Require") for tag in value.split(",")]
        unsupported = [tag for tag in required if tag and tag not in self.supported_extensions]
        if unsupported:
            raise _Reject(420, None, {"Unsupported": ", ".join(unsupported)})

    @staticmethod
    def _top_route(request: Request) -> NameAddr | None:
        """The top Route alone: routing (§16.4, §16.5) reads no other, and a request may carry thousands."""
        value = request.headers.get("Route")
        return None if value is None else parse_name_addr(value, "Route")

    def _preprocess_route(self, request: Request) -> None:
        """§16.4: undo a strict router's rewrite, then drop the top Route if it names this proxy."""
        values = request.headers.get_all("Route")
        if values and self._is_own_uri(request.request_uri):
            request.uri = str(parse_name_addr(values[-1], "Route").uri)
            request.headers.remove_all("Route")
            for value in values[:-1]:
                request.headers.add("Route", value)
        top = self._top_route(request)
        if top is not None and self._is_own_uri(top.uri):
            request.headers.remove_first("Route")
        self._retarget(request)

    def _retarget(self, request: Request) -> None:
        """§16.5: a proxy is responsible for its own address, so `user@<this proxy>` is looked up among the users
        it routes, and the Request-URI becomes that user's in its domain (a user it does not know: 404, never a
        loop through itself)."""
        target = request.request_uri
        if (
            "Route" in request.headers
            or not isinstance(target, SipUri)
            or target.user is None
            or not self._is_own_host(target)
        ):
            return
        route = next((r for r in self.routes if r.user == target.user), None)
        if route is not None:
            request.uri = f"sip:{target.user}@{route.domain}"

    def _targets(self, request: Request) -> tuple[Address, ...]:
        """§16.5 / §16.6 step 7: the top Route if any, else the route table (every fork target of a
        forking route for an INVITE outside a dialog), else an address-literal target."""
        top = self._top_route(request)
        if top is not None:
            uri = top.uri
            if not isinstance(uri, SipUri):
                raise _Reject(416, f"Unsupported URI Scheme in Route {uri}")
            return (uri.hostport,)
        target = request.request_uri
        assert isinstance(target, SipUri)
        for route in self.routes:
            if route.matches(target):
                forks = request.method == "INVITE" and request.to.tag is None
                return route.targets if forks else (route.next_hop,)
        if self._is_own_uri(target):
            raise _Reject(404, "Not Found: Request-URI is this proxy")
        if self._is_own_host(target):  # a user it does not know at its own address: never forwarded to itself
            raise _Reject(404, f"Not Found: no user {target.user} at this proxy")
        if _is_ip(target.host):
            return (target.hostport,)  # not a domain of ours: the Request-URI is the target (§16.5)
        raise _Reject(404, f"Not Found: no route for {target.user + '@' if target.user else ''}{target.host}")

    def _prepare(self, request: Request) -> tuple[Request, Address]:
        """Copy, route-preprocess, pick the next hop, decrement Max-Forwards, add our Via."""
        ((outgoing, next_hop),) = self._prepare_forks(request, single=True)
        return outgoing, next_hop

    def _prepare_forks(self, request: Request, *, single: bool = False) -> list[tuple[Request, Address]]:
        """One copy per target (§16.6 step 1: a copy for each), route-preprocessed, Max-Forwards
        decremented, with our Via and each its own branch; `single`: the first target only."""
        routed = request.copy()
        self._preprocess_route(routed)
        targets = self._targets(routed)[:1] if single else self._targets(routed)
        max_forwards = request.max_forwards
        if "proxy-keep-max-forwards" not in self.deviations:  # the deviation leaves it as it came
            routed.headers.set("Max-Forwards", str(69 if max_forwards is None else max_forwards - 1))
        self._deviate_body(routed)
        self._man_in_the_middle(routed)
        copies = []
        for fork, next_hop in enumerate(targets):
            outgoing = routed.copy()
            outgoing.headers.insert_first("Via", self.endpoint.make_via(self._branch(request, fork)))
            copies.append((outgoing, next_hop))
        return copies

    def _forward(self, txn: ServerTransaction) -> None:
        request = txn.request
        self._validate(request)
        if request.method == "OPTIONS" and self._is_own_uri(request.request_uri) and "Route" not in request.headers:
            txn.respond(make_response(request, 200))  # a ping of the proxy itself
            return
        copies = self._prepare_forks(request)
        if request.method == "INVITE":
            txn.respond(make_response(request, 100))  # §16.2: stop upstream retransmissions now
        forwarded = _Forwarded(txn, [])
        self._pending[txn] = forwarded
        for index, (outgoing, next_hop) in enumerate(copies):
            record_route = self.record_route and "proxy-no-record-route" not in self.deviations
            if record_route and request.method in DIALOG_CREATING and request.to.tag is None:
                outgoing.headers.insert_first("Record-Route", self.record_route_value)
            client = self.endpoint.send_request(outgoing, next_hop, add_via=False)
            branch = _Branch(client, index)
            forwarded.branches.append(branch)
            self._spawn(self._relay_responses(forwarded, branch))
            self.stats["forwarded"] += 1
            self._emit(
                "sip.forward",
                request,
                method=request.method,
                next_hop=f"{next_hop[0]}:{next_hop[1]}",
                **_via_branch(client),
                max_forwards=outgoing.headers.get("Max-Forwards"),
                record_route=outgoing.headers.get("Record-Route") if request.method in DIALOG_CREATING else None,
                **({"fork": index, "forks": len(copies)} if len(copies) > 1 else {}),
            )

    def _reject(self, txn: ServerTransaction, reject: _Reject) -> None:
        response = make_response(txn.request, reject.status, reject.reason)
        for name, value in reject.extra.items():
            response.headers.add(name, value)
        txn.respond(response)
        self.stats["rejected"] += 1
        self._emit("sip.reject", txn.request, method=txn.request.method, status=reject.status,
                   reason=response.reason)  # fmt: skip

    def _forward_ack(self, ack: Request) -> None:
        """§16.11 / §13.2.2.4: the ACK for a 2xx is its own transaction; forward it statelessly."""
        try:
            if ack.max_forwards == 0:
                raise _Reject(483)
            outgoing, next_hop = self._prepare(ack)
        except _Reject as reject:
            self.stats["dropped"] += 1
            self._emit("sip.drop", ack, method="ACK", status=reject.status, reason=str(reject))
            return
        self.endpoint.send_stateless(outgoing, next_hop)
        self.stats["acks_forwarded"] += 1
        self._emit("sip.forward", ack, method="ACK", next_hop=f"{next_hop[0]}:{next_hop[1]}", stateless=True)

    # -- CANCEL (§16.10) -----------------------------------------------------------------------

    def _handle_cancel(self, txn: ServerTransaction) -> None:
        invite = self.endpoint.matching_invite(txn.request)
        forwarded = self._pending.get(invite) if invite is not None else None
        if forwarded is None:
            txn.respond(make_response(txn.request, 481))
            self.stats["rejected"] += 1
            self._emit("sip.reject", txn.request, method="CANCEL", status=481, reason="no matching INVITE")
            return
        txn.respond(make_response(txn.request, 200))
        self.stats["cancels"] += 1
        self._emit("sip.cancel", txn.request, pending=not forwarded.server.final_sent)
        if forwarded.server.final_sent:
            return
        self._cancel_pending(forwarded)

    def _cancel_pending(self, forwarded: _Forwarded, skip: _Branch | None = None) -> None:
        """CANCEL every pending branch (but `skip`): now if it had a provisional response, else once
        it has one (§9.1)."""
        for branch in forwarded.branches:
            if branch is not skip and branch.pending:
                branch.cancel_requested = True
                if branch.client.provisional_received:
                    self._send_cancel(forwarded, branch)

    def _send_cancel(self, forwarded: _Forwarded, branch: _Branch) -> None:
        if branch.cancel_sent or not branch.pending:
            return
        branch.cancel_sent = True
        client = branch.client
        cancel = make_cancel(client.request)
        self.endpoint.send_request(cancel, client.destination, add_via=False)
        self._emit("sip.forward", cancel, method="CANCEL", next_hop=f"{client.destination[0]}:{client.destination[1]}",
                   **_via_branch(client), **self._fork_attributes(forwarded, branch))  # fmt: skip

    # -- responses (§16.7) ---------------------------------------------------------------------

    async def _relay_responses(self, forwarded: _Forwarded, branch: _Branch) -> None:
        server = forwarded.server
        try:
            async for response in branch.client.responses():
                self._forward_response(forwarded, response, branch)
        except SipTimeout:
            self.stats["timeouts"] += 1
            self._emit("sip.timeout", server.request, method=server.method, **_via_branch(branch.client))
            # §16.7 step 6 / §16.8: a branch that timed out counts as a 408 from it
            self._branch_final(forwarded, branch, make_response(server.request, 408))
        except SipTransactionError:
            pass
        finally:
            if all(b.client.terminated for b in forwarded.branches) and self._pending.get(server) is forwarded:
                del self._pending[server]

    def _forward_response(self, forwarded: _Forwarded, response: Response, branch: _Branch) -> None:
        code = response.status_code
        if code < 200 and branch.cancel_requested:
            self._send_cancel(forwarded, branch)
        if code == 100:
            return  # §16.7 step 5: a 100 Trying is never forwarded
        if 200 <= code < 300:
            self._fork_ended(forwarded, branch, code)
            forwarded.two_xx = True
            self._cancel_pending(forwarded, skip=branch)  # §16.7 step 10
        elif code >= 300:
            self._branch_final(forwarded, branch, response)
            return
        self._send_upstream(forwarded, response, branch)

    def _fork_ended(self, forwarded: _Forwarded, branch: _Branch, code: int) -> None:
        """Record a branch's first final response; a forked one says so in a `sip.fork_final` event."""
        if branch.final:
            return
        branch.final = code
        if len(forwarded.branches) > 1:
            self._emit("sip.fork_final", forwarded.server.request, status=code, **_via_branch(branch.client),
                       next_hop=f"{branch.client.destination[0]}:{branch.client.destination[1]}",
                       **self._fork_attributes(forwarded, branch))  # fmt: skip

    @staticmethod
    def _fork_attributes(forwarded: _Forwarded, branch: _Branch) -> dict[str, object]:
        """`fork` (the branch's index) and `forks` on the events of a forked request; none otherwise."""
        return {"fork": branch.index, "forks": len(forwarded.branches)} if len(forwarded.branches) > 1 else {}

    def _branch_final(self, forwarded: _Forwarded, branch: _Branch, response: Response) -> None:
        """A branch ended with a non-2xx (§16.7 step 6): keep the best; send it upstream only when
        every branch has ended and none with a 2xx (step 7)."""
        code = response.status_code
        self._fork_ended(forwarded, branch, code)
        best = forwarded.best
        if best is None or _better(code, best.status_code):
            forwarded.best = response
        if code >= 600:
            self._cancel_pending(forwarded, skip=branch)  # §16.7 step 5
        if forwarded.two_xx or any(b.final == 0 for b in forwarded.branches):
            return
        chosen = forwarded.best
        assert chosen is not None
        if chosen.vias and chosen.top_via.sent_by == self.address:
            self._send_upstream(forwarded, chosen, branch)
        elif not forwarded.server.final_sent and forwarded.server.can_respond(chosen.status_code):
            self._man_in_the_middle(chosen)  # the mitm deviation's box closes: no dialog came
            forwarded.server.respond(chosen)  # our own 408 for a branch that timed out

    def _send_upstream(self, forwarded: _Forwarded, response: Response, branch: _Branch) -> None:
        code = response.status_code
        server = forwarded.server
        if not server.can_respond(code) or (code >= 300 and server.final_sent):
            self._emit("sip.drop", response, status=code, reason=f"server transaction {server.state.value}")
            self.stats["dropped"] += 1
            return
        upstream = response.copy()
        upstream.headers.remove_first("Via")  # §16.7 step 3: our own Via
        if not upstream.headers.get_all("Via"):
            return  # it was for us (cannot happen for a forwarded request)
        self._deviate_body(upstream)
        self._man_in_the_middle(upstream)
        server.respond(upstream)
        self.stats["responses_forwarded"] += 1
        destination = server.response_destination()
        self._emit("sip.response", response, status=code, method=response.cseq.method,
                   to=f"{destination[0]}:{destination[1]}", **self._fork_attributes(forwarded, branch))  # fmt: skip

    def handle_stray_response(self, response: Response, source: Address) -> None:
        """§16.7: a response with no transaction (a late 2xx retransmission) is forwarded statelessly."""
        self.stats["stray_responses"] += 1
        vias = response.vias
        if len(vias) < 2 or vias[0].sent_by != self.address:
            self.stats["dropped"] += 1
            self._emit("sip.drop", response, status=response.status_code, reason="stray response not via us")
            return
        upstream = response.copy()
        upstream.headers.remove_first("Via")
        self._deviate_body(upstream)  # a late 2xx retransmission carries what the first one did
        self._man_in_the_middle(upstream)
        destination = response_destination(vias[1])
        self.endpoint.send_stateless(upstream, destination)
        self.stats["responses_forwarded"] += 1
        self._emit("sip.response", response, status=response.status_code, method=response.cseq.method,
                   to=f"{destination[0]}:{destination[1]}", stateless=True)  # fmt: skip

    def _man_in_the_middle(self, message: Request | Response) -> None:
        """The mitm deviation (RFC 5763 §8's attack): offers and answers go through our media box."""
        if "mitm" not in self.deviations:
            if self.mitm is not None:
                self.mitm.close()
                self.mitm = None
            return
        if self.mitm is None:
            self.mitm = MediaInTheMiddle(self.address[0], self.media_events, self.endpoint.timers.t1)
        call_id = message.headers.get("Call-ID") or ""
        if isinstance(message, Request) and message.method == "BYE":
            self.mitm.end(call_id, "BYE")
        elif isinstance(message, Response) and message.status_code >= 300 and message.cseq.method == "INVITE":
            self.mitm.end(call_id, f"INVITE answered {message.status_code}")  # no dialog: the box closes
        elif not message.body:
            return
        elif isinstance(message, Request) and message.method == "INVITE" and message.to.tag is None:
            message.body = self.mitm.offer(call_id, message.body, message.cseq.number)
        elif isinstance(message, Response) and 200 <= message.status_code < 300 and message.cseq.method == "INVITE":
            answered = self.mitm.answer(call_id, message.body, message.cseq.number, message.to.tag or "")
            message.body = answered  # Content-Length follows on encoding (§20.14)

    def _deviate_body(self, message: Request | Response) -> None:
        """proxy-rewrite-sdp: every a=fingerprint of the body replaced with one of no certificate at all, the
        signalling half of RFC 5763 §8's man in the middle (RFC 3261 §16.6 step 1 forbids touching the body)."""
        if "proxy-rewrite-sdp" not in self.deviations or b"a=fingerprint:" not in message.body:
            return
        lines = message.body.split(b"\r\n")
        for index, line in enumerate(lines):
            if line.startswith(b"a=fingerprint:"):
                hash_function = line[len(b"a=fingerprint:") :].split(b" ")[0]
                digest = hashlib.new(hash_function.decode().replace("-", ""), os.urandom(16)).digest()
                lines[index] = b"a=fingerprint:" + hash_function + b" " + b":".join(b"%02X" % b for b in digest)
        message.body = b"\r\n".join(lines)
        self._emit("sip.body_rewritten", message, reason="deviation proxy-rewrite-sdp: a=fingerprint replaced")

    async def close(self) -> None:
        """Stop relaying (the endpoint is closed by its owner)."""
        if self.mitm is not None:
            self.mitm.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _better(code: int, than: int) -> bool:
    """§16.7 step 6: a 6xx beats everything, else the lower response class wins (first one on a tie)."""
    if (than >= 600) != (code >= 600):
        return code >= 600
    return code // 100 < than // 100
