"""Benchmark: what tracing costs a call, with and without it, in intervals no timer waits in.

Two labs run side by side in the same run: one with every service tracing (spans exported to
the lab's receiver), the named peer with the OpenTelemetry SDK disabled (OTEL_SDK_DISABLED,
the standard switch). Calls alternate between them. INVITE to first SRTP would include Bob's
DTLS retransmission timer (his first ClientHello always dies at the NAT), so two timer-free
intervals are measured: the SIP path (INVITE sent -> 180 Ringing received, through both proxies)
and the media path (the ClientHello that passes reaches Alice -> her first SRTP decrypted:
handshake, key export, SRTP). Run with `make bench` (root).
"""

from __future__ import annotations

import statistics
import sys
import time

from pinhole.controller.run import TIMERS, Endpoints, Scenario, configure, lab_down, lab_up, service_kinds
from pinhole.controller.services import EventCollector, ServiceClients
from pinhole.rpc.v1 import useragent_pb2

CALLS = 8


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
    labs = {}
    try:
        for label, env in (("tracing", None), ("no tracing", {"OTEL_SDK_DISABLED": "true"})):
            lab, topology, _ = lab_up("ph-bt" + ("on" if env is None else "off"), extra_env=env)
            clients = ServiceClients.local(lab.run_dir, service_kinds(topology))
            labs[label] = (lab, clients, [])  # registered first: torn down even if configuring fails
            configure(
                clients,
                Endpoints.of_topology(topology),
                Scenario("bench", "", alice={"media_packets": 3}, bob={"media_packets": 3}),
                TIMERS["short"],
            )
        for _ in range(CALLS):
            for _, clients, times in labs.values():
                times.append(one_call(clients))
    finally:
        for lab, clients, _ in labs.values():
            clients.close()
            lab_down(lab)
    for index, interval in enumerate(
        ("INVITE -> 180 Ringing (SIP, 2 proxies)", "ClientHello -> first SRTP (DTLS+SRTP)")
    ):
        on = statistics.median(t[index] for t in labs["tracing"][2])
        off = statistics.median(t[index] for t in labs["no tracing"][2])
        print(
            f"{interval}, median of {CALLS}: tracing {on * 1000:.1f} ms, no tracing {off * 1000:.1f} ms, "
            f"ratio tracing/no-tracing {on / off:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
