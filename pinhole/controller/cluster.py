"""`pinhole cluster-run`: the §7.3 call against a lab whose services already run elsewhere (Kubernetes).

In a cluster nobody hands the controller a topology: each service is a pod (label
app.kubernetes.io/name=<node>, gRPC on port 50051 of its pod IP), so the controller finds the pods
through the API (`discover`), derives the lab addresses from them (`endpoints_for`: Alice sits behind
the NAT on the VXLAN link, everyone else on the pod network) and then drives and judges the call
exactly like a local run (run.configure, run.drive_call, run.judge_call). Spans come to the
controller's own OTLP/gRPC receiver (Service pinhole-controller, port 4317). The wire is captured by
the pods that can (the LinkCapture service every pinhole service offers; in k8s/base only the NAT's
pod has CAP_NET_RAW): its two links show every datagram of Alice's; what only crossed links no pod
captured is judged on the services' own word, and the verdict says so.

Where there is no API (podman kube play, a laptop), `--service NODE=IP` names each pod instead.

The control planes are mutual TLS when PINHOLE_GRPC_TLS_DIR names the controller's certificate (Secret
pinhole-controller-grpc-tls of the k8s/base Job pinhole-lab-ca, mounted by k8s/controller): each service
admits that certificate alone, and the controller checks each service's certificate for its node's name
(pinhole.labca, services.control_channel).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import time
import traceback
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc

from pinhole import labca, pcapng, telemetry
from pinhole.controller import verdict
from pinhole.controller.otlp import OtlpReceiver, write_otlp_json
from pinhole.controller.run import (
    SCENARIOS,
    Endpoints,
    Progress,
    RunInterrupted,
    configure,
    drive_call,
    external_variables,
    judge_call,
    link_last,
    new_run_dir,
)
from pinhole.controller.services import ServiceClients, wait_healthy
from pinhole.lab import load_topology
from pinhole.lab.external import External, render
from pinhole.nat import NatBehaviour, NatError
from pinhole.rpc.v1 import capture_pb2
from pinhole.timers import TIMERS

LABEL = "app.kubernetes.io/name"
GRPC_PORT = 50051
# node -> kind of service (services.STUBS): the lab of pinhole/lab/topology.toml and k8s/base
KINDS = {
    "alice": "useragent",
    "bob": "useragent",
    "proxy-a": "proxy",
    "proxy-b": "proxy",
    "natgw": "natgw",
    "stun": "stunserver",
}
NODES = tuple(KINDS)
# Alice's and the NAT's addresses on their VXLAN link, and the NAT's interfaces (k8s/base/alice.yaml, natgw.yaml)
ALICE_ADDRESS = "10.10.1.10"
NAT_INSIDE = "10.10.1.1"
NAT_LAN_IF, NAT_WAN_IF = "vxlan0", "eth0"
SEGMENT = "cluster"  # what a pod's own interface leads to: the pod network
EXEC_TIMEOUT = 10  # seconds a dial or hang-up command may take in its pod


class ClusterError(RuntimeError):
    """The cluster cannot run the scenario (pods missing, API refused, bad settings): exit 2, not a verdict."""


# --------------------------------------------------------------------------- NAT settings


ON_OFF = {"on": True, "off": False}


def nat_config(
    mapping: str | None = None,
    filtering: str | None = None,
    mapping_timeout: str | int | None = None,
    port_preservation: str | None = None,
    hairpinning: str | None = None,
) -> NatBehaviour:
    """The NAT the ConfigMap's strings ask for (None: §7.3's for that field; port preservation and hairpinning
    "on"/"off", else the gateway's defaults). A value the gateway does not know is an error, never quietly
    the default."""
    fields: dict[str, Any] = {}
    for name, value in (("port_preservation", port_preservation), ("hairpinning", hairpinning)):
        if value is not None:
            if value.strip() not in ON_OFF:
                raise ClusterError(f"NAT {name.replace('_', ' ')} {value!r} is not on or off")
            fields[name] = ON_OFF[value.strip()]
    for name, value in (("mapping", mapping), ("filtering", filtering)):
        if value is not None:
            fields[name] = value.strip()
    if mapping_timeout is not None:
        try:
            fields["mapping_timeout"] = int(str(mapping_timeout).strip())
        except ValueError:
            raise ClusterError(f"NAT mapping timeout {mapping_timeout!r} is not a whole number of seconds") from None
    try:
        return NatBehaviour(**fields).require_req5()
    except NatError as error:
        raise ClusterError(f"NAT {error.field.replace('_', ' ')} {error}") from None


def nat_config_from_env(env: Mapping[str, str] | None = None) -> NatBehaviour:
    """PINHOLE_NAT_MAPPING, PINHOLE_NAT_FILTERING, PINHOLE_NAT_MAPPING_TIMEOUT, PINHOLE_NAT_PORT_PRESERVATION,
    PINHOLE_NAT_HAIRPINNING (ConfigMap pinhole-scenario); unset or empty ones keep §7.3's NAT."""
    env = os.environ if env is None else env
    return nat_config(
        env.get("PINHOLE_NAT_MAPPING") or None,
        env.get("PINHOLE_NAT_FILTERING") or None,
        env.get("PINHOLE_NAT_MAPPING_TIMEOUT") or None,
        env.get("PINHOLE_NAT_PORT_PRESERVATION") or None,
        env.get("PINHOLE_NAT_HAIRPINNING") or None,
    )


