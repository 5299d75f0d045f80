"""services.proxy.proxy: a stateful proxy chain on loopback UDP.

UAC → proxy p1 → proxy p2 → UAS, each a real SipEndpoint on 127.0.0.1 with short timers. The
tests wait on futures (a response, a request arriving), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from pinhole.sip import (
    Dialog,
    Headers,
    Request,
    Response,
    ServerTransaction,
    SipEndpoint,
    SipTimers,
    TwoXXRetransmission,
    make_cancel,
    make_response,
    new_call_id,
    retransmit_2xx,
)
from services.proxy.proxy import Route, StatefulProxy

T = TypeVar("T")
Address = tuple[str, int]
TIMERS = SipTimers(t1=0.02, t2=0.16, t4=0.2)
LOOPBACK = ("127.0.0.1", 0)
BODY = (
    b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 UDP/TLS/RTP/SAVP 0\r\n"
)


def run(coroutine: Awaitable[T], timeout: float = 10.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(main())


@dataclass
class Uas:
    """Bob: answers INVITE with 180 then ``final`` (or holds it for a CANCEL), BYE with 200."""

    final: int | None = 200
    endpoint: SipEndpoint | None = None
    requests: list[Request] = field(default_factory=list)
    arrived: dict[str, asyncio.Future[Request]] = field(default_factory=dict)
    retransmission: TwoXXRetransmission | None = None

    def future(self, method: str) -> asyncio.Future[Request]:
        if method not in self.arrived:
            self.arrived[method] = asyncio.get_running_loop().create_future()
        return self.arrived[method]

    def on_request(self, txn: ServerTransaction) -> None:
        assert self.endpoint is not None
        request = txn.request
        self.requests.append(request)
        if not self.future(request.method).done():
            self.future(request.method).set_result(request)
        if request.method == "INVITE":
            txn.respond(make_response(request, 180, to_tag="bobtag"))
            if self.final == 200:
                ok = make_response(request, 200, to_tag="bobtag")
                ok.headers.add("Contact", f"<sip:bob@127.0.0.1:{self.endpoint.local_address[1]}>")
                ok.body = BODY
                txn.respond(ok)
                self.retransmission = retransmit_2xx(self.endpoint, ok, txn.response_destination(), TIMERS)
            elif self.final is not None:
                txn.respond(make_response(request, self.final, to_tag="bobtag"))
        elif request.method == "ACK" and self.retransmission is not None:
            self.retransmission.ack_received()
        elif request.method == "CANCEL":
            invite = self.endpoint.matching_invite(request)
            txn.respond(make_response(request, 200 if invite else 481))
            if invite is not None and not invite.final_sent:
                invite.respond(make_response(invite.request, 487, to_tag="bobtag"))
        elif not txn.stateless:
            txn.respond(make_response(request, 200))


@dataclass
class Lab:
    uac: SipEndpoint
    p1: StatefulProxy
    p2: StatefulProxy
    uas: Uas
    events: list[tuple[str, dict[str, object]]]

    @property
    def uas_endpoint(self) -> SipEndpoint:
        assert self.uas.endpoint is not None
        return self.uas.endpoint

    def invite(self, uri: str = "sip:bob@b.example", max_forwards: int = 70) -> Request:
        headers = Headers()
        headers.add("Max-Forwards", str(max_forwards))
        headers.add("From", "Alice <sip:alice@a.example>;tag=alicetag")
        headers.add("To", f"<{uri}>")
        headers.add("Call-ID", new_call_id("a.example"))
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", f"<sip:alice@127.0.0.1:{self.uac.local_address[1]}>")
        headers.add("Content-Type", "application/sdp")
        return Request("INVITE", uri, headers, BODY)

    def kinds(self, proxy: str) -> list[str]:
        return [kind for kind, attributes in self.events if attributes["proxy"] == proxy]


@asynccontextmanager
async def lab(
    uas: Uas | None = None,
    *,
    p2_next_hop: Address | None = None,
    timers: SipTimers = TIMERS,
    p1_record_route: bool = True,
) -> AsyncIterator[Lab]:
    uas = uas or Uas()
    events: list[tuple[str, dict[str, object]]] = []
    endpoints: list[SipEndpoint] = []
    proxies: list[StatefulProxy] = []
    try:
        uas.endpoint = await SipEndpoint.create(LOOPBACK, timers=timers, on_request=uas.on_request)
        endpoints.append(uas.endpoint)
        p2e = await SipEndpoint.create(LOOPBACK, timers=timers)
        p1e = await SipEndpoint.create(LOOPBACK, timers=timers)
        uac = await SipEndpoint.create(LOOPBACK, timers=timers)
        endpoints += [p2e, p1e, uac]

        def sink(kind: str, attributes: dict[str, object]) -> None:
            events.append((kind, attributes))

        p2 = StatefulProxy(
            p2e, name="p2", routes=[Route("b.example", p2_next_hop or uas.endpoint.local_address)], on_event=sink
        )
        p1 = StatefulProxy(
            p1e,
            name="p1",
            record_route=p1_record_route,
            routes=[
                Route("b.example", p2e.local_address),
                Route("loop.example", p1e.local_address),
                Route("c.example", p2e.local_address, user="carol"),
            ],
            on_event=sink,
        )
        proxies += [p1, p2]
        yield Lab(uac, p1, p2, uas, events)
    finally:
        for proxy in proxies:
            await proxy.close()
        for endpoint in endpoints:
            endpoint.close()


def address(endpoint: SipEndpoint) -> str:
    host, port = endpoint.local_address
    return f"{host}:{port}"


# -- the call --------------------------------------------------------------------------------------


def test_invite_200_ack_bye_through_two_record_routing_proxies() -> None:
    async def main() -> None:
        async with lab() as t:
            p1, p2, uac, bob = t.p1.endpoint, t.p2.endpoint, t.uac, t.uas_endpoint
            txn = t.uac.send_request(t.invite(), p1.local_address)
            codes = []
            async for response in txn.responses():
                codes.append(response.status_code)
                # Responses come back with only the UAC's own Via, stamped by p1 (RFC 3581).
                (via,) = response.vias
                assert (via.received, via.rport) == ("127.0.0.1", uac.local_address[1])
                if response.status_code == 200:
                    ok = response
                    break
            assert codes == [100, 180, 200]
            assert ok.body == BODY
            assert ok.headers.get_all("Record-Route") == [f"<sip:{address(p2)};lr>", f"<sip:{address(p1)};lr>"]

            invite = await t.uas.future("INVITE")
            assert [f"{v.host}:{v.port}" for v in invite.vias] == [address(p2), address(p1), address(uac)]
            for via, previous_hop in zip(invite.vias, (p2, p1, uac), strict=True):
                assert (via.received, via.rport) == ("127.0.0.1", previous_hop.local_address[1])
            assert invite.vias[0].branch != invite.vias[1].branch
            assert all((v.branch or "").startswith("z9hG4bK") for v in invite.vias)
            assert invite.headers.get_all("Record-Route") == [f"<sip:{address(p2)};lr>", f"<sip:{address(p1)};lr>"]
            assert invite.max_forwards == 68
            assert invite.body == BODY  # byte-identical end to end (RFC 5763 §7.3 message 2)
            assert "Route" not in invite.headers

            # The ACK follows the route set: p1, p2, then the remote target.
            dialog = Dialog.from_uac(txn.request, ok)
            assert dialog.route_set == [f"<sip:{address(p1)};lr>", f"<sip:{address(p2)};lr>"]
            ack, destination = dialog.create_ack(1)
            assert destination == p1.local_address
            t.uac.send_stateless(ack, destination)  # adds a Via: the ACK has none
            ack_at_bob = await t.uas.future("ACK")
            assert [f"{v.host}:{v.port}" for v in ack_at_bob.vias] == [address(p2), address(p1), address(uac)]
            assert "Route" not in ack_at_bob.headers and ack_at_bob.uri == f"sip:bob@{address(bob)}"
            assert t.uas.retransmission is not None and await t.uas.retransmission.wait() is True

            bye, destination = dialog.create_request("BYE")
            final = await t.uac.send_request(bye, destination).final_response()
            assert final.status_code == 200 and final.cseq.method == "BYE"
            bye_at_bob = await t.uas.future("BYE")
            assert len(bye_at_bob.vias) == 3 and "Record-Route" not in bye_at_bob.headers

            for proxy in (t.p1, t.p2):
                assert proxy.stats["forwarded"] == 2  # INVITE, BYE
                assert proxy.stats["acks_forwarded"] == 1
                assert proxy.stats["rejected"] == 0
                assert proxy.stats["responses_forwarded"] >= 3  # 180, 200 (+ retransmissions), BYE 200
            forwards = [a for k, a in t.events if k == "sip.forward" and a["proxy"] == "p1"]
            assert [a["method"] for a in forwards] == ["INVITE", "ACK", "BYE"]
            assert forwards[0]["next_hop"] == address(p2) and forwards[0]["max_forwards"] == "69"
            assert forwards[0]["call_id"] == invite.call_id
            responses = [a for k, a in t.events if k == "sip.response" and a["proxy"] == "p1"]
            assert {a["to"] for a in responses} == {address(uac)}

    run(main())


def test_200_ok_reaches_a_uac_whose_via_names_another_port() -> None:
    """Alice behind a NAT: her Via says one port, her datagrams come from another (RFC 3581)."""

    async def main() -> None:
        decoy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        decoy.bind(LOOPBACK)
        decoy.setblocking(False)
        try:
            async with lab() as t:
                t.uac.advertised_address = decoy.getsockname()
                txn = t.uac.send_request(t.invite(), t.p1.endpoint.local_address)
                final = await txn.final_response()
                assert final.status_code == 200
                assert final.top_via.sent_by == decoy.getsockname()
                assert final.top_via.rport == t.uac.local_address[1]
                with pytest.raises(BlockingIOError):
                    decoy.recv(4096)
        finally:
            decoy.close()

    run(main())


# -- rejections (§16.3, §16.5) -----------------------------------------------------------------------


def test_max_forwards_zero_gets_483_and_one_is_decremented_to_zero() -> None:
    async def main() -> None:
        async with lab() as t:
            final = await t.uac.send_request(t.invite(max_forwards=0), t.p1.endpoint.local_address).final_response()
            assert (final.status_code, final.reason) == (483, "Too Many Hops")
            assert t.p1.stats["rejected"] == 1 and t.p1.stats["forwarded"] == 0
            assert ("sip.reject", "p1", 483) in [(k, a["proxy"], a.get("status")) for k, a in t.events]

            final = await t.uac.send_request(t.invite(max_forwards=1), t.p1.endpoint.local_address).final_response()
            assert final.status_code == 483  # p1 forwarded with 0, p2 refused
            assert t.p1.stats["forwarded"] == 1 and t.p2.stats["rejected"] == 1
            assert t.uas.requests == []

    run(main())


def test_no_route_gets_404_with_a_reason() -> None:
    async def main() -> None:
        async with lab() as t:
            p1 = t.p1.endpoint.local_address
            final = await t.uac.send_request(t.invite("sip:bob@nowhere.example"), p1).final_response()
            assert (final.status_code, final.reason) == (404, "Not Found: no route for bob@nowhere.example")
            # a route limited to one user does not match another
            final = await t.uac.send_request(t.invite("sip:dave@c.example"), p1).final_response()
            assert final.reason == "Not Found: no route for dave@c.example"
            final = await t.uac.send_request(t.invite("tel:+15551234"), p1).final_response()
            assert (final.status_code, final.reason) == (416, "Unsupported URI Scheme tel")

    run(main())


def test_a_user_at_the_proxys_own_address_is_looked_up_not_looped() -> None:
    """RFC 3261 §16.5: `INVITE sip:carol@<p1>` (what a stock SIPp UAC sends) is carol in the domain p1 routes her
    for, and a user p1 does not know gets 404; neither is forwarded to p1 itself (482 before)."""

    async def main() -> None:
        async with lab() as t:
            host, port = t.p1.endpoint.local_address
            final = await t.uac.send_request(t.invite(f"sip:carol@{host}:{port}"), (host, port)).final_response()
            assert t.p1.stats["forwarded"] == 1 and t.p1.stats["rejected"] == 0  # to p2, as sip:carol@c.example
            assert final.status_code == 404 and final.reason == "Not Found: no route for carol@c.example"  # p2's
            final = await t.uac.send_request(t.invite(f"sip:dave@{host}:{port}"), (host, port)).final_response()
            assert (final.status_code, final.reason) == (404, "Not Found: no user dave at this proxy")
            assert t.p1.stats["forwarded"] == 1

    run(main())


def test_loop_is_detected_with_482() -> None:
    async def main() -> None:
        async with lab() as t:
            final = await t.uac.send_request(
                t.invite("sip:x@loop.example"), t.p1.endpoint.local_address
            ).final_response()
            assert final.status_code == 482
            assert t.p1.stats["forwarded"] == 1 and t.p1.stats["rejected"] == 1

    run(main())


def test_proxy_require_gets_420_and_options_to_the_proxy_200() -> None:
    async def main() -> None:
        async with lab() as t:
            invite = t.invite()
            invite.headers.add("Proxy-Require", "noProxiesSupportThis, norDoAnyProxiesSupportThis")
            final = await t.uac.send_request(invite, t.p1.endpoint.local_address).final_response()
            assert final.status_code == 420
            assert final.headers.get("Unsupported") == "noProxiesSupportThis, norDoAnyProxiesSupportThis"

            ping = t.invite(f"sip:{address(t.p1.endpoint)}")
            ping.method = "OPTIONS"
            ping.headers.set("CSeq", "1 OPTIONS")
            final = await t.uac.send_request(ping, t.p1.endpoint.local_address).final_response()
            assert final.status_code == 200

    run(main())


# -- failures and CANCEL (§16.7, §16.10) --------------------------------------------------------------


def test_busy_is_forwarded_and_every_hop_absorbs_its_ack() -> None:
    async def main() -> None:
        async with lab(Uas(final=486)) as t:
            txn = t.uac.send_request(t.invite(), t.p1.endpoint.local_address)
            final = await txn.final_response()
            assert final.status_code == 486 and final.to.tag == "bobtag"
            assert txn.ack is not None and txn.ack.cseq.method == "ACK"  # the transaction ACKed
            assert [r.method for r in t.uas.requests] == ["INVITE"]  # the ACK never reached Bob's TU
            assert t.p1.stats["acks_forwarded"] == 0 and t.p2.stats["acks_forwarded"] == 0

    run(main())


def test_cancel_is_answered_and_reissued_downstream() -> None:
    async def main() -> None:
        async with lab(Uas(final=None)) as t:
            txn = t.uac.send_request(t.invite(), t.p1.endpoint.local_address)
            async for response in txn.responses():
                if response.status_code == 180:
                    break
            cancel = t.uac.send_request(make_cancel(txn.request), t.p1.endpoint.local_address, add_via=False)
            assert (await cancel.final_response()).status_code == 200  # answered by p1 itself
            final = await txn.final_response()
            assert final.status_code == 487
            cancel_at_bob = await t.uas.future("CANCEL")
            assert cancel_at_bob.vias[0].branch == t.uas.requests[0].vias[0].branch  # §9.1: same branch
            assert len(cancel_at_bob.vias) == 1  # p2's own CANCEL (§16.10), not a forwarded one
            assert t.p1.stats["cancels"] == 1 and t.p2.stats["cancels"] == 1
            assert [r.method for r in t.uas.requests] == ["INVITE", "CANCEL"]

            stray = make_cancel(txn.request)
            stray.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKnothing")
            unknown = t.uac.send_request(stray, t.p1.endpoint.local_address, add_via=False)
            assert (await unknown.final_response()).status_code == 481

    run(main())


def test_timer_b_at_the_proxy_gives_408() -> None:
    async def main() -> None:
        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(LOOPBACK)
        try:
            async with lab(p2_next_hop=hole.getsockname(), timers=SipTimers(t1=0.005, t2=0.04, t4=0.05)) as t:
                txn = t.uac.send_request(t.invite(), t.p1.endpoint.local_address)
                final = await txn.final_response()
                assert final.status_code == 408
                assert t.p2.stats["timeouts"] == 1
                assert "sip.timeout" in t.kinds("p2")
        finally:
            hole.close()

    run(main())


def test_record_route_can_be_turned_off() -> None:
    async def main() -> None:
        async with lab(p1_record_route=False) as t:
            final = await t.uac.send_request(t.invite(), t.p1.endpoint.local_address).final_response()
            assert final.headers.get_all("Record-Route") == [f"<sip:{address(t.p2.endpoint)};lr>"]
            invite = await t.uas.future("INVITE")
            assert invite.headers.get_all("Record-Route") == [f"<sip:{address(t.p2.endpoint)};lr>"]
            assert len(invite.vias) == 3  # p1 still adds its Via: it is still on the response path

    run(main())


def test_stray_2xx_is_forwarded_statelessly_along_the_via_path() -> None:
    """§16.7: a 2xx retransmission that outlived its transaction still reaches the UAC."""

    async def main() -> None:
        async with lab() as t:
            loop = asyncio.get_running_loop()
            stray: asyncio.Future[tuple[Response, Address]] = loop.create_future()
            t.uac.on_response = lambda response, peer: stray.set_result((response, peer))
            p1 = address(t.p1.endpoint)
            uac_port = t.uac.local_address[1]
            late = Response(200, "OK", Headers())
            late.headers.add("Via", f"SIP/2.0/UDP {p1};rport=1;branch=z9hG4bKlate.x;received=127.0.0.1")
            late.headers.add("Via", f"SIP/2.0/UDP 10.0.0.2:5060;rport={uac_port};branch=z9hG4bKgone;received=127.0.0.1")
            for name, value in (("From", "<sip:a@a.example>;tag=1"), ("To", "<sip:b@b.example>;tag=2"),
                                ("Call-ID", "late@a.example"), ("CSeq", "1 INVITE")):  # fmt: skip
                late.headers.add(name, value)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sender.sendto(late.encode(), t.p1.endpoint.local_address)
                response, peer = await stray
            finally:
                sender.close()
            assert peer == t.p1.endpoint.local_address
            assert [v.branch for v in response.vias] == ["z9hG4bKgone"]
            assert t.p1.stats["stray_responses"] == 1 and t.p1.stats["responses_forwarded"] == 1

    run(main())
