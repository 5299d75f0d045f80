"""The NAT gateway service over gRPC: Configure takes every RFC 4787 behaviour the kernel ruleset
builds, answers with the effective config and the loaded script, emits `nat.configured`, and a new
behaviour leaves nothing of the old one's sets; WatchDrops still reports what the filter keeps out.

The real service runs in the natgw namespace of a lab of its own (root, namespaces "ph-tg*")."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from netns import lab as lab_mod
from netns.lab import NetnsLab, pids_in_netns
from pinhole.lab import load_topology
from pinhole.nat import MAX_MAPPING_TIMEOUT, MIN_MAPPING_TIMEOUT, Filtering, Mapping, NatBehaviour
from pinhole.nsenter import in_netns
from pinhole.rpc.v1 import events_pb2, natgw_pb2, natgw_pb2_grpc
from services.natgw import ruleset

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "nft", "conntrack")),
    reason="needs root, iproute2, nft and conntrack",
)

WAN = "203.0.113.1"
LAN = "10.10.1.0/24"
LAB_NAME = f"ph-tg{os.getpid() % 100000:05d}"
ROOT = Path(__file__).parent.parent

MAPPING_ENUMS = {
    Mapping.ENDPOINT_INDEPENDENT: natgw_pb2.MAPPING_ENDPOINT_INDEPENDENT,
    Mapping.ADDRESS_DEPENDENT: natgw_pb2.MAPPING_ADDRESS_DEPENDENT,
    Mapping.ADDRESS_AND_PORT_DEPENDENT: natgw_pb2.MAPPING_ADDRESS_AND_PORT_DEPENDENT,
}
FILTERING_ENUMS = {
    Filtering.ENDPOINT_INDEPENDENT: natgw_pb2.FILTERING_ENDPOINT_INDEPENDENT,
    Filtering.ADDRESS_DEPENDENT: natgw_pb2.FILTERING_ADDRESS_DEPENDENT,
    Filtering.ADDRESS_AND_PORT_DEPENDENT: natgw_pb2.FILTERING_ADDRESS_AND_PORT_DEPENDENT,
}


class Gateway:
    def __init__(self, lab: NetnsLab, stub: natgw_pb2_grpc.NatGatewayStub) -> None:
        self.lab, self.stub, self.ns = lab, stub, lab.ns("natgw")

    def udp(self, node: str, port: int) -> socket.socket:
        with in_netns(self.lab.ns(node)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.lab.address(node), port))
        sock.settimeout(2.0)
        return sock

    def sets(self) -> dict[str, int]:
        """{set or map name: element count} of the gateway's table, as the kernel lists it."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-j", "list", "table", "inet", ruleset.TABLE],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = {}
        for item in json.loads(out)["nftables"]:
            body = item.get("set") or item.get("map")
            if body is not None:
                found[body["name"]] = len(body.get("elem", []))
        return found


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    """A lab with only the NAT gateway service running (its gRPC socket in the lab's run directory)."""
    lab = NetnsLab(load_topology(), name=LAB_NAME)
    try:
        lab.up()
        sock = lab.run_dir / "natgw.sock"
        argv = [sys.executable, "-m", "services.natgw", "--name", "natgw", "--grpc", f"unix:{sock}"]
        argv += ["--lan-if", "lan0", "--wan-if", "wan0", "--wan-address", WAN, "--lan-prefix", LAN]
        env = {"PATH": os.environ.get("PATH", ""), "OTEL_SDK_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
        lab.spawn("natgw", argv, log_path=lab.run_dir / "natgw.log", env=env, cwd=ROOT)
        channel = grpc.insecure_channel(f"unix:{sock}")
        _wait_serving(channel, lab.run_dir / "natgw.log")
        try:
            yield Gateway(lab, natgw_pb2_grpc.NatGatewayStub(channel))
        finally:
            channel.close()
    finally:
        pids = [pid for ns in lab.namespaces() for pid in pids_in_netns(ns)]
        lab.down()
        assert [ns for ns in lab_mod._netns_names() if ns.startswith(LAB_NAME + "-")] == []
        assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []


def _wait_serving(channel: grpc.Channel, log: Path, timeout: float = 20.0) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service="pinhole.rpc.v1.NatGateway"), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"natgw did not come up: {log.read_text() if log.exists() else 'no log'}")
        time.sleep(0.1)


