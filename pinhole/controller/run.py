"""Running a scenario end to end: lab, services, the call, the evidence, the verdict.

The controller only drives and observes: it configures every service over gRPC, asks Alice to
call Bob, follows every service's events (to know when the call is over), captures on both sides
of the NAT, receives every span over OTLP, and then judges the call from its trace
(from_trace.py, verdict.py) and draws it (ladder.py, ladder_html.py). Artifacts land in
out/<run-id>/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace

from pinhole import pcapng, semconv, telemetry, wire
from pinhole.capture import LinkCapture
from pinhole.controller import from_trace, ladder, synthesized, verdict
from pinhole.controller.externals import Externals
from pinhole.controller.ladder_html import write_html
from pinhole.controller.otlp import OtlpReceiver, export, write_otlp_json
from pinhole.controller.outcome import outcome_on_wire
from pinhole.controller.scenario import SCENARIOS, Scenario, ScenarioError, Trigger, fault_links, fault_plans
from pinhole.controller.services import (
    EventCollector,
    ServiceClients,
    local_targets,
    start_services,
    to_dict,
    wait_healthy,
)
from pinhole.lab import DEFAULT_BACKEND, Lab, LabError, Topology, list_labs, load_topology, open_lab
from pinhole.nat import NatBehaviour
from pinhole.pcapng import write_pcapng
from pinhole.rpc.v1 import events_pb2, natgw_pb2, proxy_pb2, useragent_pb2
from pinhole.sip.message import Request, Response
from pinhole.timers import TIMERS, TimerProfile
from pinhole.wire import RunInfo

DEFAULT_LAB = "ph-lab"


MEDIA_PACKETS = 50
AORS = {"alice": "sip:alice@a.example", "bob": "sip:bob@b.example", "bob2": "sip:bob@b.example"}  # bob2: a fork


class Progress:
    """One status line that says which stage a run is in."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.quiet = not enabled
        self.started = time.monotonic()
        self.current = ""  # the stage a run is in: what a broken run names

    def stage(self, text: str) -> None:
        self.current = text
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


def receiver_for(lab: Lab) -> OtlpReceiver:
    """The lab's OTLP receiver on its unix socket (open to the containers' unprivileged users)."""
    return OtlpReceiver(f"unix:{otlp_socket(lab.run_dir)}", socket_mode=lab.socket_mode)


def lab_up(
    name: str = DEFAULT_LAB, *, backend: str = DEFAULT_BACKEND, extra_env: dict[str, str] | None = None
) -> tuple[Lab, Topology, dict[str, float]]:
    """Build the lab's networks, start its OTLP receiver and every service, wait until all are SERVING."""
    topology = load_topology()
    lab = open_lab(name, backend, topology)
    timings = {"network": lab.up()}
    started = time.monotonic()
    receiver = receiver_for(lab)
    try:
        receiver.start()
        pids = start_services(
            lab, topology, otlp_endpoint=f"unix:{otlp_socket(lab.service_run_dir)}", extra_env=extra_env
        )
        wait_healthy(local_targets(lab.run_dir, pids), pids=pids, logs=lab.logs_hint())
    except BaseException as error:
        kept = Path(tempfile.mkdtemp(prefix=f"{name}-failed-"))
        lab.down(keep_logs=kept)
        receiver.stop()
        error.add_note(f"the services' logs are kept in {kept}")
        raise
    _RECEIVERS[name] = receiver
    timings["services"] = time.monotonic() - started
    return lab, topology, timings


def lab_down(lab: Lab, *, keep_logs: Path | None = None) -> float:
    """Stop the services (they flush their spans on SIGTERM), then the lab's receiver, then the rest.

    `keep_logs`: a directory that gets every service's log."""
    seconds = lab.down(keep_logs=keep_logs)
    receiver = _RECEIVERS.pop(lab.name, None)
    if receiver is not None:
        receiver.stop()
    return seconds


def service_kinds(topology: Topology, lab: Lab | None = None) -> dict[str, str]:
    """node -> service of every node whose service runs (in `lab` when given: a container lab runs no switch)."""
    return {n.name: n.service for n in topology.nodes.values() if n.service and (lab is None or lab.hosts_service(n))}


@dataclass(frozen=True)
class Endpoints:
    """Where the services live on the lab network, whichever backend runs them.

    The controller configures SIP routes and the STUN server from this alone, and names the
    ladder's columns by it: namespaces and containers take it from the topology, a Kubernetes
    run from the pods (`of_topology` / pinhole.controller.cluster).
    """

    addresses: dict[str, str]  # node -> IPv4 its service uses (SIP, STUN, media)
    nat_inside: str  # the NAT's address on Alice's LAN
    nat_outside: str  # the NAT's public address: Alice as the public side sees her
    sip_port: int = 5060
    stun_port: int = 3478
    proxies: dict[str, str] = field(default_factory=lambda: {"alice": "proxy-a", "bob": "proxy-b"})
    stun_server: str = "stun"
    nat_links: tuple[str, str] = ("natgw:lan0", "natgw:wan0")  # the captured links inside and outside the NAT
    more_addresses: dict[str, str] = field(default_factory=dict)  # IP -> node of every further address

    @classmethod
    def of_topology(cls, topology: Topology) -> Endpoints:
        nodes = topology.nodes
        natgw = nodes["natgw"]
        inside = natgw.interfaces[natgw.extra.get("lan_if", "lan0")][0].split("/")[0]
        outside = natgw.interfaces[natgw.extra.get("wan_if", "wan0")][0].split("/")[0]
        alice = nodes["alice"]
        return cls(
            addresses={n.name: n.addresses[0].split("/")[0] for n in nodes.values() if n.addresses},
            nat_inside=inside,
            nat_outside=outside,
            sip_port=alice.extra.get("sip_port", 5060),
            stun_port=nodes[alice.extra["stun_server"]].extra.get("stun_port", 3478),
            proxies={"alice": alice.extra["proxy"], "bob": nodes["bob"].extra["proxy"]},
            stun_server=alice.extra["stun_server"],
            nat_links=(f"natgw:{natgw.extra.get('lan_if', 'lan0')}", f"natgw:{natgw.extra.get('wan_if', 'wan0')}"),
            more_addresses={a.split("/")[0]: n.name for n in nodes.values() for a in n.addresses[1:]},
        )

    def sip(self, node: str) -> str:
        return f"{self.addresses[node]}:{self.sip_port}"

    def address_map(self) -> dict[str, str]:
        """IP -> ladder column. The NAT's outside address stands for Alice when seen from the public side."""
        mapping = {ip: node for node, ip in self.addresses.items() if node != "natgw"}
        mapping.update({ip: node for ip, node in self.more_addresses.items() if node != "natgw"})
        mapping[self.nat_inside] = "natgw"
        mapping[self.nat_outside] = "alice"
        return mapping