# --------------------------------------------------------------------------- finding the pods


def kubernetes_api() -> Any:
    """A CoreV1Api: the pod's service account in a cluster, else the user's kubeconfig (a laptop)."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ClusterError("the kubernetes client is not installed (pip install 'pinhole[lab]')") from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as error:
            raise ClusterError(f"no in-cluster service account and no usable kubeconfig: {error}") from None
    return client.CoreV1Api()


def _is_ready(pod: Any) -> bool:
    status = pod.status
    if pod.metadata.deletion_timestamp is not None or status is None or status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def _pod_problem(pod: Any) -> str:
    """Why a pod does not count yet, for the timeout message."""
    name, status = pod.metadata.name, pod.status
    if pod.metadata.deletion_timestamp is not None:
        return f"{name} terminating"
    if status is None or status.phase != "Running":
        return f"{name} {getattr(status, 'phase', None) or 'without status'}"
    if not status.pod_ip:
        return f"{name} has no pod IP"
    return f"{name} not Ready"


def match_pods(pods: list[Any], nodes: tuple[str, ...] | list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(node -> pod IP of its single Running+Ready pod, node -> why it has none yet)."""
    by_node: dict[str, list[Any]] = {node: [] for node in nodes}
    for pod in pods:
        node = (pod.metadata.labels or {}).get(LABEL)
        if node in by_node:
            by_node[node].append(pod)
    found, problems = {}, {}
    for node, candidates in by_node.items():
        ready = [p for p in candidates if _is_ready(p) and p.status.pod_ip]
        if len(ready) == 1:
            found[node] = ready[0].status.pod_ip
        elif len(ready) > 1:  # one instance per service: two Alices would make the ladder lie
            problems[node] = f"{len(ready)} Ready pods ({', '.join(p.metadata.name for p in ready)})"
        elif candidates:
            problems[node] = "; ".join(_pod_problem(p) for p in candidates)
        else:
            problems[node] = f"no pod labelled {LABEL}={node}"
    return found, problems


