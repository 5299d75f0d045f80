"""Scenario files: the schema, its precise errors, NAT aliases, and matrix expansion with its rules."""

from __future__ import annotations

import copy
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pinhole import cli
from pinhole.controller.outcome import judge_outcome
from pinhole.controller.scenario import NAT_ALIASES, ScenarioError, load, load_all, parse_nat
from pinhole.nat import MAX_MAPPING_TIMEOUT, NatBehaviour
from pinhole.rpc.v1 import natgw_pb2, useragent_pb2

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_the_shipped_scenarios_load():
    scenarios = load_all(ROOT / "scenarios")
    names = [s.name for s in scenarios]
    assert {"rfc5763-7.3", "no-stun-check", "bad-fingerprint"} <= set(names)
    cells = [s for s in scenarios if s.name.startswith("nat-matrix[")]
    assert len(cells) == 4 * 2 * 2 * 2
    assert all(s.expect is not None and s.expect.why for s in scenarios)


def test_the_shipped_matrix_predicts_what_the_spec_digest_says():
    """§12: EIF works without a check; EIM with ADF/APDF only with the check; APDM fails unless Bob latches."""
    cells = {tuple(s.knobs.values()): s.expect.outcome for s in load(ROOT / "scenarios" / "nat-matrix.yaml")}
    for (nat, answerer, check, latching), outcome in cells.items():
        if nat == "EIM+EIF":
            assert outcome == "works"
        elif answerer == "active" and nat.startswith("EIM"):
            assert outcome == ("works" if check else "fails"), (nat, check)
        elif answerer == "active":  # APDM
            assert outcome == ("works" if check and latching else "fails")
        elif nat.startswith("EIM"):  # Alice is DTLS-active: her ClientHello opens the advertised mapping
            assert outcome == "works"
        else:
            assert outcome == ("works" if latching else "fails")


def test_knobs_become_settings_of_the_right_side(tmp_path):
    (active,) = load(write(tmp_path, "name: a\nstun_check: false\nexpect: {outcome: fails}\n"))
    assert active.deviations == {"alice": ("no-stun-check",)}  # the passive side's deviation
    assert active.bob["answer_setup"] == useragent_pb2.DTLS_SETUP_ACTIVE
    text = "name: p\nanswerer: passive\nlatching: true\nstun_check: false\nexpect: {outcome: works}\n"
    (passive,) = load(write(tmp_path, text))
    # §6.7.2: the check belongs to the DTLS-passive side, Bob here
    assert passive.bob == {"answer_setup": useragent_pb2.DTLS_SETUP_PASSIVE, "latching": True}
    assert passive.alice == {} and passive.deviations == {"bob": ("no-stun-check",)}


def test_deviations_are_checked_against_the_node_that_runs_them(tmp_path):
    text = "name: d\ndeviations: {bob: [no-stun-answer], proxy-b: [proxy-rewrite-sdp]}\nexpect: {outcome: works}\n"
    (scenario,) = load(write(tmp_path, text))
    assert scenario.deviations == {"bob": ("no-stun-answer",), "proxy-b": ("proxy-rewrite-sdp",)}
    assert scenario.deviations_text() == "bob:no-stun-answer, proxy-b:proxy-rewrite-sdp"
    for deviations, message in (
        ("{bob: [proxy-rewrite-sdp]}", "s.yaml.deviations.bob: 'proxy-rewrite-sdp' is a proxy's deviation"),
        ("{proxy-a: [no-stun-check]}", "s.yaml.deviations.proxy-a: 'no-stun-check' is a useragent's deviation"),
        ("{bob: [fly]}", "s.yaml.deviations.bob: unknown deviation 'fly'"),
        ("{natgw: [fly]}", "s.yaml.deviations.natgw: not a user agent or proxy of the lab"),
        ("[fly]", "s.yaml.deviations: a mapping NODE: [DEVIATION, ...]"),
    ):
        with pytest.raises(ScenarioError) as info:
            load(write(tmp_path, f"name: d\ndeviations: {deviations}\nexpect: {{outcome: works}}\n"))
        assert message in str(info.value), str(info.value)


def test_nat_in_rfc_4787_words_and_cone_aliases():
    assert parse_nat("symmetric", "x") == NatBehaviour("address-and-port-dependent", "address-and-port-dependent")
    assert parse_nat({"behaviour": "full-cone", "mapping_timeout": 600}, "x").to_proto() == natgw_pb2.NatConfig(
        mapping=natgw_pb2.MAPPING_ENDPOINT_INDEPENDENT,
        filtering=natgw_pb2.FILTERING_ENDPOINT_INDEPENDENT,
        mapping_timeout_seconds=600,
    )
    assert {parse_nat(a, "x").label() for a in NAT_ALIASES} == {"EIM+EIF", "EIM+ADF", "EIM+APDF", "APDM+APDF"}