def _user(party: str) -> str:
    return AORS[party].split(":", 1)[1].split("@")[0]


def _domain(party: str) -> str:
    return AORS[party].split("@")[1]


def external_variables(topology: Topology, endpoints: Endpoints, node: str) -> dict[str, str]:
    """The template variables of an external node's files and command line (README: Testing your own
    implementation): the lab's addresses, and the call as pinhole's own services would be configured."""
    spec = topology.nodes[node]
    out = {
        "node": node,
        "address": endpoints.addresses[node],
        "sip_port": str(spec.extra.get("sip_port", endpoints.sip_port)),
        "stun": f"{endpoints.addresses[endpoints.stun_server]}:{endpoints.stun_port}",
        "stun_address": endpoints.addresses[endpoints.stun_server],
        "stun_port": str(endpoints.stun_port),
        "caller_aor": AORS["alice"],
        "callee_aor": AORS["bob"],
        "caller_domain": _domain("alice"),
        "callee_domain": _domain("bob"),
        "callee_user": _user("bob"),
        "callee": endpoints.sip("bob"),
    }
    for name, other in topology.nodes.items():
        if other.addresses:
            out[f"{name}.address"] = other.addresses[0].split("/")[0]
            out[f"{name}.sip_port"] = str(other.extra.get("sip_port", endpoints.sip_port))
    if node in AORS:  # a party of the call
        peer = "alice" if node != "alice" else "bob"
        proxy = spec.extra.get("proxy", "")
        out.update(aor=AORS[node], user=_user(node), domain=_domain(node), peer_aor=AORS[peer])
        if proxy:
            out.update(proxy=endpoints.sip(proxy), proxy_address=endpoints.addresses[proxy])
    if spec.service == "proxy":  # where each proxy sends what it does not answer itself (service_configs)
        next_hop = "proxy-b" if node == "proxy-a" else "bob"
        out.update(next_hop=endpoints.sip(next_hop), back_hop=endpoints.sip("proxy-a"))
    return out


@lru_cache(maxsize=1)
def _lab_identities(run: str, signers: tuple[tuple[str, str], ...]) -> tuple[bytes, dict[str, Any]]:
    """RFC 8224 credentials for one run (`run` names it): a lab CA made in memory, whose key is never written,
    and for each signing node a P-256 key and a certificate for its AoR. Kept for the run's next
    service_configs, so a restarted user agent is configured with the same ones."""
    from pinhole import labca

    authority = labca.Authority("pinhole lab identity CA", days=1)
    return authority.ca_pem, {node: labca.issue_identity(authority, aor) for node, aor in signers}


def service_configs(
    endpoints: Endpoints,
    scenario: Scenario,
    timers: TimerProfile,
    nat: NatBehaviour | None = None,
) -> dict[str, Any]:
    """Node -> the message its Configure takes to be in the scenario's state (the defaults are §7.3's)."""
    sip = endpoints.sip
    configs: dict[str, Any] = {"natgw": (nat or scenario.nat or NatBehaviour()).to_proto()}
    configs["proxy-a"] = proxy_pb2.ProxyConfig(
        sip_t1_seconds=timers.sip_t1,
        routes=[proxy_pb2.ProxyRoute(domain=_domain("bob"), next_hop=sip("proxy-b"))],
        deviations=scenario.deviations.get("proxy-a", ()),
    )
    # forking (RFC 5763 §6.3): the INVITE goes to bob and bob2 in parallel
    forks = [sip("bob2")] if scenario.bob2 is not None else []
    configs["proxy-b"] = proxy_pb2.ProxyConfig(
        deviations=scenario.deviations.get("proxy-b", ()),
        sip_t1_seconds=timers.sip_t1,
        routes=[
            proxy_pb2.ProxyRoute(domain=_domain("bob"), user=_user("bob"), next_hop=sip("bob"), fork_to=forks),
            proxy_pb2.ProxyRoute(domain=_domain("alice"), next_hop=sip("proxy-a")),
        ],
    )
    common = {"timers": timers.proto(), "media_packets": MEDIA_PACKETS}
    alice_config = {
        "aor": AORS["alice"],
        "display_name": "Alice",
        "outbound_proxy": sip(endpoints.proxies["alice"]),
        "stun_server": f"{endpoints.addresses[endpoints.stun_server]}:{endpoints.stun_port}",
        **common,
    }
    bob_config = {
        "aor": AORS["bob"],
        "display_name": "Bob",
        "outbound_proxy": sip(endpoints.proxies["bob"]),
        "auto_answer": True,
        "answer_setup": useragent_pb2.DTLS_SETUP_ACTIVE,
        **common,
    }
    deviations = scenario.deviations
    configs["alice"] = useragent_pb2.UserAgentConfig(
        **{**alice_config, **scenario.alice}, deviations=deviations.get("alice", ())
    )
    configs["bob"] = useragent_pb2.UserAgentConfig(
        **{**bob_config, **scenario.bob}, deviations=deviations.get("bob", ())
    )
    if scenario.bob2 is not None:  # a second Bob, the same user at another address
        configs["bob2"] = useragent_pb2.UserAgentConfig(
            **{**bob_config, "display_name": "Bob2", **scenario.bob2}, deviations=deviations.get("bob2", ())
        )
    if scenario.identity is not None:  # RFC 8224: signers get a key and certificate, verifiers the CA
        plan = scenario.identity
        signers = tuple((node, configs[node].aor) for node in plan.sign if node in configs)
        ca_pem, issued = _lab_identities(f"{scenario.source}:{scenario.name}", signers)
        for node, tls in issued.items():
            configs[node].identity.signing_key_pem, configs[node].identity.certificate_chain_pem = tls.key, tls.cert
        for node in (n for n in plan.verify if n in configs):
            configs[node].identity.trust_anchors_pem, configs[node].identity.require = ca_pem, plan.require
    return configs


