"""External nodes (pinhole.lab.external, pinhole.controller.externals): the spec, its templates, readiness, and
a third party's program in a real lab node, ended with everything it started."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pinhole.controller.run import Endpoints, external_variables
from pinhole.controller.scenario import ScenarioError, load
from pinhole.lab import load_topology
from pinhole.lab.external import ExternalError, Ready, parse, render, rendered, wait_ready

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = load_topology()
VARIABLES = external_variables(TOPOLOGY, Endpoints.of_topology(TOPOLOGY), "bob")


def spec(**more):
    return {"role": "ua", "program": ["prog", "-f", "{{config_dir}}"], **more}


# -- the spec -------------------------------------------------------------------------------------------------


def test_a_spec_reads_its_templates_and_checks_every_key(tmp_path):
    (tmp_path / "conf.tmpl").write_text("listen {{address}}:{{sip_port}}\n")
    external = parse(
        "bob",
        spec(files={"conf": "conf.tmpl"}, ready={"sip": 5060, "timeout": 5}, hangup={"stdin": "/hangup"}),
        "x.external.bob",
        tmp_path,
    )
    assert external.files == {"conf": "listen {{address}}:{{sip_port}}\n"}
    assert external.ready == Ready("sip", 5060, timeout=5.0)
    assert external.hangup is not None and external.hangup.stdin == "/hangup\n"  # a line
    assert external.label == "prog"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"role": "ua", "program": ["p"], "colour": 1}, r"x\.colour: unknown key"),
        ({"role": "sbc", "program": ["p"]}, r"x\.role: 'sbc' is not one of ua, proxy, peer"),
        ({"role": "ua"}, r"x: say what runs there"),
        ({"role": "ua", "program": ["p"], "ready": {"sip": 5060, "log": "x"}}, r"x\.ready: one of"),
        ({"role": "ua", "program": ["p"], "ready": {"tcp": 70000}}, r"x\.ready\.tcp: 70000 is not a port"),
        ({"role": "ua", "program": ["p"], "ready": {"log": "("}}, r"x\.ready\.log: not a regular expression"),
        ({"role": "ua", "program": ["p"], "dial": {"keys": "x"}}, r"x\.dial: either \{stdin"),
        ({"role": "proxy", "program": ["p"], "dial": {"stdin": "x"}}, r"x\.dial: only a user agent dials"),
        ({"role": "ua", "program": ["p"], "files": {"../up": "t"}}, r"x\.files: '\.\./up': a plain file name"),
        ({"role": "ua", "program": ["p"], "files": {"c": "missing.tmpl"}}, r"x\.files\.c: cannot read template"),
    ],
)
def test_a_bad_spec_says_where_and_why(tmp_path, bad, message):
    with pytest.raises(ExternalError, match=message):
        parse("bob", bad, "x", tmp_path)


def test_templates_get_the_lab_and_name_an_unknown_variable():
    assert render("{{address}} {{ proxy }} {{peer_aor}} {{proxy-b.address}}", VARIABLES, "w") == (
        "203.0.113.40 203.0.113.20:5060 sip:alice@a.example 203.0.113.20"
    )
    with pytest.raises(ExternalError, match=r"w: unknown template variable \{\{adress\}\} \(known: address, aor"):
        render("{{adress}}", VARIABLES, "w")


def test_rendering_writes_the_files_and_fills_every_template(tmp_path):
    (tmp_path / "t").write_text("sip_listen {{address}}:{{sip_port}}\naccount <{{aor}}>\n")
    external = parse(
        "bob", spec(files={"config": "t"}, dial={"command": ["ctl", "dial", "{{peer_aor}}"]}), "x", tmp_path
    )
    program = rendered(external, VARIABLES, tmp_path / "bob.d")
    assert (tmp_path / "bob.d" / "config").read_text() == "sip_listen 203.0.113.40:5060\naccount <sip:bob@b.example>\n"
    assert program.argv == ("prog", "-f", str(tmp_path / "bob.d"))
    assert program.dial is not None and program.dial.command == ("ctl", "dial", "sip:alice@a.example")


def test_proxies_get_their_next_hop_and_parties_their_outbound_proxy():
    endpoints = Endpoints.of_topology(TOPOLOGY)
    assert external_variables(TOPOLOGY, endpoints, "proxy-a")["next_hop"] == "203.0.113.20:5060"
    assert external_variables(TOPOLOGY, endpoints, "proxy-b")["next_hop"] == "203.0.113.40:5060"
    alice = external_variables(TOPOLOGY, endpoints, "alice")
    assert (alice["aor"], alice["proxy"], alice["stun"]) == (
        "sip:alice@a.example",
        "203.0.113.10:5060",
        "203.0.113.30:3478",
    )


# -- in scenario files ----------------------------------------------------------------------------------------


def scenario_file(tmp_path: Path, external: str, extra: str = "") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nexternal:\n{external}\n{extra}expect: {{outcome: works}}\n")
    return path


@pytest.mark.parametrize(
    ("external", "extra", "message"),
    [
        ("  natgw: {role: peer, program: [x]}", "", r"external\.natgw: not a host node of the lab"),
        ("  proxy-a: {role: ua, program: [x]}", "", r"external\.proxy-a\.role: ua does not fit node proxy-a"),
        ("  bob: {role: proxy, program: [x]}", "", r"external\.bob\.role: proxy does not fit node bob"),
        ("  bob: {role: ua, program: [x]}", "deviations: {bob: [no-stun-answer]}\n", r"deviations\.bob: an external"),
    ],
)
def test_a_scenario_places_an_external_node_where_it_fits(tmp_path, external, extra, message):
    with pytest.raises(ScenarioError, match=message):
        load(scenario_file(tmp_path, external, extra))


def test_every_shipped_recipe_loads():
    recipes = sorted((ROOT / "scenarios" / "interop").glob("*.yaml"))
    assert recipes
    for path in recipes:
        (scenario,) = load(path)
        assert scenario.external and scenario.expect is not None and scenario.expect.why, path


# -- in a real lab --------------------------------------------------------------------------------------------


@pytest.mark.lab
def test_readiness_waits_for_the_answer_and_names_the_log_when_none_comes(lab, tmp_path):
    running, topology, _ = lab
    address = topology.nodes["proxy-a"].addresses[0].split("/")[0]
    ns = running.ns("proxy-a")
    log = tmp_path / "x.log"
    seconds = wait_ready(Ready("sip", 5060), netns=ns, address=address, log=log, alive=lambda: True, what="proxy-a")
    assert seconds < 5  # pinhole's proxy answers OPTIONS to itself
    with pytest.raises(ExternalError, match=r"proxy-a not ready after 1s \(sip probe; see .*x\.log\)"):
        wait_ready(
            Ready("sip", 5999, timeout=1), netns=ns, address=address, log=log, alive=lambda: True, what="proxy-a"
        )
    with pytest.raises(ExternalError, match=r"proxy-a exited before it was ready"):
        wait_ready(
            Ready("udp", 5999, timeout=5), netns=ns, address=address, log=log, alive=lambda: False, what="proxy-a"
        )
    assert (
        wait_ready(Ready("udp", 5060, timeout=5), netns=ns, address=address, log=log, alive=lambda: True, what="x") < 5
    )
    log.write_text("starting\nready to serve\n")
    assert (
        wait_ready(Ready("log", pattern="ready to"), netns=ns, address=address, log=log, alive=lambda: True, what="x")
        < 1
    )


def _session(pid: int) -> int | None:
    """The session ID of a process (field 6 of /proc/PID/stat), None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2 :].split()[3])


