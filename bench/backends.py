"""Benchmark: the same lab as network namespaces (the named peer) and as containers (docker backend).

Both labs are up side by side in the same run; calls alternate between them with short timers.
Measured: bringing the lab up (networks, then every service SERVING), the two timer-free intervals
of a call (INVITE -> 180 Ringing through both proxies; the ClientHello that passes -> first SRTP
decrypted: the handshake, key export and SRTP), and bringing it down. Needs the images (`make images`); run with
`make bench` (root).
"""

from __future__ import annotations

import statistics
import sys
import time

from pinhole.controller.run import Endpoints, Scenario, configure, lab_down, lab_up, service_kinds
from pinhole.controller.services import EventCollector, ServiceClients
from pinhole.rpc.v1 import useragent_pb2
from pinhole.timers import TIMERS

CALLS = 6


def one_call(clients: ServiceClients) -> tuple[float, float]:
    """(INVITE -> 180 at Alice, ClientHello at Alice -> first SRTP she decrypts), in seconds."""
    collector = EventCollector(clients, ["alice", "bob"], since=time.time())
    collector.start()
    try:
        alice = clients.stub("alice")
        call_id = alice.PlaceCall(useragent_pb2.PlaceCallRequest(target="sip:bob@b.example"), timeout=20).call_id

        def media(ev: list[dict]) -> bool:
            return any(e["service"] == "alice" and e["kind"] == "srtp.first_received" for e in ev)

        if not collector.wait_for(media, 30):
            raise RuntimeError("no media")
        events = collector.snapshot()
        alice_events = [e for e in events if e["service"] == "alice"]
        invite = next(e for e in alice_events if e["kind"] == "sip.send" and e["attrs"].get("sip.method") == "INVITE")
        ringing = next(e for e in alice_events if e["attrs"].get("sip.status_code") == "180")
        hello = next(e for e in alice_events if e["kind"] == "dtls.recv")
        first = next(e for e in alice_events if e["kind"] == "srtp.first_received")
        alice.HangUp(useragent_pb2.HangUpRequest(call_id=call_id), timeout=20)
        collector.wait_for(lambda ev: any(e["service"] == "bob" and e["kind"] == "call.terminated" for e in ev), 30)
        return ringing["t"] - invite["t"], first["t"] - hello["t"]
    finally:
        collector.stop()


def main() -> int:
    labs: dict[str, tuple] = {}
    up: dict[str, dict[str, float]] = {}
    down: dict[str, float] = {}
    try:
        for backend in ("netns", "docker"):
            lab, topology, timings = lab_up(f"ph-bb{backend[:3]}", backend=backend)
            clients = ServiceClients.local(lab.run_dir, service_kinds(topology, lab))  # a container lab: no switch
            labs[backend] = (lab, clients, [])  # registered first: torn down even if configuring fails
            up[backend] = timings
            scenario = Scenario("bench", "", alice={"media_packets": 3}, bob={"media_packets": 3})
            configure(clients, Endpoints.of_topology(topology), scenario, TIMERS["short"])
        for _ in range(CALLS):
            for _, clients, times in labs.values():
                times.append(one_call(clients))
    finally:
        for backend, (lab, clients, _) in labs.items():
            clients.close()
            started = time.perf_counter()
            lab_down(lab)
            down[backend] = time.perf_counter() - started
    ns, ct = "netns", "docker"
    rows = [
        ("lab up: networks", up[ct]["network"], up[ns]["network"]),
        ("lab up: six services SERVING", up[ct]["services"], up[ns]["services"]),
        ("lab down", down[ct], down[ns]),
    ]
    for index, interval in enumerate(("INVITE -> 180 Ringing (SIP, 2 proxies)", "ClientHello -> first SRTP")):
        rows.append(
            (
                f"{interval}, median of {CALLS}",
                statistics.median(t[index] for t in labs[ct][2]),
                statistics.median(t[index] for t in labs[ns][2]),
            )
        )
    for what, containers, namespaces in rows:
        print(
            f"{what}: containers {containers * 1000:.1f} ms, namespaces {namespaces * 1000:.1f} ms, "
            f"ratio containers/namespaces {containers / namespaces:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
