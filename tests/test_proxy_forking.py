"""services.proxy.proxy forking (RFC 3261 §16.6-16.7): one proxy, two UAS on loopback UDP.

The proxy's route for bob forks the INVITE to both UAS. The tests wait on futures and on the
UAC's transaction, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from pinhole.sip import (
    Headers,
    Request,
    Response,
    ServerTransaction,
    SipEndpoint,
    SipTimers,
    make_response,
    new_call_id,
)
from services.proxy.proxy import Route, StatefulProxy

T = TypeVar("T")
TIMERS = SipTimers(t1=0.02, t2=0.16, t4=0.2)
LOOPBACK = ("127.0.0.1", 0)


def run(coroutine: Awaitable[T], timeout: float = 10.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(main())


@dataclass
class Fork:
    """One target: 180, then `final` at once (None: ring until CANCELled, then 487)."""

    tag: str
    final: int | None
    endpoint: SipEndpoint | None = None
    requests: list[Request] = field(default_factory=list)
    cancelled: asyncio.Future[Request] | None = None

    def on_request(self, txn: ServerTransaction) -> None:
        assert self.endpoint is not None
        request = txn.request
        self.requests.append(request)
        if request.method == "INVITE":
            txn.respond(make_response(request, 180, to_tag=self.tag))
            if self.final is not None:
                txn.respond(make_response(request, self.final, to_tag=self.tag))
        elif request.method == "CANCEL":
            invite = self.endpoint.matching_invite(request)
            txn.respond(make_response(request, 200 if invite else 481))
            if invite is not None and not invite.final_sent:
                invite.respond(make_response(invite.request, 487, to_tag=self.tag))
            if self.cancelled is not None and not self.cancelled.done():
                self.cancelled.set_result(request)


@dataclass
class Lab:
    uac: SipEndpoint
    proxy: StatefulProxy
    forks: list[Fork]
    events: list[tuple[str, dict[str, object]]]

    def invite(self) -> Request:
        headers = Headers()
        headers.add("Max-Forwards", "70")
        headers.add("From", "Alice <sip:alice@a.example>;tag=alicetag")
        headers.add("To", "<sip:bob@b.example>")
        headers.add("Call-ID", new_call_id("a.example"))
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", f"<sip:alice@127.0.0.1:{self.uac.local_address[1]}>")
        return Request("INVITE", "sip:bob@b.example", headers, b"")

    async def responses(self, final_codes: int) -> list[Response]:
        """Every response to a new INVITE until `final_codes` final responses have come."""
        txn = self.uac.send_request(self.invite(), self.proxy.endpoint.local_address)
        seen: list[Response] = []
        async for response in txn.responses():
            seen.append(response)
            if sum(r.status_code >= 200 for r in seen) == final_codes:
                break
        return seen


@asynccontextmanager
async def lab(*finals: int | None) -> AsyncIterator[Lab]:
    forks = [Fork(f"tag{index}", final) for index, final in enumerate(finals)]
    events: list[tuple[str, dict[str, object]]] = []
    endpoints: list[SipEndpoint] = []
    proxy: StatefulProxy | None = None
    try:
        for fork in forks:
            fork.cancelled = asyncio.get_running_loop().create_future()
            fork.endpoint = await SipEndpoint.create(LOOPBACK, timers=TIMERS, on_request=fork.on_request)
            endpoints.append(fork.endpoint)
        proxy_endpoint = await SipEndpoint.create(LOOPBACK, timers=TIMERS)
        uac = await SipEndpoint.create(LOOPBACK, timers=TIMERS)
        endpoints += [proxy_endpoint, uac]
        hops = [fork.endpoint.local_address for fork in forks if fork.endpoint is not None]
        proxy = StatefulProxy(
            proxy_endpoint,
            name="p",
            routes=[Route("b.example", hops[0], user="bob", fork_to=tuple(hops[1:]))],
            on_event=lambda kind, attributes: events.append((kind, attributes)),
        )
        yield Lab(uac, proxy, forks, events)
    finally:
        if proxy is not None:
            await proxy.close()
        for endpoint in endpoints:
            endpoint.close()


def test_every_2xx_of_a_forked_invite_goes_upstream() -> None:
    """Two forks answer: the UAC sees both 200s (two dialogs, RFC 3261 §16.7 step 10)."""

    async def main() -> None:
        async with lab(200, 200) as t:
            responses = await t.responses(final_codes=2)
            oks = [r for r in responses if r.status_code == 200]
            assert sorted(r.to.tag or "" for r in oks) == ["tag0", "tag1"]
            # fork 0's 180 went up; fork 1's came after a 2xx, when the server transaction was Accepted
            # and takes no 1xx (RFC 6026 §8.4)
            assert [r.to.tag for r in responses if r.status_code == 180][:1] == ["tag0"]
            invites = [fork.requests[0] for fork in t.forks]
            assert invites[0].top_via.branch != invites[1].top_via.branch  # §16.6 step 8: one branch each
            forwards = [a for k, a in t.events if k == "sip.forward" and a["method"] == "INVITE"]
            assert [(a["fork"], a["forks"]) for a in forwards] == [(0, 2), (1, 2)]
            assert {a["sip.branch"] for a in forwards} == {i.top_via.branch for i in invites}
            ended = [a for k, a in t.events if k == "sip.fork_final"]
            assert sorted((a["fork"], a["status"]) for a in ended) == [(0, 200), (1, 200)]
            assert t.proxy.stats["forwarded"] == 2

    run(main())


def test_a_2xx_cancels_the_branches_still_pending() -> None:
    """§16.7 step 10: after fork 0's 200 the ringing fork 1 gets a CANCEL; its 487 stays here."""

    async def main() -> None:
        async with lab(200, None) as t:
            responses = await t.responses(final_codes=1)
            assert [r.status_code for r in responses if r.status_code >= 200] == [200]
            cancel = await t.forks[1].cancelled  # type: ignore[misc]
            assert cancel.top_via.branch == t.forks[1].requests[0].top_via.branch  # §9.1: the INVITE's branch
            ended = {a["fork"]: a["status"] for k, a in t.events if k == "sip.fork_final"}
            while ended.get(1) != 487:
                await asyncio.sleep(0.01)  # the 487 crosses the loopback; poll the proxy's events
                ended = {a["fork"]: a["status"] for k, a in t.events if k == "sip.fork_final"}
            assert not t.forks[0].cancelled.done()  # type: ignore[union-attr]
            assert not [a for k, a in t.events if k == "sip.response" and a["status"] == 487]

    run(main())


def test_the_best_final_response_goes_upstream_once_all_branches_ended() -> None:
    """§16.7 steps 6-7: 503 and 486 from the forks; the UAC gets one final, the 486 (lower class)."""

    async def main() -> None:
        async with lab(503, 486) as t:
            responses = await t.responses(final_codes=1)
            assert [r.status_code for r in responses if r.status_code >= 200] == [486]
            ended = sorted(a["status"] for k, a in t.events if k == "sip.fork_final")
            assert ended == [486, 503]  # both branches had ended before the 486 went upstream

    run(main())