@pytest.fixture
def natgw(gateway: Gateway) -> Iterator[Gateway]:
    yield gateway
    gateway.stub.Configure(natgw_pb2.NatConfig(), timeout=10)  # §7.3's NAT again
    subprocess.run(["ip", "netns", "exec", gateway.ns, "conntrack", "-F"], capture_output=True, check=False)


PRESERVATIONS = {natgw_pb2.PORT_PRESERVATION_UNSPECIFIED: None, natgw_pb2.PORT_PRESERVATION_OFF: False}
CONFIGS = [
    (mapping, filtering, preservation)
    for mapping in Mapping
    for filtering in Filtering
    for preservation in (natgw_pb2.PORT_PRESERVATION_UNSPECIFIED, natgw_pb2.PORT_PRESERVATION_OFF)
]


def test_configure_takes_every_behaviour(natgw: Gateway) -> None:
    """Each mapping x filtering (x default / no port preservation): the reply's effective config and ruleset
    are those of the behaviour, the kernel holds exactly its sets, and `nat.configured` says so."""
    since = time.time_ns()
    for mapping, filtering, preservation in CONFIGS:
        reply = natgw.stub.Configure(
            natgw_pb2.NatConfig(
                mapping=MAPPING_ENUMS[mapping],
                filtering=FILTERING_ENUMS[filtering],
                mapping_timeout_seconds=240,
                port_preservation=preservation,
            ),
            timeout=10,
        )
        behaviour = NatBehaviour(mapping, filtering, 240, PRESERVATIONS[preservation])
        preserved = natgw_pb2.PORT_PRESERVATION_ON if behaviour.preserves_ports else natgw_pb2.PORT_PRESERVATION_OFF
        assert reply.effective == natgw_pb2.NatConfig(
            mapping=MAPPING_ENUMS[mapping],
            filtering=FILTERING_ENUMS[filtering],
            mapping_timeout_seconds=240,
            port_preservation=preserved,
            hairpinning=natgw_pb2.HAIRPINNING_ON,  # RFC 4787 REQ-9: on unless asked off
        )
        assert reply.ruleset == ruleset.render(
            behaviour, wan_address=WAN, lan_prefix=LAN, log_group=1, sip_log_group=2
        ), behaviour.describe()
        assert natgw.sets() == dict.fromkeys(ruleset.dynamic_sets(behaviour), 0), behaviour.describe()

    events = natgw.stub.WatchEvents(events_pb2.WatchEventsRequest(since_unix_nano=since), timeout=10)
    configured = [dict(e.attributes) for e in events if e.kind == "nat.configured"]
    assert configured == [
        {
            "mapping": mapping.value,
            "filtering": filtering.value,
            "mapping_timeout": "240",
            "port_preservation": "on"
            if NatBehaviour(mapping, filtering, 240, PRESERVATIONS[preservation]).preserves_ports
            else "off",
        }
        for mapping, filtering, preservation in CONFIGS
    ]