def discover(
    namespace: str,
    api: Any = None,
    timeout: float = 300.0,
    *,
    nodes: tuple[str, ...] | list[str] = NODES,
    interval: float = 2.0,
) -> dict[str, str]:
    """node -> pod IP, once every node has exactly one Running+Ready pod; ClusterError naming the rest on timeout.

    A bounded poll (one list call per round, all nodes at once) rather than a watch: the lab has six
    pods, and a list survives API restarts and RBAC without resourceVersion bookkeeping.
    `api`: anything with CoreV1Api.list_namespaced_pod (tests pass a fake); default `kubernetes_api()`.
    """
    api = kubernetes_api() if api is None else api
    selector = f"{LABEL} in ({','.join(sorted(nodes))})"
    deadline = time.monotonic() + timeout
    while True:
        try:
            # a bounded request: an API server that accepts but never answers must not outlast `timeout`
            pods = api.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=10).items
        except Exception as error:
            status = getattr(error, "status", None)
            if status in (401, 403, 404):  # waiting will not fix credentials, RBAC or a missing namespace
                raise ClusterError(
                    f"listing pods in namespace {namespace} failed ({status} {getattr(error, 'reason', '')}): "
                    "the controller needs get/list on pods there (k8s/controller/rbac.yaml)"
                ) from error
            problems = {node: f"API error: {type(error).__name__}: {error}" for node in nodes}
        else:
            found, problems = match_pods(pods, nodes)
            if not problems:
                return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = ", ".join(sorted(problems))
            details = "; ".join(f"{node}: {why}" for node, why in sorted(problems.items()))
            raise ClusterError(
                f"no Running+Ready pod after {timeout:.0f}s in namespace {namespace} for {missing} ({details})"
            )
        time.sleep(min(interval, remaining))


def endpoints_for(
    pod_ips: Mapping[str, str], *, alice_address: str = ALICE_ADDRESS, nat_inside: str = NAT_INSIDE
) -> Endpoints:
    """Lab addresses from the pods: Alice and the NAT's inside live on their VXLAN link, the NAT's
    outside is its pod IP (it masquerades there), everyone else uses their pod IP."""
    missing = [node for node in NODES if node != "alice" and node not in pod_ips]
    if missing:
        raise ClusterError(f"no address for {', '.join(missing)}")
    addresses = {node: pod_ips[node] for node in NODES if node != "alice"}
    addresses["alice"] = alice_address
    return Endpoints(
        addresses=addresses,
        nat_inside=nat_inside,
        nat_outside=pod_ips["natgw"],
        nat_links=(f"natgw:{NAT_LAN_IF}", f"natgw:{NAT_WAN_IF}"),
    )


def grpc_target(ip: str, port: int = GRPC_PORT) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


