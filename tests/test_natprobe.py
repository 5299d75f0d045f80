"""RFC 5780 NAT behaviour discovery: the STUN server's answers (Table 1), the probe's classification,
and, in a namespace lab (root), the probe against the kernel NAT in every behaviour natgw accepts."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pinhole import natprobe, stun
from pinhole.events import Counters, EventLog
from pinhole.nat import Filtering, Hairpinning, Mapping, NatBehaviour
from pinhole.natprobe import NatProbe, ProbeTimers
from pinhole.stun import AttributeType, ChangeRequest, MessageClass
from services.stunserver.responder import Responder

A1, A2, P1, P2 = "203.0.113.30", "203.0.113.31", 3478, 3479
PEER = ("203.0.113.1", 40000)
FAST = ProbeTimers(rto=0.05, rc=2, rm=2, pace=0.0)


def responder(alternate: bool = True) -> Responder:
    return Responder((A1, P1), (A2, P2) if alternate else None, EventLog("stun"), Counters(), software="test")


def request(**kwargs: Any) -> bytes:
    return stun.encode(stun.binding_request(software="client", **kwargs))


# -- the server's answers (sans-IO) -----------------------------------------------------------------


def test_single_address_server_answers_as_plain_rfc5389() -> None:
    server = responder(alternate=False)
    assert server.sockets == [(A1, P1)]
    reply = server.handle(request(), (A1, P1), PEER)
    assert reply is not None
    assert (reply.origin, reply.destination) == ((A1, P1), PEER)
    assert [t for t, _ in reply.message.attributes] == [AttributeType.XOR_MAPPED_ADDRESS, AttributeType.SOFTWARE]
    assert stun.decode(reply.data).xor_mapped_address == PEER
    kinds = [(e.kind, dict(e.attributes)) for e in server.events.since()]
    assert [k for k, _ in kinds] == ["stun.recv", "stun.send"]
    assert kinds[1][1]["stun.xor_mapped_address"] == "203.0.113.1:40000"
    assert kinds[1][1]["local"] == "203.0.113.30:3478" and kinds[1][1]["peer"] == "203.0.113.1:40000"
    assert "stun.other_address" not in kinds[1][1]
    assert dict(server.counters) == {"datagrams_received": 1, "binding_requests": 1, "binding_responses": 1}


def test_single_address_server_answers_change_request_with_420() -> None:
    server = responder(alternate=False)
    reply = server.handle(request(change_request=ChangeRequest(True, True)), (A1, P1), PEER)
    assert reply is not None and reply.origin == (A1, P1)
    answer = stun.decode(reply.data)
    assert answer.message_class == MessageClass.ERROR_RESPONSE
    assert answer.error_code == (420, "Unknown Attribute")
    assert answer.unknown_attributes == [AttributeType.CHANGE_REQUEST]
    assert server.counters["error_responses"] == 1


# RFC 5780 §6.1 Table 1: (flags) -> (source of the response); OTHER-ADDRESS is always Ca:Cp
TABLE_1 = [
    (None, lambda da, dp, ca, cp: (da, dp)),
    (ChangeRequest(), lambda da, dp, ca, cp: (da, dp)),
    (ChangeRequest(change_ip=True), lambda da, dp, ca, cp: (ca, dp)),
    (ChangeRequest(change_port=True), lambda da, dp, ca, cp: (da, cp)),
    (ChangeRequest(True, True), lambda da, dp, ca, cp: (ca, cp)),
]


@pytest.mark.parametrize("local", [(A1, P1), (A1, P2), (A2, P1), (A2, P2)])
@pytest.mark.parametrize("change, source", TABLE_1, ids=lambda v: str(v) if isinstance(v, ChangeRequest) else None)
def test_table_1(local: tuple[str, int], change: ChangeRequest | None, source: Any) -> None:
    server = responder()
    assert sorted(server.sockets) == sorted([(A1, P1), (A1, P2), (A2, P1), (A2, P2)])
    da, dp = local
    ca, cp = (A2 if da == A1 else A1), (P2 if dp == P1 else P1)
    reply = server.handle(request(change_request=change), local, PEER)
    assert reply is not None
    expected = source(da, dp, ca, cp)
    assert reply.origin == expected and reply.destination == PEER
    answer = stun.decode(reply.data)
    assert answer.message_class == MessageClass.SUCCESS_RESPONSE
    assert answer.xor_mapped_address == PEER and answer.mapped_address == PEER  # §6.1: both
    assert answer.response_origin == expected
    assert answer.other_address == (ca, cp)
    send = server.events.since()[-1]
    assert send.kind == "stun.send"
    assert send.attributes["local"] == f"{expected[0]}:{expected[1]}"
    assert send.attributes["stun.response_origin"] == f"{expected[0]}:{expected[1]}"
    assert send.attributes["stun.other_address"] == f"{ca}:{cp}"


def test_response_port() -> None:
    server = responder()
    reply = server.handle(request(response_port=41000), (A1, P1), PEER)
    assert reply is not None and reply.destination == (PEER[0], 41000)
    assert stun.decode(reply.data).xor_mapped_address == PEER  # still the request's source
    reply = server.handle(request(response_port=0), (A1, P1), PEER)
    assert reply is not None and reply.destination == PEER
    assert stun.decode(reply.data).error_code == (400, "RESPONSE-PORT 0 is not a port")


def test_padding_and_unknown_comprehension_required_get_420() -> None:
    server = responder()
    reply = server.handle(request(padding=8), (A1, P1), PEER)
    assert reply is not None and stun.decode(reply.data).unknown_attributes == [AttributeType.PADDING]
    message = stun.binding_request()
    message.attributes.append((0x7777, b"x"))
    reply = server.handle(stun.encode(message), (A1, P1), PEER)
    assert reply is not None and stun.decode(reply.data).unknown_attributes == [0x7777]


def test_malformed_and_other_messages_are_counted_not_answered() -> None:
    server = responder()
    assert server.handle(b"\x00\x01\x00\x00garbage", (A1, P1), PEER) is None
    altered = request(change_request=ChangeRequest(True, True)).replace(b"client", b"clienT")
    assert server.handle(altered, (A1, P1), PEER) is None  # the FINGERPRINT no longer matches
    raw = bytearray(stun.encode(stun.binding_request(change_request=ChangeRequest(True, True)), fingerprint=False))
    raw[-1] = 0x07  # the same bit without a FINGERPRINT: the attribute itself is refused
    assert server.handle(bytes(raw), (A2, P2), PEER) is None
    indication = stun.Message(stun.Method.BINDING, MessageClass.INDICATION, os.urandom(12))
    assert server.handle(stun.encode(indication), (A1, P1), PEER) is None
    assert server.counters["malformed"] == 3 and server.counters["ignored"] == 1
    reasons = [e.attributes["reason"] for e in server.events.since() if e.kind == "stun.malformed"]
    assert reasons[0] == "datagram of 11 bytes is shorter than the 20-byte STUN header"
    assert reasons[1].startswith("FINGERPRINT 0x")
    assert reasons[2] == (
        "attribute at offset 20: CHANGE-REQUEST: flags 0x00000007 set bits other than change IP (0x4) "
        "and change port (0x2)"
    )


def test_alternate_must_differ_in_ip_and_port() -> None:
    with pytest.raises(ValueError, match="must differ from 203.0.113.30:3478 in both IP and port"):
        Responder((A1, P1), (A1, P2), EventLog("stun"), Counters())
    with pytest.raises(ValueError, match="must differ"):
        Responder((A1, P1), (A2, P1), EventLog("stun"), Counters())


# -- the probe against servers on loopback (no NAT: 127.0.0.1 and 127.0.0.2 are both on lo) ---------


class LoopbackServer:
    """A Responder on real sockets in a thread. `honour_change=False` fakes a server that claims
    OTHER-ADDRESS but answers every request from the socket it arrived on (its RESPONSE-ORIGIN still
    names the socket Table 1 asks for, as if something on the path had rewritten the source)."""

    def __init__(self, alternate: bool = True, honour_change: bool = True) -> None:
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        p1, p2 = _port_pair()
        self.primary = ("127.0.0.1", p1)
        self.responder = Responder(self.primary, ("127.0.0.2", p2) if alternate else None, EventLog("stun"), Counters())
        for local in self.responder.sockets:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(local)
            self.sockets[local] = sock
        self.honour_change = honour_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self.sockets.values():
            sock.close()

    def _serve(self) -> None:
        by_fd = {sock.fileno(): (local, sock) for local, sock in self.sockets.items()}
        while not self._stop.is_set():
            readable, _, _ = select.select(list(by_fd), [], [], 0.05)
            for fd in readable:
                local, sock = by_fd[fd]
                data, peer = sock.recvfrom(65535)
                reply = self.responder.handle(data, local, peer)
                if reply is not None:
                    origin = reply.origin if self.honour_change else local
                    self.sockets[origin].sendto(reply.data, reply.destination)


def _port_pair() -> tuple[int, int]:
    """Two ports free on both 127.0.0.1 and 127.0.0.2."""
    for _ in range(50):
        probes = []
        try:
            ports = []
            for _ in range(2):
                first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(first)
                first.bind(("127.0.0.1", 0))
                port = first.getsockname()[1]
                second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(second)
                second.bind(("127.0.0.2", port))
                ports.append(port)
            return ports[0], ports[1]
        except OSError:
            continue
        finally:
            for sock in probes:
                sock.close()
    raise RuntimeError("no port pair free on 127.0.0.1 and 127.0.0.2")


def test_probe_without_nat_on_loopback() -> None:
    with LoopbackServer() as server:
        result = NatProbe(server.primary, local_ip="127.0.0.1", timers=FAST).run()
    assert result.other_address == ("127.0.0.2", server.responder.alternate[1])  # type: ignore[index]
    assert result.mapping.behaviour == Mapping.ENDPOINT_INDEPENDENT
    assert result.mapping.decided_by == "mapping test I"
    assert "no NAT on the path" in result.mapping.reason
    assert result.filtering.behaviour == Filtering.ENDPOINT_INDEPENDENT
    assert result.filtering.decided_by == "filtering test II"
    assert result.port_preserved is True and result.behind_nat is False
    assert [e.test for e in result.exchanges] == ["filtering I", "filtering II", "mapping I"]
    filtering_port, mapping_port = result.exchanges[0].local[1], result.exchanges[2].local[1]
    assert filtering_port != mapping_port  # each group on a fresh local port
    assert result.exchanges[1].source == result.exchanges[1].expected_source == result.other_address
    assert result.complete and not result.warnings
    text = result.render()
    assert "filtering test II" in text and "change IP and port" in text


def test_hairpinning_is_not_tested_without_a_nat() -> None:
    """RFC 5780 §3.4 needs a mapping to send to: with no NAT (or no server) the probe says why it did not run."""
    with LoopbackServer() as server:
        result = NatProbe(server.primary, local_ip="127.0.0.1", timers=FAST).run()
    assert result.hairpinning == natprobe.Decision(None, "mapping test I", "not run: no NAT on the path")
    assert "  hairpinning UNDECIDED" in result.render()
    assert result.to_dict()["hairpinning"] == {
        "behaviour": None,
        "decided_by": "mapping test I",
        "reason": "not run: no NAT on the path",
    }
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        result = NatProbe(silent.getsockname(), local_ip="127.0.0.1", timers=FAST).run()
    assert result.hairpinning == natprobe.Decision(None, "filtering test I", "not run: no mapping seen")


def test_probe_finds_the_source_address_by_routing() -> None:
    with LoopbackServer() as server:
        result = NatProbe(server.primary, timers=FAST).run()
    assert result.local_ip == "127.0.0.1" and result.behind_nat is False


def test_probe_needs_other_address() -> None:
    with LoopbackServer(alternate=False) as server:
        result = NatProbe(server.primary, local_ip="127.0.0.1", timers=FAST).run()
    assert not result.complete
    assert result.filtering.behaviour is None and result.filtering.decided_by == "filtering test I"
    assert "sent no OTHER-ADDRESS" in result.filtering.reason
    # the mapping test I still ran: it shows there is no NAT, which needs no OTHER-ADDRESS
    assert result.mapping.behaviour == Mapping.ENDPOINT_INDEPENDENT
    assert [e.test for e in result.exchanges] == ["filtering I", "mapping I"]


def test_probe_refuses_a_server_that_ignores_change_request() -> None:
    with LoopbackServer(honour_change=False) as server:
        result = NatProbe(server.primary, local_ip="127.0.0.1", timers=FAST).run()
    assert result.filtering.behaviour is None
    assert result.filtering.decided_by == "filtering test II"
    other = result.other_address
    assert result.filtering.reason == (
        f"the answer came from 127.0.0.1:{server.primary[1]}, not {other[0]}:{other[1]} "  # type: ignore[index]
        f"(RESPONSE-ORIGIN {other[0]}:{other[1]}): something on the path rewrote it"  # type: ignore[index]
    )


def test_probe_without_server_gives_up_on_rto_schedule() -> None:
    timers = ProbeTimers(rto=0.05, rc=3, rm=2, pace=0.0)
    assert timers.give_up_after == pytest.approx(0.05 * 3 + 0.1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        started = time.monotonic()
        result = NatProbe(silent.getsockname(), local_ip="127.0.0.1", timers=timers).run()
        elapsed = time.monotonic() - started
    assert [e.test for e in result.exchanges] == ["filtering I"]  # no connectivity: mapping not run
    assert result.exchanges[0].sends == 3
    assert result.exchanges[0].elapsed == pytest.approx(timers.give_up_after, abs=0.05)
    assert elapsed < timers.give_up_after + 0.5
    assert "no UDP connectivity" in result.filtering.reason
    assert result.mapping.reason.startswith("not run: ")


def test_fresh_ports_are_never_reused_and_can_be_vetoed() -> None:
    vetoed: list[int] = []

    def is_fresh(port: int) -> bool:
        if not vetoed:
            vetoed.append(port)
            return False
        return True

    with LoopbackServer() as server:
        first = NatProbe(server.primary, local_ip="127.0.0.1", timers=FAST, is_fresh=is_fresh).run()
        second = NatProbe(server.primary, local_ip="127.0.0.1", timers=FAST).run()
    assert first.skipped_ports == [f"{vetoed[0]}: the NAT already holds a mapping for it"]
    ports = [e.local[1] for r in (first, second) for e in r.exchanges]
    assert vetoed[0] not in ports
    assert len({p for r in (first, second) for p in {e.local[1] for e in r.exchanges}}) == 4


def test_timers() -> None:
    assert ProbeTimers().give_up_after == 39.5  # RFC 5389 §7.2.1
    for kwargs, message in [
        ({"rto": 0}, "rto must be a finite number of seconds > 0, got 0"),
        ({"rto": float("inf")}, "rto must be a finite number of seconds > 0, got inf"),
        ({"rc": 0}, "rc must be an integer >= 1, got 0"),
        ({"rm": 1.5}, "rm must be an integer >= 1, got 1.5"),
        ({"pace": -1}, "pace must be a finite number of seconds >= 0, got -1"),
    ]:
        with pytest.raises(ValueError) as excinfo:
            ProbeTimers(**kwargs)
        assert str(excinfo.value) == message


def test_expected_is_what_the_gateway_runs() -> None:
    """What the probe must see of a NAT: the gateway's defaults filled in (ports preserved by endpoint-
    independent mapping only, hairpinning on and seen as an external source), no NAT for a plain router."""
    assert natprobe.expected(NatBehaviour()) == {
        "mapping": "endpoint-independent",
        "filtering": "address-and-port-dependent",
        "hairpinning": "external-source",
        "port_preserved": True,
    }
    adm = natprobe.expected(NatBehaviour(Mapping.ADDRESS_DEPENDENT, hairpinning=False))
    assert (adm["hairpinning"], adm["port_preserved"]) == ("none", False)
    assert natprobe.expected(NatBehaviour(translate=False)) == {"behind_nat": False}


# -- the service: command line, and a second address it does not have ---------------------------------


def test_service_argv_passes_the_alternate_only_with_a_second_address() -> None:
    import tomllib

    from pinhole.controller.services import service_argv
    from pinhole.lab import DEFAULT_TOPOLOGY, load_topology, parse_topology

    argv = service_argv(load_topology().nodes["stun"], Path("/run/x"))
    assert argv[argv.index("--listen") + 1] == "203.0.113.30:3478"
    assert argv[argv.index("--alternate") + 1] == "203.0.113.31:3479"
    data = tomllib.loads(DEFAULT_TOPOLOGY.read_text())
    data["nodes"]["stun"]["interfaces"]["eth0"] = ["203.0.113.30/24"]
    argv = service_argv(parse_topology(data).nodes["stun"], Path("/run/x"))
    assert "--alternate" not in argv


def _start_server(tmp_path: Path, listen: str, alternate: str | None, *more: str) -> subprocess.Popen[bytes]:
    from pinhole.controller.services import local_targets, wait_healthy

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parent.parent), OTEL_SDK_DISABLED="true")
    argv = [sys.executable, "-m", "services.stunserver", "--name", "stun", "--grpc", f"unix:{tmp_path}/stun.sock"]
    argv += ["--listen", listen] + (["--alternate", alternate] if alternate else []) + list(more)
    log = (tmp_path / "stun.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(local_targets(tmp_path, ["stun"]), timeout=30, pids={"stun": process.pid}, logs=tmp_path)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def _events(tmp_path: Path) -> list[Any]:
    from pinhole.controller.services import channel
    from pinhole.rpc.v1 import events_pb2, stunserver_pb2_grpc

    with channel(tmp_path, "stun") as ch:
        stub = stunserver_pb2_grpc.StunServerStub(ch)
        return list(stub.WatchEvents(events_pb2.WatchEventsRequest(follow=False), timeout=10))


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(listen: str, alternate: str | None, *more: str) -> subprocess.Popen[bytes]:
        started.append(_start_server(tmp_path, listen, alternate, *more))
        return started[-1]

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_service_with_an_address_it_lacks_starts_as_a_single_address_server(tmp_path, server_process) -> None:
    p1, p2 = _port_pair()
    t0 = time.monotonic()
    server_process(f"127.0.0.1:{p1}", f"192.0.2.77:{p2}", "--alternate-wait", "0.3")  # TEST-NET-1: not ours
    assert time.monotonic() - t0 > 0.3  # SERVING only once it has waited for the address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(request(), ("127.0.0.1", p1))
        plain = stun.decode(client.recv(2048))
        client.sendto(request(change_request=ChangeRequest(True, True)), ("127.0.0.1", p1))
        refused = stun.decode(client.recv(2048))
    assert plain.message_class == MessageClass.SUCCESS_RESPONSE and plain.other_address is None
    assert refused.error_code == (420, "Unknown Attribute")
    events = _events(tmp_path)
    unavailable = [e for e in events if e.kind == "stun.alternate_unavailable"]
    assert len(unavailable) == 1 and unavailable[0].attributes["alternate"] == f"192.0.2.77:{p2}"
    started = next(e for e in events if e.kind == "service.started")
    assert "alternate" not in started.attributes


def test_alternate_address_that_appears_late_is_waited_for() -> None:
    """A container's second address is added just after it starts: binding it is retried meanwhile."""
    import asyncio
    import errno

    from services.stunserver.__main__ import open_sockets

    p1, p2 = _port_pair()
    server = Responder(("127.0.0.1", p1), ("127.0.0.2", p2), EventLog("stun"), Counters())
    refusals = []

    async def scenario() -> dict[Any, Any]:
        loop = asyncio.get_running_loop()
        real = loop.create_datagram_endpoint

        async def endpoint(factory: Any, local_addr: Any) -> Any:
            if local_addr[0] == "127.0.0.2" and len(refusals) < 3:  # "not there yet", three times
                refusals.append(local_addr)
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            return await real(factory, local_addr=local_addr)

        loop.create_datagram_endpoint = endpoint  # type: ignore[method-assign]
        transports = await open_sockets(server, server.events, alternate_wait=5.0)
        for transport in transports.values():
            transport.close()
        return transports

    transports = asyncio.run(scenario())
    assert len(refusals) == 3
    assert sorted(transports) == sorted(server.sockets) and server.alternate == ("127.0.0.2", p2)
    assert "alternate_unavailable" not in server.counters


