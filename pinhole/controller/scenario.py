"""Scenarios: one variant of the call (NAT behaviour, DTLS roles, check, latching) and what it must give.

A scenario file (scenarios/*.yaml, schema in scenarios/README.md) describes one scenario, or a matrix:
axes whose every combination is a cell, with rules saying which cells the RFCs predict to work. Files
are validated before anything runs; an error names the file, the key and what is wrong with it.
The NAT is spoken of in RFC 4787's words; the old cone names are accepted as aliases only.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pinhole import stranger
from pinhole.controller import verdict as figures
from pinhole.deviations import PROXY, USER_AGENT, DeviationError, checked
from pinhole.lab import Topology, load_topology
from pinhole.lab import external as external_spec
from pinhole.lab.external import External
from pinhole.nat import Filtering, Mapping, NatBehaviour, NatError
from pinhole.rpc.v1 import natgw_pb2, useragent_pb2

# RFC 3489's cone names (RFC 4787 §3 explains why they are not enough): aliases for (mapping, filtering)
NAT_ALIASES = {
    "full-cone": (Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT),
    "restricted-cone": (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT),
    "port-restricted-cone": (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT),
    "symmetric": (Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT),
}
NO_NAT = "none"  # no translation at all: the gateway as a plain router (RFC 5763 §7.1)
OUTCOMES = ("works", "fails")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")


class ScenarioError(ValueError):
    """A scenario that cannot run as written: the message says where and why."""


@dataclass(frozen=True)
class Expectation:
    """What a scenario must give: the call works or fails (and, for the §7.3 shape, which checks fail)."""

    outcome: str
    why: str = ""
    verdict: str | None = None  # "pass" or "fail": the §7.3 verdict, check by check
    failing: tuple[str, ...] = ()  # with verdict fail: the §7.3 checks that must fail (others must pass)
    forks: tuple[tuple[str, str], ...] = ()  # forking: each Bob's fork, works or fails, e.g. (("bob", "works"),)


REINVITE_SETUPS = ("keep", "flip", "actpass")


@dataclass(frozen=True)
class Reinvite:
    """One re-INVITE of the established call (RFC 5763 §6.6): who offers, and what the offer changes."""

    by: str = "alice"
    new_certificate: bool = False
    setup: str = "keep"  # keep: offer our current role; flip: the other one; actpass: let the answerer keep its

    @property
    def changes_association(self) -> bool:
        """§6.6: a new DTLS association exactly when the fingerprint or the roles change (pinhole's answerer
        keeps its role on actpass; the transport never changes here)."""
        return self.new_certificate or self.setup == "flip"

    def label(self) -> str:
        change = [c for c in ("new certificate" if self.new_certificate else "", f"setup {self.setup}") if c]
        return f"{self.by}: {', '.join(change)}"


@dataclass(frozen=True)
class Trigger:
    """The moment something happens: the `count`-th event `event` of service `node` with these attributes."""

    node: str
    event: str
    attrs: tuple[tuple[str, str], ...] = ()
    count: int = 1

    def reached(self, events: list[dict[str, Any]], since: float = 0.0) -> bool:
        seen = sum(
            1
            for e in events
            if e["service"] == self.node
            and e["kind"] == self.event
            and e["t"] >= since
            and all(e["attrs"].get(k) == v for k, v in self.attrs)
        )
        return seen >= self.count

    def label(self) -> str:
        attrs = "".join(f" {k}={v}" for k, v in self.attrs)
        return f"{self.node} {self.event}{attrs}" + (f" #{self.count}" if self.count > 1 else "")


@dataclass(frozen=True)
class Restart:
    """A service killed at one moment of the call and started again at another (then configured again)."""

    node: str
    kill_after: Trigger
    start_after: Trigger
    crash: bool = True  # SIGKILL: a crash, its unexported spans are lost; False: SIGTERM, a graceful stop


@dataclass(frozen=True)
class Stranger:
    """Datagrams (`pinhole.stranger.KINDS`) sent from `node` to `to`'s media address at a moment of the call."""

    node: str
    after: Trigger
    send: str
    to: str = "alice"
    count: int = 1


@dataclass(frozen=True)
class Identity:
    """RFC 8224 in the call (`identity:`): the parties that sign their INVITEs (the run's lab CA issues each a
    certificate for its AoR), those that verify them (they trust that CA), and whether those answer an
    unsigned INVITE 428."""

    sign: tuple[str, ...] = ("alice",)
    verify: tuple[str, ...] = ("bob",)
    require: bool = True


