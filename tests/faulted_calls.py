"""Helpers of the lab tests that fault a real §7.3 call: set a plan on a fault service, drive the call,
clear the plan (the lab is shared by the module), and read what the call and the trace say."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from pinhole.controller.run import Endpoints, Progress, Scenario, configure, drive_call, service_kinds
from pinhole.rpc.v1 import faults_pb2
from pinhole.timers import TIMERS

SHORT = TIMERS["short"]


def call_with_faults(lab: Any, clients: Any, service: str, name: str, plan: faults_pb2.FaultPlan) -> tuple[Any, list]:
    """Drive the §7.3 call with `plan` set on `service` (natgw or the switch); returns the call's record
    and its events."""
    _, topology, _ = lab
    scenario = Scenario(name, f"§7.3 with a fault: {name}")
    configure(clients, Endpoints.of_topology(topology), scenario, SHORT)
    stub = clients.stub(service)
    reply = stub.SetFaults(plan, timeout=10)
    assert reply.active
    try:
        record = drive_call(
            clients, service_kinds(topology), scenario, SHORT, trace.get_tracer("test"), Progress(False)
        )
    finally:
        cleared = stub.ClearFaults(faults_pb2.ClearFaultsRequest(), timeout=10)
    assert not cleared.active
    return record, [e for e in record.events if e["call_id"] == record.call_id]


def assert_works(record: Any) -> None:
    """Both sides ended the call normally, verified each other and decrypted nearly all media."""
    alice, bob = record.calls["alice"], record.calls["bob"]
    assert alice["state"] == bob["state"] == "terminated", (alice["reason"], bob["reason"])
    for ua in (alice, bob):
        media = ua["media"]
        assert media["dtls_state"] in ("connected", "closed") and media["peer_fingerprint_verified"]
        assert int(media["srtp_received"]) >= 45 and int(media["srtp_auth_failed"]) == 0


def injected(events: list[dict], service: str, rule: str) -> list[dict]:
    """The `fault.injected` events of one rule, as `service` reported them."""
    return [
        e for e in events if e["service"] == service and e["kind"] == "fault.injected" and e["attrs"]["rule"] == rule
    ]