def configure(
    clients: ServiceClients,
    endpoints: Endpoints,
    scenario: Scenario,
    timers: TimerProfile,
    nat: NatBehaviour | None = None,
) -> None:
    """Put every service in the scenario's state (the defaults are those of §7.3).

    `nat`: the gateway's RFC 4787 behaviour (default: the scenario's, else §7.3's; a cluster run
    reads it from its ConfigMap).
    """
    for node, config in service_configs(endpoints, scenario, timers, nat).items():
        if node in clients.kinds:  # an external node is configured by its own files
            clients.stub(node).Configure(config)
    # each fault service its part of the scenario's faults, or none: a lab that stays up must not keep the
    # last run's; faults on a service this lab does not run (a container lab has no switch) are refused
    plans = fault_plans(scenario, endpoints.addresses)
    missing = {node: plan for node, plan in plans.items() if plan.rules and node not in clients.kinds}
    for node, plan in missing.items():
        links = sorted({rule.match.link_name for rule in plan.rules})
        raise ScenarioError(
            f"{scenario.source}.faults: rules {', '.join(r.name for r in plan.rules)} impair link(s) "
            f"{', '.join(links)} of the {node} node, whose service this lab does not run (only the namespace "
            "lab has a switch: containers and pods meet on engine networks); run it with --backend netns"
        )
    for node, plan in plans.items():
        if node in clients.kinds:
            clients.stub(node).SetFaults(plan)


def _has(events: list[dict[str, Any]], service: str, kind: str) -> bool:
    return any(e["service"] == service and e["kind"] == kind for e in events)


def _ended(events: list[dict[str, Any]], service: str) -> bool:
    return _has(events, service, "call.terminated") or _has(events, service, "call.failed")


def _forks_over(events: list[dict[str, Any]]) -> bool:
    """A forked call (RFC 5763 §6.3): every fork done at Alice (its media sent, or it failed) and at both Bobs."""
    at_alice = {e["attrs"].get("fork") for e in events if e["service"] == "alice" and e["kind"] == "srtp.sent"}
    at_alice |= {e["attrs"].get("fork") for e in events if e["service"] == "alice" and e["kind"] == "call.fork_failed"}
    bobs_done = all(_has(events, bob, "srtp.sent") or _has(events, bob, "call.failed") for bob in ("bob", "bob2"))
    return (len(at_alice - {None}) >= 2 and bobs_done) or _has(events, "alice", "call.failed")


def _call_over(events: list[dict[str, Any]], agents: list[str]) -> bool:
    """Media done both ways at pinhole's user agents among the parties, or the call failed at one of them."""
    if all(_has(events, ua, "srtp.sent") for ua in agents):
        return True
    return any(e["kind"] in ("dtls.failed", "call.failed") and e["service"] in agents for e in events)


def _invite_from(address: str) -> Callable[[Any], bool]:
    """A captured frame carrying an initial INVITE sent from `address` (the external caller's)."""

    def match(packet: Any) -> bool:
        seen = wire.sip_in(packet)
        if seen is None or seen[0][0] != address:
            return False
        return isinstance(seen[1], Request) and seen[1].method == "INVITE"

    return match


def _bye_answered(call_id: str) -> Callable[[Any], bool]:
    """A captured frame carrying the 2xx to the call's BYE: the call is over on the wire."""

    def match(packet: Any) -> bool:
        seen = wire.sip_in(packet)
        if seen is None or not isinstance(seen[1], Response) or not 200 <= seen[1].status_code < 300:
            return False
        with contextlib.suppress(Exception):
            return seen[1].call_id == call_id and seen[1].cseq.method == "BYE"
        return False

    return match


@dataclass
class CallRecord:
    """What the controller learned over gRPC while driving one call (the verdict reads the trace)."""

    call_id: str
    placed: float
    events: list[dict[str, Any]]  # every service's events, as streamed by WatchEvents
    calls: dict[str, Any] = field(default_factory=dict)  # the user agents' own statistics (GetCall)
    mappings: list[dict[str, Any]] = field(default_factory=list)  # the NAT's mappings at the end (ListMappings)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    flushed: list[dict[str, Any]] = field(default_factory=list)  # events streamed before the services' flush
    restarts: list[dict[str, Any]] = field(default_factory=list)  # services killed and started again (when)
    key_log: list[str] = field(default_factory=list)  # the user agents' NSS key log lines of the call
    strangers: list[dict[str, Any]] = field(default_factory=list)  # datagrams sent by non-parties (when, where)


class RunInterrupted(Exception):
    """A lab service failed the run mid-way (a call refused, timed out, or its service gone): the run is
    broken, and `record` holds what was gathered until then, for the artifacts."""

    def __init__(self, why: str, record: CallRecord) -> None:
        super().__init__(why)
        self.why, self.record = why, record


class Restarter:
    """Kills a lab's service and starts it again, configured as before: the scenario's `restart` steps.

    `configs`: node -> its Configure message (service_configs); `after_start(node)` may set more (faults).
    """

    def __init__(
        self,
        lab: Lab,
        topology: Topology,
        clients: ServiceClients,
        configs: dict[str, Any],
        after_start: Callable[[str], None] | None = None,
    ) -> None:
        self.lab, self.topology, self.clients, self.configs = lab, topology, clients, configs
        self.after_start = after_start

    def kill(self, node: str, crash: bool) -> None:
        if node not in self.topology.nodes or not self.topology.nodes[node].service:
            raise ValueError(f"restart: {node!r} is no service node of the topology")
        self.lab.kill(node, crash=crash)

    def start(self, node: str) -> None:
        service_back(self.lab, node)
        self.clients.reconnect(node)
        if node in self.configs:
            self.clients.stub(node).Configure(self.configs[node], timeout=10)
        if self.after_start is not None:
            self.after_start(node)


