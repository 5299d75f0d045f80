"""Garbage and malformed packets at every service: counted, traced, and nobody goes down.

Each burst is followed by a well-formed probe on the same socket; its answer proves the
service has processed everything sent before it (no sleeps). Afterwards every service still
reports SERVING and a full §7.3 call still passes.
"""

from __future__ import annotations

import json
import random
import socket
import time

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pinhole import stun
from pinhole.controller.run import run, service_kinds
from pinhole.controller.services import ServiceClients, channel
from pinhole.nsenter import in_netns
from pinhole.rpc.v1 import events_pb2, natgw_pb2

pytestmark = pytest.mark.lab

MALFORMED_SIP = [
    b"INVITE sip:bob@b.example SIP/2.0\r\nVia: garbage\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 300\r\n\r\nshort",
    b"SIP/2.0 200\r\n\r\n",
    b"REGISTER\r\n\r\n",
    b"INVITE sip:bob@b.example SIP/7.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nMax-Forwards: 70\r\n"
    b"To: <sip:bob@b.example>\r\nFrom: <sip:a@a.example>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
]


def garbage(seed: int, count: int = 200) -> list[bytes]:
    rng = random.Random(seed)
    out = [rng.randbytes(rng.randint(1, 300)) for _ in range(count)]
    out += [b"\x00\x01\x00\x08" + bytes(16), b"\x16\xfe\xfd" + bytes(5), b"\x80\x00", b""]  # STUN/DTLS/RTP look-alikes
    return out + MALFORMED_SIP


