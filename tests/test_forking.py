"""RFC 5763 §6.3 forking on loopback: Alice's INVITE forked by a proxy to two Bobs, no lab.

Alice, a forking StatefulProxy and two answering user agents run in one event loop on 127.0.0.1.
Without a NAT each Bob's ClientHello (sent before its 200 OK, see services.useragent.agent) reaches
Alice before its answer, so this exercises the association that exists before its answer and is
matched to it by fingerprint; the lab test (test_forking_lab.py) has the §7.3 shape, where the
answers come first. Waits poll the agents' state, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pinhole import dtls
from pinhole.events import Counters, EventLog
from pinhole.sip import SipEndpoint, SipTimers
from services.proxy.proxy import Route, StatefulProxy
from services.useragent.__main__ import call_status
from services.useragent.agent import AgentConfig, UserAgent
from tests.test_session_modification import TIMERS, until


@contextlib.asynccontextmanager
async def forked(
    *, bob_config: dict | None = None, bob2_config: dict | None = None
) -> AsyncIterator[tuple[UserAgent, UserAgent, UserAgent]]:
    """Alice, Bob, Bob2 and a proxy whose route for bob@b.example forks to both Bobs."""
    agents = [
        UserAgent(
            name=name, sip_address=("127.0.0.1", 0), media_ip="127.0.0.1", events=EventLog(name), counters=Counters()
        )  # fmt: skip
        for name in ("alice", "bob", "bob2")
    ]
    proxy_endpoint = await SipEndpoint.create(("127.0.0.1", 0), timers=SipTimers.scaled(0.05))
    proxy = None
    try:
        for agent in agents:
            await agent.start()
        alice, bob, bob2 = agents
        assert bob.endpoint is not None and bob2.endpoint is not None
        proxy = StatefulProxy(
            proxy_endpoint,
            name="proxy",
            routes=[Route("b.example", bob.endpoint.local_address, user="bob", fork_to=(bob2.endpoint.local_address,))],
        )
        common = {"sip_timers": SipTimers.scaled(0.05), "media_timers": TIMERS, "media_packets": 100}
        alice.configure(AgentConfig(aor="sip:alice@a.example", outbound_proxy=proxy_endpoint.local_address, **common))
        bob.configure(
            AgentConfig(
                aor="sip:bob@b.example", outbound_proxy=proxy_endpoint.local_address, **common, **(bob_config or {})
            )
        )
        bob2.configure(
            AgentConfig(
                aor="sip:bob@b.example", outbound_proxy=proxy_endpoint.local_address, **common, **(bob2_config or {})
            )
        )
        yield alice, bob, bob2
    finally:
        if proxy is not None:
            await proxy.close()
        proxy_endpoint.close()
        for agent in agents:
            agent.close()


def run(coroutine) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(coroutine, 20))


def test_two_forks_two_dialogs_two_associations_on_one_port() -> None:
    async def scenario() -> None:
        async with forked() as (alice, bob, bob2):
            call_id = await alice.place_call("sip:bob@b.example")
            call = alice.calls[call_id]
            await until(
                lambda: (
                    len(call.forks) == 2
                    and all(f.media is not None and f.media.stats.srtp_received > 0 for f in call.forks)
                    and all(call_id in b.calls and b.calls[call_id].media.stats.srtp_received > 0 for b in (bob, bob2))
                )  # type: ignore[union-attr]
            )
            # the second ClientHello came from a new address before its answer: a new association on
            # the same port, claimed later by the answer its certificate matches
            accepted = [e for e in alice.events.since() if e.kind == "media.fork_accepted" and e.call_id == call_id]
            assert len(accepted) == 1
            by_tag = {f.tag: f for f in call.forks}
            assert set(by_tag) == {bob.calls[call_id].to_tag, bob2.calls[call_id].to_tag}
            status = call_status(call)
            assert len(status.forks) == 2
            assert len({f.local_socket for f in status.forks}) == 1  # ONE local media port
            assert len({f.peer_media for f in status.forks}) == 2
            for answerer in (bob, bob2):
                fork = next(f for f in status.forks if f.remote_tag == answerer.calls[call_id].to_tag)
                expected = dtls.format_fingerprint(answerer.certificate.digest())
                assert fork.fingerprint_verified and fork.peer_fingerprint == expected
                assert fork.dtls_state == "connected" and fork.srtp_sent > 0 and fork.srtp_received > 0
            await alice.hang_up(call_id)
            await until(lambda: all(b.calls[call_id].state == "terminated" for b in (bob, bob2)))
            assert all(b.calls[call_id].reason == "BYE received" for b in (bob, bob2))
            assert {f.state for f in call.forks} == {"terminated"}

    run(scenario())


@pytest.mark.parametrize("tampered", ["bob", "bob2"])
def test_a_fork_whose_certificate_matches_no_answer_fails_alone(tampered: str) -> None:
    """One Bob's answer (the fork route's first hop or its fork_to) carries a fingerprint not its own."""

    async def scenario() -> None:
        tamper = {"deviations": frozenset({"tamper-answer-fingerprint"})}
        async with forked(bob_config=tamper if tampered == "bob" else None,
                          bob2_config=tamper if tampered == "bob2" else None) as (alice, bob, bob2):  # fmt: skip
            bad, good = (bob2, bob) if tampered == "bob2" else (bob, bob2)
            call_id = await alice.place_call("sip:bob@b.example")
            call = alice.calls[call_id]
            await until(
                lambda: (
                    len(call.forks) == 2
                    and any(f.state == "failed" for f in call.forks)
                    and any(f.media is not None and f.media.stats.srtp_received > 0 for f in call.forks)
                )
            )
            failed = next(f for f in call.forks if f.state == "failed")
            working = next(f for f in call.forks if f.state == "established")
            assert failed.tag == bad.calls[call_id].to_tag and working.tag == good.calls[call_id].to_tag
            assert "matches no a=fingerprint" in failed.reason
            assert call.state == "established"
            status = {f.remote_tag: f for f in call_status(call).forks}
            assert not status[failed.tag].fingerprint_verified and status[failed.tag].srtp_received == 0
            assert status[working.tag].fingerprint_verified
            await until(lambda: good.calls[call_id].media.stats.srtp_received > 0)  # type: ignore[union-attr]
            await until(lambda: bad.calls[call_id].state in ("terminated", "failed"))
            await alice.hang_up(call_id)
            await until(lambda: good.calls[call_id].state == "terminated")

    run(scenario())