def _reached(collector: EventCollector, trigger: Trigger, stop: threading.Event, since: float = 0.0) -> bool:
    """Wait until `trigger` happens (True) or the call is over without it (`stop`: False)."""
    collector.wait_for(lambda ev: stop.is_set() or trigger.reached(ev, since), timeout=None)
    return trigger.reached(collector.snapshot(), since)


def _restart_steps(
    restarter: Restarter,
    collector: EventCollector,
    scenario: Scenario,
    tracer: Any,
    run_context: Any,
    stop: threading.Event,
    done: list[dict[str, Any]],
) -> None:
    """Each step: wait for its kill trigger, kill; wait for its start trigger, start. A trigger that has not
    come when the call is over (`stop`), or a step that fails, ends the steps with an error the outcome
    names; a service killed is always started again, so the lab stays whole for the next run."""
    for step in scenario.restarts:
        record: dict[str, Any] = {"node": step.node, "crash": step.crash, "kill_after": step.kill_after.label()}
        record["start_after"] = step.start_after.label()
        done.append(record)
        try:
            if not _reached(collector, step.kill_after, stop):
                record["error"] = f"{step.kill_after.label()} never happened"
                return
            with tracer.start_as_current_span(
                semconv.PINHOLE_KILL,
                context=run_context,
                attributes=semconv.span_attributes({semconv.NODE: step.node, semconv.CRASH: step.crash}),
            ):
                record["killed"] = time.time()
                restarter.kill(step.node, step.crash)
            if not _reached(collector, step.start_after, stop, since=record["killed"]):
                record["error"] = f"{step.start_after.label()} never happened after the kill"
                return
            with tracer.start_as_current_span(
                semconv.PINHOLE_START,
                context=run_context,
                attributes=semconv.span_attributes({semconv.NODE: step.node}),
            ):
                restarter.start(step.node)
                record["started"] = time.time()
            collector.follow(step.node)
        except Exception as error:  # noqa: BLE001 - a failed step is evidence, not a crash of the run
            record["error"] = f"{type(error).__name__}: {error}"
            return
        finally:
            if "killed" in record and "started" not in record:
                try:  # the lab stays whole for the next run
                    restarter.start(step.node)
                    collector.follow(step.node)
                except Exception as error:  # noqa: BLE001
                    record["error"] = f"{record.get('error', '')}; starting {step.node} again failed: {error}"


def _unless_unknown(method: Callable[[Any], Any], request: Any) -> Any:
    """A user agent's answer about the call (GetCall, GetKeyLog); None where it never saw the call (under
    loss the INVITE may never reach it): that is evidence about the call, not a failure of the lab."""
    try:
        return method(request)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _stranger_steps(
    lab: Lab,
    collector: EventCollector,
    scenario: Scenario,
    tracer: Any,
    run_context: Any,
    stop: threading.Event,
    done: list[dict[str, Any]],
) -> None:
    """Each step: wait for its trigger, then send its datagrams from its node to the party's media socket
    (the address of the party's latest media.open). A step that cannot be carried out says why in its
    record: the run is then broken, since the scenario did not happen as written."""
    for step in scenario.strangers:
        record: dict[str, Any] = {"node": step.node, "send": step.send, "to": step.to, "count": step.count}
        record["after"] = step.after.label()
        done.append(record)
        if not _reached(collector, step.after, stop):
            record["error"] = f"{step.after.label()} never happened"
            return
        events = collector.snapshot()
        opened = [e["attrs"].get("local") for e in events if e["service"] == step.to and e["kind"] == "media.open"]
        if not opened or not opened[-1]:
            record["error"] = f"{step.to} opened no media socket to aim at"
            return
        record["target"] = opened[-1]
        argv = [sys.executable, "-m", "pinhole.stranger", "--send", step.send, "--to", opened[-1]]
        with tracer.start_as_current_span(
            semconv.PINHOLE_STRANGER,
            context=run_context,
            attributes=semconv.span_attributes({semconv.NODE: step.node, semconv.STRANGER: step.send}),
        ):
            try:
                result = lab.exec_in(step.node, [*argv, "--count", str(step.count)])
            except LabError as error:
                record["error"] = str(error)
                return
        record["sent"] = time.time()
        if result.returncode != 0:
            record["error"] = f"pinhole.stranger in {step.node} exited {result.returncode}: {result.stderr[-200:]!r}"
            return


