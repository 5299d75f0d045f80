"""Latching (symmetric RTP, "comedia") in the media session, on loopback.

Alice sits behind a simulated address-and-port-dependent-mapping NAT made of two relay sockets:
P1 is the mapping the STUN server saw (what Alice's SDP advertises; it admits nobody but the STUN
server, so whatever Bob sends there dies), P2 the mapping her packets to Bob leave through (it
forwards between Alice and Bob only). Bob knows Alice at P1 from her SDP.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from pinhole import dtls, rtp, stun
from pinhole.address import Address, fmt
from pinhole.events import EventLog
from pinhole.media import LATCH_ON_DTLS, LATCH_ON_SRTP, LATCH_ON_STUN, MediaSession, MediaTimers
from services.useragent.__main__ import config_from_proto
from services.useragent.agent import AgentConfig

SHORT = MediaTimers(dtls=dtls.RetransmitTimer(initial=0.05, maximum=0.2, max_transmissions=4), stun_rto=0.05)
#: A first retransmission 3 s away: a handshake done well before that did not wait for the timer.
SLOW = MediaTimers(dtls=dtls.RetransmitTimer(initial=3.0, maximum=6.0, max_transmissions=3), stun_rto=0.05)
PROFILES = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")
STUN_SERVER = ("127.0.0.1", 9)  # never sends: P1 only admits it


class Mapping(asyncio.DatagramProtocol):
    """One NAT mapping on loopback: forwards between `inside` and the single `remote` it was made
    for (address-and-port-dependent filtering); drops and keeps everything else."""

    def __init__(self, inside: Address, remote: Address) -> None:
        self.inside, self.remote = inside, remote
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped: list[tuple[Address, bytes]] = []
        self.outbound: list[bytes] = []

    @classmethod
    async def open(cls, inside: Address, remote: Address) -> Mapping:
        loop = asyncio.get_running_loop()
        _, mapping = await loop.create_datagram_endpoint(lambda: cls(inside, remote), local_addr=("127.0.0.1", 0))
        return mapping

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    @property
    def address(self) -> Address:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        source = (addr[0], addr[1])
        if source == self.inside:
            self.outbound.append(data)
            self.transport.sendto(data, self.remote)
        elif source == self.remote:
            self.transport.sendto(data, self.inside)
        else:
            self.dropped.append((source, data))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def session(name: str, timers: MediaTimers = SHORT, *, latching: bool = False) -> MediaSession:
    return await MediaSession.open(
        "127.0.0.1",
        certificate=dtls.Certificate.generate(name),
        events=EventLog(name),
        call_id="call-1",
        timers=timers,
        srtp_profiles=PROFILES,
        latching=latching,
    )


class Lab:
    """Alice behind the two-mapping NAT, Bob in the open, fingerprints exchanged."""

    def __init__(self, alice: MediaSession, bob: MediaSession, p1: Mapping, p2: Mapping) -> None:
        self.alice, self.bob, self.p1, self.p2 = alice, bob, p1, p2
        self.closing: list[MediaSession | Mapping] = [alice, bob, p1, p2]

    @classmethod
    async def build(cls, *, bob_timers: MediaTimers = SHORT, latching: bool = True) -> Lab:
        alice = await session("alice")
        bob = await session("bob", bob_timers, latching=latching)
        alice.set_peer_fingerprints([("sha-256", bob.certificate.digest("sha-256"))])
        bob.set_peer_fingerprints([("sha-256", alice.certificate.digest("sha-256"))])
        p1 = await Mapping.open(alice.local_address, STUN_SERVER)
        p2 = await Mapping.open(alice.local_address, bob.local_address)
        return cls(alice, bob, p1, p2)

    def close(self) -> None:
        for thing in self.closing:
            if isinstance(thing, MediaSession):
                thing.teardown("test over")
            else:
                thing.close()


def events(s: MediaSession, kind: str) -> list[dict[str, str]]:
    return [dict(e.attributes) for e in s.events.since() if e.kind == kind]


async def wait(event: asyncio.Event, timeout: float = 10.0) -> None:
    await asyncio.wait_for(event.wait(), timeout)


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def client_hellos(datagrams: list[bytes]) -> int:
    return sum("client_hello" in dtls.describe(d).get("dtls.handshake_types", "") for d in datagrams)


# -- Bob active (RFC 5763 §7.3 roles): only Alice's STUN check can show Bob where she is -----------


def test_active_side_latches_on_the_stun_check_and_resends_its_client_hello_at_once():
    async def scenario():
        lab = await Lab.build(bob_timers=SLOW)
        alice, bob = lab.alice, lab.bob
        try:
            alice.start_dtls(dtls.Role.SERVER, lab.p2.address)
            bob.start_dtls(dtls.Role.CLIENT, lab.p1.address)  # Alice's SDP address
            await until(lambda: client_hellos([d for _, d in lab.p1.dropped]) == 1)  # died at the NAT
            started = asyncio.get_running_loop().time()
            mapped = await asyncio.wait_for(alice.stun_binding(lab.p2.address, purpose="connectivity-check"), 5)
            assert mapped == lab.p2.address  # Bob answered the check through the new mapping
            alice.start_media(5, ptime=0.001)
            bob.start_media(5, ptime=0.001)
            await wait(bob.connected)
            # the retransmission timer is 3 s: the ClientHello that got through was the immediate resend
            assert asyncio.get_running_loop().time() - started < 2.0
            await until(lambda: alice.stats.srtp_received == 5 and bob.stats.srtp_received == 5)
            assert bob.remote == lab.p2.address and bob.sdp_remote == lab.p1.address
            assert (bob.stats.latches, bob.stats.latched_to, bob.stats.latched_on) == (
                1,
                fmt(lab.p2.address),
                LATCH_ON_STUN,
            )
            [latched] = events(bob, "media.latched")
            assert latched["from"] == fmt(lab.p1.address) and latched["to"] == fmt(lab.p2.address)
            assert latched["evidence"] == LATCH_ON_STUN and latched["dtls_state"] == "handshaking"
            resent = [e for e in events(bob, "dtls.send") if e["cause"] == "latched"]
            assert len(resent) == 1 and resent[0]["peer"] == fmt(lab.p2.address)
            assert resent[0]["retransmission"] == "True" and "client_hello" in resent[0]["dtls.handshake_types"]
            assert bob.endpoint.retransmissions == 1
            assert client_hellos([d for _, d in lab.p1.dropped]) == 1, "nothing more went to the SDP address"
            assert alice.stats.unexpected_source == 0
        finally:
            lab.close()

    asyncio.run(scenario())


def test_without_latching_the_active_side_keeps_sending_to_the_sdp_address_and_fails():
    async def scenario():
        lab = await Lab.build(latching=False)
        alice, bob = lab.alice, lab.bob
        try:
            alice.start_dtls(dtls.Role.SERVER, lab.p2.address)
            bob.start_dtls(dtls.Role.CLIENT, lab.p1.address)
            await asyncio.wait_for(alice.stun_binding(lab.p2.address, purpose="connectivity-check"), 5)
            await wait(bob.failed)
            assert "timed out" in bob.endpoint.failure_reason
            assert not alice.connected.is_set() and alice.endpoint.handshake_started_at is None
            assert client_hellos([d for _, d in lab.p1.dropped]) == SHORT.dtls.max_transmissions
            assert bob.remote == lab.p1.address and bob.stats.latches == 0 and bob.stats.latched_to == ""
            assert events(bob, "media.latched") == []
        finally:
            lab.close()

    asyncio.run(scenario())


# -- Bob passive: Alice's ClientHello shows where she is ------------------------------------------


def test_passive_side_latches_on_the_client_hello():
    async def scenario():
        lab = await Lab.build()
        alice, bob = lab.alice, lab.bob
        try:
            bob.start_dtls(dtls.Role.SERVER, lab.p1.address)
            check = bob.stun_binding(lab.p1.address, purpose="connectivity-check")  # §6.7.2: dies at P1
            check.add_done_callback(lambda f: f.cancelled() or f.exception())
            alice.start_dtls(dtls.Role.CLIENT, lab.p2.address)
            alice.start_media(5, ptime=0.001)
            bob.start_media(5, ptime=0.001)
            await wait(alice.connected)
            await wait(bob.connected)
            await until(lambda: alice.stats.srtp_received == 5 and bob.stats.srtp_received == 5)
            [latched] = events(bob, "media.latched")
            assert latched["evidence"] == LATCH_ON_DTLS and latched["to"] == fmt(lab.p2.address)
            assert bob.stats.latches == 1 and bob.stats.unexpected_source == 0
            assert [e["peer"] for e in events(bob, "dtls.send")] == [fmt(lab.p2.address)] * len(
                events(bob, "dtls.send")
            )
            assert not any(e["cause"] == "latched" for e in events(bob, "dtls.send")), "the ClientHello gets answered"
        finally:
            lab.close()

    asyncio.run(scenario())


def test_without_latching_the_passive_side_drops_the_client_hello():
    async def scenario():
        lab = await Lab.build(latching=False)
        alice, bob = lab.alice, lab.bob
        try:
            bob.start_dtls(dtls.Role.SERVER, lab.p1.address)
            alice.start_dtls(dtls.Role.CLIENT, lab.p2.address)
            await wait(alice.failed)
            assert not bob.connected.is_set() and bob.stats.unexpected_source == SHORT.dtls.max_transmissions
            reasons = {e.get("reason") for e in events(bob, "dtls.recv")}
            assert reasons == {f"not from the SDP address {fmt(lab.p1.address)} (no latching)"}
        finally:
            lab.close()

    asyncio.run(scenario())


# -- the policy: what may move the remote, and when ------------------------------------------------


async def connected_pair(lab: Lab) -> None:
    """Bob latched on Alice's check, handshake verified both sides."""
    lab.alice.start_dtls(dtls.Role.SERVER, lab.p2.address)
    lab.bob.start_dtls(dtls.Role.CLIENT, lab.p1.address)
    await asyncio.wait_for(lab.alice.stun_binding(lab.p2.address, purpose="connectivity-check"), 5)
    await wait(lab.alice.connected)
    await wait(lab.bob.connected)


