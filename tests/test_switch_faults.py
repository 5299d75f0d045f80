"""Faults on the public links: scenario files naming them, the split between the NAT gateway and the
switch, the refusal where no switch runs (containers), and the switch's command line (no lab needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from containers.lab import ContainerLab
from pinhole.controller.run import Endpoints, configure, service_kinds
from pinhole.controller.scenario import ScenarioError, fault_links, fault_plans, load
from pinhole.controller.services import service_argv
from pinhole.lab import load_topology
from pinhole.rpc.v1 import faults_pb2
from pinhole.timers import TIMERS

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = load_topology()


def scenario(tmp_path: Path, rules: str):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nfaults: {rules}\nexpect: {{outcome: works}}\n")
    return load(path)[0]


def test_every_public_node_names_its_link_to_the_switch():
    links = fault_links(TOPOLOGY)
    assert links["lan"] == links["wan"] == "natgw"
    ends = [(link.a[0], link.b[0]) for link in TOPOLOGY.links]
    public = {a if b == "public" else b for a, b in ends if "public" in (a, b)}
    assert {"bob", "proxy-a", "proxy-b", "stun", "natgw"} <= public
    assert all(links[node] == "public" for node in public)


def test_rules_are_split_between_the_gateway_and_the_switch(tmp_path):
    s = scenario(
        tmp_path,
        "[{what: stun-request, action: drop}, {link: bob, direction: outbound, what: 'sip:200/INVITE', action: drop},"
        " {name: nat, link: wan, direction: inbound, action: delay, seconds: 0.5},"
        " {link: proxy-b, direction: inbound, peer: bob, action: reorder}]",
    )
    plans = fault_plans(s, {"bob": "203.0.113.40"}, TOPOLOGY)
    assert set(plans) == {"natgw", "public"}
    natgw, switch = plans["natgw"], plans["public"]
    assert [(r.name, r.match.link_name) for r in natgw.rules] == [("rule1", ""), ("nat", "wan")]
    assert natgw.rules[1].match.link == faults_pb2.FAULT_LINK_WAN  # lan and wan also as the enum
    assert [(r.name, r.match.link_name) for r in switch.rules] == [("rule2", "bob"), ("rule4", "proxy-b")]
    assert switch.rules[0].match.direction == faults_pb2.FAULT_DIRECTION_OUTBOUND
    assert switch.rules[1].match.peer == "203.0.113.40" and switch.rules[1].WhichOneof("action") == "reorder"


def test_a_service_without_rules_gets_an_empty_plan(tmp_path):
    plans = fault_plans(scenario(tmp_path, "[{link: lan, action: drop}]"), {}, TOPOLOGY)
    assert len(plans["natgw"].rules) == 1 and plans["public"] == faults_pb2.FaultPlan()
    none = load(ROOT / "scenarios" / "rfc5763-7.3.yaml")[0]
    assert fault_plans(none, {}, TOPOLOGY) == {"natgw": faults_pb2.FaultPlan(), "public": faults_pb2.FaultPlan()}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "[{link: carol, action: drop}]",
            "s.yaml.faults: rules[0].link: 'carol' is not lan, wan or a node on the public switch (",
        ),
        (
            "[{link: Bob!, action: drop}]",
            "s.yaml.faults: rules[0].link: 'Bob!' is not a link name (lan, wan, or a public node like bob)",
        ),
        (
            "[{link: lan, action: drop}, {link: bob, action: duplicate}]",
            "s.yaml.faults: rules[1].action: duplicate is not carried out here (only delay, drop, reorder) "
            "(link 'bob' is the public node's)",
        ),
        (
            "[{link: stun, action: expire-mapping}]",
            "s.yaml.faults: rules[0].action: expire-mapping is not carried out here (only delay, drop, reorder) "
            "(link 'stun' is the public node's)",
        ),
    ],
)
def test_a_link_or_action_no_service_has_is_refused_with_a_precise_error(tmp_path, rules, message):
    with pytest.raises(ScenarioError) as error:
        scenario(tmp_path, rules)
    assert _relative(error.value, tmp_path).startswith(message), str(error.value)


def _relative(error: Exception, tmp_path: Path) -> str:
    """The error as it names the file, from the test's directory."""
    return str(error).removeprefix(f"{tmp_path}/")


def test_the_shipped_public_link_scenario_is_the_switchs():
    [s] = load(ROOT / "scenarios" / "fault-bob-link-loss.yaml")
    plans = fault_plans(s, Endpoints.of_topology(TOPOLOGY).addresses, TOPOLOGY)
    assert [r.match.link_name for r in plans["public"].rules] == ["bob"] and not plans["natgw"].rules


class _Recorder:
    """A stub of any service: records the RPCs it gets."""

    def __init__(self, node: str, calls: list[tuple[str, str]]) -> None:
        self.node, self.calls = node, calls

    def __getattr__(self, rpc: str) -> Any:
        return lambda request, **_: self.calls.append((self.node, rpc))


class _Clients:
    def __init__(self, kinds: dict[str, str]) -> None:
        self.kinds, self.calls = kinds, []

    def stub(self, node: str) -> _Recorder:
        return _Recorder(node, self.calls)


def test_a_container_lab_runs_no_switch_and_refuses_switch_faults_before_the_call(tmp_path):
    lab = ContainerLab(TOPOLOGY, name="ph-unbuilt")  # never brought up: only asked what it hosts
    kinds = service_kinds(TOPOLOGY, lab)
    assert "public" not in kinds and kinds["natgw"] == "natgw"
    assert not lab.hosts_service(TOPOLOGY.nodes["public"])
    endpoints = Endpoints.of_topology(TOPOLOGY)
    clients = _Clients(kinds)
    s = scenario(tmp_path, "[{name: lose-bobs-200, link: bob, what: 'sip:200/INVITE', action: drop}]")
    with pytest.raises(ScenarioError) as error:
        configure(clients, endpoints, s, TIMERS["short"])  # type: ignore[arg-type]
    assert _relative(error.value, tmp_path).startswith(
        "s.yaml.faults: rules lose-bobs-200 impair link(s) bob of the public node, whose service this lab does "
        "not run (only the namespace lab has a switch"
    )
    assert ("natgw", "SetFaults") not in clients.calls and not any(node == "public" for node, _ in clients.calls)
    # gateway faults alone still run there
    clients = _Clients(kinds)
    configure(clients, endpoints, scenario(tmp_path, "[{link: lan, action: drop}]"), TIMERS["short"])  # type: ignore[arg-type]
    assert ("natgw", "SetFaults") in clients.calls


def test_a_namespace_lab_sends_every_fault_service_its_plan_or_an_empty_one(tmp_path):
    clients = _Clients(service_kinds(TOPOLOGY))
    configure(clients, Endpoints.of_topology(TOPOLOGY), scenario(tmp_path, "[]"), TIMERS["short"])  # type: ignore[arg-type]
    assert {("natgw", "SetFaults"), ("public", "SetFaults")} <= set(clients.calls)


def test_the_switch_is_started_on_its_bridge():
    argv = service_argv(TOPOLOGY.nodes["public"], Path("/run/x"))
    assert argv[2:] == ["services.switch", "--name", "public", "--grpc", "unix:/run/x/public.sock", "--bridge", "br0"]