@dataclass(frozen=True)
class Scenario:
    """One variant of the call Alice -> Bob, with what it is expected to give.

    `alice`/`bob` are UserAgentConfig fields set on top of the §7.3 defaults; `nat` the gateway's
    behaviour (None: §7.3's NAT); the knobs answerer/stun_check/latching are recorded for the table.
    """

    name: str
    description: str
    expect_pass: bool = True
    alice: dict[str, Any] = field(default_factory=dict)
    bob: dict[str, Any] = field(default_factory=dict)
    nat: NatBehaviour | None = None
    timers: str | None = None
    expect: Expectation | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    faults: dict[str, Any] | None = None  # a fault plan (FaultPlan.from_dict): gateway and switch; peers may be nodes
    flow: str = figures.DEFAULT_FLOW  # the RFC 5763 figure the call is judged against, check by check
    reinvites: tuple[Reinvite, ...] = ()  # re-offers made in turn once SRTP flows both ways (RFC 5763 §6.6)
    restarts: tuple[Restart, ...] = ()  # services killed and started again during the call
    strangers: tuple[Stranger, ...] = ()  # datagrams from nodes that are not the call's peers
    bob2: dict[str, Any] | None = None  # forking (RFC 5763 §6.3): proxy-b forks to bob and bob2, set like this
    deviations: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> pinhole.deviations it runs
    external: dict[str, External] = field(default_factory=dict)  # node -> the third party's program run there
    identity: Identity | None = None  # RFC 8224: who signs, who verifies (None: nobody)

    def deviations_text(self) -> str:
        """ "bob:tamper-answer-fingerprint, proxy-b:proxy-rewrite-sdp": the run span's pinhole.deviations."""
        return ", ".join(f"{node}:{name}" for node, names in sorted(self.deviations.items()) for name in names)


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("rfc5763-7.3", "RFC 5763 §7.3: basic message flow with STUN check for the NAT case"),
        Scenario(
            "no-stun-check",
            "negative control: Alice sends no STUN check, Bob's ClientHellos die at the NAT",
            expect_pass=False,
            deviations={"alice": ("no-stun-check",)},
        ),
        Scenario(
            "bad-fingerprint",
            "negative control: Bob's answer carries a fingerprint that is not his certificate's",
            expect_pass=False,
            deviations={"bob": ("tamper-answer-fingerprint",)},
        ),
    ]
}

# the keys a scenario (or a matrix axis) may set, and the keys of a rule's `when`
SCENARIO_KEYS = {
    "name",
    "description",
    "flow",
    "timers",
    "nat",
    "answerer",
    "stun_check",
    "latching",
    "media_packets",
    "rtcp_mux",
    "deviations",
    "external",
    "identity",
    "expect",
    "faults",
    "fault_seed",
    "reinvite",
    "restart",
    "strangers",
    "fork",
    "ring",
    "matrix",
    "rules",
}
AXES = ("nat", "answerer", "stun_check", "latching", "rtcp_mux")
WHEN_KEYS = ("mapping", "filtering", "port_preservation", "answerer", "stun_check", "latching", "rtcp_mux")


def _fail(where: str, what: str) -> ScenarioError:
    return ScenarioError(f"{where}: {what}")


def _one_of(value: Any, table: Any) -> bool:
    """`value in table` for a table of names: a list or a mapping in a file is no name (and unhashable)."""
    return isinstance(value, str) and value in table


def parse_nat(value: Any, where: str) -> NatBehaviour:
    """A NAT as a cone alias, `none` (no translation), or {behaviour|mapping, filtering, mapping_timeout,
    port_preservation, hairpinning}; NatBehaviour validates, and the timer must meet RFC 4787 REQ-5."""
    if value == NO_NAT:
        return NatBehaviour(translate=False)
    if isinstance(value, str):
        if value not in NAT_ALIASES:
            aliases = ", ".join([*NAT_ALIASES, NO_NAT])
            raise _fail(where, f"{value!r} is not a NAT alias ({aliases}); or give mapping and filtering")
        return NatBehaviour(*NAT_ALIASES[value])
    if not isinstance(value, dict):
        raise _fail(where, f"expected a NAT alias or a mapping with keys mapping/filtering, not {value!r}")
    keys = ("behaviour", "mapping", "filtering", "mapping_timeout", "port_preservation", "hairpinning")
    unknown = set(value) - set(keys)
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(map(str, unknown))} ({', '.join(keys)})")
    nat = parse_nat(value["behaviour"], f"{where}.behaviour") if "behaviour" in value else NatBehaviour()
    untranslated = {"mapping", "filtering", "port_preservation", "hairpinning"}
    contradicting = sorted(untranslated & set(value)) if not nat.translate else []
    if contradicting:
        raise _fail(where, f"behaviour {NO_NAT} (no translation) leaves nothing for {', '.join(contradicting)}")
    for key in ("port_preservation", "hairpinning"):
        if key in value:
            _bool(value[key], f"{where}.{key}")
    try:
        return replace(nat, **{k: v for k, v in value.items() if k != "behaviour"}).require_req5()
    except NatError as error:
        raise _fail(f"{where}.{error.field}", str(error)) from None


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, not {value!r}")
    return value


def _answerer(value: Any, where: str) -> str:
    if value not in ("active", "passive"):
        raise _fail(where, f"{value!r}: Bob's a=setup in the answer is active or passive")
    return value