def test_mapping_expiry_cells_are_told_apart_by_port_preservation():
    """The cells differ only in port preservation: their labels and the rules' `when` must see it."""
    cells = {s.name: s.expect.outcome for s in load(ROOT / "scenarios" / "fault-mapping-expired.yaml")}
    assert cells == {
        "fault-mapping-expired[EIM+APDF+pp,no-latching]": "works",
        "fault-mapping-expired[EIM+APDF+pp,latching]": "works",
        "fault-mapping-expired[EIM+APDF+no-pp,no-latching]": "fails",
        "fault-mapping-expired[EIM+APDF+no-pp,latching]": "works",
    }
    assert NatBehaviour().preserves_ports and not NatBehaviour("address-and-port-dependent").preserves_ports
    assert not NatBehaviour(port_preservation=False).preserves_ports


def test_no_nat():
    """`nat: none` (RFC 5763 §7.1): the gateway only routes; nothing of a behaviour may come with it."""
    nat = parse_nat("none", "x")
    assert (nat.translate, nat.label()) == (False, "no NAT")
    assert nat.to_proto() == natgw_pb2.NatConfig(translation_off=True, mapping_timeout_seconds=300)
    assert parse_nat({"behaviour": "none", "mapping_timeout": 600}, "x").to_proto() == natgw_pb2.NatConfig(
        translation_off=True, mapping_timeout_seconds=600
    )
    with pytest.raises(ScenarioError) as info:
        parse_nat({"behaviour": "none", "filtering": "endpoint-independent"}, "x.nat")
    assert str(info.value) == "x.nat: behaviour none (no translation) leaves nothing for filtering"
    (scenario,) = load(ROOT / "scenarios" / "rfc5763-7.1.yaml")
    assert (scenario.nat, scenario.timers, scenario.expect.outcome) == (NatBehaviour(translate=False), "short", "works")
    assert (scenario.flow, scenario.expect.verdict, scenario.bob["ring_seconds"]) == ("rfc5763-7.1", "pass", 0.3)