async def attacker() -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    return transport


def test_after_the_handshake_a_stun_check_or_handshake_record_from_elsewhere_moves_nothing():
    async def scenario():
        lab = await Lab.build()
        bob = lab.bob
        mallory = await attacker()
        try:
            await connected_pair(lab)
            answered = bob.stats.stun_requests_answered
            mallory.sendto(stun.encode(stun.binding_request(os.urandom(12))), bob.local_address)
            server_hello = next(
                d for d in lab.p2.outbound if "server_hello" in dtls.describe(d).get("dtls.handshake_types", "")
            )
            mallory.sendto(server_hello, bob.local_address)  # a handshake record of this association, replayed
            await until(lambda: bob.stats.stun_requests_answered == answered + 1 and bob.stats.unexpected_source >= 1)
            assert bob.remote == lab.p2.address and bob.stats.latches == 1  # the one latch of the handshake
            [rejected] = [e for e in events(bob, "dtls.recv") if e.get("accepted") == "False"]
            assert "handshake verified: only SRTP latches" in rejected["reason"]
        finally:
            mallory.close()
            lab.close()

    asyncio.run(scenario())


def test_mid_call_rebinding_latches_on_authenticated_srtp_only():
    async def scenario():
        lab = await Lab.build()
        alice, bob = lab.alice, lab.bob
        mallory = await attacker()
        try:
            await connected_pair(lab)
            alice.start_media(3, ptime=0.001)
            await until(lambda: bob.stats.srtp_received == 3)
            # forged SRTP and a replayed genuine packet from elsewhere: not the peer
            genuine = [d for d in lab.p2.outbound if d[:1] and 128 <= d[0] <= 191][-1]
            packet = rtp.RtpPacket(payload_type=0, sequence_number=999, timestamp=0, ssrc=1, payload=b"\xff" * 160)
            mallory.sendto(packet.encode() + os.urandom(16), bob.local_address)
            mallory.sendto(genuine, bob.local_address)
            await until(lambda: bob.stats.unexpected_source == 2)
            assert bob.remote == lab.p2.address and bob.stats.srtp_auth_failed == 0
            # Alice's NAT rebinds: her media now leaves through P3
            p3 = await Mapping.open(alice.local_address, bob.local_address)
            lab.closing.append(p3)
            alice.remote = p3.address
            alice.start_media(3, ptime=0.001)
            await until(lambda: bob.stats.srtp_received == 6)
            assert bob.remote == p3.address and bob.stats.latched_on == LATCH_ON_SRTP and bob.stats.latches == 2
            latched = events(bob, "media.latched")[-1]
            assert latched["from"] == fmt(lab.p2.address) and latched["to"] == fmt(p3.address)
            bob.start_media(3, ptime=0.001)
            await until(lambda: alice.stats.srtp_received == 3)  # Bob's media follows to P3
        finally:
            mallory.close()
            lab.close()

    asyncio.run(scenario())