def parse_expect(value: Any, where: str, flow: str = figures.DEFAULT_FLOW) -> Expectation:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping with outcome (works|fails), not {value!r}")
    unknown = set(value) - {"outcome", "why", "verdict", "failing", "forks"}
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(map(str, unknown))} (outcome, why, verdict, failing, forks)")
    forks = value.get("forks", {})
    if not isinstance(forks, dict) or any(k not in ("bob", "bob2") or v not in OUTCOMES for k, v in forks.items()):
        raise _fail(f"{where}.forks", f"{forks!r}: {{bob: works|fails, bob2: works|fails}}")
    if value.get("outcome") not in OUTCOMES:
        raise _fail(f"{where}.outcome", f"{value.get('outcome')!r} is not works or fails")
    verdict = value.get("verdict")
    if verdict not in (None, "pass", "fail"):
        raise _fail(f"{where}.verdict", f"{verdict!r} is not pass or fail (the {flow} verdict)")
    failing = value.get("failing", [])
    messages = figures.messages(flow)
    if not isinstance(failing, list) or any(str(m) not in messages for m in failing):
        raise _fail(f"{where}.failing", f"{failing!r}: a list of {flow} messages ({', '.join(messages)})")
    if failing and verdict != "fail":
        raise _fail(f"{where}.failing", "names failing checks, so verdict must be fail")
    if verdict == "pass" and value["outcome"] == "fails":
        raise _fail(where, f"a call that fails cannot pass the {flow} verdict")
    return Expectation(
        value["outcome"],
        str(value.get("why", "")),
        verdict,
        tuple(str(m) for m in failing),
        tuple(sorted(forks.items())),
    )


def build(settings: dict[str, Any], where: str, *, name: str, description: str, source: str) -> Scenario:
    """A Scenario from validated settings: the knobs become UserAgentConfig fields of the right side."""
    answerer = settings.get("answerer", "active")
    stun_check = settings.get("stun_check", True)
    latching = settings.get("latching", False)
    alice: dict[str, Any] = {}
    bob: dict[str, Any] = {
        "answer_setup": useragent_pb2.DTLS_SETUP_ACTIVE if answerer == "active" else useragent_pb2.DTLS_SETUP_PASSIVE
    }
    deviations = {node: list(names) for node, names in settings.get("deviations", {}).items()}
    fork = settings.get("fork")
    if not stun_check:  # RFC 5763 §6.7.2: the check is the DTLS-passive side's (Alice when Bob answers active)
        passive = ["alice"] if answerer == "active" else ["bob"] + (["bob2"] if fork is not None else [])
        for node in passive:
            deviations.setdefault(node, []).append("no-stun-check")
    if fork:
        deviations.setdefault("bob2", []).extend(fork.get("deviations", ()))
    if latching:
        if "latching" not in useragent_pb2.UserAgentConfig.DESCRIPTOR.fields_by_name:
            raise _fail(f"{where}.latching", "this build's user agent cannot latch (no UserAgentConfig.latching)")
        bob["latching"] = True
    if settings.get("ring"):  # Bob picks up later; his handshake and early media do not wait (§7.1)
        bob["ring_seconds"] = settings["ring"]
    if "media_packets" in settings:
        alice["media_packets"] = bob["media_packets"] = settings["media_packets"]
    if settings.get("rtcp_mux") is False:  # both sides: RTP and RTCP each on its own association (RFC 5764 §4)
        alice["rtcp_mux"] = bob["rtcp_mux"] = False
    nat = settings.get("nat", NatBehaviour())
    knobs = {"nat": nat.label(), "answerer": answerer, "stun_check": stun_check, "latching": latching}
    if "rtcp_mux" in settings:
        knobs["rtcp_mux"] = settings["rtcp_mux"]
    deviated = {node: tuple(dict.fromkeys(names)) for node, names in sorted(deviations.items()) if names}
    return Scenario(
        name=name,
        description=description,
        expect_pass=settings["expect"].outcome == "works" if "expect" in settings else True,
        alice=alice,
        bob=bob,
        nat=nat,
        timers=settings.get("timers"),
        expect=settings.get("expect"),
        knobs=knobs,
        source=source,
        faults=settings.get("faults"),
        flow=settings.get("flow", figures.DEFAULT_FLOW),
        reinvites=settings.get("reinvite", ()),
        restarts=settings.get("restart", ()),
        strangers=settings.get("strangers", ()),
        bob2=_fork_side(fork, bob),
        deviations=deviated,
        external=settings.get("external", {}),
        identity=settings.get("identity"),
    )