def test_hairpinning_key(tmp_path):
    """RFC 4787 §6 hairpinning: left out, the gateway's default (on, REQ-9); said, it is sent and labelled."""
    assert NatBehaviour().to_proto().hairpinning == natgw_pb2.HAIRPINNING_UNSPECIFIED
    off = parse_nat({"behaviour": "symmetric", "hairpinning": False}, "x")
    assert off == NatBehaviour("address-and-port-dependent", "address-and-port-dependent", hairpinning=False)
    assert off.to_proto() == natgw_pb2.NatConfig(
        mapping=natgw_pb2.MAPPING_ADDRESS_AND_PORT_DEPENDENT,
        filtering=natgw_pb2.FILTERING_ADDRESS_AND_PORT_DEPENDENT,
        mapping_timeout_seconds=300,
        hairpinning=natgw_pb2.HAIRPINNING_OFF,
    )
    assert off.label() == "APDM+APDF+no-hairpin"
    on = parse_nat({"hairpinning": True}, "x")
    assert (on.to_proto().hairpinning, on.label()) == (natgw_pb2.HAIRPINNING_ON, "EIM+APDF+hairpin")
    (scenario,) = load(write(tmp_path, "name: a\nnat: {hairpinning: false}\nexpect: {outcome: works}\n"))
    assert scenario.nat == NatBehaviour(hairpinning=False)
    for value, message in [
        ({"hairpinning": "on"}, "x.nat.hairpinning: expected true or false, not 'on'"),
        ({"hairpinning": 1}, "x.nat.hairpinning: expected true or false, not 1"),
        (
            {"behaviour": "none", "hairpinning": True},
            "x.nat: behaviour none (no translation) leaves nothing for hairpinning",
        ),
        (
            {"hairpin": True},
            "x.nat: unknown key(s) ['hairpin'] (behaviour, mapping, filtering, mapping_timeout, port_preservation, "
            "hairpinning)",
        ),
    ]:
        with pytest.raises(ScenarioError) as info:
            parse_nat(value, "x.nat")
        assert str(info.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ("- a\n", "s.yaml: a scenario file is a mapping"),
        ("name: a\nexpect: {outcome: works}\ncolour: red\n", "unknown key(s) ['colour']"),
        ("name: A b\nexpect: {outcome: works}\n", "s.yaml.name: 'A b': lower-case"),
        ("name: a\n", "s.yaml: a scenario needs expect"),
        ("name: a\nexpect: {outcome: maybe}\n", "s.yaml.expect.outcome: 'maybe' is not works or fails"),
        ("name: a\nnat: cone\nexpect: {outcome: works}\n", "s.yaml.nat: 'cone' is not a NAT alias"),
        ("name: a\nnat: {mapping: sticky}\nexpect: {outcome: works}\n", "s.yaml.nat.mapping: 'sticky' is not one of"),
        ("name: a\nnat: {mapping_timeout: 30}\nexpect: {outcome: works}\n", "at least 120 (RFC 4787 REQ-5)"),
        (  # the gateway answered INTERNAL (nft: value too large), after the lab came up
            "name: a\nnat: {mapping_timeout: 4294967295}\nexpect: {outcome: works}\n",
            f"s.yaml.nat.mapping_timeout: 4294967295: at most {MAX_MAPPING_TIMEOUT} (what conntrack keeps)",
        ),
        ("name: a\nanswerer: actpass\nexpect: {outcome: works}\n", "s.yaml.answerer: 'actpass'"),
        ("name: a\nstun_check: 'yes'\nexpect: {outcome: works}\n", "s.yaml.stun_check: expected true or false"),
        ("name: a\ntimers: fast\nexpect: {outcome: works}\n", "s.yaml.timers: 'fast' is not rfc or short"),
        ("name: a\nexpect: {outcome: works, failing: ['5']}\n", "names failing checks, so verdict must be fail"),
        ("name: a\nexpect: {outcome: fails, verdict: fail, failing: ['13']}\n", "a list of rfc5763-7.3 messages"),
        ("name: a\nflow: rfc5763-7.2\nexpect: {outcome: works}\n", "s.yaml.flow: 'rfc5763-7.2' is not one of"),
        ("name: a\nring: forever\nexpect: {outcome: works}\n", "s.yaml.ring: 'forever': seconds Bob rings"),
        (
            "name: a\nflow: rfc5763-7.1\nexpect: {outcome: fails, verdict: fail, failing: ['11a']}\n",
            "s.yaml.expect.failing: ['11a']: a list of rfc5763-7.1 messages (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, e2e)",
        ),
        ("name: a\nmatrix: {answerer: [active]}\n", "s.yaml.rules: a matrix needs rules"),
        ("name: a\nmatrix: {colour: [red]}\nrules: [{outcome: works}]\n", "s.yaml.matrix: axes must be among"),
        (
            "name: a\nmatrix: {answerer: [active, passive]}\nrules: [{when: {answerer: active}, outcome: works}]\n",
            "no rule matches cell answerer=passive",
        ),
        ("name: a\nmatrix: {nat: [full-cone, cone]}\nrules: [{outcome: works}]\n", "s.yaml.matrix.nat[1]"),
        ("name: a\nmatrix: {answerer: [active]}\nrules: [{when: {colour: red}, outcome: works}]\n", "keys must be"),
        ("name: a\nfaults: {drop: all}\nexpect: {outcome: works}\n", "s.yaml.faults: a list of rules"),
        ("name: a\nfaults: [{what: stun, action: explode}]\nexpect: {outcome: works}\n", "rules[0].action"),
        ("name: a\nfaults: [{what: 'dtls:hello', action: drop}]\nexpect: {outcome: works}\n", "rules[0]"),
    ],
)
def test_errors_say_where_and_why(tmp_path, text, message):
    with pytest.raises(ScenarioError) as info:
        load(write(tmp_path, text))
    assert message in str(info.value)


def test_names_are_unique_across_a_directory(tmp_path):
    (tmp_path / "a.yaml").write_text("name: same\nexpect: {outcome: works}\n")
    (tmp_path / "b.yaml").write_text("name: same\nexpect: {outcome: fails}\n")
    with pytest.raises(ScenarioError, match="also defined in"):
        load_all(tmp_path)


def _evidence(**media):
    side = {"handshake_completed": 1.0, "peer_fingerprint_verified": True, "srtp_received": "10", "dtls_role": "x"}
    return {
        "calls": {"alice": {"media": {**side, **media}}, "bob": {"media": {**side, "dtls_role": "client"}}},
        "events": [{"service": "alice", "kind": "sip.recv", "attrs": {"sip.status_code": "200"}}],
        "measurements": {"invite_to_srtp_bob_to_alice_s": 0.2, "invite_to_srtp_alice_to_bob_s": 0.3},
    }