def test_stun_flapping_costs_at_most_one_extra_flight_per_flight():
    async def scenario():
        bob = await session("bob", SLOW, latching=True)
        mallory, other = await attacker(), await attacker()
        dead = await Mapping.open(("127.0.0.1", 9), ("127.0.0.1", 9))
        try:
            bob.start_dtls(dtls.Role.CLIENT, dead.address)
            for _ in range(5):
                for transport in (mallory, other):
                    transport.sendto(stun.encode(stun.binding_request(os.urandom(12))), bob.local_address)
            await until(lambda: bob.stats.stun_requests_answered == 10)
            assert bob.stats.latches == 10  # every change of source is followed before the handshake...
            assert bob.endpoint.retransmissions == 1  # ...but the ClientHello was resent once
            assert len([e for e in events(bob, "dtls.send") if e["cause"] == "latched"]) == 1
        finally:
            for transport in (mallory, other):
                transport.close()
            dead.close()
            bob.teardown("test over")

    asyncio.run(scenario())


def test_an_early_client_hello_wins_over_the_sdp_address_that_comes_later():
    """The offerer (actpass) serves a ClientHello that beats the answer; with latching, the answer's
    SDP address does not take the remote away from where the ClientHello came from."""

    async def scenario(latching: bool):
        alice = await session("alice", latching=latching)
        bob = await session("bob")
        dead = await Mapping.open(("127.0.0.1", 9), ("127.0.0.1", 9))
        try:
            alice.accept_early_client_hello = True
            bob.set_peer_fingerprints([("sha-256", alice.certificate.digest("sha-256"))])
            bob.start_dtls(dtls.Role.CLIENT, alice.local_address)
            await until(lambda: alice.endpoint is not None)
            alice.set_remote(dead.address)  # the answer's SDP says Bob is elsewhere
            alice.set_peer_fingerprints([("sha-256", bob.certificate.digest("sha-256"))])
            if latching:
                assert alice.remote == bob.local_address
                [latched] = events(alice, "media.latched")
                assert latched["from"] == fmt(dead.address) and latched["evidence"] == LATCH_ON_DTLS
                await wait(bob.connected)
                await wait(alice.connected)
            else:
                assert alice.remote == dead.address and events(alice, "media.latched") == []
        finally:
            for s in (alice, bob):
                s.teardown("test over")
            dead.close()

    asyncio.run(scenario(True))
    asyncio.run(scenario(False))


