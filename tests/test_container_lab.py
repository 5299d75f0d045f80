"""The container backend: the service images built with podman, and the §7.3 flow in containers.

The images are built from the working tree (containers/images.sh: a debootstrap base image once,
then cached layers), the lab comes up with `--backend docker` against Podman's Docker-compatible
API, and the scenarios of the namespace lab run on it: the verdict must be the same, check by check.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from pinhole.controller.run import lab_down, lab_up, run
from pinhole.controller.saved import judge_run

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parent.parent
# every service with an image: the switch has none (a container lab's segments are engine networks)
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py") if p.parent.name != "switch")


@pytest.fixture(scope="module")
def container_lab(images):
    """A running container lab, torn down even if the tests fail; nothing of it may be left."""
    name = f"ph-c{uuid.uuid4().hex[:6]}"
    volumes = set(_podman("volume", "ls", "--quiet").split())
    running, topology, timings = lab_up(name, backend="docker")
    client = running.client()
    engine_pid = running._state().get("engine_pid")
    try:
        yield running, topology, timings
    finally:
        lab_down(running)
        if engine_pid is None:  # an engine the user runs: ask it what is left
            left = client.containers.list(all=True, filters={"label": f"io.pinhole.lab={name}"})
            assert not left, f"containers left behind: {[c.name for c in left]}"
        else:  # the lab's own podman service is gone with the lab
            assert not Path(f"/proc/{engine_pid}").exists() or "podman" not in _cmdline(engine_pid)
        assert not running.run_dir.exists()
        left = _podman("ps", "-a", "--filter", f"label=io.pinhole.lab={name}", "--format", "{{.Names}}")
        assert not left.split(), f"containers left behind: {left}"
        left = _podman("network", "ls", "--filter", f"label=io.pinhole.lab={name}", "--format", "{{.Name}}")
        assert not left.split(), f"networks left behind: {left}"
        left = set(_podman("volume", "ls", "--quiet").split()) - volumes
        assert not left, f"volumes left behind: {left}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _podman(*args: str) -> str:
    command = [str(ROOT / "containers" / "images.sh"), "podman", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def _run(lab_name: str, backend: str, tmp_path: Path, scenario: str):
    result, out_dir = run(
        scenario, timers_name="short", lab_name=lab_name, backend=backend, out_root=tmp_path, progress=False
    )
    assert not result.broken, result.broken
    return result, json.loads((out_dir / "evidence.json").read_text()), out_dir


def _checks(result):
    return [(c.message, c.passed) for c in result.checks]


@pytest.mark.parametrize("service", SERVICES)
def test_images_are_built_for_every_service_and_run_unprivileged(images, service):
    inspected = json.loads(_podman("image", "inspect", f"localhost/pinhole-{service}"))[0]
    assert inspected["Config"]["User"] == "10001:10001"
    assert inspected["Size"] < 400 * 1024 * 1024, f"{service}: {inspected['Size']} bytes"


def test_only_the_nat_gateway_gets_a_capability(container_lab):
    """What the kernel says of each service's process: no capability at all, except NET_ADMIN for the NAT."""
    running, topology, _ = container_lab
    net_admin = 1 << 12  # CAP_NET_ADMIN
    seen = set()
    for container in running.client().containers.list(filters={"label": f"io.pinhole.lab={running.name}"}):
        node = container.labels["io.pinhole.node"]
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{container.attrs['State']['Pid']}/status").read_text().splitlines()
        )
        caps = {name: int(status[name], 16) for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb")}
        expected = net_admin if topology.nodes[node].service == "natgw" else 0
        assert caps["CapEff"] == caps["CapBnd"] == expected, (node, caps)
        assert status["NoNewPrivs"].strip() == "1", node
        if expected == 0:
            assert status["Uid"].split()[:2] == ["10001", "10001"], node
        assert container.attrs["HostConfig"]["ReadonlyRootfs"], node
        seen.add(node)
    assert seen == {n for n, spec in topology.nodes.items() if running.hosts_service(spec)}  # no switch


def test_alice_routes_through_the_nat_container_only(container_lab):
    """Alice's only way out is the NAT: her default route is the gateway's LAN address."""
    running, topology, _ = container_lab
    from pyroute2 import IPRoute

    from pinhole.nsenter import in_netns

    alice = running.client().containers.get(f"{running.name}-alice")
    with in_netns(f"/proc/{alice.attrs['State']['Pid']}/ns/net"), IPRoute() as ipr:
        routes = [(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY")) for r in ipr.get_routes(family=2)]
    defaults = [gateway for dst, length, gateway in routes if length == 0]
    assert defaults == [topology.nodes["natgw"].interfaces["lan0"][0].split("/")[0]], routes


def test_every_topology_address_is_on_its_container(container_lab):
    """Addresses beyond the one an engine network gives (the STUN server's second, RFC 5780) are there too."""
    running, topology, _ = container_lab
    from pyroute2 import IPRoute

    from pinhole.nsenter import in_netns

    for container in running.client().containers.list(filters={"label": f"io.pinhole.lab={running.name}"}):
        node = container.labels["io.pinhole.node"]
        with in_netns(f"/proc/{container.attrs['State']['Pid']}/ns/net"), IPRoute() as ipr:
            present = {f"{e.get_attr('IFA_ADDRESS')}/{e['prefixlen']}" for e in ipr.get_addr(family=2)}
        assert set(topology.nodes[node].addresses) <= present, (node, present)


def test_section_7_3_gets_the_same_verdict_in_containers_as_in_namespaces(container_lab, lab, tmp_path):
    running, _, _ = container_lab
    in_containers, evidence, out_dir = _run(running.name, "docker", tmp_path / "docker", "rfc5763-7.3")
    assert in_containers.passed, in_containers.render()
    in_namespaces, _, _ = _run(lab[0].name, "netns", tmp_path / "netns", "rfc5763-7.3")
    assert _checks(in_containers) == _checks(in_namespaces)
    # the capture alone says the same; the NAT container really translated (every link captured)
    assert judge_run(out_dir, from_capture=True).outcome == "pass"
    links = {link.split()[0] for d in evidence["wire"] for link in d["links"]}
    assert links == {"natgw:lan0", "natgw:wan0", "proxy-a:eth0", "proxy-b:eth0", "stun:eth0", "bob:eth0"}
    outside = [link for d in evidence["wire"] for link in d["links"] if link.startswith("natgw:wan0")]
    assert outside and not any(" 10.10.1." in link for link in outside)
    assert evidence["measurements"]["backend"] == "docker"


def test_negative_control_fails_in_containers_at_the_same_message(container_lab, tmp_path):
    running, _, _ = container_lab
    result, _, _ = _run(running.name, "docker", tmp_path, "no-stun-check")
    assert result.outcome == "fail"
    assert not next(c for c in result.checks if c.message == "5").passed


def test_the_nat_container_injects_faults_with_net_admin_only(container_lab, tmp_path):
    """A fault scenario in the NAT container (an unprivileged user, NET_ADMIN only, read-only root): its
    NFQUEUE rule (iptables-nft) and queue work there, and the dropped STUN check is an event of the call."""
    from pinhole.controller.outcome import judge_outcome
    from pinhole.controller.scenario import load

    running, _, _ = container_lab
    (scenario,) = load(ROOT / "scenarios" / "fault-lost-check.yaml")
    result, out_dir = run(
        scenario, timers_name="short", lab_name=running.name, backend="docker", out_root=tmp_path, progress=False
    )
    evidence = json.loads((out_dir / "evidence.json").read_text())
    assert not result.broken, result.broken
    assert judge_outcome(evidence).works, judge_outcome(evidence).reason  # the check was resent (RFC 5389 RTO)
    [fault] = [e for e in evidence["events"] if e["kind"] == "fault.injected"]
    assert fault["service"] == "natgw" and fault["attrs"]["rule"] == "lose-first-check"
    assert fault["attrs"]["summary"].startswith("STUN Binding request")


def test_a_proxy_container_crashes_mid_call_and_comes_back(container_lab, tmp_path):
    """The restart scenario on containers: proxy-b's container is killed (SIGKILL) during media and a new
    one started on the same networks once proxy-a resent the BYE to it; the call still ends cleanly."""
    from pinhole.controller.outcome import judge_outcome
    from pinhole.controller.scenario import load

    running, _, _ = container_lab
    (scenario,) = load(ROOT / "scenarios" / "restart-proxy-mid-call.yaml")
    result, out_dir = run(
        scenario, timers_name="short", lab_name=running.name, backend="docker", out_root=tmp_path, progress=False
    )
    evidence = json.loads((out_dir / "evidence.json").read_text())
    outcome = judge_outcome(evidence)
    assert outcome.works, outcome.reason
    [restart] = evidence["restarts"]
    assert restart["node"] == "proxy-b" and restart["started"] > restart["killed"]
    byes = [e for e in evidence["events"] if e["service"] == "proxy-a" and e["attrs"].get("sip.method") == "BYE"]
    assert len([e for e in byes if e["kind"] == "sip.send"]) >= 2  # Timer E resent it to the dead proxy
    labels = [f"io.pinhole.lab={running.name}", "io.pinhole.node=proxy-b"]
    [proxy] = running.client().containers.list(filters={"label": labels})  # the new one, running
    assert proxy.status == "running"


def test_an_external_image_runs_in_a_node_and_the_call_is_judged_from_the_wire(container_lab, tmp_path):
    """`external:` on the container backend: the stun node runs an image that is not its service's container
    (pinhole's STUN server image, started as any third party's would be: its args, its rendered file mounted at
    the same path), waited for by a udp probe, and replaced by pinhole's service container afterwards."""
    from pinhole.controller.scenario import load

    running, _, _ = container_lab
    (tmp_path / "args").write_text("listen {{address}}:3478 for {{callee_aor}}\n")
    path = tmp_path / "external-stun.yaml"
    path.write_text(
        "name: external-stun\n"
        "external:\n"
        "  stun:\n"
        "    role: peer\n"
        "    image: localhost/pinhole-stunserver\n"
        "    args: [python, -m, services.stunserver, --name, stun, --grpc, 'unix:/tmp/stun.sock',\n"
        "           --listen, '{{address}}:3478']\n"
        "    files: {note: args}\n"
        "    ready: {udp: 3478}\n"
        "expect: {outcome: works}\n"
    )
    (scenario,) = load(path)
    result, out_dir = run(
        scenario, timers_name="short", lab_name=running.name, backend="docker", out_root=tmp_path, progress=False
    )
    assert result.passed, result.render()
    assert (out_dir / "stun.d" / "note").read_text() == "listen 203.0.113.30:3478 for sip:bob@b.example\n"
    assert "external: stun runs localhost/pinhole-stunserver" in "\n".join(result.notes)
    labels = [f"io.pinhole.lab={running.name}", "io.pinhole.node=stun"]
    [stun] = running.client().containers.list(filters={"label": labels})  # pinhole's service, back
    assert "pinhole-stunserver" in stun.attrs["Config"]["Image"] and stun.status == "running"
    assert "unix:/tmp/stun.sock" not in stun.attrs["Config"]["Cmd"]  # not the external one