def test_outcome_works_only_with_both_certificates_and_srtp_both_ways():
    works = judge_outcome(_evidence())
    assert works.works and works.invite_to_media == 0.3 and "Bob active" in works.reason
    assert "certificate" in judge_outcome(_evidence(peer_fingerprint_verified=False)).reason
    assert "SRTP bob -> alice: 0 decrypted" in judge_outcome(_evidence(srtp_received="0")).reason
    failed = judge_outcome(_evidence(handshake_completed=0, dtls_failure="timeout"))
    assert not failed.works and "DTLS never completed (alice: timeout)" in failed.reason


def test_reinvite_steps_parse_and_predict_a_new_association_by_rfc_5763_6_6(tmp_path):
    (scenario,) = load(ROOT / "scenarios" / "rfc5763-6.6-reinvite.yaml")
    assert [(r.by, r.setup, r.new_certificate, r.changes_association) for r in scenario.reinvites] == [
        ("alice", "keep", False, False),
        ("bob", "flip", True, True),
        ("alice", "actpass", True, True),
    ]
    with pytest.raises(ScenarioError, match=r"s.yaml.reinvite\[0\].setup: 'swap' is not one of keep, flip, actpass"):
        load(write(tmp_path, "name: a\nreinvite: [{setup: swap}]\nexpect: {outcome: works}\n"))
    with pytest.raises(ScenarioError, match=r"s.yaml.reinvite\[0\].by: 'carol' is not alice or bob"):
        load(write(tmp_path, "name: a\nreinvite: [{by: carol}]\nexpect: {outcome: works}\n"))


def test_restart_steps_parse_with_their_triggers(tmp_path):
    (scenario,) = load(ROOT / "scenarios" / "restart-proxy-mid-call.yaml")
    (step,) = scenario.restarts
    assert (step.node, step.crash, step.kill_after.label(), step.start_after.label()) == (
        "proxy-b",
        True,
        "bob srtp.first_received",
        "proxy-a sip.send sip.method=BYE #2",
    )
    bye = {"service": "proxy-a", "kind": "sip.send", "t": 5.0, "attrs": {"sip.method": "BYE"}}
    assert not step.start_after.reached([bye]) and step.start_after.reached([bye, {**bye, "t": 6.0}])
    assert not step.start_after.reached([bye, {**bye, "t": 6.0}], since=5.5)
    with pytest.raises(ScenarioError, match=r"s.yaml.restart\[0\].kill_after.event: 'bye' is not an event kind"):
        load(
            write(
                tmp_path,
                "name: a\nrestart: [{node: proxy-b, kill_after: {node: bob, event: bye},"
                " start_after: {node: bob, event: sip.send}}]\nexpect: {outcome: works}\n",
            )
        )


def test_outcome_requires_every_restart_to_have_happened():
    evidence = _evidence()
    evidence["calls"]["alice"]["state"] = "terminated"
    evidence["restarts"] = [{"node": "proxy-b", "crash": True, "killed": 1.0, "started": 1.5}]
    works = judge_outcome(evidence)
    assert works.works and "proxy-b crashed and was back 0.50s later" in works.reason
    evidence["restarts"] = [{"node": "proxy-b", "crash": True, "error": "bob srtp.first_received never happened"}]
    assert judge_outcome(evidence).reason == "restart of proxy-b: bob srtp.first_received never happened"


def _modified(new_association: bool, srtp_received: str = "5") -> dict:
    evidence = _evidence()
    evidence["reinvites"] = [{"by": "bob", "setup": "flip", "new_certificate": False, "new_association_expected": True}]
    for side, call in evidence["calls"].items():
        call["modifications"] = [
            {
                "direction": "sent" if side == "bob" else "received",
                "status_code": 200,
                "new_association": new_association,
            }
        ]
        call["media"]["associations"] = [
            {"component": 1, "index": 1, "completed": 1.0, "srtp_received": "3"},
            {"component": 1, "index": 2, "completed": 2.0, "srtp_received": srtp_received},
        ]
    return evidence


def test_outcome_judges_each_reinvite_by_what_rfc_5763_6_6_predicts():
    works = judge_outcome(_modified(True))
    assert works.works and "#1 new association 2, SRTP both ways on it" in works.reason
    kept = judge_outcome(_modified(False))
    assert not kept.works and "kept the DTLS association; RFC 5763 §6.6 says it must not" in kept.reason
    silent = judge_outcome(_modified(True, srtp_received="0"))
    assert not silent.works and "decrypted no SRTP with association 2's keys" in silent.reason