def parse_external(text: str, dial: str = "") -> dict[str, str]:
    """`bob=my-phone,proxy-a=kamailio` ($PINHOLE_EXTERNAL): the nodes whose pods run the user's image instead
    of pinhole's service, and what runs there. The NAT stays pinhole's, and a caller (`alice`) needs `dial`,
    the command that makes it call ($PINHOLE_EXTERNAL_DIAL): otherwise a ClusterError."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, _, label = item.partition("=")
        if node not in NODES or node == "natgw":
            allowed = ", ".join(n for n in NODES if n != "natgw")
            raise ClusterError(f"external {item!r}: an external node is one of {allowed} (the NAT stays pinhole's)")
        if node == "alice" and not dial.strip():
            raise ClusterError(
                "external alice: a caller must be told to dial: set PINHOLE_EXTERNAL_DIAL (--external-dial), a command "
                "run in her pod, e.g. 'my-phone-ctl dial {{peer_aor}}'"
            )
        out[node] = label or "external"
    return out


class PodExternals:
    """An external caller in a cluster: the user's pod made to dial and hang up by a command run in it through
    the Kubernetes exec API (the controller's Role then needs pods/exec: k8s/components/external-caller).
    Offers what drive_call asks of run's Externals."""

    def __init__(self, namespace: str, dial: str, hangup: str, variables: dict[str, str], api: Any = None) -> None:
        self.namespace, self.api = namespace, api
        self.commands = {
            name: tuple(render(part, variables, f"PINHOLE_EXTERNAL_{name.upper()}") for part in shlex.split(text))
            for name, text in (("dial", dial), ("hangup", hangup))
            if text.strip()
        }

    def dial(self, node: str) -> bool:
        return self._run(node, "dial")

    def hang_up(self, node: str) -> bool:
        return node == "alice" and "hangup" in self.commands and self._run(node, "hangup")

    def key_log(self) -> list[str]:
        return []  # a pod's own key log is not reachable from here: pinhole's Bob has the association's

    def _run(self, node: str, name: str) -> bool:
        from kubernetes.stream import stream

        api = kubernetes_api() if self.api is None else self.api
        pods = api.list_namespaced_pod(self.namespace, label_selector=f"{LABEL}={node}", _request_timeout=10).items
        running = [p.metadata.name for p in pods if _is_ready(p)]
        if len(running) != 1:
            raise ClusterError(f"{name}: {len(running)} Ready pods labelled {LABEL}={node}, expected one")
        command = list(self.commands[name])
        reply = stream(
            api.connect_get_namespaced_pod_exec,
            running[0],
            self.namespace,
            command=command,
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            _preload_content=False,
        )
        reply.run_forever(timeout=EXEC_TIMEOUT)
        if reply.returncode != 0:
            said = (reply.read_stderr() or reply.read_stdout() or "").strip()[-300:]
            raise ClusterError(f"{node}: {name} command {' '.join(command)} exited {reply.returncode}: {said}")
        return True


def plan(
    namespace: str,
    *,
    services: Mapping[str, str] | None = None,
    alice_address: str = ALICE_ADDRESS,
    nat_inside: str = NAT_INSIDE,
    api: Any = None,
    timeout: float = 300.0,
) -> tuple[Endpoints, dict[str, str]]:
    """(lab addresses, node -> gRPC target). Nodes in `services` (node -> pod IP) are taken as given;
    only the others are looked up, so naming all six needs no Kubernetes API at all."""
    pod_ips = dict(services or {})
    missing = [node for node in NODES if node not in pod_ips]
    if missing:
        pod_ips.update(discover(namespace, api, timeout, nodes=missing))
    targets = {node: grpc_target(pod_ips[node]) for node in NODES}
    return endpoints_for(pod_ips, alice_address=alice_address, nat_inside=nat_inside), targets


# --------------------------------------------------------------------------- captures


def start_captures(clients: ServiceClients, endpoints: Endpoints) -> list[str]:
    """Ask every service to capture its own links; those that cannot (no CAP_NET_RAW: every pod but the
    NAT's in k8s/base) say so and are left out. The NAT names its two links, inside and outside."""
    inside, outside = endpoints.nat_links
    capturing = []
    for node in clients.kinds:
        links = []
        if node == "natgw":
            links = [
                capture_pb2.CapturedLink(
                    device=inside.partition(":")[2], name=inside, description=f"{inside} <-> alice"
                ),
                capture_pb2.CapturedLink(
                    device=outside.partition(":")[2], name=outside, description=f"{outside} <-> {SEGMENT}"
                ),
            ]
        try:
            clients.capture(node).StartCapture(capture_pb2.StartCaptureRequest(links=links), timeout=10)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                raise
            continue
        capturing.append(node)
    return capturing


def stop_captures(clients: ServiceClients, capturing: list[str]) -> tuple[pcapng.Capture, list[str]]:
    """Every capture's frames in one pcapng model: one interface per link, frames in time order (a link a
    service named without saying where it leads stays unknown at its far end); and what the services
    said their capture missed."""
    merged, problems = pcapng.Capture(), []
    for node in capturing:
        reply = clients.capture(node).StopCapture(capture_pb2.StopCaptureRequest(), timeout=60)
        problems += [f"{node}: {problem}" for problem in reply.problems]
        base = len(merged.interfaces)
        for link in reply.links:
            description = link.description or f"{link.name} <-> "  # where it leads: unknown
            merged.interfaces.append(pcapng.Interface(link.name, description))
        for frame in reply.frames:
            direction = pcapng.DIRECTION_INBOUND if frame.inbound else pcapng.DIRECTION_OUTBOUND
            merged.packets.append(pcapng.Packet(base + frame.link, frame.time, frame.data, len(frame.data), direction))
        for stat in reply.statistics:
            merged.statistics.append(pcapng.InterfaceStatistics(base + stat.link, stat.received, stat.dropped))
    merged.packets.sort(key=lambda p: p.t)
    return merged, problems


# --------------------------------------------------------------------------- the run


def local_endpoint(endpoint: str) -> str:
    """Where this process reaches its own receiver: a wildcard bind address is not a destination."""
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in ("0.0.0.0", "::", ""):
        return endpoint
    host = "127.0.0.1" if parsed.hostname == "0.0.0.0" else "localhost"
    return f"{parsed.scheme}://{host}:{parsed.port}"


def _wait_for_spans(receiver: OtlpReceiver, events: list[dict[str, Any]], call_id: str, timeout: float) -> None:
    """Spans through a collector (the tracing component) arrive after FlushTelemetry returns: wait for
    every span the services reported for the call, so the verdict does not call the lab broken early."""
    wanted = {e["span_id"] for e in events if e["call_id"] == call_id and e.get("span_id")}
    if wanted:
        receiver.wait_for(lambda spans: wanted <= {s.span_id for s in spans}, timeout)


def cluster_run(
    scenario_name: str = "rfc5763-7.3",
    timers_name: str = "rfc",
    namespace: str = "pinhole",
    out_root: Path = Path("/out"),
    *,
    otlp_listen: str = "0.0.0.0:4317",
    services: Mapping[str, str] | None = None,
    alice_address: str = ALICE_ADDRESS,
    nat_inside: str = NAT_INSIDE,
    nat: NatBehaviour | None = None,
    api: Any = None,
    wait: float = 300.0,
    span_wait: float = 15.0,
    targets: Mapping[str, str] | None = None,
    endpoints: Endpoints | None = None,
    receiver: OtlpReceiver | None = None,
    forward_to: str | None = None,
    progress: bool = True,
    external: Mapping[str, str] | None = None,
    external_dial: str = "",
    external_hangup: str = "",
    externals: Any = None,
    grpc_tls_dir: str | os.PathLike[str] | None = None,
) -> tuple[verdict.Verdict, Path]:
    """Run one scenario against running services; returns the verdict and the run's artifact directory.

    `external`: node -> what runs there, for pods that run the user's image (no gRPC, no spans): found like
    the others, neither health-checked nor configured, judged from the wire (parse_external); an external
    caller is made to dial by `external_dial` (and to hang up by `external_hangup`) run in its pod
    (PodExternals), or by `externals`, anything with the same methods (a local lab's run.Externals).

    The pods are found through the API (or `services`: node -> pod IP); `wait` bounds both the wait
    for Ready pods and the wait for SERVING health. `targets` (node -> gRPC target) with `endpoints`
    skip discovery entirely: that is how a local lab's unix sockets are driven the cluster's way.
    `receiver`: an OTLP receiver already running where the services export (else one is started on
    `otlp_listen` for this run). `nat`: the gateway's behaviour (default: §7.3's, see nat_config_from_env).
    `grpc_tls_dir`: the controller's certificate (ca.crt, tls.crt, tls.key) for mutual TLS with the services
    over TCP (default $PINHOLE_GRPC_TLS_DIR; unset: plaintext, as unix sockets always are).
    """
    scenario = SCENARIOS[scenario_name]
    tls_dir = grpc_tls_dir or os.environ.get(labca.TLS_DIR_ENV)
    try:
        tls = labca.read_tls_dir(tls_dir) if tls_dir else None
    except labca.LabCaError as error:
        raise ClusterError(f"the controller's certificate: {error}") from None
    external = dict(external or {})
    if external:  # the user's pods: a proxy, or the callee (each judged from the wire)
        scenario = replace(
            scenario,
            external={
                node: External(node, "proxy" if KINDS[node] == "proxy" else "ua", image=label)
                for node, label in external.items()
            },
        )
    timers = TIMERS[timers_name]
    nat = nat or NatBehaviour()
    show = Progress(progress)
    run_id, out_dir = new_run_dir(out_root, scenario)
    measurements: dict[str, Any] = {"backend": "cluster", "nat": nat.describe()}
    owned = receiver is None
    if receiver is None:
        receiver = OtlpReceiver(otlp_listen)
    tracer_provider = None
    clients: ServiceClients | None = None
    trace_request = None
    try:
        if owned:
            show.stage(f"OTLP receiver on {otlp_listen}")
            receiver.start()
        else:
            receiver.clear()
        started = time.monotonic()
        if targets is None or endpoints is None:
            unnamed = [node for node in NODES if node not in (services or {})]
            if unnamed:
                show.stage(f"finding the pods of {', '.join(unnamed)} in namespace {namespace}")
            found_endpoints, found_targets = plan(
                namespace, services=services, alice_address=alice_address, nat_inside=nat_inside, api=api, timeout=wait
            )
            endpoints = endpoints or found_endpoints
            targets = targets or found_targets
            measurements["discover_s"] = round(time.monotonic() - started, 3)
        targets = {node: target for node, target in targets.items() if node not in external}
        how = f" (mutual TLS as {labca.CONTROLLER})" if tls is not None else ""
        show.stage(
            f"waiting for every service to be SERVING{how}: " + ", ".join(f"{n} {t}" for n, t in targets.items())
        )
        # Ready pods are SERVING (gRPC readiness probes), but the path from here may lag: never less than 30 s
        left = max(wait - (time.monotonic() - started), min(wait, 30.0))
        wait_healthy(targets, timeout=left, logs="its pod's log", tls=tls)
        measurements["healthy_s"] = round(time.monotonic() - started, 3)
        kinds = {node: KINDS[node] for node in targets}
        clients = ServiceClients(targets, kinds, tls=tls)
        tracer_provider, tracer = telemetry.run_tracer(local_endpoint(receiver.endpoint or ""))
        show.stage(f"configuring services (NAT: {measurements['nat']})")
        configure(clients, endpoints, scenario, timers, nat=nat)
        capturing = start_captures(clients, endpoints)
        measurements["captured_by"] = ",".join(capturing) or "none"
        if "alice" in external and externals is None:
            variables = external_variables(load_topology(), endpoints, "alice")
            externals = PodExternals(namespace, external_dial, external_hangup, variables, api)
        broken = ""
        try:
            record = drive_call(clients, kinds, scenario, timers, tracer, show, endpoints, externals=externals)
        except RunInterrupted as stop:  # a service failed the run: judged on what it gathered, and broken
            record, broken = stop.record, stop.why
        finally:
            capture, capture_problems = stop_captures(clients, capturing)
        tracer_provider.shutdown()  # exports the run's own span
        tracer_provider = None
        _wait_for_spans(receiver, record.events, record.call_id, span_wait)
        trace_request = receiver.request()
        result = judge_call(
            trace_request,
            record,
            endpoints,
            scenario=scenario,
            timers_name=timers_name,
            out_dir=out_dir,
            capture=capture,  # the links of the pods that can capture: the NAT's, at least
            capture_problems=capture_problems,
            measurements=measurements,
            forward_to=forward_to,
            broken=broken,
        )
    except Exception:
        # leave what there is for the post-mortem: the error and every span received so far
        (out_dir / "error.txt").write_text(traceback.format_exc())
        if trace_request is None and receiver.endpoint is not None:
            write_otlp_json(receiver.request(), out_dir / "trace.json")
        raise
    finally:
        if clients is not None:
            clients.close()
        if tracer_provider is not None:
            tracer_provider.shutdown()
        if owned:
            receiver.stop()
    link_last(out_root, run_id)
    show.done()
    return result, out_dir