def _settings(data: dict[str, Any], where: str, *, axes: bool = False) -> dict[str, Any]:
    """Validate the scenario-level keys (not name/matrix/rules); returns normalised values."""
    out: dict[str, Any] = {}
    if "flow" in data:
        if not _one_of(data["flow"], figures.FLOWS):
            raise _fail(f"{where}.flow", f"{data['flow']!r} is not one of {', '.join(figures.FLOWS)}")
        out["flow"] = data["flow"]
    if "timers" in data:
        if data["timers"] not in ("rfc", "short"):
            raise _fail(f"{where}.timers", f"{data['timers']!r} is not rfc or short")
        out["timers"] = data["timers"]
    if "nat" in data:
        out["nat"] = parse_nat(data["nat"], f"{where}.nat")
    if "answerer" in data:
        out["answerer"] = _answerer(data["answerer"], f"{where}.answerer")
    for key in ("stun_check", "latching", "rtcp_mux"):
        if key in data:
            out[key] = _bool(data[key], f"{where}.{key}")
    if "ring" in data:
        ring = data["ring"]
        if isinstance(ring, bool) or not isinstance(ring, (int, float)) or not 0 <= ring <= 30:
            raise _fail(f"{where}.ring", f"{ring!r}: seconds Bob rings before answering, 0..30")
        out["ring"] = float(ring)
    if "media_packets" in data:
        count = data["media_packets"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise _fail(f"{where}.media_packets", f"{count!r}: a whole number of packets, 1..1000")
        out["media_packets"] = count
    if "expect" in data:
        out["expect"] = parse_expect(data["expect"], f"{where}.expect", out.get("flow", figures.DEFAULT_FLOW))
    if "reinvite" in data:
        out["reinvite"] = parse_reinvites(data["reinvite"], f"{where}.reinvite")
    if "restart" in data:
        out["restart"] = parse_restarts(data["restart"], f"{where}.restart")
    if "strangers" in data:
        out["strangers"] = parse_strangers(data["strangers"], f"{where}.strangers")
    if "fork" in data:
        out["fork"] = parse_fork(data["fork"], f"{where}.fork")
    if "deviations" in data:
        out["deviations"] = parse_deviations(data["deviations"], f"{where}.deviations")
    if "faults" in data or "fault_seed" in data:
        out["faults"] = parse_faults(data.get("faults", []), data.get("fault_seed", 0), where)
    if "external" in data:
        out["external"] = parse_external(data["external"], f"{where}.external", Path(where).parent)
        clash = sorted(set(out["external"]) & set(out.get("deviations", {})))
        if clash:
            raise _fail(f"{where}.deviations.{clash[0]}", "an external node runs no pinhole service to deviate")
    if "identity" in data:
        out["identity"] = parse_identity(data["identity"], f"{where}.identity")
        staged = set(out["identity"].sign + out["identity"].verify) if out["identity"] else set()
        clash = sorted(staged & set(out.get("external", {})))
        if clash:
            raise _fail(f"{where}.identity", f"{clash[0]} is external: no pinhole user agent there signs or verifies")
    return out


def parse_identity(value: Any, where: str) -> Identity | None:
    """`identity: true` (Alice signs, Bob verifies and requires), `false`, or `{sign: [...], verify: [...],
    require: bool}` naming parties of the call (unset lists keep those defaults; require defaults to true)."""
    if isinstance(value, bool):
        return Identity() if value else None
    if not isinstance(value, dict) or set(value) - {"sign", "verify", "require"}:
        raise _fail(where, f"true, false or {{sign: [PARTY, ...], verify: [PARTY, ...], require: bool}}, not {value!r}")
    lists = {}
    for key in ("sign", "verify"):
        parties = value.get(key, list(getattr(Identity(), key)))
        if not isinstance(parties, list) or any(not _one_of(p, PARTIES) for p in parties):
            raise _fail(f"{where}.{key}", f"{parties!r}: a list of parties ({', '.join(PARTIES)})")
        if len(set(parties)) != len(parties):
            raise _fail(f"{where}.{key}", f"{parties!r} names a party twice")
        lists[key] = tuple(parties)
    require = _bool(value.get("require", True), f"{where}.require")
    if not lists["sign"] and not lists["verify"]:
        raise _fail(where, "nobody signs and nobody verifies: leave identity out")
    if require and not lists["verify"]:
        raise _fail(f"{where}.require", "only a party that verifies (verify: [...]) can require an Identity")
    return Identity(lists["sign"], lists["verify"], require)


PARTIES = ("alice", "bob", "bob2")  # the user agents of the call; the other nodes are the lab's


def parse_external(value: Any, where: str, base: Path) -> dict[str, External]:
    """`external: {NODE: {role, program|image, files, ready, dial, ...}}` (pinhole.lab.external): a third party's
    program in place of pinhole's service on a host node; a user agent only where a party of the call is."""
    if not isinstance(value, dict) or not value:
        raise _fail(where, "a mapping NODE: {role, program, ...}")
    nodes = load_topology().nodes
    out = {}
    for node, spec in value.items():
        here = f"{where}.{node}"
        if node not in nodes or nodes[node].kind != "host":
            hosts = ", ".join(n for n, s in nodes.items() if s.kind == "host")
            raise _fail(here, f"not a host node of the lab (one of {hosts}): the NAT and the switch stay pinhole's")
        try:
            external = external_spec.parse(node, spec, here, base)
        except external_spec.ExternalError as error:
            raise ScenarioError(str(error)) from None
        kind = nodes[node].service
        if external.role == "ua" and node not in PARTIES or external.role == "proxy" and kind != PROXY:
            raise _fail(f"{here}.role", f"{external.role} does not fit node {node} (its service is {kind})")
        out[node] = external
    return out


def parse_reinvites(value: Any, where: str) -> tuple[Reinvite, ...]:
    """`reinvite: [{by: alice|bob, new_certificate: bool, setup: keep|flip|actpass}, ...]`"""
    if not isinstance(value, list) or not value:
        raise _fail(where, "a list of re-offers: [{by: alice|bob, new_certificate: true|false, setup: ...}]")
    steps = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise _fail(here, f"expected {{by, new_certificate, setup}}, not {item!r}")
        unknown = set(item) - {"by", "new_certificate", "setup"}
        if unknown:
            raise _fail(here, f"unknown key(s) {sorted(map(str, unknown))} (by, new_certificate, setup)")
        by = item.get("by", "alice")
        if by not in ("alice", "bob"):
            raise _fail(f"{here}.by", f"{by!r} is not alice or bob")
        setup = item.get("setup", "keep")
        if setup not in REINVITE_SETUPS:
            raise _fail(f"{here}.setup", f"{setup!r} is not one of {', '.join(REINVITE_SETUPS)}")
        new_certificate = _bool(item.get("new_certificate", False), f"{here}.new_certificate")
        steps.append(Reinvite(by, new_certificate, setup))
    return tuple(steps)


def parse_fork(value: Any, where: str) -> dict[str, Any] | None:
    """`fork: true`, or `fork: {deviations: [...]}` (bob2's own, e.g. tamper-answer-fingerprint: his answer lies)."""
    if value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict) or set(value) - {"deviations"}:
        raise _fail(where, f"true, false or {{deviations: [NAME, ...]}}, not {value!r}")
    return {"deviations": parse_deviations({"bob2": value.get("deviations", [])}, where)["bob2"]}