def test_fork_key_sets_a_second_bob_like_the_first(tmp_path):
    (forked,) = load(ROOT / "scenarios" / "rfc5763-6.3-forking-bad-fingerprint.yaml")
    assert forked.bob2 == {"answer_setup": useragent_pb2.DTLS_SETUP_ACTIVE, "media_packets": 20}
    assert forked.deviations == {"bob2": ("tamper-answer-fingerprint",)}
    assert forked.expect.forks == (("bob", "works"), ("bob2", "fails"))
    (plain,) = load(write(tmp_path, "name: a\nfork: false\nexpect: {outcome: works}\n"))
    assert plain.bob2 is None
    with pytest.raises(ScenarioError, match=r"s.yaml.fork: true, false or \{deviations"):
        load(write(tmp_path, "name: a\nfork: {colour: red}\nexpect: {outcome: works}\n"))
    with pytest.raises(ScenarioError, match=r"s.yaml.expect.forks: \{'carol': 'works'\}"):
        load(write(tmp_path, "name: a\nfork: true\nexpect: {outcome: works, forks: {carol: works}}\n"))


def _forked_calls(bob2_verified: bool = True) -> dict:
    fork = {"local_socket": "10.10.1.10:4000", "srtp_received": "20"}
    bobs = {"bob": "203.0.113.40:5000", "bob2": "203.0.113.41:5002"}
    return {
        "calls": {
            "alice": {
                "forks": [
                    {**fork, "peer_media": bobs["bob"], "fingerprint_verified": True},
                    {**fork, "peer_media": bobs["bob2"], "fingerprint_verified": bob2_verified},
                ]
            },
            **{
                bob: {"media": {"local_media": media, "peer_fingerprint_verified": True, "srtp_received": "20"}}
                for bob, media in bobs.items()
            },
        },
        "events": [{"service": "alice", "kind": "sip.recv", "attrs": {"sip.status_code": "200"}}],
        "measurements": {"invite_to_srtp_bob_to_alice_s": 0.1, "invite_to_srtp_alice_to_bob_s": 0.12},
    }


def test_a_forked_call_is_judged_fork_by_fork():
    both = judge_outcome(_forked_calls())
    assert both.works and both.forks == {"bob": "works", "bob2": "works"}
    assert both.reason.startswith("2 forks on one local port; bob: verified against his own answer")
    liar = judge_outcome(_forked_calls(bob2_verified=False))
    assert not liar.works and liar.forks == {"bob": "works", "bob2": "fails"}
    assert "bob2: the certificate Alice saw" in liar.reason


def test_fault_peers_may_name_nodes(tmp_path):
    from pinhole.controller.scenario import fault_plans
    from pinhole.rpc.v1 import natgw_pb2

    text = (
        "name: f\nfaults: [{what: stun-request, peer: 'bob:5000', count: 1, action: drop}]\nexpect: {outcome: works}\n"
    )
    (scenario,) = load(write(tmp_path, text))
    plan = fault_plans(scenario, {"bob": "203.0.113.40"})["natgw"]  # no link: the gateway's
    assert plan.rules[0].match.peer == "203.0.113.40:5000" and plan.rules[0].HasField("drop")
    plain = fault_plans(load(write(tmp_path, "name: g\nexpect: {outcome: works}\n"))[0], {})
    assert plain and all(p == natgw_pb2.FaultPlan() for p in plain.values())
    with pytest.raises(ScenarioError, match="peer 'carol' is no node"):
        fault_plans(load(write(tmp_path, text.replace("bob", "carol")))[0], {"bob": "203.0.113.40"})


# --------------------------------------------------------------------------- bad files, named and fuzzed


def laughs(levels: int) -> str:
    """A flow sequence of aliases of aliases: 10^levels values from a few hundred bytes."""
    text = "&a0 [x, x, x, x, x, x, x, x, x, x]"
    for level in range(1, levels + 1):
        text = f"&a{level} [{text}" + f", *a{level - 1}" * 9 + "]"
    return text


