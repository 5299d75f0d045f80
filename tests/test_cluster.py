"""`pinhole cluster-run` (pinhole/controller/cluster.py): pod discovery, lab addresses, NAT settings, CLI.

Fast and without a cluster: the Kubernetes API is a fake with CoreV1Api.list_namespaced_pod. The last
test drives a namespace lab the cluster's way (explicit gRPC targets, no captures) and needs root.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pinhole import cli
from pinhole.controller import cluster
from pinhole.controller.run import Endpoints
from pinhole.nat import Mapping, NatBehaviour
from pinhole.rpc.v1 import natgw_pb2

ROOT = Path(__file__).resolve().parent.parent

IPS = {
    "alice": "10.244.0.10",
    "bob": "10.244.0.11",
    "proxy-a": "10.244.0.12",
    "proxy-b": "10.244.0.13",
    "natgw": "10.244.0.14",
    "stun": "10.244.0.15",
}


def pod(node: str, ip: str | None, *, name: str = "", phase: str = "Running", ready: bool = True, deleting=False):
    """A pod as the kubernetes client models it (only the fields discovery reads)."""
    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=name or f"{node}-5d9f7c-x2k4q",
            labels={"app.kubernetes.io/name": node, "app.kubernetes.io/part-of": "pinhole"},
            deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        status=SimpleNamespace(
            phase=phase,
            pod_ip=ip,
            conditions=[SimpleNamespace(type="Ready", status="True" if ready else "False")],
        ),
    )


class FakeCoreV1:
    """list_namespaced_pod answering from a script of pod lists (the last one repeats)."""

    def __init__(self, *rounds: list[Any]) -> None:
        self.rounds = list(rounds)
        self.calls: list[tuple[str, str]] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str | None = None, **options: Any) -> Any:
        assert set(options) <= {"_request_timeout"}, options
        self.calls.append((namespace, label_selector or ""))
        items = self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0]
        if isinstance(items, Exception):
            raise items
        return SimpleNamespace(items=items)


def all_ready() -> list[Any]:
    return [pod(node, ip) for node, ip in IPS.items()]


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason = status, reason


# --------------------------------------------------------------------------- discovery


def test_discover_finds_every_node_by_its_label():
    api = FakeCoreV1(all_ready() + [pod("jaeger", "10.244.0.99")])
    assert cluster.discover("pinhole", api, timeout=1) == IPS
    namespace, selector = api.calls[0]
    assert namespace == "pinhole"
    assert selector.startswith("app.kubernetes.io/name in (") and "proxy-a" in selector


def test_discover_waits_until_pods_are_running_ready_with_an_ip():
    starting = [pod(n, ip) for n, ip in IPS.items() if n not in ("alice", "natgw")]
    starting += [pod("alice", None, phase="Pending", ready=False), pod("natgw", "10.244.0.14", ready=False)]
    # a rollout: the old natgw pod is going away while the new one is Ready
    rollout = all_ready() + [pod("natgw", "10.244.0.99", name="natgw-old", deleting=True)]
    api = FakeCoreV1(starting, rollout)
    assert cluster.discover("pinhole", api, timeout=5, interval=0.01) == IPS
    assert len(api.calls) == 2


def test_discover_timeout_names_the_missing_nodes():
    pods = [pod(n, ip) for n, ip in IPS.items() if n not in ("alice", "stun")]
    pods.append(pod("stun", "10.244.0.15", phase="Pending", ready=False, name="stun-abc"))
    api = FakeCoreV1(pods)
    with pytest.raises(cluster.ClusterError) as error:
        cluster.discover("lab", api, timeout=0.05, interval=0.01)
    message = str(error.value)
    assert "namespace lab" in message and "for alice, stun" in message
    assert "no pod labelled app.kubernetes.io/name=alice" in message and "stun-abc Pending" in message
    for node in ("bob", "proxy-a", "proxy-b", "natgw"):
        assert f"{node}:" not in message


def test_discover_refuses_two_ready_pods_for_one_node():
    api = FakeCoreV1(all_ready() + [pod("bob", "10.244.0.77", name="bob-second")])
    with pytest.raises(cluster.ClusterError, match=r"for bob \(bob: 2 Ready pods \(.*bob-second\)\)"):
        cluster.discover("pinhole", api, timeout=0.05, interval=0.01)


def test_discover_retries_api_errors_but_not_forbidden():
    api = FakeCoreV1(ConnectionError("API server restarting"), all_ready())
    assert cluster.discover("pinhole", api, timeout=5, interval=0.01) == IPS
    with pytest.raises(cluster.ClusterError, match="403 Forbidden.*rbac.yaml"):
        cluster.discover("pinhole", FakeCoreV1(ApiError(403, "Forbidden")), timeout=5)


def test_discover_reads_the_clients_own_models():
    client = pytest.importorskip("kubernetes.client")
    if not hasattr(client.V1Pod, "from_dict"):
        pytest.skip("kubernetes client without from_dict")
    pods = [
        client.V1Pod.from_dict(
            {
                "metadata": {"name": f"{node}-1", "labels": {"app.kubernetes.io/name": node}},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )
        for node, ip in IPS.items()
    ]
    assert cluster.discover("pinhole", FakeCoreV1(pods), timeout=1) == IPS


# --------------------------------------------------------------------------- addresses


def test_endpoints_for_puts_alice_behind_the_nat():
    endpoints = cluster.endpoints_for(IPS)
    assert endpoints.addresses["alice"] == "10.10.1.10"
    for node in ("bob", "proxy-a", "proxy-b", "stun", "natgw"):
        assert endpoints.addresses[node] == IPS[node]
    assert (endpoints.nat_inside, endpoints.nat_outside) == ("10.10.1.1", IPS["natgw"])
    assert (endpoints.sip_port, endpoints.stun_port) == (5060, 3478)
    assert endpoints.sip("proxy-b") == "10.244.0.13:5060"
    assert endpoints.address_map() == {
        "10.10.1.10": "alice",
        "10.10.1.1": "natgw",
        IPS["natgw"]: "alice",  # the NAT's outside stands for Alice on the public side
        **{IPS[n]: n for n in ("bob", "proxy-a", "proxy-b", "stun")},
    }
    moved = cluster.endpoints_for(IPS, alice_address="192.168.7.2", nat_inside="192.168.7.1")
    assert (moved.addresses["alice"], moved.nat_inside) == ("192.168.7.2", "192.168.7.1")


def test_plan_with_every_service_given_uses_no_api(monkeypatch):
    def no_api() -> Any:
        raise AssertionError("the Kubernetes API was used")

    monkeypatch.setattr(cluster, "kubernetes_api", no_api)
    endpoints, targets = cluster.plan("pinhole", services=IPS)
    assert targets == {node: f"{ip}:50051" for node, ip in IPS.items()}
    assert endpoints == cluster.endpoints_for(IPS)


def test_plan_looks_up_only_the_nodes_not_given():
    api = FakeCoreV1([pod("bob", "10.244.9.9"), pod("stun", "10.244.9.8"), pod("alice", "10.244.9.7")])
    given = {n: ip for n, ip in IPS.items() if n not in ("bob", "stun")}
    endpoints, targets = cluster.plan("pinhole", services=given, api=api, timeout=1)
    assert api.calls == [("pinhole", "app.kubernetes.io/name in (bob,stun)")]
    assert targets["bob"] == "10.244.9.9:50051" and targets["alice"] == "10.244.0.10:50051"
    assert endpoints.addresses["stun"] == "10.244.9.8"


def test_grpc_targets_bracket_ipv6():
    assert cluster.grpc_target("fd00:10:244::5") == "[fd00:10:244::5]:50051"
    assert cluster.grpc_target("10.0.0.1", 1234) == "10.0.0.1:1234"


def test_local_endpoint_of_a_wildcard_receiver():
    assert cluster.local_endpoint("http://0.0.0.0:4317") == "http://127.0.0.1:4317"
    assert cluster.local_endpoint("http://[::]:4317") == "http://localhost:4317"
    assert cluster.local_endpoint("http://10.1.2.3:4317") == "http://10.1.2.3:4317"
    assert cluster.local_endpoint("unix:/tmp/otlp.sock") == "unix:/tmp/otlp.sock"


# --------------------------------------------------------------------------- NAT settings


def test_nat_from_the_base_configmap_is_the_default_nat():
    env = {
        "PINHOLE_NAT_MAPPING": "endpoint-independent",
        "PINHOLE_NAT_FILTERING": "address-and-port-dependent",
        "PINHOLE_NAT_MAPPING_TIMEOUT": "300",
    }
    assert cluster.nat_config_from_env(env) == NatBehaviour()
    assert cluster.nat_config_from_env({}) == NatBehaviour()
    assert cluster.nat_config() == NatBehaviour()


def test_a_mapping_timeout_conntrack_cannot_keep_is_refused():
    with pytest.raises(cluster.ClusterError, match="at most 2147483 \\(what conntrack keeps\\)"):
        cluster.nat_config(mapping_timeout=str(2**32 - 1))


def test_port_preservation_and_hairpinning_from_the_configmap():
    nat = cluster.nat_config_from_env({"PINHOLE_NAT_PORT_PRESERVATION": "off", "PINHOLE_NAT_HAIRPINNING": "off"})
    assert (nat.port_preservation, nat.hairpinning) == (False, False)
    nat = cluster.nat_config_from_env({"PINHOLE_NAT_PORT_PRESERVATION": "", "PINHOLE_NAT_HAIRPINNING": "on"})
    assert (nat.port_preservation, nat.hairpinning) == (None, True)


def test_nat_from_the_nat_behaviour_component():
    nat = cluster.nat_config_from_env(
        {
            "PINHOLE_NAT_MAPPING": "address-and-port-dependent",
            "PINHOLE_NAT_FILTERING": "address-and-port-dependent",
            "PINHOLE_NAT_MAPPING_TIMEOUT": "120",
        }
    )
    assert nat == NatBehaviour(Mapping.ADDRESS_AND_PORT_DEPENDENT, mapping_timeout=120)


@pytest.mark.parametrize("name", ["endpoint-independent", "address-dependent", "address-and-port-dependent"])
def test_every_rfc4787_name_maps_to_its_enum(name):
    enum = name.upper().replace("-", "_")
    nat = cluster.nat_config(name, name).to_proto()
    assert natgw_pb2.NatMappingBehaviour.Name(nat.mapping) == f"MAPPING_{enum}"
    assert natgw_pb2.NatFilteringBehaviour.Name(nat.filtering) == f"FILTERING_{enum}"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mapping": "symmetric"}, "NAT mapping 'symmetric' is not one of endpoint-independent, address-dependent"),
        ({"mapping": "MAPPING_ENDPOINT_INDEPENDENT"}, "NAT mapping 'MAPPING_ENDPOINT_INDEPENDENT' is not one of"),
        ({"filtering": "port-restricted"}, "NAT filtering 'port-restricted' is not one of"),
        ({"mapping_timeout": "5m"}, "'5m' is not a whole number of seconds"),
        ({"mapping_timeout": "60"}, "NAT mapping timeout 60: at least 120 \\(RFC 4787 REQ-5\\)"),
        ({"hairpinning": "yes"}, "NAT hairpinning 'yes' is not on or off"),
        ({"port_preservation": "true"}, "NAT port preservation 'true' is not on or off"),
    ],
)
def test_unknown_nat_settings_are_errors(settings, message):
    with pytest.raises(cluster.ClusterError, match=message):
        cluster.nat_config(**settings)


def test_the_configmaps_nat_values_are_known():
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent / "k8s"
    base = next(d for d in yaml.safe_load_all((root / "base" / "config.yaml").read_text()) if d)["data"]
    patch = yaml.safe_load((root / "components" / "nat-behaviour" / "scenario.yaml").read_text())["data"]
    for data in (base, {**base, **patch}):
        cluster.nat_config_from_env(data)


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """cluster_run replaced by a recorder that returns a passing verdict."""
    from pinhole.controller.verdict import Verdict

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_run(*args: Any, **kwargs: Any) -> tuple[Verdict, Path]:
        calls.append((args, kwargs))
        (tmp_path / "ladder.txt").write_text("ladder\n")
        (tmp_path / "evidence.json").write_text(json.dumps({"measurements": {"backend": "cluster"}}))
        return Verdict("rfc5763-7.3", True), tmp_path

    def no_api() -> Any:
        raise AssertionError("the Kubernetes API was used")

    monkeypatch.setattr(cluster, "cluster_run", fake_run)
    monkeypatch.setattr(cluster, "kubernetes_api", no_api)
    for name in ("PINHOLE_SCENARIO", "PINHOLE_TIMERS", "POD_NAMESPACE", "PINHOLE_NAT_MAPPING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PINHOLE_NAT_FILTERING", raising=False)
    monkeypatch.delenv("PINHOLE_NAT_MAPPING_TIMEOUT", raising=False)
    return calls


def test_cli_as_the_job_runs_it(captured, monkeypatch, capsys):
    monkeypatch.setenv("PINHOLE_TIMERS", "short")
    monkeypatch.setenv("PINHOLE_NAT_MAPPING", "address-and-port-dependent")
    monkeypatch.setenv("PINHOLE_NAT_MAPPING_TIMEOUT", "120")
    assert cli.main(["cluster-run", "rfc5763-7.3", "--namespace", "lab-ns", "--out", "/out"]) == 0
    ((args, kwargs),) = captured
    assert args == ("rfc5763-7.3", "short", "lab-ns", Path("/out"))
    assert kwargs["services"] == {} and kwargs["otlp_listen"] == "0.0.0.0:4317"
    assert kwargs["nat"].mapping == Mapping.ADDRESS_AND_PORT_DEPENDENT
    assert kwargs["nat"].mapping_timeout == 120
    assert (kwargs["alice_address"], kwargs["nat_inside"]) == ("10.10.1.10", "10.10.1.1")
    assert "verdict: PASS" in capsys.readouterr().out


def test_cli_defaults_from_the_environment(captured, monkeypatch):
    monkeypatch.setenv("PINHOLE_SCENARIO", "no-stun-check")
    monkeypatch.setenv("POD_NAMESPACE", "from-env")
    assert cli.main(["cluster-run"]) == 0
    ((args, kwargs),) = captured
    assert args[:3] == ("no-stun-check", "rfc", "from-env")
    assert kwargs["nat"] == NatBehaviour()


def test_cli_service_overrides(captured):
    argv = ["cluster-run", "--alice-address", "192.168.7.2", "--nat-inside", "192.168.7.1"]
    for node, ip in IPS.items():
        argv += ["--service", f"{node}={ip}"]
    assert cli.main(argv) == 0
    ((_, kwargs),) = captured
    assert kwargs["services"] == IPS
    assert (kwargs["alice_address"], kwargs["nat_inside"]) == ("192.168.7.2", "192.168.7.1")


@pytest.mark.parametrize(
    "bad", [["--service", "carol=10.0.0.1"], ["--service", "bob"], ["--service", "bob=nope"], ["--nat-inside", "x"]]
)
def test_cli_rejects_bad_overrides(captured, bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cluster-run", *bad])
    assert exit_.value.code == 2 and not captured
    assert "cluster-run: error: argument" in capsys.readouterr().err


def test_cli_bad_settings_exit_2_before_running(captured, monkeypatch, capsys):
    assert cli.main(["cluster-run", "--nat-filtering", "full-cone"]) == 2
    assert "NAT filtering 'full-cone' is not one of" in capsys.readouterr().err
    monkeypatch.setenv("PINHOLE_TIMERS", "slow")
    assert cli.main(["cluster-run"]) == 2
    assert "unknown timers 'slow'" in capsys.readouterr().err
    assert not captured


def test_cli_exit_codes_follow_the_outcome(monkeypatch, tmp_path):
    from pinhole.controller.verdict import Verdict

    (tmp_path / "ladder.txt").write_text("")
    (tmp_path / "evidence.json").write_text(json.dumps({"measurements": {}}))
    outcomes = {
        "pass": Verdict("s", True),
        "fail": Verdict("s", False),
        "broken": Verdict("s", True, broken="no spans at all from natgw"),
    }
    for outcome, code in (("pass", 0), ("fail", 1), ("broken", 2)):
        monkeypatch.setattr(cluster, "cluster_run", lambda *a, o=outcome, **k: (outcomes[o], tmp_path))
        assert cli.main(["cluster-run", *[f"--service={n}={ip}" for n, ip in IPS.items()]]) == code

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("service natgw not SERVING after 300s")

    monkeypatch.setattr(cluster, "cluster_run", unreachable)
    assert cli.main(["cluster-run"]) == 2


# --------------------------------------------------------------------------- end to end, the cluster's way


@pytest.mark.lab
def test_cluster_run_against_a_namespace_lab(lab, tmp_path):
    """The cluster code path over a namespace lab: explicit gRPC targets and addresses, the lab's own
    OTLP receiver, the wire captured by the services themselves (LinkCapture; here every one can)."""
    from pinhole.controller.run import _RECEIVERS, service_kinds
    from pinhole.controller.services import local_targets

    running, topology, _ = lab
    # k8s has no switch, and no second Bob (forking, RFC 5763 §6.3, runs on the lab backends)
    in_cluster = {n for n, kind in service_kinds(topology).items() if kind != "switch" and n != "bob2"}
    assert in_cluster == set(cluster.NODES)
    result, out_dir = cluster.cluster_run(
        "rfc5763-7.3",
        "short",
        out_root=tmp_path,
        targets=local_targets(running.run_dir, cluster.NODES),
        endpoints=Endpoints.of_topology(topology),
        receiver=_RECEIVERS[running.name],
        progress=False,
    )
    assert result.outcome == "pass", result.render()
    evidence = json.loads((out_dir / "evidence.json").read_text())
    assert evidence["measurements"]["backend"] == "cluster"
    assert set(evidence["measurements"]["captured_by"].split(",")) == set(cluster.NODES)
    assert {"trace.json", "ladder.txt", "ladder.html", "verdict.json", "capture.pcapng", "keys.log"} <= {
        p.name for p in out_dir.iterdir()
    }
    assert (tmp_path / "last").resolve() == out_dir.resolve()
    check3 = next(c for c in result.checks if c.message == "3")
    assert "natgw:wan0" in check3.detail  # the NAT's own capture of its outside link


def _cluster_run_with(lab: Any, tmp_path: Path, recipe_file: str, **more: Any) -> tuple[Any, Any, Path]:
    """The cluster code path over the namespace lab with a recipe's external node in its node (what the user's
    Deployment would run in the pod), pinhole's service there again afterwards."""
    from pinhole.controller.externals import Externals
    from pinhole.controller.run import _RECEIVERS, external_variables, service_back
    from pinhole.controller.scenario import load
    from pinhole.controller.services import local_targets

    running, topology, _ = lab
    (recipe,) = load(ROOT / "scenarios" / "interop" / recipe_file)
    endpoints = Endpoints.of_topology(topology)
    variables = partial(external_variables, topology, endpoints)
    externals = Externals(running, recipe.external, tmp_path, variables, partial(service_back, running))
    externals.start()
    try:
        result, out_dir = cluster.cluster_run(
            "rfc5763-7.3",
            "short",
            out_root=tmp_path,
            targets=local_targets(running.run_dir, cluster.NODES),
            endpoints=endpoints,
            receiver=_RECEIVERS[running.name],
            progress=False,
            externals=externals,
            **more,
        )
    finally:
        externals.stop()
    return recipe, result, out_dir