def options(host: str, port: int, call_id: str) -> bytes:
    return (
        f"OPTIONS sip:probe@{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 0.0.0.0:9;rport;branch=z9hG4bK{call_id}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:probe@{host}>\r\nFrom: <sip:probe@lab>;tag=p\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def blast(ns: str, target: tuple[str, int], datagrams: list[bytes], probe: bytes, answers: bytes) -> bytes:
    """Send the burst then the probe from a socket inside `ns`; return the first reply containing `answers`."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(10)
        for datagram in datagrams:
            sock.sendto(datagram, target)
        sock.sendto(probe, target)
        while True:  # skip the 400 answers to the malformed requests
            data = sock.recv(65535)
            if answers in data:
                return data


def test_garbage_at_every_service_is_counted_and_survived(lab, tmp_path):
    running, topology, _ = lab
    clients = ServiceClients.local(running.run_dir, service_kinds(topology))
    try:
        address = {name: node.addresses[0].split("/")[0] for name, node in topology.nodes.items() if node.addresses}
        sip_targets = {
            "alice": ("alice", address["alice"]),
            "bob": ("bob", address["bob"]),
            "proxy-a": ("bob", address["proxy-a"]),
            "proxy-b": ("alice", address["proxy-b"]),
        }
        for index, (service, (source, host)) in enumerate(sip_targets.items()):
            call_id = f"probe{index}"
            answer = blast(
                running.ns(source),
                (host, 5060),
                garbage(index),
                options(host, 5060, call_id),
                answers=f"Call-ID: {call_id}".encode(),
            )
            assert answer.startswith(b"SIP/2.0 "), service
            counters = {
                c.name: c.value for c in clients.stub(service).GetCounters(events_pb2.CountersRequest()).counters
            }
            assert counters["sip_malformed"] >= len(MALFORMED_SIP), (service, counters)

        request = stun.binding_request()
        answer = blast(
            running.ns("bob"),
            (address["stun"], 3478),
            garbage(10),
            stun.encode(request),
            answers=request.transaction_id,
        )
        assert stun.decode(answer).transaction_id == request.transaction_id
        counters = {c.name: c.value for c in clients.stub("stun").GetCounters(events_pb2.CountersRequest()).counters}
        assert counters["malformed"] >= 200
        assert counters["receive_buffer_drops"] >= 0  # every service reports what the kernel dropped unread

        # unsolicited junk at the NAT's outside address: every datagram dropped, classified, streamed
        nat_wan = topology.nodes["natgw"].interfaces["wan0"][0].split("/")[0]
        junk = [b"\xff" * 20, b"\x80\x00" + bytes(10), b"\x16\xfe\xfd" + bytes(10), stun.encode(stun.binding_request())]
        drops = clients.stub("natgw").WatchDrops(natgw_pb2.WatchDropsRequest(replay=True), timeout=20)
        with in_netns(running.ns("bob")):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            for datagram in junk:
                sock.sendto(datagram, (nat_wan, 40000))
        seen = []
        for drop in drops:  # replay=True: no race with the stream's start
            if drop.destination.port != 40000:
                continue
            seen.append(drop.classification)
            if len(seen) == len(junk):
                drops.cancel()
                break
        assert sorted(seen) == sorted(["other", "rtp", "dtls", "stun"])

        for node in service_kinds(topology):
            with channel(running.run_dir, node) as health_channel:
                stub = health_pb2_grpc.HealthStub(health_channel)
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, node
    finally:
        clients.close()

    result, _ = run("rfc5763-7.3", timers_name="short", lab_name=running.name, out_root=tmp_path, progress=False)
    assert result.passed, result.render()


def test_a_run_on_a_lab_with_a_service_stopped_names_it_and_exits_2(lab, tmp_path, capsys):
    """A lab left up with one service gone: `pinhole run` says which node, one line, exit 2 (no traceback,
    no call tried); the lab is whole again afterwards (the service started as the lab starts it)."""
    from pinhole.cli import main
    from pinhole.controller.run import service_back

    running, _, _ = lab
    running.kill("bob", crash=False)
    try:
        code = main(["run", "rfc5763-7.3", "--timers", "short", "--lab", running.name, "--out", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert err[-1].startswith(f"pinhole: lab {running.name} is up but not whole (bob: UNAVAILABLE"), err
        assert not any("Traceback" in line for line in err)
        assert list(tmp_path.iterdir()) == []  # refused before it ran: no empty run directory
    finally:
        service_back(running, "bob")


@pytest.mark.parametrize("node", ["bob", "proxy-b"])
def test_a_service_stopped_mid_call_makes_the_run_broken_with_its_artifacts(lab, tmp_path, capsys, node):
    """SIGTERM to a service while SRTP flows: `pinhole run` names the step and the service in one line,
    exits 2, and keeps every artifact it has (events, trace, capture, verdict); no traceback."""
    import threading

    from pinhole.cli import main
    from pinhole.controller.run import service_back
    from pinhole.controller.services import EventCollector

    running, topology, _ = lab
    clients = ServiceClients.local(running.run_dir, service_kinds(topology))
    collector = EventCollector(clients, ["bob"], since=time.time())
    killed = threading.Event()

    def stop_when_media_flows() -> None:
        if collector.wait_for(lambda ev: any(e["kind"] == "srtp.first_received" for e in ev), timeout=60):
            running.kill(node, crash=False)
            killed.set()

    collector.start()
    stopper = threading.Thread(target=stop_when_media_flows, daemon=True)
    stopper.start()
    try:
        args = ["run", "rfc5763-7.3", "--timers", "short", "--lab", running.name, "--out", str(tmp_path)]
        code = main(args)
        captured = capsys.readouterr()
        stopper.join(timeout=60)
        assert killed.is_set()
        err = captured.err.strip().splitlines()
        assert code == 2, captured.out[-2000:]
        assert not any("Traceback" in line for line in err)
        assert err[-1].startswith("pinhole run: broken: ") and node in err[-1], err[-1]
        (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
        saved = json.loads((run_dir / "verdict.json").read_text())
        assert saved["broken"] and node in saved["broken"]
        for artifact in ("events.jsonl", "trace.json", "capture.pcapng", "evidence.json", "ladder.html"):
            assert (run_dir / artifact).stat().st_size > 0, artifact
    finally:
        collector.stop()
        clients.close()
        service_back(running, node)