def drive_call(
    clients: ServiceClients,
    kinds: dict[str, str],
    scenario: Scenario,
    timers: TimerProfile,
    tracer: Any,
    show: Progress,
    endpoints: Endpoints | None = None,
    restarter: Restarter | None = None,
    externals: Externals | None = None,
    capture: LinkCapture | None = None,
) -> CallRecord:
    """Place the call Alice -> Bob, wait until it is over, hang up, and flush every service's spans.

    With `restarter`, the scenario's restart steps run alongside the call, each on its own triggers. Where a
    party is `externals`', it is made to dial and hang up by its own actions, and where no pinhole user agent
    takes part at all the call is followed on the wire (`capture`).

    The run's span is the root of the call's trace: PlaceCall carries its context to Alice. It also
    carries the lab's address map (`endpoints`), so the trace alone can name every ladder column.
    Services must already be configured (and captures running).
    """
    parties = ["alice", "bob"] + (["bob2"] if scenario.bob2 is not None else [])
    agents = [ua for ua in parties if kinds.get(ua) == "useragent"]  # pinhole's own among the call's parties
    if "alice" not in agents and (externals is None or (capture is None and "bob" not in agents)):
        raise ValueError(f"{scenario.name}: an external caller needs the run's externals (and, alone, its capture)")
    collector = EventCollector(clients, list(kinds), since=time.time())
    run_span = None
    call_over = threading.Event()  # tells the restart steps that no trigger is coming any more
    budget = timers.handshake_budget() + 64 * timers.sip_t1 + MEDIA_PACKETS * 0.02 + 10
    call_id, placed = "", time.time()
    steps: list[threading.Thread] = []
    restarts: list[dict[str, Any]] = []
    stranger_steps: list[dict[str, Any]] = []

    def lost() -> list[str]:
        """The services whose event stream ended during the run, but for those a restart step killed."""
        return [problem for problem in collector.errors if problem.split(":")[0] not in {r["node"] for r in restarts}]

    try:
        collector.start()
        show.stage("placing the call alice -> bob")
        placed = time.time()
        attributes = {semconv.SCENARIO: scenario.name, semconv.FLOW: scenario.flow}
        if scenario.deviations:  # misbehaviour on purpose: nobody must take the run for a real failure
            attributes[semconv.DEVIATIONS] = scenario.deviations_text()
        if scenario.external:  # a third party in the lab: judged by its packets only
            attributes[semconv.EXTERNALS] = ", ".join(f"{n}:{x.label}" for n, x in sorted(scenario.external.items()))
        if endpoints is not None:
            attributes[semconv.ADDRESS_MAP] = json.dumps(endpoints.address_map(), sort_keys=True)
        run_span = tracer.start_span(semconv.PINHOLE_RUN, attributes=semconv.span_attributes(attributes))
        run_context = trace.set_span_in_context(run_span)
        if "alice" in agents:
            handle = clients.stub("alice").PlaceCall(
                useragent_pb2.PlaceCallRequest(target=AORS["bob"]), metadata=telemetry.grpc_metadata(run_context)
            )
            call_id = handle.call_id
        else:
            call_id = _dial(externals, collector, capture, endpoints, agents, budget)  # type: ignore[arg-type]
        run_span.set_attribute(semconv.span_key(semconv.CALL_ID), call_id)
        if (scenario.restarts or scenario.strangers) and restarter is None:
            raise ValueError(f"{scenario.name}: this backend cannot restart services or run commands in its nodes")
        steps += [  # each kind of step alongside the call, on its own thread and triggers
            threading.Thread(target=run_steps, args=(*hands, collector, scenario, tracer, run_context, call_over, done))
            for wanted, run_steps, hands, done in (
                (scenario.restarts, _restart_steps, (restarter,), restarts),
                (scenario.strangers, _stranger_steps, (restarter.lab if restarter else None,), stranger_steps),
            )
            if wanted
        ]
        for thread in steps:
            thread.daemon = True
            thread.start()
        if scenario.reinvites:
            modify_session(clients, collector, scenario, call_id, timers, run_context, show)
        show.stage(f"call {call_id[:12]}: waiting for media or failure (up to {budget:.0f}s)")
        if not agents:  # nobody of ours to ask: the call is over when its BYE is answered on the wire
            capture.wait_for(_bye_answered(call_id), timeout=budget)  # type: ignore[union-attr]
        elif scenario.bob2 is not None:
            collector.wait_for(_forks_over, timeout=budget)
        else:
            collector.wait_for(lambda ev: lost() or _call_over(ev, agents), timeout=budget)
        _hang_up(clients, agents, externals, call_id, run_context, show)
        # every party ends the call (BYE either way, or a failure): then the evidence is complete
        collector.wait_for(lambda ev: lost() or all(_ended(ev, ua) for ua in agents), timeout=64 * timers.sip_t1 + 5)
        if len(agents) < len(parties) and capture is not None:  # an external party's BYE: on the wire
            capture.wait_for(_bye_answered(call_id), timeout=64 * timers.sip_t1 + 5)
        events = collector.snapshot()
        answered = any(e["service"] in agents and e["attrs"].get("sip.status_code") == "200" for e in events)
        if answered or not agents:
            # a dialog existed, so a BYE crossed the NAT (whoever sent it): wait for the gateway's report
            collector.wait_for(
                lambda ev: (
                    lost()
                    or any(
                        e["service"] == "natgw"
                        and e["kind"] in ("nat.call_ended", "nat.error")
                        and e["call_id"] == call_id
                        for e in ev
                    )
                ),
                timeout=10,
            )
        if steps:  # a step still waiting for its trigger has none left to wait for
            call_over.set()
            collector.wake()
            for thread in steps:
                thread.join()  # every service a restart killed is up again before the evidence is asked for
        if lost():  # a service that died during the call would only make each question wait out its deadline
            raise RunInterrupted(
                f"the call: {lost()[0]} (its event stream ended)",
                CallRecord(call_id, placed, collector.snapshot(), restarts=restarts, strangers=stranger_steps),
            )
        show.stage("collecting evidence")
        # what has been streamed so far was recorded (its span ended) before the flush: it must be in the
        # trace; a late datagram recorded after the flush (a retransmission) may not be, and is no loss
        flushed = collector.snapshot()
        for node in kinds:  # every span made so far reaches the receiver
            clients.stub(node).FlushTelemetry(events_pb2.FlushRequest(), timeout=30)
        calls: dict[str, dict[str, Any]] = {}
        key_log: list[str] = []
        for ua in agents:
            stub = clients.stub(ua)
            status = _unless_unknown(stub.GetCall, useragent_pb2.GetCallRequest(call_id=call_id))
            keys = _unless_unknown(stub.GetKeyLog, useragent_pb2.GetKeyLogRequest(call_id=call_id))
            calls[ua] = to_dict(status) if status is not None else {}
            key_log += keys.lines if keys is not None else []
        key_log += externals.key_log() if externals else []
        mappings = to_dict(clients.stub("natgw").ListMappings(natgw_pb2.ListMappingsRequest())).get("mappings", [])
        counters = {
            node: {c.name: c.value for c in clients.stub(node).GetCounters(events_pb2.CountersRequest()).counters}
            for node in kinds
        }
    except grpc.RpcError as error:  # a service failed us: what was gathered so far is the evidence
        partial = CallRecord(call_id, placed, collector.snapshot(), restarts=restarts, strangers=stranger_steps)
        raise RunInterrupted(f"{show.current or 'driving the call'}: {error}", partial) from None
    finally:
        call_over.set()
        collector.wake()
        for thread in steps:  # a restart midway finishes (the lab stays whole) before anything else runs
            if thread.is_alive():
                thread.join(timeout=60)
        collector.stop()
        if run_span is not None:
            run_span.end()
    return CallRecord(
        call_id, placed, collector.snapshot(), calls, mappings, counters, flushed, restarts, key_log, stranger_steps
    )


