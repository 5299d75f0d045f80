"""Running a scenario end to end: lab, services, the call, the evidence, the verdict.

The controller only drives and observes: it configures every service over gRPC, asks Alice to
call Bob, follows every service's events (to know when the call is over), captures on both sides
of the NAT, receives every span over OTLP, and then judges the call from its trace
(from_trace.py, verdict.py) and draws it (ladder.py, ladder_html.py). Artifacts land in
out/<run-id>/.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace

from netns.lab import NetnsLab, load_topology
from pinhole import demux, telemetry
from pinhole.controller import from_trace, ladder, verdict
from pinhole.controller.ladder_html import write_html
from pinhole.controller.otlp import OtlpReceiver, export, write_otlp_json
from pinhole.controller.services import (
    EventCollector,
    ServiceClients,
    start_services,
    to_dict,
    wait_healthy,
)
from pinhole.pcap import decode_udp, read_pcap
from pinhole.rpc.v1 import events_pb2, natgw_pb2, proxy_pb2, useragent_pb2

DEFAULT_LAB = "ph-lab"


@dataclass(frozen=True)
class Timers:
    """DTLS/STUN/SIP timers of a run. `rfc` are the RFC defaults; `short` lets tests run fast."""

    sip_t1: float = 0.5
    dtls_initial: float = 1.0
    dtls_maximum: float = 60.0
    dtls_max_transmissions: int = 8
    stun_rto: float = 0.5

    def handshake_budget(self) -> float:
        """Seconds until the active side gives up on a handshake (sum of its flight timers)."""
        total, timer = 0.0, self.dtls_initial
        for _ in range(self.dtls_max_transmissions):
            total += timer
            timer = min(timer * 2, self.dtls_maximum)
        return total

    def proto(self) -> useragent_pb2.Timers:
        return useragent_pb2.Timers(
            sip_t1_seconds=self.sip_t1,
            dtls_initial_seconds=self.dtls_initial,
            dtls_maximum_seconds=self.dtls_maximum,
            dtls_max_transmissions=self.dtls_max_transmissions,
            stun_rto_seconds=self.stun_rto,
        )


TIMERS = {
    "rfc": Timers(),
    "short": Timers(sip_t1=0.1, dtls_initial=0.1, dtls_maximum=0.8, dtls_max_transmissions=6, stun_rto=0.1),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    expect_pass: bool = True
    alice: dict[str, Any] = field(default_factory=dict)
    bob: dict[str, Any] = field(default_factory=dict)


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("rfc5763-7.3", "RFC 5763 §7.3: basic message flow with STUN check for the NAT case"),
        Scenario(
            "no-stun-check",
            "negative control: Alice sends no STUN check, Bob's ClientHellos die at the NAT",
            expect_pass=False,
            alice={"stun_check": False},
        ),
        Scenario(
            "bad-fingerprint",
            "negative control: Bob's answer carries a fingerprint that is not his certificate's",
            expect_pass=False,
            bob={"tamper_answer_fingerprint": True},
        ),
    ]
}

MEDIA_PACKETS = 50


class Progress:
    """One status line that says which stage a run is in."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.quiet = not enabled
        self.started = time.monotonic()

    def stage(self, text: str) -> None:
        if self.quiet:
            return
        line = f"[{time.monotonic() - self.started:6.2f}s] {text}"
        if self.enabled:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def otlp_socket(run_dir: Path) -> Path:
    """Where the services export spans (OTLP/gRPC): reachable from every namespace."""
    return run_dir / "otlp.sock"


# Labs brought up by this process keep their trace receiver for their whole life, so services
# never export into the void between runs (and stop quickly: their last flush is received).
_RECEIVERS: dict[str, OtlpReceiver] = {}


def lab_up(
    name: str = DEFAULT_LAB, *, extra_env: dict[str, str] | None = None
) -> tuple[NetnsLab, Any, dict[str, float]]:
    """Build the namespaces, start the lab's OTLP receiver and every service, wait until all are SERVING."""
    topology = load_topology()
    lab = NetnsLab(topology, name=name)
    timings = {"namespaces": lab.up()}
    started = time.monotonic()
    receiver = OtlpReceiver(f"unix:{otlp_socket(lab.run_dir)}")
    try:
        receiver.start()
        pids = start_services(lab, topology, otlp_endpoint=f"unix:{otlp_socket(lab.run_dir)}", extra_env=extra_env)
        wait_healthy(lab.run_dir, list(pids), pids=pids)
    except BaseException:
        lab.down()
        receiver.stop()
        raise
    _RECEIVERS[name] = receiver
    timings["services"] = time.monotonic() - started
    return lab, topology, timings