def test_configure_names_a_bad_port_preservation(natgw: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as info:
        natgw.stub.Configure(natgw_pb2.NatConfig(port_preservation=7), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "port_preservation: unknown value 7"


@pytest.mark.parametrize(
    ("seconds", "reason"),
    [
        (2**32 - 1, f"at most {MAX_MAPPING_TIMEOUT} (what conntrack keeps)"),
        (MAX_MAPPING_TIMEOUT + 1, f"at most {MAX_MAPPING_TIMEOUT} (what conntrack keeps)"),
        (MIN_MAPPING_TIMEOUT - 1, f"at least {MIN_MAPPING_TIMEOUT} (RFC 4787 REQ-5)"),
    ],
)
def test_configure_range_checks_the_mapping_timeout(natgw: Gateway, seconds: int, reason: str) -> None:
    """A timer the kernel would clamp, wrap or refuse is the caller's error, named with its range, and the
    gateway keeps the NAT it had (not INTERNAL from a half-loaded ruleset)."""
    before = natgw.stub.Configure(natgw_pb2.NatConfig(), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        natgw.stub.Configure(natgw_pb2.NatConfig(mapping_timeout_seconds=seconds), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"mapping_timeout_seconds: {seconds}: {reason} (allowed: {MIN_MAPPING_TIMEOUT}..{MAX_MAPPING_TIMEOUT}, "
        "0 = the default)"
    )
    assert natgw.stub.Configure(before.effective, timeout=10).ruleset == before.ruleset


def test_configure_takes_the_longest_mapping_timeout(natgw: Gateway) -> None:
    """The upper bound itself is loaded: the ruleset's timers and the namespace's conntrack sysctls hold it."""
    reply = natgw.stub.Configure(natgw_pb2.NatConfig(mapping_timeout_seconds=MAX_MAPPING_TIMEOUT), timeout=10)
    assert reply.effective.mapping_timeout_seconds == MAX_MAPPING_TIMEOUT
    assert f"unreplied : {MAX_MAPPING_TIMEOUT}," in reply.ruleset
    assert set(ruleset.get_mapping_timeout(netns=natgw.ns).values()) == {MAX_MAPPING_TIMEOUT}


def test_configure_without_translation(natgw: Gateway) -> None:
    """translation_off (RFC 5763 §7.1): the gateway only routes; the reply says so, idempotently (the
    effective config is accepted back), and a behaviour is restored by the next Configure."""
    since = time.time_ns()
    reply = natgw.stub.Configure(natgw_pb2.NatConfig(translation_off=True, mapping_timeout_seconds=240), timeout=10)
    assert reply.effective == natgw_pb2.NatConfig(
        translation_off=True, mapping_timeout_seconds=240, port_preservation=natgw_pb2.PORT_PRESERVATION_ON
    )
    router = NatBehaviour(mapping_timeout=240, translate=False)
    assert reply.ruleset == ruleset.render(router, wan_address=WAN, lan_prefix=LAN, log_group=1, sip_log_group=2)
    assert natgw.sets() == {}
    again = natgw.stub.Configure(reply.effective, timeout=10)
    assert again.effective == reply.effective
    events = natgw.stub.WatchEvents(events_pb2.WatchEventsRequest(since_unix_nano=since), timeout=10)
    configured = [dict(e.attributes) for e in events if e.kind == "nat.configured"]
    assert configured[0]["translation"] == "off"
    # switching translation off flushes conntrack: a flow translated before would keep its translation
    flushed = natgw.stub.WatchEvents(events_pb2.WatchEventsRequest(since_unix_nano=since), timeout=10)
    assert [dict(e.attributes)["reason"] for e in flushed if e.kind == "nat.flushed"] == ["translation turned off"]
    natgw.stub.Configure(natgw_pb2.NatConfig(), timeout=10)
    assert "masquerade" in natgw.stub.Configure(natgw_pb2.NatConfig(), timeout=10).ruleset


@pytest.mark.parametrize(
    ("config", "details"),
    [
        (
            {"mapping": natgw_pb2.MAPPING_ENDPOINT_INDEPENDENT},
            "translation_off: no translation contradicts mapping MAPPING_ENDPOINT_INDEPENDENT",
        ),
        (
            {"filtering": natgw_pb2.FILTERING_ADDRESS_DEPENDENT, "port_preservation": natgw_pb2.PORT_PRESERVATION_OFF},
            "translation_off: no translation contradicts filtering FILTERING_ADDRESS_DEPENDENT, "
            "port_preservation PORT_PRESERVATION_OFF",
        ),
    ],
)
def test_configure_rejects_translation_off_with_a_behaviour(natgw: Gateway, config: dict, details: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        natgw.stub.Configure(natgw_pb2.NatConfig(translation_off=True, **config), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"{details} (leave mapping and filtering UNSPECIFIED, port_preservation UNSPECIFIED or ON)"
    )


def test_hairpinning_is_on_by_default_and_can_be_turned_off(natgw: Gateway) -> None:
    """RFC 4787 REQ-9: UNSPECIFIED is on, and a reply says ON or OFF; OFF loads the ruleset without
    hairpinning (and so without its set, for this behaviour), says so in `nat.configured`, and the
    effective config is accepted back."""
    since = time.time_ns()
    on = natgw.stub.Configure(natgw_pb2.NatConfig(), timeout=10)
    assert on.effective.hairpinning == natgw_pb2.HAIRPINNING_ON
    assert on.ruleset == ruleset.render(NatBehaviour(), wan_address=WAN, lan_prefix=LAN, log_group=1, sip_log_group=2)
    assert natgw.sets() == {"inbound_mappings": 0}
    off = natgw.stub.Configure(natgw_pb2.NatConfig(hairpinning=natgw_pb2.HAIRPINNING_OFF), timeout=10)
    assert off.effective.hairpinning == natgw_pb2.HAIRPINNING_OFF
    assert off.ruleset == ruleset.render(
        NatBehaviour(hairpinning=False), wan_address=WAN, lan_prefix=LAN, log_group=1, sip_log_group=2
    )
    assert natgw.sets() == {}
    assert natgw.stub.Configure(off.effective, timeout=10).effective == off.effective
    explicit = natgw.stub.Configure(natgw_pb2.NatConfig(hairpinning=natgw_pb2.HAIRPINNING_ON), timeout=10)
    assert explicit.effective == on.effective and explicit.ruleset == on.ruleset
    events = natgw.stub.WatchEvents(events_pb2.WatchEventsRequest(since_unix_nano=since), timeout=10)
    configured = [dict(e.attributes).get("hairpinning") for e in events if e.kind == "nat.configured"]
    assert configured == [None, "off", "off", None]  # said only when off, like translation


@pytest.mark.parametrize("hairpinning", [natgw_pb2.HAIRPINNING_ON, natgw_pb2.HAIRPINNING_OFF])
def test_configure_rejects_hairpinning_without_translation(natgw: Gateway, hairpinning: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        natgw.stub.Configure(natgw_pb2.NatConfig(translation_off=True, hairpinning=hairpinning), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "translation_off: without translation there is no mapping to hairpin through "
        f"(leave hairpinning UNSPECIFIED, not {natgw_pb2.NatHairpinning.Name(hairpinning)})"
    )


def test_configure_names_a_bad_hairpinning(natgw: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as info:
        natgw.stub.Configure(natgw_pb2.NatConfig(hairpinning=7), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "hairpinning: unknown value 7"


def test_a_refused_hairpin_is_reported_as_a_drop(natgw: Gateway) -> None:
    """Hairpinning off: Alice's packet from one socket to the other's external endpoint is dropped, and
    WatchDrops reports it (hook "hairpin", classified by its payload); on again (a new ruleset: its sets know
    a mapping again once the mapping sends, REQ-6), the same packet gets through from the sender's mapping."""
    natgw.stub.Configure(natgw_pb2.NatConfig(hairpinning=natgw_pb2.HAIRPINNING_OFF), timeout=10)
    with contextlib.ExitStack() as stack:
        sender, receiver = (stack.enter_context(natgw.udp("alice", port)) for port in (43810, 43811))
        stun = stack.enter_context(natgw.udp("stun", 3478))
        receiver.sendto(b"out", ("203.0.113.30", 3478))
        external = stun.recvfrom(2048)[1][1]
        sender.sendto(_stun_binding_request(), (WAN, external))
        drops = natgw.stub.WatchDrops(natgw_pb2.WatchDropsRequest(replay=True), timeout=10)
        drop = next(d for d in drops if d.destination.port == external and d.source.port == 43810)
        drops.cancel()
        assert (drop.hook, drop.classification, drop.protocol) == ("hairpin", "stun", "udp")
        assert (drop.source.ip, drop.destination.ip) == ("10.10.1.10", WAN)
        natgw.stub.Configure(natgw_pb2.NatConfig(), timeout=10)
        receiver.sendto(b"refresh", ("203.0.113.30", 3478))
        assert stun.recvfrom(2048) == (b"refresh", (WAN, external))
        sender.sendto(b"hairpin", (WAN, external))
        assert receiver.recvfrom(2048) == (b"hairpin", (WAN, 43810))


def _stun_binding_request() -> bytes:
    return struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, b"pinhole-test")


def _events(natgw: Gateway, kind: str, since: int, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
    """The attributes of `kind` events since `since`, once there are `count` (conntrack -E is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        stream = natgw.stub.WatchEvents(events_pb2.WatchEventsRequest(since_unix_nano=since), timeout=10)
        found = [dict(e.attributes) for e in stream if e.kind == kind]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_new_behaviour_keeps_nothing_of_the_old_sets_and_drops_are_still_reported(natgw: Gateway) -> None:
    """Address-dependent filtering admits bob from another port (ListMappings and a `nat.admitted` event
    show the session) and keeps stun out (WatchDrops reports the STUN request it dropped in input);
    re-Configured as address-dependent mapping, no element survives."""
    since = time.time_ns()
    natgw.stub.Configure(
        natgw_pb2.NatConfig(filtering=natgw_pb2.FILTERING_ADDRESS_DEPENDENT, port_preservation=2), timeout=10
    )
    with contextlib.ExitStack() as stack:
        alice = stack.enter_context(natgw.udp("alice", 43800))
        bob, bob_other = stack.enter_context(natgw.udp("bob", 5000)), stack.enter_context(natgw.udp("bob", 5001))
        stun = stack.enter_context(natgw.udp("stun", 3478))
        alice.sendto(b"out", ("203.0.113.40", 5000))
        external = bob.recvfrom(2048)[1][1]
        bob_other.sendto(b"same address", (WAN, external))
        assert alice.recvfrom(2048) == (b"same address", ("203.0.113.40", 5001))
        stun.sendto(_stun_binding_request(), (WAN, external))
        # replay: the gateway may see the drop before it serves this stream
        drops = natgw.stub.WatchDrops(natgw_pb2.WatchDropsRequest(replay=True), timeout=10)
        drop = next(d for d in drops if d.destination.port == external)
        drops.cancel()
        assert (drop.hook, drop.classification, drop.protocol) == ("input", "stun", "udp")
        assert (drop.source.ip, drop.source.port) == ("203.0.113.30", 3478)
        assert (drop.destination.ip, drop.destination.port) == (WAN, external)
        mappings = natgw.stub.ListMappings(natgw_pb2.ListMappingsRequest(), timeout=10).mappings
        assert sorted((m.remote.port, m.inbound, m.internal.port, m.external.port) for m in mappings) == [
            (5000, False, 43800, external),
            (5001, True, 43800, external),
        ]
        ends = {"internal": "10.10.1.10:43800", "external": f"{WAN}:{external}"}
        assert [
            {k: e[k] for k in ("internal", "external", "remote")} for e in _events(natgw, "nat.mapping", since, 1)
        ] == [{**ends, "remote": "203.0.113.40:5000"}]
        assert [
            {k: e[k] for k in ("internal", "external", "remote")} for e in _events(natgw, "nat.admitted", since, 1)
        ] == [{**ends, "remote": "203.0.113.40:5001"}]
        # one mapping: alice:43800 -> external, external -> alice:43800, and bob's address through it
        assert natgw.sets() == {"endpoint_independent_mappings": 1, "inbound_mappings": 1, "contacted_addresses": 1}

        natgw.stub.Configure(natgw_pb2.NatConfig(mapping=natgw_pb2.MAPPING_ADDRESS_DEPENDENT), timeout=10)
        assert natgw.sets() == {"address_dependent_mappings": 0, "inbound_mappings": 0}  # (the latter: hairpinning)