def parse_deviations(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    """`deviations: {NODE: [NAME, ...]}`: pinhole's own services misbehaving on purpose (pinhole.deviations)."""
    kinds = {n.name: n.service for n in load_topology().nodes.values() if n.service in (USER_AGENT, PROXY)}
    if not isinstance(value, dict):
        raise _fail(where, f"a mapping NODE: [DEVIATION, ...] (nodes: {', '.join(kinds)}), not {value!r}")
    out = {}
    for node, names in value.items():
        if node not in kinds:
            raise _fail(f"{where}.{node}", f"not a user agent or proxy of the lab ({', '.join(kinds)})")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _fail(f"{where}.{node}", f"a list of deviation names, not {names!r}")
        try:
            checked(names, kinds[node], f"{where}.{node}")
        except DeviationError as error:
            raise ScenarioError(str(error)) from None
        out[node] = tuple(names)
    return out


def _fork_side(fork: dict[str, Any] | None, bob: dict[str, Any]) -> dict[str, Any] | None:
    """bob2 answers as bob does (role, latching); his deviations are the scenario's `deviations` of bob2."""
    return None if fork is None else dict(bob)


NODE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
EVENT_RE = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def parse_trigger(value: Any, where: str) -> Trigger:
    """`{node, event, attrs: {name: value}, count}`: the `count`-th such event (default the first)."""
    if not isinstance(value, dict) or not {"node", "event"} <= set(value):
        raise _fail(where, "expected {node: NODE, event: KIND, attrs: {...}, count: N}")
    unknown = set(value) - {"node", "event", "attrs", "count"}
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(map(str, unknown))} (node, event, attrs, count)")
    if not isinstance(value["node"], str) or not NODE_RE.match(value["node"]):
        raise _fail(f"{where}.node", f"{value['node']!r} is not a node name")
    if not isinstance(value["event"], str) or not EVENT_RE.match(value["event"]):
        raise _fail(f"{where}.event", f"{value['event']!r} is not an event kind such as sip.send")
    attrs = value.get("attrs", {})
    if not isinstance(attrs, dict) or not all(isinstance(k, str) for k in attrs):
        raise _fail(f"{where}.attrs", f"{attrs!r}: a mapping of attribute names to values")
    attributes = tuple(sorted((k, str(v)) for k, v in attrs.items()))
    return Trigger(value["node"], value["event"], attributes, _count(value, where))


