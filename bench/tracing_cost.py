"""Benchmark: what tracing costs a call, INVITE to first SRTP decrypted, with and without it.

Two labs run side by side in the same run: one with every service tracing (spans exported to
the lab's receiver), the named peer with the OpenTelemetry SDK disabled (OTEL_SDK_DISABLED,
the standard switch). Calls alternate between them; short timers, so the DTLS retransmission
timer (not the machine) does not dominate. Run with `make bench` (root).
"""

from __future__ import annotations

import statistics
import sys
import time

from pinhole.controller.run import TIMERS, Scenario, configure, lab_down, lab_up, service_kinds
from pinhole.controller.services import EventCollector, ServiceClients
from pinhole.rpc.v1 import useragent_pb2

CALLS = 8


def one_call(clients: ServiceClients) -> float:
    """Seconds from Alice's INVITE to the first SRTP packet she decrypts."""
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
        invite = next(e for e in events if e["kind"] == "sip.send" and e["attrs"].get("sip.method") == "INVITE")
        first = next(e for e in events if e["service"] == "alice" and e["kind"] == "srtp.first_received")
        alice.HangUp(useragent_pb2.HangUpRequest(call_id=call_id), timeout=20)
        collector.wait_for(lambda ev: any(e["service"] == "bob" and e["kind"] == "call.terminated" for e in ev), 30)
        return first["t"] - invite["t"]
    finally:
        collector.stop()


def main() -> int:
    labs = {}
    try:
        for label, env in (("tracing", None), ("no tracing", {"OTEL_SDK_DISABLED": "true"})):
            lab, topology, _ = lab_up("ph-bt" + ("on" if env is None else "off"), extra_env=env)
            clients = ServiceClients(lab.run_dir, service_kinds(topology))
            configure(
                clients,
                topology,
                Scenario("bench", "", alice={"media_packets": 3}, bob={"media_packets": 3}),
                TIMERS["short"],
            )
            labs[label] = (lab, clients, [])
        for _ in range(CALLS):
            for _, clients, times in labs.values():
                times.append(one_call(clients))
    finally:
        for lab, clients, _ in labs.values():
            clients.close()
            lab_down(lab)
    on = statistics.median(labs["tracing"][2])
    off = statistics.median(labs["no tracing"][2])
    print(
        f"INVITE to first SRTP decrypted (short timers, median of {CALLS}): tracing {on * 1000:.1f} ms, "
        f"no tracing {off * 1000:.1f} ms, ratio tracing/no-tracing {on / off:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