def lab_down(lab: NetnsLab) -> float:
    """Stop the services (they flush their spans on SIGTERM), then the lab's receiver, then the rest."""
    seconds = lab.down()
    receiver = _RECEIVERS.pop(lab.name, None)
    if receiver is not None:
        receiver.stop()
    return seconds


def service_kinds(topology: Any) -> dict[str, str]:
    return {n.name: n.service for n in topology.nodes.values() if getattr(n, "service", None)}


def _addr(topology: Any, node: str) -> str:
    return topology.nodes[node].addresses[0].split("/")[0]


def configure(clients: ServiceClients, topology: Any, scenario: Scenario, timers: Timers) -> None:
    """Put every service in the scenario's state (the defaults are those of §7.3)."""
    sip = lambda node: f"{_addr(topology, node)}:{topology.nodes[node].extra.get('sip_port', 5060)}"  # noqa: E731
    clients.stub("natgw").Configure(
        natgw_pb2.NatConfig(
            mapping=natgw_pb2.MAPPING_ENDPOINT_INDEPENDENT,
            filtering=natgw_pb2.FILTERING_ADDRESS_AND_PORT_DEPENDENT,
            mapping_timeout_seconds=300,
        )
    )
    clients.stub("proxy-a").Configure(
        proxy_pb2.ProxyConfig(
            record_route=True,
            sip_t1_seconds=timers.sip_t1,
            routes=[proxy_pb2.ProxyRoute(domain="b.example", next_hop=sip("proxy-b"))],
        )
    )
    clients.stub("proxy-b").Configure(
        proxy_pb2.ProxyConfig(
            record_route=True,
            sip_t1_seconds=timers.sip_t1,
            routes=[
                proxy_pb2.ProxyRoute(domain="b.example", user="bob", next_hop=sip("bob")),
                proxy_pb2.ProxyRoute(domain="a.example", next_hop=sip("proxy-a")),
            ],
        )
    )
    alice, bob = topology.nodes["alice"], topology.nodes["bob"]
    stun_node = topology.nodes[alice.extra["stun_server"]]
    common = {"timers": timers.proto(), "media_packets": MEDIA_PACKETS}
    alice_config = {
        "aor": "sip:alice@a.example",
        "display_name": "Alice",
        "outbound_proxy": sip(alice.extra["proxy"]),
        "stun_server": f"{_addr(topology, stun_node.name)}:{stun_node.extra.get('stun_port', 3478)}",
        **common,
    }
    bob_config = {
        "aor": "sip:bob@b.example",
        "display_name": "Bob",
        "outbound_proxy": sip(bob.extra["proxy"]),
        "auto_answer": True,
        "answer_setup": useragent_pb2.DTLS_SETUP_ACTIVE,
        **common,
    }
    clients.stub("alice").Configure(useragent_pb2.UserAgentConfig(**{**alice_config, **scenario.alice}))
    clients.stub("bob").Configure(useragent_pb2.UserAgentConfig(**{**bob_config, **scenario.bob}))


def _has(events: list[dict[str, Any]], service: str, kind: str) -> bool:
    return any(e["service"] == service and e["kind"] == kind for e in events)


def _ended(events: list[dict[str, Any]], service: str) -> bool:
    return _has(events, service, "call.terminated") or _has(events, service, "call.failed")


def _call_over(events: list[dict[str, Any]]) -> bool:
    """Media done both ways, or the call failed somewhere: then there is nothing left to wait for."""
    if _has(events, "alice", "srtp.sent") and _has(events, "bob", "srtp.sent"):
        return True
    return any(e["kind"] in ("dtls.failed", "call.failed") and e["service"] in ("alice", "bob") for e in events)


def summarize_capture(path: Path) -> list[dict[str, Any]]:
    """Each UDP datagram of a pcap, described like the services describe them."""
    packets = []
    for ts, frame in read_pcap(path):
        udp = decode_udp(frame)
        if udp is None:
            continue
        record = {"t": ts, "src": f"{udp.src[0]}:{udp.src[1]}", "dst": f"{udp.dst[0]}:{udp.dst[1]}"}
        record.update(demux.describe(udp.payload))
        packets.append(record)
    return packets