def _steps(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """Each item of a list of steps (`restart:`, `strangers:`), with where it is, once its keys are checked:
    every `required` one present, none but those and `optional`, and `node` a node name."""
    keys = ", ".join(required + optional)
    if not isinstance(value, list) or not value:
        raise _fail(where, f"a list of {{{keys}}}")
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, dict) or not set(required) <= set(item):
            raise _fail(here, f"expected {{{keys}}} with {', '.join(required)}")
        unknown = set(item) - set(required) - set(optional)
        if unknown:
            raise _fail(here, f"unknown key(s) {sorted(map(str, unknown))} ({keys})")
        if not isinstance(item["node"], str) or not NODE_RE.match(item["node"]):
            raise _fail(f"{here}.node", f"{item['node']!r} is not a node name")
        yield here, item


def _count(item: dict, here: str) -> int:
    count = item.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
        raise _fail(f"{here}.count", f"{count!r}: a whole number, 1..100")
    return count


def parse_restarts(value: Any, where: str) -> tuple[Restart, ...]:
    """`restart: [{node, crash, kill_after: TRIGGER, start_after: TRIGGER}, ...]`"""
    return tuple(
        Restart(
            item["node"],
            parse_trigger(item["kill_after"], f"{here}.kill_after"),
            parse_trigger(item["start_after"], f"{here}.start_after"),
            _bool(item.get("crash", True), f"{here}.crash"),
        )
        for here, item in _steps(value, where, ("node", "kill_after", "start_after"), ("crash",))
    )


def parse_strangers(value: Any, where: str) -> tuple[Stranger, ...]:
    """`strangers: [{node, send, after: TRIGGER, to, count}, ...]`"""
    steps = []
    for here, item in _steps(value, where, ("node", "send", "after"), ("to", "count")):
        to = item.get("to", "alice")
        if not isinstance(to, str) or to not in PARTIES:
            raise _fail(f"{here}.to", f"{to!r}: the stranger aims at a party's media: {', '.join(PARTIES)}")
        if not _one_of(item["send"], stranger.KINDS):
            raise _fail(f"{here}.send", f"{item['send']!r} is not one of {', '.join(sorted(stranger.KINDS))}")
        after = parse_trigger(item["after"], f"{here}.after")
        steps.append(Stranger(item["node"], after, item["send"], to, _count(item, here)))
    return tuple(steps)


PLACEHOLDER = "192.0.2.1"  # stands for a node's address while a plan is validated (TEST-NET-1)
GATEWAY_LINKS = ("lan", "wan")  # the NAT gateway's links; a rule without `link` is the gateway's too


def fault_links(topology: Topology | None = None) -> dict[str, str]:
    """Every link a fault rule may name -> the node whose service impairs it: `lan` and `wan` are the
    NAT gateway's, a public node's name (`bob`) is the link between that node and the switch."""
    topology = topology if topology is not None else load_topology()
    out: dict[str, str] = {}
    for node in topology.nodes.values():
        if node.service == "natgw":
            out.update(dict.fromkeys(GATEWAY_LINKS, node.name))
        elif node.service == "switch":
            for link in topology.links:
                for (end, _), (other, _) in ((link.a, link.b), (link.b, link.a)):
                    if end == node.name:
                        out[other] = node.name
    return out


def _fault_places(topology: Topology) -> tuple[dict[str, str], dict[str, Any]]:
    """(link -> node, node -> its engine.LinkMap with stand-in ifindexes: names and actions only)."""
    from pinhole.faults.engine import BridgePorts, RoutedLinks

    links = fault_links(topology)
    kinds = {node: topology.nodes[node].service for node in set(links.values())}
    places = {
        node: RoutedLinks(GATEWAY_LINKS[0], 1, GATEWAY_LINKS[1], 2)
        if kind == "natgw"
        else BridgePorts(dict(enumerate(sorted(link for link, n in links.items() if n == node), start=1)))
        for node, kind in kinds.items()
    }
    return links, places