def _dial(
    externals: Externals,
    collector: EventCollector,
    capture: LinkCapture,
    endpoints: Endpoints,
    agents: list[str],
    budget: float,
) -> str:
    """Make the external caller dial; its Call-ID, from pinhole's Bob when he takes part, else from the wire
    ("" when no INVITE comes: the caller never called)."""
    externals.dial("alice")
    if "bob" in agents:
        collector.wait_for(lambda ev: any(e["service"] == "bob" and e["call_id"] for e in ev), timeout=budget)
        return next((e["call_id"] for e in collector.snapshot() if e["service"] == "bob" and e["call_id"]), "")
    invite = capture.wait_for(_invite_from(endpoints.addresses["alice"]), timeout=budget)
    seen = wire.sip_in(invite) if invite is not None else None
    return seen[1].call_id if seen is not None else ""


def _hang_up(
    clients: ServiceClients, agents: list[str], externals: Externals | None, call_id: str, context: Any, show: Progress
) -> None:
    """The caller hangs up, as in RFC 5763's figures: pinhole's Alice over gRPC, an external one by her hang-up
    action; failing that, the callee. A side that has ended the call by itself (failed, or said BYE) is left
    alone."""
    for ua in ("alice", "bob"):
        if ua in agents:
            stub = clients.stub(ua)
            status = _unless_unknown(stub.GetCall, useragent_pb2.GetCallRequest(call_id=call_id))
            if status is None:  # it never saw the call (its INVITE lost): nothing of it to end
                continue
            if status.state not in ("failed", "terminated"):  # its own state, not an event still in flight
                show.stage(f"hanging up ({ua})")
                clients.stub(ua).HangUp(
                    useragent_pb2.HangUpRequest(call_id=call_id), metadata=telemetry.grpc_metadata(context)
                )
            return
        if externals is not None and externals.hang_up(ua):
            show.stage(f"hanging up ({ua}, external)")
            return


def _decrypting(events: list[dict[str, Any]]) -> bool:
    """SRTP decrypted on both sides: the call is up, and the next offer modifies a working session."""
    return all(_has(events, side, "srtp.first_received") for side in ("alice", "bob"))


def _failed(events: list[dict[str, Any]]) -> bool:
    return any(e["kind"] in ("dtls.failed", "call.failed") and e["service"] in ("alice", "bob") for e in events)


def _switched_or_failed(since: float, events: list[dict[str, Any]]) -> bool:
    """Both sides switched their SRTP to a new association's keys at `since` or later, or the call failed."""
    return _failed(events) or all(
        any(e["service"] == side and e["kind"] == "srtp.switched" and e["t"] >= since for e in events)
        for side in ("alice", "bob")
    )


REINVITE_SETUPS = {
    "keep": useragent_pb2.REINVITE_SETUP_KEEP,
    "flip": useragent_pb2.REINVITE_SETUP_FLIP,
    "actpass": useragent_pb2.REINVITE_SETUP_ACTPASS,
}


def modify_session(
    clients: ServiceClients,
    collector: EventCollector,
    scenario: Scenario,
    call_id: str,
    timers: TimerProfile,
    run_context: Any,
    show: Progress,
) -> None:
    """The scenario's re-INVITEs (RFC 5763 §6.6), one at a time, once SRTP flows both ways.

    After an offer that made a new association, the next waits until both sides switched their SRTP to
    its keys (`srtp.switched`), so each step modifies a settled session. What each did is in the call
    status (modifications, associations) that the outcome reads; a refused offer ends the steps.
    """
    budget = timers.handshake_budget() + 64 * timers.sip_t1 + 10
    collector.wait_for(lambda ev: _decrypting(ev) or _failed(ev), timeout=budget)
    if _failed(collector.snapshot()) or not _decrypting(collector.snapshot()):
        return
    for step in scenario.reinvites:
        show.stage(f"re-INVITE, {step.label()}")
        since = time.time()
        request = useragent_pb2.ReinviteRequest(
            call_id=call_id, new_certificate=step.new_certificate, setup=REINVITE_SETUPS[step.setup]
        )
        try:
            reply = clients.stub(step.by).Reinvite(
                request, metadata=telemetry.grpc_metadata(run_context), timeout=64 * timers.sip_t1 + 10
            )
        except grpc.RpcError as error:
            show.stage(f"re-INVITE refused: {error.code().name} {error.details()}")
            return
        if reply.modification.status_code != 200:
            return
        if reply.modification.new_association:
            collector.wait_for(partial(_switched_or_failed, since), timeout=budget)


SRTP_KEYS_ABOUT = (
    "SRTP master key and salt per SSRC, exported by the DTLS handshake (RFC 5764 §4.2) and derived from keys.log; "
    "key_salt is libsrtp's key||salt in base64 (rtp_decoder -k). Lab keys: they protect nothing."
)


def run_info(endpoints: Endpoints, scenario: Scenario, timers: TimerProfile, timers_name: str, call_id: str) -> RunInfo:
    """What the capture says about its run (wire.RunInfo), so the verdict can be had from the file alone."""
    addresses = {ip: node for ip, node in endpoints.address_map().items()}
    addresses[endpoints.nat_outside] = addresses[endpoints.nat_inside] = "natgw"
    return RunInfo(
        {
            "version": 1,
            "scenario": scenario.name,
            "flow": scenario.flow,
            "call_id": call_id,
            "roles": {"caller": "alice", "callee": "bob"},
            "addresses": addresses,
            "nat": {
                "node": "natgw",
                "inside": endpoints.nat_links[0],
                "outside": endpoints.nat_links[1],
                "translate": scenario.nat is None or scenario.nat.translate,
            },
            "proxies": list(dict.fromkeys([endpoints.proxies["alice"], endpoints.proxies["bob"]])),
            "timers": {"name": timers_name, "dtls_initial": timers.dtls_initial, "dtls_maximum": timers.dtls_maximum},
            "deviations": {node: list(names) for node, names in scenario.deviations.items()},
            "external": {node: x.label for node, x in scenario.external.items()},
        }
    )