def run(
    scenario_name: str = "rfc5763-7.3",
    *,
    timers_name: str = "rfc",
    lab_name: str = DEFAULT_LAB,
    out_root: Path = Path("out"),
    progress: bool = True,
    forward_to: str | None = None,
) -> tuple[verdict.Verdict, Path]:
    """Run one scenario; returns the verdict and the run's artifact directory.

    Spans go to the embedded OTLP receiver (and on to `forward_to`, another OTLP endpoint).
    """
    scenario = SCENARIOS[scenario_name]
    timers = TIMERS[timers_name]
    show = Progress(progress)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{scenario.name}"
    out_dir = out_root / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    measurements: dict[str, float] = {}

    owned = lab_name not in NetnsLab.list_labs()
    if owned:
        show.stage(f"building lab {lab_name} and starting services")
        lab, topology, up_timings = lab_up(lab_name)
        measurements.update({f"lab_up_{k}_s": v for k, v in up_timings.items()})
    else:
        topology = load_topology()
        lab = NetnsLab(topology, name=lab_name)
    # a lab up in another process (pinhole lab up) gets a receiver for this run only
    receiver = _RECEIVERS.get(lab_name) or OtlpReceiver(f"unix:{otlp_socket(lab.run_dir)}")
    temporary = lab_name not in _RECEIVERS
    if temporary:
        receiver.start()
    receiver.clear()
    tracer_provider = run_span = capture = None
    clients = ServiceClients(lab.run_dir, service_kinds(topology))
    collector = EventCollector(clients, list(service_kinds(topology)), since=time.time())
    try:
        tracer_provider, tracer = telemetry.run_tracer(f"unix:{otlp_socket(lab.run_dir)}")
        show.stage("configuring services")
        configure(clients, topology, scenario, timers)
        natgw = topology.nodes["natgw"]
        capture = lab.capture("natgw", [natgw.extra.get("lan_if", "lan0"), natgw.extra.get("wan_if", "wan0")], out_dir)
        collector.start()
        show.stage("placing the call alice -> bob")
        placed = time.time()
        # the run is the root of the call's trace: PlaceCall carries its context to Alice
        run_span = tracer.start_span(f"pinhole.run {scenario.name}", attributes={"pinhole.scenario": scenario.name})
        run_context = trace.set_span_in_context(run_span)
        handle = clients.stub("alice").PlaceCall(
            useragent_pb2.PlaceCallRequest(target="sip:bob@b.example"), metadata=telemetry.grpc_metadata(run_context)
        )
        run_span.set_attribute("pinhole.call_id", handle.call_id)
        call_id = handle.call_id
        budget = timers.handshake_budget() + 64 * timers.sip_t1 + MEDIA_PACKETS * 0.02 + 10
        show.stage(f"call {call_id[:12]}: waiting for media or failure (up to {budget:.0f}s)")
        collector.wait_for(_call_over, timeout=budget)
        state = clients.stub("alice").GetCall(useragent_pb2.GetCallRequest(call_id=call_id)).state
        if state not in ("failed", "terminated"):  # Alice's own state, not an event still in flight
            show.stage("hanging up")
            clients.stub("alice").HangUp(
                useragent_pb2.HangUpRequest(call_id=call_id), metadata=telemetry.grpc_metadata(run_context)
            )
        # both user agents end the call (BYE either way, or a failure): then the evidence is complete
        collector.wait_for(lambda ev: _ended(ev, "alice") and _ended(ev, "bob"), timeout=64 * timers.sip_t1 + 5)
        if any(e["service"] == "alice" and e["attrs"].get("sip.status_code") == "200" for e in collector.snapshot()):
            # a dialog existed, so a BYE crossed the NAT (whoever sent it): wait for the gateway's report
            collector.wait_for(
                lambda ev: any(
                    e["service"] == "natgw" and e["kind"] in ("nat.call_ended", "nat.error") and e["call_id"] == call_id
                    for e in ev
                ),
                timeout=10,
            )
        show.stage("collecting evidence")
        for node in service_kinds(topology):  # every span made so far reaches the receiver
            clients.stub(node).FlushTelemetry(events_pb2.FlushRequest(), timeout=30)
        calls = {
            ua: to_dict(clients.stub(ua).GetCall(useragent_pb2.GetCallRequest(call_id=call_id)))
            for ua in ("alice", "bob")
        }
        mappings = to_dict(clients.stub("natgw").ListMappings(natgw_pb2.ListMappingsRequest())).get("mappings", [])
        counters = {
            node: {c.name: c.value for c in clients.stub(node).GetCounters(events_pb2.CountersRequest()).counters}
            for node in service_kinds(topology)
        }
    finally:
        collector.stop()
        if capture is not None:
            capture.stop()
        clients.close()
        if run_span is not None:
            run_span.end()
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the run's own span
        trace_request = receiver.request()
        if temporary:
            receiver.stop()
        if owned:
            show.stage("tearing the lab down")
            measurements["lab_down_s"] = _down(lab, topology, out_dir)

    events = collector.snapshot()  # what the services streamed over gRPC; the verdict reads the trace
    write_otlp_json(trace_request, out_dir / "trace.json")
    if forward_to:
        export(trace_request, forward_to)
    evidence = {
        "scenario": scenario.name,
        "timers": timers_name,
        "placed_at": placed,
        **from_trace.evidence_from_trace(trace_request, call_id),  # events, trace_id, NAT mappings
        "calls": calls,  # the user agents' own statistics, asked for over gRPC
        "nat_mappings_listed": [_flatten_mapping(m) for m in mappings],
        "counters": counters,
        "captures": {
            "inside": summarize_capture(out_dir / "natgw-lan0.pcap"),
            "outside": summarize_capture(out_dir / "natgw-wan0.pcap"),
        },
        "address_map": address_map(topology),
    }
    evidence["measurements"] = {
        **measurements,
        **_media_times(evidence["events"], placed),
        "trace_spans": sum(len(ss.spans) for rs in trace_request.resource_spans for ss in rs.scope_spans),
        "call_trace_spans": len(evidence["events"]),
        "trace_json_bytes": (out_dir / "trace.json").stat().st_size,
    }
    result = from_trace.judge_evidence(evidence, from_trace.services_seen(trace_request))
    lost = from_trace.lost_spans(trace_request, [e for e in events if e["call_id"] == call_id])
    if lost and not result.broken:  # every span the services said they made must be in the trace
        result.broken = f"{len(lost)} spans of the call never reached the trace (first: {lost[0]})"
    drawing = ladder.render(evidence)
    write_html({**evidence, "verdict": result.to_dict()}, out_dir / "ladder.html")
    (out_dir / "evidence.json").write_text(json.dumps(evidence, indent=1))
    (out_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (out_dir / "verdict.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out_dir / "ladder.txt").write_text(drawing + "\n")
    last = out_root / "last"
    if last.is_symlink() or last.exists():
        last.unlink()
    last.symlink_to(run_id)
    show.done()
    return result, out_dir


def _down(lab: NetnsLab, topology: Any, out_dir: Path) -> float:
    """Tear the lab down, keeping each service's log with the run's artifacts."""
    for node in service_kinds(topology):
        log = lab.run_dir / f"{node}.log"
        if log.exists():
            shutil.copy(log, out_dir / f"{node}.log")
    return lab_down(lab)


def _flatten_mapping(m: dict[str, Any]) -> dict[str, Any]:
    ep = lambda e: f"{e.get('ip', '')}:{e.get('port', 0)}"  # noqa: E731
    return {
        "internal": ep(m.get("internal", {})),
        "external": ep(m.get("external", {})),
        "remote": ep(m.get("remote", {})),
        "timeout_seconds": m.get("timeout_seconds", 0),
    }


def _media_times(events: list[dict[str, Any]], placed: float) -> dict[str, float]:
    """INVITE sent to the first SRTP packet decrypted, each way."""
    invite = next(
        (
            e
            for e in events
            if e["service"] == "alice" and e["kind"] == "sip.send" and e["attrs"].get("sip.method") == "INVITE"
        ),
        None,
    )
    placed = invite["t"] if invite else placed
    out = {}
    for receiver, direction in (("alice", "bob_to_alice"), ("bob", "alice_to_bob")):
        first = next((e for e in events if e["service"] == receiver and e["kind"] == "srtp.first_received"), None)
        if first is not None:
            out[f"invite_to_srtp_{direction}_s"] = round(first["t"] - placed, 4)
    return out


def address_map(topology: Any) -> dict[str, str]:
    """IP -> ladder column. The NAT's outside address stands for Alice when seen from the public side."""
    mapping = {}
    for node in topology.nodes.values():
        for address in node.addresses:
            mapping[address.split("/")[0]] = node.name
    natgw = topology.nodes["natgw"]
    wan = natgw.interfaces[natgw.extra.get("wan_if", "wan0")][0].split("/")[0]
    mapping[wan] = "alice"
    return mapping