def _split_faults(rules: list[Any], links: dict[str, str]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """node -> its (index in the file, rule) pairs; a rule without a name gets the file's rule<N>."""
    gateway = next((node for link, node in links.items() if link in GATEWAY_LINKS), "")
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {node: [] for node in set(links.values())}
    for index, rule in enumerate(rules):
        node = links.get(rule.get("link") or GATEWAY_LINKS[0], gateway)
        out.setdefault(node, []).append((index, {**rule, "name": rule.get("name") or f"rule{index + 1}"}))
    return out


def parse_faults(rules: Any, seed: Any, where: str, topology: Topology | None = None) -> dict[str, Any]:
    """A fault plan, validated by the engine's own rules (pinhole/faults/engine.py), then split by
    link: `lan`, `wan` or none go to the NAT gateway, a public node's name to the switch, and each
    must be an action that service carries out.

    `peer` may name a node of the topology ("bob", "stun"); the run puts its address there."""
    from pinhole.faults.engine import FaultError, FaultPlan, check_plan

    if not isinstance(rules, list):
        raise _fail(f"{where}.faults", "a list of rules: {name, link, direction, what, peer, nth, count, action, ...}")
    for index, rule in enumerate(rules):  # the engine's fields are all single values; a table is none
        for key, value in rule.items() if isinstance(rule, dict) else ():
            if value is not None and not isinstance(value, (str, int, float)):
                raise _fail(f"{where}.faults", f"rules[{index}].{key}: {value!r} is not a text or a number")
    plan = {"rules": rules, "seed": seed}
    try:
        FaultPlan.from_dict({"rules": [_with_peer(r, lambda node: PLACEHOLDER) for r in rules], "seed": seed})
    except FaultError as error:
        raise _fail(f"{where}.faults", str(error)) from None
    links, places = _fault_places(topology if topology is not None else load_topology())
    for index, rule in enumerate(rules):
        if rule.get("link") and rule["link"] not in links:
            public = ", ".join(sorted(set(links) - set(GATEWAY_LINKS)))
            raise _fail(
                f"{where}.faults",
                f"rules[{index}].link: {rule['link']!r} is not lan, wan or a node on the public switch ({public})",
            )
    for node, pairs in _split_faults(rules, links).items():
        for index, rule in pairs:
            try:
                check_plan(FaultPlan.from_dict({"rules": [_with_peer(rule, lambda node: PLACEHOLDER)]}), places[node])
            except FaultError as error:
                link = rule.get("link") or "lan"
                why = str(error).removeprefix("rules[0].")
                raise _fail(f"{where}.faults", f"rules[{index}].{why} (link {link!r} is the {node} node's)") from None
    return plan


def _with_peer(rule: Any, address_of: Any) -> Any:
    """The rule with a node name in `peer` replaced by that node's address (other values unchanged)."""
    if not isinstance(rule, dict) or not isinstance(rule.get("peer"), str):
        return rule
    host, _, port = rule["peer"].partition(":")
    if host.replace(".", "").isdigit() or not NAME_RE.match(host):
        return rule
    return {**rule, "peer": address_of(host) + (f":{port}" if port else "")}


def fault_plans(
    scenario: Scenario, addresses: dict[str, str], topology: Topology | None = None
) -> dict[str, natgw_pb2.FaultPlan]:
    """The scenario's faults as each fault-injecting service's SetFaults request, node -> plan (the
    NAT gateway's and the switch's nodes, each present: a node without rules gets an empty plan, which
    clears what a lab that stays up kept from its last run); node names in `peer` resolved to `addresses`."""
    from pinhole.faults.engine import FaultPlan
    from pinhole.faults.wire import fault_plan_proto

    doc = scenario.faults or {"rules": [], "seed": 0}

    def address_of(node: str) -> str:
        if node not in addresses:
            nodes = ", ".join(addresses)
            raise ScenarioError(f"{scenario.source}.faults: peer {node!r} is no node of the lab ({nodes})")
        return addresses[node]

    links = fault_links(topology)
    return {
        node: fault_plan_proto(
            FaultPlan.from_dict({"rules": [_with_peer(rule, address_of) for _, rule in pairs], "seed": doc["seed"]})
        )
        for node, pairs in sorted(_split_faults(doc["rules"], links).items())
    }


@dataclass(frozen=True)
class Rule:
    when: dict[str, Any]
    expect: Expectation

    def matches(self, cell: dict[str, Any]) -> bool:
        return all(cell.get(key) == value for key, value in self.when.items())


def _rules(value: Any, where: str, flow: str = figures.DEFAULT_FLOW) -> list[Rule]:
    if not isinstance(value, list) or not value:
        raise _fail(where, "a matrix needs rules: a list of {when: {...}, outcome: works|fails, why: ...}")
    rules = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, dict) or "outcome" not in item:
            raise _fail(here, "expected {when: {...}, outcome: works|fails, why: ...}")
        when = item.get("when", {})
        if not isinstance(when, dict) or set(when) - set(WHEN_KEYS):
            raise _fail(f"{here}.when", f"keys must be among {', '.join(WHEN_KEYS)}, got {when!r}")
        for key in ("mapping", "filtering"):
            if key in when and not _one_of(when[key], {m.value for m in Mapping}):
                raise _fail(f"{here}.when.{key}", f"{when[key]!r} is not an RFC 4787 behaviour")
        rules.append(Rule(dict(when), parse_expect({k: v for k, v in item.items() if k != "when"}, here, flow)))
    return rules