def faults_bypassed(counters: dict[str, dict[str, int]]) -> str:
    """Why a run is broken when a fault engine let packets through unjudged (NFQUEUE fail-open, faster than it
    judges): the scenario's faults reached only part of the traffic, so its verdict would be another run's."""
    bypassed = {node: c["faults_queue_bypassed"] for node, c in counters.items() if c.get("faults_queue_bypassed")}
    if not bypassed:
        return ""
    counts = ", ".join(f"{node} {count}" for node, count in sorted(bypassed.items()))
    return (
        f"the fault engine let packets through unjudged (faults_queue_bypassed: {counts}): the faults were not applied"
    )


def judge_call(
    trace_request: Any,
    record: CallRecord,
    endpoints: Endpoints,
    *,
    scenario: Scenario,
    timers_name: str,
    out_dir: Path,
    capture: pcapng.Capture,
    measurements: Mapping[str, float | str],
    forward_to: str | None = None,
    capture_problems: list[str] | None = None,
    notes: list[str] | None = None,
    broken: str = "",
) -> verdict.Verdict:
    """Judge the call from the wire and write the run's artifacts (capture.pcapng, keys.log, trace.json,
    ladder, verdict, evidence).

    `capture`: every link the backend could capture, without its key log and run description yet;
    `capture_problems`: why it is not the whole wire beyond what its statistics say (a limit reached)."""
    call_id = record.call_id
    key_log = "".join(f"{line}\n" for line in dict.fromkeys(record.key_log))  # each association once
    (out_dir / "keys.log").write_text(key_log)
    info = run_info(endpoints, scenario, TIMERS[timers_name], timers_name, call_id)
    capture.comments = [info.comment()]
    capture.secrets = [(pcapng.SECRETS_TLS_KEY_LOG, key_log.encode())] if key_log else []
    write_pcapng(out_dir / "capture.pcapng", capture)
    started = time.perf_counter()
    on_the_wire = wire.decode(pcapng.read_pcapng(out_dir / "capture.pcapng"))  # what `pinhole verdict` reads too
    call = on_the_wire.call(call_id)
    if call is not None:  # every SSRC's SRTP master key and salt, for offline decryption
        keys_file = {"about": SRTP_KEYS_ABOUT, "streams": wire.srtp_key_entries(on_the_wire, call)}
        (out_dir / "srtp-keys.json").write_text(json.dumps(keys_file, indent=1))
    traced = from_trace.evidence_from_trace(trace_request, call_id)  # the services' own reports
    if scenario.external:  # one trace for the whole call: a third party's part synthesised from the wire
        synthesized.stitch(trace_request, call_id)
        if call is not None:
            synthesized.synthesize(
                trace_request, on_the_wire, call, call_id, {n: x.label for n, x in scenario.external.items()}
            )
    write_otlp_json(trace_request, out_dir / "trace.json")
    if forward_to:
        export(trace_request, forward_to)
    result = verdict.judge(on_the_wire, call_id=call_id, reports=traced["events"], scenario=scenario.name)
    result.notes += notes or []  # what the run saw beside the call (an external program's stragglers)
    result.broken = broken or result.broken  # the run stopped short (a service failed it): judged, but no verdict
    verdict_s = time.perf_counter() - started
    evidence = {
        "scenario": scenario.name,
        "flow": scenario.flow,  # the figure the checks follow
        "timers": timers_name,
        "placed_at": record.placed,
        **traced,  # events, trace_id, NAT mappings
        "calls": record.calls,  # the user agents' own statistics, asked for over gRPC
        "nat_mappings_listed": [_flatten_mapping(m) for m in record.mappings],
        "counters": record.counters,
        "address_map": endpoints.address_map(),
        "wire": wire.describe_call(on_the_wire, call) if call is not None else [],
    }
    if scenario.external:  # a party we did not write sends no report: whether the call worked, from the wire
        evidence["external"] = {node: x.label for node, x in scenario.external.items()}
        evidence["outcome"] = dataclasses.asdict(outcome_on_wire(on_the_wire, call_id))
    if record.restarts:  # the services killed and started again, and when
        evidence["restarts"] = record.restarts
    if record.strangers:  # what non-parties sent to the call's media, and when
        evidence["strangers"] = record.strangers
    if scenario.reinvites:  # what the outcome must find in the calls' modifications, in order
        evidence["reinvites"] = [
            {**dataclasses.asdict(step), "new_association_expected": step.changes_association}
            for step in scenario.reinvites
        ]
    evidence["measurements"] = {
        **measurements,
        **_media_times(evidence["events"], record.placed),
        "trace_spans": sum(len(ss.spans) for rs in trace_request.resource_spans for ss in rs.scope_spans),
        "call_trace_spans": len(evidence["events"]),
        "trace_json_bytes": (out_dir / "trace.json").stat().st_size,
        "capture_pcapng_bytes": (out_dir / "capture.pcapng").stat().st_size,
        "verdict_from_capture_s": round(verdict_s, 4),
    }
    crashed = {r["node"]: r["killed"] for r in record.restarts if r.get("crash") and "killed" in r}
    lost = from_trace.lost_spans(
        trace_request,
        [  # what a crashed service had not exported yet died with it: that is the fault, not a lost span
            e
            for e in record.flushed
            if e["call_id"] == call_id and not (e["service"] in crashed and e["t"] <= crashed[e["service"]])
        ],
    )
    if lost and not result.broken:  # every span the services said they made must be in the trace
        result.broken = f"{len(lost)} spans of the call never reached the trace (first: {lost[0]})"
    unsent = [f"stranger step from {s['node']}: {s.get('error', 'not carried out')}" for s in record.strangers]
    unsent = [why for why, step in zip(unsent, record.strangers, strict=True) if "sent" not in step]
    if unsent and not result.broken:  # the scenario did not happen as written
        result.broken = unsent[0]
    bypassed = faults_bypassed(record.counters)
    if bypassed and not result.broken:  # nor did it when its faults missed packets
        result.broken = bypassed
    if capture_problems and not result.broken:  # judged on part of the wire is no verdict
        result.broken = "; ".join(capture_problems)
    drawing = ladder.render(evidence)
    write_html({**evidence, "verdict": result.to_dict()}, out_dir / "ladder.html")
    (out_dir / "evidence.json").write_text(json.dumps(evidence, indent=1))
    (out_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in record.events))
    (out_dir / "verdict.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out_dir / "ladder.txt").write_text(drawing + "\n")
    return result


def new_run_dir(out_root: Path, scenario: Scenario) -> tuple[str, Path]:
    safe = re.sub(r"[^A-Za-z0-9.+,=\[\]-]", "_", scenario.name)  # a cell's name is one directory, whatever it says
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{safe}"
    out_dir = out_root / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    return run_id, out_dir


def link_last(out_root: Path, run_id: str) -> None:
    """out/last points at the newest run."""
    last = out_root / "last"
    if last.is_symlink() or last.exists():
        last.unlink()
    last.symlink_to(run_id)


def run(
    scenario_name: str | Scenario = "rfc5763-7.3",
    *,
    timers_name: str = "rfc",
    lab_name: str = DEFAULT_LAB,
    backend: str = "netns",
    out_root: Path = Path("out"),
    progress: bool = True,
    forward_to: str | None = None,
) -> tuple[verdict.Verdict, Path]:
    """Run one scenario on a local lab (namespaces or containers); returns the verdict and the run's
    artifact directory. The lab is brought up and down around the run unless it is already up.

    Spans go to the lab's embedded OTLP receiver (and on to `forward_to`, another OTLP endpoint).
    """
    scenario = SCENARIOS[scenario_name] if isinstance(scenario_name, str) else scenario_name
    timers = TIMERS[timers_name]
    show = Progress(progress)
    measurements: dict[str, float | str] = {"backend": backend}

    owned = lab_name not in list_labs(backend)
    if owned:
        show.stage(f"building lab {lab_name} ({backend}) and starting services")
        lab, topology, up_timings = lab_up(lab_name, backend=backend)
        measurements.update({f"lab_up_{k}_s": v for k, v in up_timings.items()})
    else:
        topology = load_topology()
        lab = open_lab(lab_name, backend, topology)
    # a lab up in another process (pinhole lab up) gets a receiver for this run only
    receiver = _RECEIVERS.get(lab_name) or receiver_for(lab)
    temporary = lab_name not in _RECEIVERS
    if temporary:
        receiver.start()
    receiver.clear()
    tracer_provider = capture = None
    interrupted: RunInterrupted | None = None
    kinds = {node: kind for node, kind in service_kinds(topology, lab).items() if node not in scenario.external}
    clients = ServiceClients.local(lab.run_dir, kinds)
    stopped = [] if owned else clients.not_serving()
    if stopped:
        if temporary:
            receiver.stop()
        raise LabError(
            f"lab {lab_name} is up but not whole ({'; '.join(stopped)}): see {lab.logs_hint()}, "
            f"then pinhole lab down --name {lab_name} and up again"
        )
    run_id, out_dir = new_run_dir(out_root, scenario)  # once the lab is there: a refused run leaves no empty one
    endpoints = Endpoints.of_topology(topology)
    externals = Externals(
        lab,
        scenario.external,
        out_dir,
        partial(external_variables, topology, endpoints),
        None if owned else partial(service_back, lab),
    )
    try:
        tracer_provider, tracer = telemetry.run_tracer(f"unix:{otlp_socket(lab.run_dir)}")
        capture = LinkCapture(lab.capture_points()).start()  # a third party's start-up is on the wire too
        externals.on_started = lambda node: capture.refresh(lab.capture_points())  # a container replaced
        show.stage("configuring services")
        configure(clients, endpoints, scenario, timers)
        if externals:
            show.stage(f"starting {', '.join(f'{n} ({x.label})' for n, x in scenario.external.items())}")
            externals.start()
        plans = fault_plans(scenario, endpoints.addresses) if scenario.faults else {}

        def refault(node: str) -> None:
            """A restarted fault service gets its part of the scenario's faults again."""
            if plans.get(node) is not None and plans[node].rules:
                clients.stub(node).SetFaults(plans[node], timeout=10)

        restarter = Restarter(lab, topology, clients, service_configs(endpoints, scenario, timers), refault)
        record = drive_call(clients, kinds, scenario, timers, tracer, show, endpoints, restarter, externals, capture)
    except grpc.RpcError as error:  # before the call: configuring a service
        interrupted = RunInterrupted(f"{show.current}: {error}", CallRecord("", time.time(), []))
    except RunInterrupted as stop:
        interrupted = stop
    finally:
        if capture is not None:
            capture.stop()
        externals.stop()
        for node in sorted(set(fault_links().values()) & set(kinds)) if scenario.faults else ():  # the lab may stay up
            with contextlib.suppress(grpc.RpcError):
                clients.stub(node).ClearFaults(natgw_pb2.ClearFaultsRequest(), timeout=10)
        clients.close()
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the run's own span
        trace_request = receiver.request()
        if temporary:
            receiver.stop()
        if owned:
            show.stage("tearing the lab down")
            measurements["lab_down_s"] = lab_down(lab, keep_logs=out_dir)

    if interrupted is not None:
        record = interrupted.record
    if capture is None:  # stopped before the capture started: there is no wire to judge
        why = interrupted.why if interrupted is not None else "no reason recorded"
        raise RuntimeError(f"the run stopped before its capture started: {why}")
    result = judge_call(
        trace_request,
        record,
        Endpoints.of_topology(topology),
        scenario=scenario,
        timers_name=timers_name,
        out_dir=out_dir,
        capture=capture.result(),
        measurements={**measurements, **{f"{n}_ready_s": round(t, 3) for n, t in externals.ready_s.items()}},
        forward_to=forward_to,
        capture_problems=capture.problems(),
        notes=externals.notes,
        broken=interrupted.why if interrupted is not None else "",
    )
    link_last(out_root, run_id)
    show.done()
    return result, out_dir


def service_back(lab: Lab, node: str) -> None:
    """Pinhole's service on `node` again after something else ran there: the lab stays whole."""
    pids = start_services(lab, lab.topology, otlp_endpoint=f"unix:{otlp_socket(lab.service_run_dir)}", only=[node])
    wait_healthy(local_targets(lab.run_dir, pids), timeout=30, pids=pids, logs=lab.logs_hint())


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