# -- configuration ---------------------------------------------------------------------------------


def test_latching_is_off_unless_configured():
    from pinhole.rpc.v1 import useragent_pb2

    assert AgentConfig().latching is False
    assert config_from_proto(useragent_pb2.UserAgentConfig(aor="sip:bob@b.example")).latching is False
    assert config_from_proto(useragent_pb2.UserAgentConfig(aor="sip:bob@b.example", latching=True)).latching is True


@pytest.mark.parametrize("latching", [None, False, True])
def test_configure_reports_latching_in_effective(latching):
    from pinhole.rpc.v1 import useragent_pb2
    from services.useragent.__main__ import UserAgentServicer

    class Agent:
        events = None
        config = None

        def configure(self, config: AgentConfig) -> None:
            self.config = config

    request = useragent_pb2.UserAgentConfig(aor="sip:bob@b.example")
    if latching is not None:
        request.latching = latching
    reply = asyncio.run(UserAgentServicer(Agent()).Configure(request, None))  # type: ignore[arg-type]
    assert reply.effective.HasField("latching") and reply.effective.latching is bool(latching)
    assert reply.effective.aor == "sip:bob@b.example"


def test_resend_for_new_path_once_per_flight_and_restarts_the_timer():
    client = dtls.DtlsEndpoint(dtls.Role.CLIENT, dtls.Certificate.generate("c"), timer=SLOW.dtls)
    server = dtls.DtlsEndpoint(dtls.Role.SERVER, dtls.Certificate.generate("s"), timer=SLOW.dtls)
    assert client.resend_for_new_path(0.0) == []  # no flight yet
    hello = client.start(0.0)
    assert client.next_deadline == 3.0
    again = client.resend_for_new_path(2.5)
    assert [dtls.describe(d)["dtls.handshake_types"] for d in again] == ["client_hello"]
    assert client.next_deadline == 5.5 and client.retransmissions == 1  # restarted, interval kept
    assert client.resend_for_new_path(2.6) == []  # once per flight
    flight4 = [d for datagram in hello for d in server.receive(datagram, 2.7)]
    flight5 = [d for datagram in flight4 for d in client.receive(datagram, 2.8)]
    assert flight5 and client.resend_for_new_path(2.9)  # a new flight may be resent once again
    for datagram in flight5:
        server.receive(datagram, 3.0)
    assert server.state == "connected" and server.resend_for_new_path(3.1) == []  # not while connected