def _flow_depth(text: str) -> int:
    """How deep [ and { nest (quotes and comments not told apart: an upper bound), in one pass."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth:
            depth -= 1
    return deepest


def load(path: Path) -> list[Scenario]:
    """The scenarios of one file: one, or every cell of its matrix (each with its expectation)."""
    import yaml

    where = str(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise _fail(where, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise _fail(where, error.strerror or str(error)) from None
    if len(text) > MAX_CHARACTERS:  # PyYAML reads about 100 KB a second: a 650 KB file took 6.5 s
        raise _fail(where, f"{len(text):,} characters: a scenario file has at most {MAX_CHARACTERS:,}")
    if _flow_depth(text) > MAX_FLOW_DEPTH:  # PyYAML's scanner is quadratic in it: 2,000 '[' took 4 s
        raise _fail(where, f"nested too deeply to be a scenario ([ or {{ more than {MAX_FLOW_DEPTH} deep)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise _fail(where, f"not YAML: {_one_line(error)}") from None
    except RecursionError:
        raise _fail(where, "nested too deeply to be a scenario") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        # PyYAML's constructors raise these for a scalar that is not what it says: 2024-13-45, !!int abc
        raise _fail(where, f"not YAML: a value that is not what it says ({type(error).__name__}: {error})") from None
    if _too_many_values(data):
        raise _fail(where, f"more than {MAX_VALUES} values once its aliases are expanded (an alias in its anchor?)")
    if not isinstance(data, dict):
        raise _fail(where, "a scenario file is a mapping (name, description, ...)")
    unknown = set(data) - SCENARIO_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(map(str, unknown))}; known: {', '.join(sorted(SCENARIO_KEYS))}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail(f"{where}.name", f"{name!r}: lower-case letters, digits, '.', '+', '-' (at most 64)")
    description = str(data.get("description", ""))
    base = _settings(data, where)
    if "matrix" not in data:
        if "rules" in data:
            raise _fail(f"{where}.rules", "rules belong to a matrix")
        if "expect" not in base:
            raise _fail(where, "a scenario needs expect: {outcome: works|fails}")
        return [build(base, where, name=name, description=description, source=where)]
    if "expect" in base:
        raise _fail(f"{where}.expect", "a matrix says what it expects per cell, in rules")
    matrix = data["matrix"]
    if not isinstance(matrix, dict) or not matrix or set(matrix) - set(AXES):
        raise _fail(f"{where}.matrix", f"axes must be among {', '.join(AXES)}, each a list of values")
    rules = _rules(data.get("rules"), f"{where}.rules", base.get("flow", figures.DEFAULT_FLOW))
    axes: list[list[tuple[str, Any]]] = []
    for axis, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise _fail(f"{where}.matrix.{axis}", "a non-empty list of values")
        axes.append([(axis, _settings({axis: v}, f"{where}.matrix.{axis}[{i}]")[axis]) for i, v in enumerate(values)])
    cells = []
    for combination in itertools.product(*axes):
        settings = {**base, **dict(combination)}
        nat = settings.get("nat", NatBehaviour())
        facts = {
            "mapping": nat.mapping.value,
            "filtering": nat.filtering.value,
            "port_preservation": nat.preserves_ports,
            "answerer": settings.get("answerer", "active"),
            "stun_check": settings.get("stun_check", True),
            "latching": settings.get("latching", False),
            "rtcp_mux": settings.get("rtcp_mux", True),
        }
        rule = next((r for r in rules if r.matches(facts)), None)
        label = ",".join(_cell_label(axis, value) for axis, value in combination)
        if rule is None:
            raise _fail(f"{where}.rules", f"no rule matches cell {label}: end the rules with a catch-all (when: {{}})")
        settings["expect"] = rule.expect
        cells.append(build(settings, where, name=f"{name}[{label}]", description=description, source=where))
    return cells


MAX_VALUES = 100_000  # a scenario file holds a few hundred
MAX_CHARACTERS = 64 * 1024  # the largest in scenarios/ is about 2 KB
MAX_FLOW_DEPTH = 100  # [ and { levels; a scenario file uses two or three


def _one_line(error: Exception) -> str:
    """PyYAML's message spans lines (a snippet, a caret); an error here is one line: what and where."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem is None or mark is None:
        return " ".join(str(error).split())
    context = getattr(error, "context", None)
    return f"{context + ': ' if context else ''}{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _too_many_values(data: Any) -> bool:
    """YAML aliases let a short file stand for a huge tree, or an endless one (an alias within its own
    anchor), which every check below would walk or print: count the values first, without recursion."""
    stack, count = [data], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return False


def _cell_label(axis: str, value: Any) -> str:
    if axis == "nat":
        return value.label()
    if isinstance(value, bool):
        return f"{axis.replace('_', '-')}" if value else f"no-{axis.replace('_', '-')}"
    return f"{axis}={value}"


def load_all(target: Path) -> list[Scenario]:
    """Every scenario of a file, or of every *.yaml in a directory and its subdirectories (sorted by path)."""
    if target.is_dir():
        files = sorted(target.rglob("*.yaml"))
        if not files:
            raise _fail(str(target), "no *.yaml scenario files here")
    else:
        files = [target]
    scenarios = [s for path in files for s in load(path)]
    seen: dict[str, str] = {}
    for scenario in scenarios:
        if scenario.name in seen:
            raise _fail(scenario.source, f"scenario {scenario.name!r} is also defined in {seen[scenario.name]}")
        seen[scenario.name] = scenario.source
    return scenarios