EXPECT = "expect: {outcome: works}\n"
# each raised something else than a ScenarioError before (in the comment), or did not end
BAD_FILES = {
    "not-utf8": (b"name: a\ndescription: caf\xe9\n" + EXPECT.encode(), "s.yaml: not UTF-8 text"),  # UnicodeDecodeError
    "mapping-a-list": (  # TypeError: unhashable type
        "name: a\nnat: {mapping: [endpoint-independent]}\n" + EXPECT,
        "s.yaml.nat.mapping: ['endpoint-independent'] is not one of",
    ),
    "flow-a-list": (
        "name: a\nflow: [rfc5763-7.3]\n" + EXPECT,
        "s.yaml.flow: ['rfc5763-7.3'] is not one of",
    ),  # TypeError
    "rule-when-a-table": (  # TypeError
        "name: a\nmatrix: {answerer: [active]}\nrules: [{when: {mapping: {a: 1}}, outcome: works}]\n",
        "s.yaml.rules[0].when.mapping: {'a': 1} is not an RFC 4787 behaviour",
    ),
    "fault-action-a-table": (  # TypeError, in the fault engine
        "name: a\nfaults: [{what: stun, action: {drop: 1}}]\n" + EXPECT,
        "s.yaml.faults: rules[0].action: {'drop': 1} is not a text or a number",
    ),
    "stranger-sends-a-list": (  # TypeError
        "name: a\nstrangers: [{node: stun, send: [client-hello], after: {node: alice, event: sip.send}}]\n" + EXPECT,
        "s.yaml.strangers[0].send: ['client-hello'] is not one of",
    ),
    "nat-within-itself": (
        "name: a\nnat: &n {behaviour: *n}\n" + EXPECT,
        "once its aliases are expanded",
    ),  # RecursionError
    "nested-deep": ("name: " + "[" * 1000 + "]" * 1000 + "\n" + EXPECT, "s.yaml: nested too deeply"),  # RecursionError
    "date-that-is-none": (
        "name: a\ndescription: 2024-13-45\n" + EXPECT,
        "s.yaml: not YAML: a value that is not",
    ),  # ValueError
    "tag-that-lies": ("name: a\nring: !!bool maybe\n" + EXPECT, "s.yaml: not YAML: a value that is not"),  # KeyError
    "billion-laughs": ("name: a\ndescription: " + laughs(8) + "\n" + EXPECT, "once its aliases are expanded"),  # no end
    "yaml-error-on-lines": ("name: a\nfoo: [\n", "s.yaml: not YAML: while parsing a flow node: expected the node"),
    # found by fuzz/: PyYAML's scanner took 1-4 s (quadratic) on 2,000 unclosed '['; a NUL in a template path
    # raised ValueError; a number among a fault rule's keys raised TypeError sorting them
    "nested-unclosed": (
        "name: " + "[" * 2000 + "\n" + EXPECT,
        "s.yaml: nested too deeply to be a scenario ([ or { more than 100 deep)",
    ),
    "template-path-nul": (
        'name: a\nexternal:\n  alice: {role: ua, program: [x], files: {config: "a\\0b"}}\n' + EXPECT,
        "s.yaml.external.alice.files.config: cannot read template",
    ),
    "fault-rule-numeric-key": (
        "name: a\nfaults: [{what: stun, action: drop, 7: x, y: z}]\n" + EXPECT,
        "s.yaml.faults: rules[0].7: unknown field",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_a_one_line_scenario_error(tmp_path: Path, name: str) -> None:
    content, message = BAD_FILES[name]
    path = tmp_path / "s.yaml"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ScenarioError) as info:
        load(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


WRONG_VALUES = [[], {}, None, 10**30, -1, -(10**30), 0, "x", "", 1.5, True, [1, [2]], {"a": {"b": 1}}, "ab" * 40]
TOKENS = [b":", b"-", b"[", b"]", b"{", b"}", b",", b'"', b"'", b"#", b"\n", b" ", b"\t", b"\x00", b"\xff", b"0",
          b"&a ", b"*a", b"!!int ", b"!!bool ", b"2024-13-45"]  # fmt: skip


def _places(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path to every value in a parsed document."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [place for key, value in children for place in [(*here, key), *_places(value, (*here, key))]]


def mutate(rng: random.Random, doc: Any, text: str, dump: Callable[[Any], str]) -> str | bytes:
    """A wrong value (WRONG_VALUES) in one to three places of the parsed document, 60% of the time; else its text
    truncated, with bits flipped, or with YAML or JSON tokens inserted. Shared with the trace files' fuzz."""
    if rng.random() < 0.6:
        doc = copy.deepcopy(doc)
        for _ in range(rng.randint(1, 3)):
            places = _places(doc)
            if not places:
                break
            *parents, last = rng.choice(places)
            target = doc
            for key in parents:
                target = target[key]
            target[last] = copy.deepcopy(rng.choice(WRONG_VALUES))
        return dump(doc)
    raw = bytearray(text.encode())
    how = rng.randrange(3)
    if how == 0:
        return bytes(raw[: rng.randrange(len(raw) + 1)])
    if how == 1:
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    at = rng.randrange(len(raw) + 1)
    return bytes(raw[:at]) + b"".join(rng.choices(TOKENS, k=rng.randint(1, 3))) + bytes(raw[at:])


def test_fuzzed_scenario_files_load_or_are_one_line_scenario_errors(tmp_path: Path) -> None:
    """1,000 mutations of the shipped scenario files (fixed seed), each loaded beside its original (a recipe's
    files are relative to it): it loads, or it is a ScenarioError naming the file, on one line."""
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios")
    sources = sorted((tmp_path / "scenarios").rglob("*.yaml"))
    originals = {path: (yaml.safe_load(path.read_text()), path.read_text()) for path in sources}
    rng, refused = random.Random(5763), 0
    for _ in range(1000):
        source = rng.choice(sources)
        content = mutate(rng, *originals[source], lambda doc: yaml.safe_dump(doc, sort_keys=False))
        mutant = source.with_name("mutant.yaml")
        mutant.write_bytes(content) if isinstance(content, bytes) else mutant.write_text(content)
        try:
            load(mutant)
        except ScenarioError as error:
            assert str(error).startswith(str(mutant)) and "\n" not in str(error), str(error)
            refused += 1
    assert refused > 500  # most mutations break the file: the loop did test the refusals


def test_the_cli_says_a_bad_scenario_file_on_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_require_root", lambda: None)  # the file is refused before any lab is touched
    path = tmp_path / "s.yaml"
    path.write_text("name: a\nnat: {mapping: [endpoint-independent]}\n" + EXPECT)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pinhole: {path}.nat.mapping: ") and err.count("\n") == 1


def test_stranger_steps_parse_and_refuse_what_cannot_be_sent(tmp_path):
    (scenario,) = load(ROOT / "scenarios" / "stranger-malformed-client-hello.yaml")
    (step,) = scenario.strangers
    assert (step.node, step.send, step.to, step.count, step.after.label()) == (
        "natgw",
        "malformed-client-hello",
        "alice",
        3,
        "alice media.open",
    )
    bad = {
        "send: hello": r"strangers\[0\].send: 'hello' is not one of client-hello, malformed-client-hello",
        "send: client-hello, to: proxy-a": r"strangers\[0\].to: 'proxy-a': the stranger aims at a party's media",
        "send: client-hello, count: 0": r"strangers\[0\].count: 0: a whole number, 1..100",
        "send: client-hello, port: 5": r"strangers\[0\]: unknown key\(s\) \['port'\]",
    }
    for fields, message in bad.items():
        text = f"name: a\nstrangers: [{{node: natgw, after: {{node: alice, event: media.open}}, {fields}}}]\n"
        with pytest.raises(ScenarioError, match=message):
            load(write(tmp_path, text + "expect: {outcome: works}\n"))


def test_identity_key_parses_with_its_defaults_and_refuses_what_cannot_be_staged(tmp_path):
    """`identity:` (RFC 8224): true is Alice signing, Bob verifying and requiring; lists name parties of the call."""
    from pinhole.controller.scenario import Identity

    (shipped,) = load(ROOT / "scenarios" / "rfc8224-identity.yaml")
    assert shipped.identity == Identity(("alice",), ("bob",), True) and shipped.expect.outcome == "works"
    for value, identity in {
        "true": Identity(),
        "false": None,
        "{verify: [bob, bob2]}": Identity(("alice",), ("bob", "bob2"), True),
        "{sign: [], verify: [bob]}": Identity((), ("bob",), True),  # every INVITE unsigned: 428
        "{sign: [alice, bob], require: false}": Identity(("alice", "bob"), ("bob",), False),
    }.items():
        (scenario,) = load(write(tmp_path, f"name: a\nidentity: {value}\nexpect: {{outcome: works}}\n"))
        assert scenario.identity == identity, value
    (plain,) = load(write(tmp_path, "name: a\nexpect: {outcome: works}\n"))
    assert plain.identity is None
    bad = {
        "yes-please": r"\.identity: true, false or \{sign: \[PARTY, \.\.\.\], verify",
        "{sign: [carol]}": r"\.identity\.sign: \['carol'\]: a list of parties \(alice, bob, bob2\)",
        "{verify: bob}": r"\.identity\.verify: 'bob': a list of parties",
        "{sign: [alice, alice]}": r"\.identity\.sign: \['alice', 'alice'\] names a party twice",
        "{verify: [], require: true}": r"\.identity\.require: only a party that verifies",
        "{sign: [], verify: [], require: false}": r"\.identity: nobody signs and nobody verifies",
        "{require: maybe}": r"\.identity\.require: expected true or false",
        "{trust: [bob]}": r"\.identity: true, false or",
    }
    for value, message in bad.items():
        with pytest.raises(ScenarioError, match=message):
            load(write(tmp_path, f"name: a\nidentity: {value}\nexpect: {{outcome: works}}\n"))


def test_identity_gives_signers_a_key_and_certificate_and_verifiers_the_lab_ca(tmp_path):
    from cryptography.x509 import verification

    from pinhole.controller.run import Endpoints, service_configs
    from pinhole.lab import load_topology
    from pinhole.sip.identity import load_certificates, load_signing_key, signer_problem
    from pinhole.timers import TIMERS

    (scenario,) = load(ROOT / "scenarios" / "rfc8224-identity.yaml")
    endpoints = Endpoints.of_topology(load_topology())
    configs = service_configs(endpoints, scenario, TIMERS["short"])
    alice, bob = configs["alice"].identity, configs["bob"].identity
    key, chain = load_signing_key(alice.signing_key_pem), load_certificates(alice.certificate_chain_pem)
    assert signer_problem(key, chain, "sip:alice@a.example") == ""
    assert not alice.trust_anchors_pem and not alice.require
    assert not bob.signing_key_pem and bob.require
    store = verification.Store(load_certificates(bob.trust_anchors_pem))
    verification.PolicyBuilder().store(store).build_client_verifier().verify(chain[0], [])  # Bob trusts Alice's CA
    again = service_configs(endpoints, scenario, TIMERS["short"])  # a restarted service is configured the same
    assert again["alice"].identity == alice and again["bob"].identity == bob
    (plain,) = load(ROOT / "scenarios" / "rfc5763-7.3.yaml")
    assert not service_configs(endpoints, plain, TIMERS["short"])["alice"].HasField("identity")


def test_keys_that_are_not_text_are_named_not_crashed_on(tmp_path):
    """Found by fuzz/: a YAML key that is a number made sorted() of the unknown keys raise TypeError."""
    with pytest.raises(ScenarioError, match=r"unknown key\(s\) \['1', 'foo'\]"):
        load(write(tmp_path, "name: x\n1: a\nfoo: b\n"))
    with pytest.raises(ScenarioError, match="is not in 1..65535"):  # and a peer port of '²' (isdigit, not int)
        load(
            write(
                tmp_path,
                "name: x\nfaults: [{name: a, peer: '203.0.113.1:\u00b2', action: drop}]\nexpect: {outcome: works}\n",
            )
        )


def test_every_scenario_file_runs_by_its_name() -> None:
    """`pinhole run rfc5763-7.1` is scenarios/rfc5763-7.1.yaml; a name in a subfolder too; a matrix is refused
    with the command that runs it; an unknown name is refused naming where it looked."""
    assert cli._scenario("rfc5763-7.1") == load(ROOT / "scenarios" / "rfc5763-7.1.yaml")[0]
    assert cli._scenario("hello-after-check").name == "deviation-hello-after-check"
    with pytest.raises(ScenarioError, match="a matrix of 32 cells; run it with `pinhole matrix .*nat-matrix.yaml`"):
        cli._scenario("nat-matrix")
    with pytest.raises(ScenarioError, match="nor the name of one in .*scenarios"):
        cli._scenario("nonesuch")


def test_a_file_too_large_to_be_a_scenario_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyYAML reads about 100 KB a second (a fuzzed 650 KB file took 6.5 s): a file over 64 KB is refused
    before PyYAML sees it, in one line; the largest scenario file is about 2 KB."""
    from pinhole.controller.scenario import MAX_CHARACTERS

    path = tmp_path / "big.yaml"
    path.write_text("natgw:\n" * 100_000)
    monkeypatch.setattr(yaml, "safe_load", lambda text: pytest.fail("parsed a file too large to be a scenario"))
    with pytest.raises(ScenarioError, match=f"700,000 characters: a scenario file has at most {MAX_CHARACTERS:,}"):
        load(path)
    assert max(len(p.read_text()) for p in (ROOT / "scenarios").rglob("*.yaml")) < MAX_CHARACTERS