def test_service_with_a_second_address_answers_from_it(tmp_path, server_process) -> None:
    p1, p2 = _port_pair()
    server_process(f"127.0.0.1:{p1}", f"127.0.0.2:{p2}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.bind(("127.0.0.1", 0))
        client.sendto(request(change_request=ChangeRequest(True, True)), ("127.0.0.1", p1))
        data, source = client.recvfrom(2048)
        client.sendto(b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x03\x00\x00", ("127.0.0.2", p2))
        client.sendto(request(), ("127.0.0.2", p2))  # answered: the malformed one before it was survived
        data2, source2 = client.recvfrom(2048)
    answer = stun.decode(data)
    assert source == ("127.0.0.2", p2) and answer.response_origin == source
    assert answer.other_address == ("127.0.0.2", p2)
    assert source2 == ("127.0.0.2", p2) and stun.decode(data2).other_address == ("127.0.0.1", p1)
    events = _events(tmp_path)
    started = next(e for e in events if e.kind == "service.started")
    assert started.attributes["alternate"] == f"127.0.0.2:{p2}"
    malformed = [e for e in events if e.kind == "stun.malformed"]
    assert len(malformed) == 1 and "CHANGE-REQUEST: length 0 must be 4" in malformed[0].attributes["reason"]


# -- in the lab: the kernel NAT, from Alice's namespace ---------------------------------------------

LAB_TIMERS = ProbeTimers(rto=0.1, rc=3, rm=4, pace=0.1)  # an unanswered test gives up after 0.7 s
MAPPING_ENUMS = [m.value for m in Mapping]
FILTERING_ENUMS = [f.value for f in Filtering]


@pytest.fixture(scope="module")
def lab_clients(lab, clients) -> Iterator[tuple[Any, Any, Any]]:
    running, topology, _ = lab
    yield running, topology, clients


@pytest.mark.lab
def test_lab_default_nat(lab_clients) -> None:
    """The lab as it starts: Linux masquerade, endpoint-independent mapping, address-and-port-dependent
    filtering, ports preserved; the NAT's own drop log shows the answers it kept out."""
    from pinhole.rpc.v1 import natgw_pb2

    running, topology, clients = lab_clients
    before = _counters(clients, "stun")
    result = natprobe.probe_lab(running, topology, timers=LAB_TIMERS, natgw=clients.stub("natgw"))
    print(result.render())
    assert result.other_address == ("203.0.113.31", 3479)
    assert (result.mapping.behaviour, result.mapping.decided_by) == (Mapping.ENDPOINT_INDEPENDENT, "mapping test II")
    assert (result.filtering.behaviour, result.filtering.decided_by) == (
        Filtering.ADDRESS_AND_PORT_DEPENDENT,
        "filtering test III",
    )
    assert result.port_preserved is True and result.behind_nat is True
    assert [e.test for e in result.exchanges] == [
        "filtering I",
        "filtering II",
        "filtering III",
        "mapping I",
        "mapping II",
        "hairpinning I",
        "hairpinning II",
        "hairpinning III",
    ]
    nat_outside = topology.nodes["natgw"].interfaces["wan0"][0].split("/")[0]
    assert all(e.mapped is None or e.mapped[0] == nat_outside for e in result.exchanges)
    assert len({e.local[1] for e in result.exchanges[::3]}) == 3  # each group on fresh ports
    # RFC 4787 REQ-9: hairpinned, from the sender's own (endpoint-independent) mapping
    assert (result.hairpinning.behaviour, result.hairpinning.decided_by) == (
        Hairpinning.EXTERNAL_SOURCE,
        "hairpinning test III",
    )
    receiver, sender, hairpin = result.exchanges[5:]
    assert hairpin.received_from == sender.mapped and hairpin.mapped == sender.mapped
    assert hairpin.destination == hairpin.source == receiver.mapped  # the answer came back through it
    assert "the sender's own mapping (test II)" in result.hairpinning.reason
    # the probe's pace and timers: 8 transactions, 2 of them unanswered
    assert result.duration < 7 * LAB_TIMERS.pace + 2 * LAB_TIMERS.give_up_after + 1.0

    after = _counters(clients, "stun")
    assert after["change_requests"] - before.get("change_requests", 0) == 2 * LAB_TIMERS.rc
    assert after["responses_changed_ip"] - before.get("responses_changed_ip", 0) == LAB_TIMERS.rc

    drops = clients.stub("natgw").WatchDrops(natgw_pb2.WatchDropsRequest(replay=True), timeout=20)
    filtering_port = result.exchanges[0].mapped[1]  # type: ignore[index]
    wanted = {("203.0.113.31", 3479): LAB_TIMERS.rc, ("203.0.113.30", 3479): LAB_TIMERS.rc}
    seen: dict[tuple[str, int], int] = {}
    for drop in drops:
        if drop.destination.port == filtering_port and drop.classification == "stun":
            source = (drop.source.ip, drop.source.port)
            seen[source] = seen.get(source, 0) + 1
            if all(seen.get(source, 0) >= count for source, count in wanted.items()):
                drops.cancel()
                break
    assert seen == wanted


def _counters(clients: Any, node: str) -> dict[str, int]:
    from pinhole.rpc.v1 import events_pb2

    reply = clients.stub(node).GetCounters(events_pb2.CountersRequest(), timeout=10)
    return {c.name: c.value for c in reply.counters}


@pytest.mark.lab
@pytest.mark.parametrize("filtering", FILTERING_ENUMS)
@pytest.mark.parametrize("mapping", MAPPING_ENUMS)
def test_lab_probe_agrees_with_the_configured_nat(lab_clients, mapping: str, filtering: str) -> None:
    """Every RFC 4787 behaviour the gateway offers (all nine) is classified as configured."""
    running, topology, clients = lab_clients
    clients.stub("natgw").Configure(NatBehaviour(mapping, filtering).to_proto(), timeout=30)
    result = natprobe.probe_lab(running, topology, timers=LAB_TIMERS, natgw=clients.stub("natgw"))
    print(result.render())
    assert result.complete, result.render()
    assert (result.mapping.behaviour, result.filtering.behaviour) == (mapping, filtering), result.render()
    assert result.behind_nat is True
    if mapping == Mapping.ENDPOINT_INDEPENDENT:
        assert result.port_preserved is True, result.render()  # masquerade keeps free ports
    if mapping == Mapping.ADDRESS_AND_PORT_DEPENDENT:
        assert result.port_preserved is False, result.render()  # fully-random: a new port per flow
    if filtering == Filtering.ENDPOINT_INDEPENDENT:
        assert result.filtering.decided_by == "filtering test II"
    else:
        assert result.filtering.decided_by == "filtering test III"
    # RFC 4787 §6 (the gateway's default: on), whatever the filtering: the sender's mapping towards the
    # NAT's own address, which is its mapping towards the server only when endpoint-independent
    assert result.hairpinning.behaviour == Hairpinning.EXTERNAL_SOURCE, result.render()
    receiver, sender, hairpin = result.exchanges[-3:]
    assert [e.test for e in (receiver, sender, hairpin)] == ["hairpinning I", "hairpinning II", "hairpinning III"]
    assert hairpin.received_from is not None and hairpin.received_from[0] == receiver.mapped[0]  # type: ignore[index]
    assert (hairpin.received_from == sender.mapped) is (mapping == Mapping.ENDPOINT_INDEPENDENT), result.render()
    assert hairpin.answered and hairpin.source == receiver.mapped


HAIRPINNING_OFF = [  # at least two behaviours; the probe must still classify mapping and filtering
    (Mapping.ENDPOINT_INDEPENDENT.value, Filtering.ADDRESS_AND_PORT_DEPENDENT.value),
    (Mapping.ADDRESS_DEPENDENT.value, Filtering.ADDRESS_DEPENDENT.value),
    (Mapping.ADDRESS_AND_PORT_DEPENDENT.value, Filtering.ENDPOINT_INDEPENDENT.value),
]


@pytest.mark.lab
@pytest.mark.parametrize(("mapping", "filtering"), HAIRPINNING_OFF)
def test_lab_probe_sees_hairpinning_turned_off(lab_clients, mapping: str, filtering: str) -> None:
    """Hairpinning off (REQ-9 broken on purpose): the request to the receiver's mapping never comes back
    inside; the gateway reports each of its sends as a refused hairpin."""
    from pinhole.rpc.v1 import natgw_pb2

    running, topology, clients = lab_clients
    natgw = clients.stub("natgw")
    natgw.Configure(NatBehaviour(mapping, filtering, hairpinning=False).to_proto(), timeout=30)
    try:
        result = natprobe.probe_lab(running, topology, timers=LAB_TIMERS, natgw=natgw)
    finally:
        natgw.Configure(natgw_pb2.NatConfig(), timeout=30)
    print(result.render())
    assert (result.mapping.behaviour, result.filtering.behaviour) == (mapping, filtering), result.render()
    assert (result.hairpinning.behaviour, result.hairpinning.decided_by) == (Hairpinning.NONE, "hairpinning test III")
    receiver, _, hairpin = result.exchanges[-3:]
    assert hairpin.received_from is None and not hairpin.answered and hairpin.sends == LAB_TIMERS.rc
    assert "never came back inside" in result.hairpinning.reason
    drops = natgw.WatchDrops(natgw_pb2.WatchDropsRequest(replay=True), timeout=20)
    refused = 0
    for drop in drops:
        if (drop.source.port, drop.destination.port) == (hairpin.local[1], receiver.mapped[1]):  # type: ignore[index]
            assert (drop.hook, drop.classification, drop.source.ip) == ("hairpin", "stun", hairpin.local[0])
            refused += 1
            if refused == LAB_TIMERS.rc:
                drops.cancel()
                break
    assert refused == LAB_TIMERS.rc


PORT_PRESERVATION = [  # each mapping against its gateway default, and the plain router (no NAT)
    (Mapping.ENDPOINT_INDEPENDENT.value, False, True),
    (Mapping.ADDRESS_DEPENDENT.value, True, True),
    (Mapping.ADDRESS_AND_PORT_DEPENDENT.value, True, True),
    (None, None, False),
]


@pytest.mark.lab
@pytest.mark.parametrize(("mapping", "port_preservation", "translate"), PORT_PRESERVATION)
def test_lab_probe_sees_port_preservation_and_no_nat(lab_clients, mapping, port_preservation, translate) -> None:
    """The rest of what the gateway offers (RFC 4787 §4.2.1 port preservation against each mapping's
    default, and no translation at all) is classified as configured too."""
    from pinhole.rpc.v1 import natgw_pb2

    running, topology, clients = lab_clients
    natgw = clients.stub("natgw")
    mapping = mapping or Mapping.ENDPOINT_INDEPENDENT  # no NAT: the default, which means nothing there
    nat = NatBehaviour(mapping, port_preservation=port_preservation, translate=translate)
    natgw.Configure(nat.to_proto(), timeout=30)
    try:
        result = natprobe.probe_lab(running, topology, timers=LAB_TIMERS, natgw=natgw)
    finally:
        natgw.Configure(natgw_pb2.NatConfig(), timeout=30)
    print(result.render())
    wanted = natprobe.expected(nat)
    seen = natprobe.observed(result)
    assert {key: seen[key] for key in wanted} == wanted, result.render()
    if not translate:
        assert "no NAT on the path" in result.mapping.reason and result.complete


@pytest.mark.lab
def test_lab_call_after_probing_still_passes(lab_clients, tmp_path) -> None:
    """The probe's socket in Alice's namespace and the server's extra sockets change nothing for §7.3."""
    from pinhole.controller.run import run

    running, _, _ = lab_clients
    result, _ = run("rfc5763-7.3", timers_name="short", lab_name=running.name, out_root=tmp_path, progress=False)
    assert result.passed, result.render()