@pytest.mark.lab
def test_cluster_run_judges_an_external_bob_from_the_nat_pods_capture(lab, tmp_path):
    """--external bob=baresip: Bob's pod runs a third party (here Debian's baresip in the namespace lab's bob),
    found but neither health-checked nor configured; the call is judged from the wire the services captured
    (baresip captures nothing), as a cluster would see it."""
    recipe, result, out_dir = _cluster_run_with(
        lab, tmp_path, "baresip-bob.yaml", external=cluster.parse_external("bob=baresip")
    )
    assert {c.message for c in result.checks if not c.passed} == set(recipe.expect.failing)  # as on the lab
    evidence = json.loads((out_dir / "evidence.json").read_text())
    assert "bob" not in evidence["measurements"]["captured_by"].split(",")
    assert evidence["outcome"]["works"] is True and evidence["external"] == {"bob": "baresip"}
    assert any(n.startswith("external: bob runs baresip") for n in result.notes)


@pytest.mark.lab
def test_cluster_run_makes_an_external_alice_dial(lab, tmp_path):
    """An external caller on the cluster code path: Debian's baresip as Alice behind the NAT, told to dial (here
    by the local lab's dial action; in a cluster PodExternals runs PINHOLE_EXTERNAL_DIAL in her pod), the
    Call-ID learnt from pinhole's Bob, the verdict the recipe's."""
    recipe, result, _ = _cluster_run_with(
        lab, tmp_path, "baresip-alice.yaml", external=cluster.parse_external("alice=baresip", dial="(the lab's own)")
    )
    assert {c.message for c in result.checks if not c.passed} == set(recipe.expect.failing)


