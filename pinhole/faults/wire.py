"""A fault plan on the wire: the gRPC FaultPlan of faults.proto to and from engine.FaultPlan.

Shared by the gateway's and the switch's SetFaults and by scenario files, so a plan is validated the
same way (with the gRPC field names in its errors) before a lab runs it and when a service receives it.
A link is named by `link_name` (any link: "bob") or by the `link` enum (lan, wan, which old clients send).
"""

from __future__ import annotations

import re
from typing import Any

from pinhole.faults import engine as faults
from pinhole.faults.engine import FaultError, FaultPlan, LinkMap, check_plan
from pinhole.rpc.v1 import faults_pb2

FAULT_LINKS = {faults_pb2.FAULT_LINK_ANY: None, faults_pb2.FAULT_LINK_LAN: "lan", faults_pb2.FAULT_LINK_WAN: "wan"}
FAULT_DIRECTIONS = {
    faults_pb2.FAULT_DIRECTION_ANY: None,
    faults_pb2.FAULT_DIRECTION_INBOUND: "inbound",
    faults_pb2.FAULT_DIRECTION_OUTBOUND: "outbound",
}

PROTO_FIELDS = {  # faults.FaultPlan.from_dict's field -> where it is in a gRPC FaultRule
    "link": "match.link_name",
    "direction": "match.direction",
    "what": "match.what",
    "peer": "match.peer",
    "seconds": "delay.seconds",
    "copies": "duplicate.copies",
    "max_hold": "reorder.max_hold_seconds",
}


def fault_plan(request: faults_pb2.FaultPlan, links: LinkMap | None = None) -> FaultPlan:
    """A gRPC FaultPlan as a validated faults.FaultPlan, checked against the service's `links` if
    given (its link names and actions); FaultError names the field as the proto does
    ("rules[1].delay.seconds: ...")."""
    rules: list[dict[str, Any]] = []
    for index, rule in enumerate(request.rules):
        match = rule.match
        if match.link not in FAULT_LINKS:
            raise FaultError(f"rules[{index}].match.link: unknown value {match.link}")
        if match.direction not in FAULT_DIRECTIONS:
            raise FaultError(f"rules[{index}].match.direction: unknown value {match.direction}")
        link = FAULT_LINKS[match.link]
        if match.link_name and link is not None and match.link_name != link:
            raise FaultError(
                f"rules[{index}].match.link_name: {match.link_name!r} contradicts match.link {link!r} (set one)"
            )
        item: dict[str, Any] = {
            "name": rule.name,
            "link": match.link_name or link,
            "direction": FAULT_DIRECTIONS[match.direction],
            "what": match.what or "any",
            "peer": match.peer or None,
            "nth": rule.nth or 1,
            "count": rule.count,
        }
        if rule.HasField("probability"):
            item["probability"] = rule.probability
        action = rule.WhichOneof("action")
        if action is not None:
            item["action"] = action.replace("_", "-")
        if action == "delay":
            item["seconds"] = rule.delay.seconds
        elif action == "duplicate":
            item["copies"] = rule.duplicate.copies or 1
        elif action == "reorder":
            item["max_hold"] = rule.reorder.max_hold_seconds or 1.0
        rules.append(item)
    try:
        plan = FaultPlan.from_dict({"seed": request.seed, "rules": rules})
        if links is not None:
            check_plan(plan, links)
        return plan
    except FaultError as error:
        text = re.sub(
            r"^(rules\[\d+\])\.(\w+)",
            lambda m: f"{m.group(1)}.{PROTO_FIELDS.get(m.group(2), m.group(2))}",
            str(error),
        )
        raise FaultError(text) from None


def fault_plan_proto(plan: FaultPlan) -> faults_pb2.FaultPlan:
    """The inverse of `fault_plan`, every default filled in."""
    links = {v: k for k, v in FAULT_LINKS.items()}
    directions = {v: k for k, v in FAULT_DIRECTIONS.items()}
    rules = []
    for rule in plan.rules:
        m = rule.match
        match = faults_pb2.FaultMatch(
            link=links.get(m.link, faults_pb2.FAULT_LINK_ANY),  # lan, wan also as the enum, for old readers
            link_name=m.link or "",
            direction=directions[m.direction.value if m.direction else None],
            what=str(m.what),
            peer=(m.peer[0] + (f":{m.peer[1]}" if m.peer[1] else "")) if m.peer else "",
        )
        out = faults_pb2.FaultRule(
            name=rule.name, match=match, nth=rule.nth, count=rule.count, probability=rule.probability
        )
        action = rule.action
        if isinstance(action, faults.Drop):
            out.drop.SetInParent()
        elif isinstance(action, faults.Delay):
            out.delay.seconds = action.seconds
        elif isinstance(action, faults.Duplicate):
            out.duplicate.copies = action.copies
        elif isinstance(action, faults.Reorder):
            out.reorder.max_hold_seconds = action.max_hold
        else:
            out.expire_mapping.SetInParent()
        rules.append(out)
    return faults_pb2.FaultPlan(rules=rules, seed=plan.seed)