@pytest.mark.lab
def test_a_program_and_all_it_started_end_with_it_and_names_stay_in_the_lab(lab, tmp_path):
    """A program that leaves its process group (setsid) is still ended; inside, /etc/resolv.conf asks nobody."""
    running, _, _ = lab
    (tmp_path / "t").write_text("#!/bin/sh\ncat /etc/resolv.conf\nsetsid sleep 300 &\nexec sleep 300\n")
    external = parse(
        "bob2", {"role": "ua", "program": ["sh", "{{config_dir}}/run.sh"], "files": {"run.sh": "t"}}, "x", tmp_path
    )
    program = rendered(external, external_variables(TOPOLOGY, Endpoints.of_topology(TOPOLOGY), "bob2"), tmp_path / "d")
    running.kill("bob2", crash=False)
    try:
        process = running.start_external("bob2", program, log_path=tmp_path / "bob2.log")
        from netns.lab import pids_in_netns

        def escaped() -> list[int]:
            """Processes in the node that have left the program's session (the setsid has happened)."""
            return [pid for pid in pids_in_netns(running.ns("bob2")) if _session(pid) not in (None, process.pid)]

        deadline = time.monotonic() + 10
        while not escaped() and time.monotonic() < deadline:
            time.sleep(0.02)  # the program starting its escapee: nothing to wait on but the process table
        assert escaped()
        stragglers = running.stop_external("bob2", process, timeout=2)
        assert len(stragglers) == 1  # the setsid one, killed by PID
        assert pids_in_netns(running.ns("bob2")) == []
        assert "nameserver 127.0.0.1" in (tmp_path / "bob2.log").read_text()
    finally:
        from pinhole.controller.run import service_back

        service_back(running, "bob2")


@pytest.mark.lab
def test_a_program_that_is_not_installed_is_a_lab_error(lab, tmp_path):
    from pinhole.lab import LabError

    running, _, _ = lab
    external = parse("bob2", {"role": "ua", "program": ["no-such-sip-phone"]}, "x", tmp_path)
    program = rendered(external, VARIABLES, tmp_path / "d")
    with pytest.raises(LabError, match=r"bob2: no-such-sip-phone is not installed"):
        running.start_external("bob2", program, log_path=tmp_path / "l")
    assert not (tmp_path / "l").exists()  # nothing was started


@pytest.mark.lab
def test_the_run_says_what_it_had_to_kill_and_what_it_could_not_read(lab, tmp_path):
    """Externals' notes (they end up in the verdict's): a process that left the program's group, a key log the
    scenario names but the program never wrote; and how long the program took to be ready."""
    from pinhole.controller.externals import Externals
    from pinhole.controller.run import service_back

    running, topology, _ = lab
    (tmp_path / "t").write_text("#!/bin/sh\nsetsid sh -c 'echo up; exec sleep 300' &\nexec sleep 300\n")
    spec = {"role": "ua", "program": ["sh", "{{config_dir}}/run.sh"], "files": {"run.sh": "t"}}
    external = parse("bob2", {**spec, "key_log": "{{config_dir}}/keys.log", "ready": {"log": "^up$"}}, "x", tmp_path)
    variables = lambda node: external_variables(topology, Endpoints.of_topology(topology), node)  # noqa: E731
    externals = Externals(running, {"bob2": external}, tmp_path, variables, lambda node: service_back(running, node))
    externals.start()
    assert externals.key_log() == [] and "bob2" in externals.ready_s
    externals.stop()
    assert externals.notes[0].startswith("bob2: no key log at ") and externals.notes[0].endswith(
        "(No such file or directory)"
    )
    assert externals.notes[1] == "bob2: 1 process(es) left its process group and were killed"