def test_external_nodes_in_a_cluster_are_checked():
    assert cluster.parse_external("bob=my-phone, proxy-a=kamailio") == {"bob": "my-phone", "proxy-a": "kamailio"}
    assert cluster.parse_external("") == {}
    assert cluster.parse_external("alice=my-phone", dial="ctl dial {{peer_aor}}") == {"alice": "my-phone"}
    with pytest.raises(cluster.ClusterError, match="external alice: a caller must be told to dial"):
        cluster.parse_external("alice=my-phone")
    for bad in ("natgw=x", "carol=x"):
        with pytest.raises(cluster.ClusterError, match="an external node is one of alice, bob, proxy-a, proxy-b, stun"):
            cluster.parse_external(bad)


class _Exec:
    """What kubernetes.stream.stream hands back: run_forever, then an exit code and the output."""

    def __init__(self, code: int, stderr: str = "") -> None:
        self.returncode, self.stderr = code, stderr

    def run_forever(self, timeout: float) -> None:
        pass

    def read_stderr(self) -> str:
        return self.stderr

    def read_stdout(self) -> str:
        return ""


def test_an_external_caller_in_a_cluster_dials_by_a_command_in_her_pod(monkeypatch):
    import kubernetes.stream

    running = pod("alice", "10.244.0.9", name="alice-7d9f")
    api = SimpleNamespace(
        list_namespaced_pod=lambda *a, **k: SimpleNamespace(items=[running]), connect_get_namespaced_pod_exec=None
    )
    calls = []
    codes = iter([0, 3])

    def stream(fn, name, namespace, **kwargs):
        calls.append((name, namespace, kwargs["command"]))
        return _Exec(next(codes), "no such call")

    monkeypatch.setattr(kubernetes.stream, "stream", stream)
    variables = {"peer_aor": "sip:bob@b.example"}
    externals = cluster.PodExternals("lab", "ctl dial {{peer_aor}}", "ctl hangup", variables, api)
    assert externals.dial("alice") is True
    assert calls == [("alice-7d9f", "lab", ["ctl", "dial", "sip:bob@b.example"])]
    with pytest.raises(cluster.ClusterError, match=r"alice: hangup command ctl hangup exited 3: no such call"):
        externals.hang_up("alice")
    assert externals.hang_up("bob") is False and externals.key_log() == []


def test_unreachable_services_leave_an_error_and_free_the_port(tmp_path):
    """Nothing answers: TimeoutError naming the service, error.txt and trace.json kept, the receiver stopped."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    targets = {node: "127.0.0.1:1" for node in cluster.NODES}
    with pytest.raises(TimeoutError, match="service alice not SERVING"):
        cluster.cluster_run(
            "rfc5763-7.3",
            "short",
            out_root=tmp_path,
            otlp_listen=f"127.0.0.1:{port}",
            targets=targets,
            endpoints=cluster.endpoints_for(IPS),
            wait=0.5,
            progress=False,
        )
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "TimeoutError" in (run_dir / "error.txt").read_text()
    assert json.loads((run_dir / "trace.json").read_text()) == {"resourceSpans": []}
    assert not (tmp_path / "last").exists()
    with socket.create_server(("127.0.0.1", port)):  # the receiver let go of its port
        pass
