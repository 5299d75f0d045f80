"""The control plane's mutual TLS (pinhole.labca, pinhole.service, services.control_channel), without a cluster.

Real gRPC servers on 127.0.0.1 built the way `serve()` builds them (`control_plane`: the health service,
reflection and LinkCapture of every service), with certificates the lab CA issues here: the controller's
certificate is admitted; no certificate, a service's own certificate, a certificate of another CA, and a lab
certificate for any other client are refused. The controller refuses a service whose certificate is not the
lab CA's or not for the node it called. A real service (the STUN server) run as the pods run it shows the
settings reach `serve()`, with its plaintext health port. Then the CA Job's code against a fake API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from pinhole import labca, service
from pinhole.controller.services import ServiceClients, control_channel, wait_healthy
from pinhole.rpc.v1 import capture_pb2, capture_pb2_grpc, events_pb2

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = "pinhole.rpc.v1.LinkCapture"
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


# --------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def lab() -> SimpleNamespace:
    """One lab CA's certificates, and a stranger's: what each test presents."""
    authority = labca.Authority()
    stranger = labca.Authority("another CA")
    return SimpleNamespace(
        natgw=authority.service("natgw", "pinhole"),
        alice=authority.service("alice", "pinhole"),  # a service's own certificate
        controller=authority.controller(),
        # a lab certificate that may be a client, for another name: only the name check stops it
        bob_client=authority.issue("bob", ["bob"], server=False),
        foreign_controller=stranger.controller(),  # the controller's name, another CA
        foreign_natgw=stranger.service("natgw", "pinhole"),
        ca=authority.ca_pem,
    )


def _write(tls: labca.TlsFiles, directory: Path) -> Path:
    labca.write_tls_dir(tls, directory)
    return directory


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_issued_certificates_have_one_purpose_each(lab):
    ca = _cert(lab.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for tls, purpose, names in (
        (lab.natgw, ExtendedKeyUsageOID.SERVER_AUTH, labca.service_dns_names("natgw", "pinhole")),
        (lab.controller, ExtendedKeyUsageOID.CLIENT_AUTH, [labca.CONTROLLER]),
    ):
        cert = _cert(tls.cert)
        cert.verify_directly_issued_by(ca)
        assert tls.ca == lab.ca
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [purpose]
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        ) == list(names)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        key = serialization.load_pem_private_key(tls.key, password=None)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert labca.service_dns_names("natgw", "lab") == [
        "natgw",
        "natgw.lab",
        "natgw.lab.svc",
        "natgw.lab.svc.cluster.local",
    ]


def test_issue_lab_makes_one_ca_and_refuses_the_controllers_name():
    issued = labca.issue_lab(["alice", "natgw"], "pinhole")
    assert set(issued) == {"alice-grpc-tls", "natgw-grpc-tls", "pinhole-controller-grpc-tls"}
    assert len({tls.ca for tls in issued.values()}) == 1
    for nodes in (["alice", "alice"], [labca.CONTROLLER], []):
        with pytest.raises(labca.LabCaError, match="expected distinct service names"):
            labca.issue_lab(nodes, "pinhole")


def test_a_secret_is_what_cert_manager_writes(lab):
    secret = lab.natgw.secret("natgw-grpc-tls", "pinhole", "natgw")
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["namespace"] == "pinhole"
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "ca.crt": lab.ca,
        "tls.crt": lab.natgw.cert,
        "tls.key": lab.natgw.key,
    }


def test_reading_a_tls_dir_names_the_missing_file(lab, tmp_path: Path):
    directory = _write(lab.natgw, tmp_path / "natgw")
    assert labca.read_tls_dir(directory) == lab.natgw
    assert oct((directory / "tls.key").stat().st_mode & 0o777) == "0o440"
    (directory / "tls.key").unlink()
    with pytest.raises(labca.LabCaError, match=r"PINHOLE_GRPC_TLS_DIR=.*natgw: cannot read tls.key"):
        labca.read_tls_dir(directory)


# --------------------------------------------------------------------------- a control plane on 127.0.0.1


@contextlib.contextmanager
def control_plane(tls_dir: Path | None, *, address: str = "127.0.0.1:0") -> Iterator[SimpleNamespace]:
    """`service.control_plane` with what `serve()` adds to every service (health, reflection, LinkCapture)
    and the plaintext health server, started on an event loop of their own; stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="control-plane", daemon=True)
    thread.start()

    async def start() -> SimpleNamespace:
        server, port = service.control_plane(address, tls_dir)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        capture_pb2_grpc.add_LinkCaptureServicer_to_server(service.CaptureServicer(), server)
        reflection.enable_server_reflection([HEALTH, CAPTURE, reflection.SERVICE_NAME], server)
        health_server, health_port = service.health_only("127.0.0.1:0", health_servicer)
        await server.start()
        await health_server.start()
        for name in ("", HEALTH, CAPTURE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return SimpleNamespace(server=server, port=port, health_server=health_server, health_port=health_port)

    running = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield running
    finally:
        for server in (running.server, running.health_server):
            asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def natgw(lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """natgw's control plane with its certificate, as its pod mounts it."""
    with control_plane(_write(lab.natgw, tmp_path_factory.mktemp("natgw-tls"))) as running:
        yield running


def _check(channel: grpc.Channel) -> health_pb2.HealthCheckResponse:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def _refused(channel: grpc.Channel) -> grpc.RpcError:
    """The error of a health Check and of a LinkCapture call on `channel` (the same for both)."""
    with channel:
        with pytest.raises(grpc.RpcError) as checked:
            _check(channel)
        with pytest.raises(grpc.RpcError) as captured:
            capture_pb2_grpc.LinkCaptureStub(channel).StopCapture(capture_pb2.StopCaptureRequest(), timeout=2)
    if checked.value.code() == grpc.StatusCode.PERMISSION_DENIED:
        assert captured.value.code() == grpc.StatusCode.PERMISSION_DENIED
    else:  # the handshake failed: the LinkCapture call waits for a connection (waitForReady) until its deadline
        assert captured.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return checked.value


def test_the_controllers_certificate_is_admitted(lab, natgw):
    """Every kind of call (unary, server stream, bidirectional stream), through the controller's own channel."""
    with control_channel(f"127.0.0.1:{natgw.port}", "natgw", lab.controller) as channel:
        assert _check(channel).status == health_pb2.HealthCheckResponse.SERVING
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=CAPTURE), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as reached:  # the method ran: its own answer, not the guard's
            capture_pb2_grpc.LinkCaptureStub(channel).StopCapture(capture_pb2.StopCaptureRequest(), timeout=5)
        assert reached.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no capture is running" in (reached.value.details() or "")
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5)
        assert {s.name for s in reply.list_services_response.service} == {HEALTH, CAPTURE, reflection.SERVICE_NAME}


def test_no_certificate_is_refused(lab, natgw):
    credentials = grpc.ssl_channel_credentials(root_certificates=lab.ca)
    options = [("grpc.ssl_target_name_override", "natgw")]
    error = _refused(grpc.secure_channel(f"127.0.0.1:{natgw.port}", credentials, options=options))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    error = _refused(grpc.insecure_channel(f"127.0.0.1:{natgw.port}"))  # nor plaintext
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_services_own_certificate_is_refused(lab, natgw):
    """Alice's pod taken over cannot reconfigure the NAT with her certificate: it is a server's (serverAuth),
    so the handshake fails."""
    error = _refused(control_channel(f"127.0.0.1:{natgw.port}", "natgw", lab.alice))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_another_ca_is_refused(lab, natgw):
    error = _refused(control_channel(f"127.0.0.1:{natgw.port}", "natgw", lab.foreign_controller))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_lab_client_certificate_for_another_name_is_refused_the_call(lab, natgw):
    """The lab CA's, fit for a client, but not the controller's: the handshake passes, every call is refused."""
    error = _refused(control_channel(f"127.0.0.1:{natgw.port}", "natgw", lab.bob_client))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "only the controller's certificate (pinhole-controller) may call this service; the caller's: bob"
    )
    with control_channel(f"127.0.0.1:{natgw.port}", "natgw", lab.bob_client) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as streamed:
            next(watch)
        assert streamed.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_controller_refuses_a_service_it_cannot_verify(lab, natgw, tmp_path: Path):
    """A server certificate for another node, or of another CA: the controller's channel does not connect."""
    with control_channel(f"127.0.0.1:{natgw.port}", "alice", lab.controller) as channel:
        with pytest.raises(grpc.RpcError) as wrong_name:
            _check(channel)
    assert wrong_name.value.code() == grpc.StatusCode.UNAVAILABLE
    foreign = labca.TlsFiles(lab.ca, lab.foreign_natgw.cert, lab.foreign_natgw.key)  # trusts our CA for clients
    with control_plane(_write(foreign, tmp_path / "impostor")) as impostor:
        with control_channel(f"127.0.0.1:{impostor.port}", "natgw", lab.controller) as channel:
            with pytest.raises(grpc.RpcError) as unverified:
                _check(channel)
    assert unverified.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_is_plaintext_and_health_alone(natgw):
    with grpc.insecure_channel(f"127.0.0.1:{natgw.health_port}") as channel:
        assert _check(channel).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as other:
            capture_pb2_grpc.LinkCaptureStub(channel).StopCapture(capture_pb2.StopCaptureRequest(), timeout=5)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as listed:
            list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5))
        assert listed.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_unix_socket_stays_plaintext(lab, tmp_path: Path):
    """A local lab: the socket's run directory (root only) is the access control, whatever the settings say."""
    target = f"unix:{tmp_path / 'natgw.sock'}"
    with control_plane(_write(lab.natgw, tmp_path / "tls"), address=target):
        with grpc.insecure_channel(target) as channel:
            assert _check(channel).status == health_pb2.HealthCheckResponse.SERVING
        with control_channel(target, "natgw", lab.controller) as channel:  # the controller's side agrees
            assert _check(channel).status == health_pb2.HealthCheckResponse.SERVING


def test_is_controller_reads_the_subject_alternative_names():
    assert labca.is_controller({"x509_subject_alternative_name": [b"pinhole-controller"]})
    assert not labca.is_controller({"x509_common_name": [b"pinhole-controller"]})  # a CN alone is not enough
    assert not labca.is_controller({"x509_subject_alternative_name": [b"bob", b"pinhole-controller.evil"]})
    assert not labca.is_controller({})


# --------------------------------------------------------------------------- a real service, as its pod runs it


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_service_serves_mutual_tls_from_its_pods_settings(tmp_path: Path):
    """`python -m services.stunserver` with PINHOLE_GRPC_TLS_DIR and PINHOLE_GRPC_HEALTH, as k8s/base runs it:
    the controller's code (wait_healthy, ServiceClients) calls it; a service's certificate cannot; the kubelet's
    plaintext probe can ask its health port only; SIGTERM stops it cleanly."""
    issued = labca.issue_lab(["stun", "bob"], "pinhole")
    tls_dir = _write(issued["stun-grpc-tls"], tmp_path / "stun-grpc-tls")
    controller = issued["pinhole-controller-grpc-tls"]
    grpc_port, health_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_STREAM)
    stun_port = _free_port(socket.SOCK_DGRAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PINHOLE_"))}
    env |= {
        labca.TLS_DIR_ENV: str(tls_dir),
        "PINHOLE_GRPC_HEALTH": f"127.0.0.1:{health_port}",
        "OTEL_SDK_DISABLED": "true",
    }
    log = tmp_path / "stun.log"
    target = f"127.0.0.1:{grpc_port}"
    argv = [sys.executable, "-m", "services.stunserver", "--name", "stun", "--grpc", target]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*argv, "--listen", f"127.0.0.1:{stun_port}"], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_healthy({"stun": target}, timeout=30, pids={"stun": process.pid}, logs=tmp_path, tls=controller)
        clients = ServiceClients({"stun": target}, {"stun": "stunserver"}, tls=controller)
        try:
            assert clients.stub("stun").GetCounters(events_pb2.CountersRequest(), timeout=5) is not None
            assert clients.not_serving() == []
        finally:
            clients.close()
        bob = ServiceClients({"stun": target}, {"stun": "stunserver"}, tls=issued["bob-grpc-tls"])
        assert bob.not_serving(timeout=2) == [f"stun: UNAVAILABLE at {target}"]
        bob.close()
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:  # the kubelet's probe
            assert _check(channel).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    text = log.read_text()
    assert code == 0, text
    assert f"gRPC listening on {target} (mutual TLS: pinhole-controller only)" in text
    assert f"gRPC health alone, plaintext, on 127.0.0.1:{health_port}" in text


# --------------------------------------------------------------------------- the CA Job's code, a fake API


class NotFound(Exception):
    status = 404


class FakeSecrets:
    """CoreV1Api's Secret calls the Job makes, over a dict."""

    def __init__(self) -> None:
        self.secrets: dict[str, Any] = {}
        self.writes: list[tuple[str, str]] = []

    def read_namespaced_secret(self, name: str, namespace: str, **options: Any) -> Any:
        assert namespace == "lab" and set(options) == {"_request_timeout"}
        if name not in self.secrets:
            raise NotFound(name)
        return self.secrets[name]

    def _store(self, verb: str, body: dict[str, Any]) -> None:
        self.secrets[body["metadata"]["name"]] = SimpleNamespace(type=body["type"], data=body["data"], body=body)
        self.writes.append((verb, body["metadata"]["name"]))

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any], **options: Any) -> None:
        assert namespace == "lab" and body["metadata"]["name"] not in self.secrets
        self._store("create", body)

    def replace_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any], **options: Any) -> None:
        assert namespace == "lab" and name == body["metadata"]["name"] and name in self.secrets
        self._store("replace", body)


def _cas(api: FakeSecrets) -> set[str]:
    return {secret.data["ca.crt"] for secret in api.secrets.values()}


def test_the_job_creates_keeps_and_reissues_the_secrets(capsys):
    api = FakeSecrets()
    nodes = ["alice", "natgw"]
    names = ["alice-grpc-tls", "natgw-grpc-tls", "pinhole-controller-grpc-tls"]
    assert labca.main(["secrets", "--namespace", "lab", *nodes], api=api) == 0
    assert api.writes == [("create", name) for name in names] and len(_cas(api)) == 1
    assert "a new CA issued" in capsys.readouterr().out
    controller = api.secrets["pinhole-controller-grpc-tls"].body
    assert controller["metadata"]["annotations"] == {"pinhole/certificate-for": "pinhole-controller"}
    # again: every Secret holds a certificate of one CA, nothing is written
    api.writes.clear()
    assert labca.ensure_secrets(api, "lab", nodes) == ("kept", names) and api.writes == []
    assert labca.main(["secrets", "--namespace", "lab", *nodes], api=api) == 0
    assert ": kept" in capsys.readouterr().out
    # one lost (the CA's key is gone, nothing can sign for it alone): all of them again, one new CA
    first = _cas(api)
    del api.secrets["natgw-grpc-tls"]
    assert labca.ensure_secrets(api, "lab", nodes) == ("issued", names)
    assert api.writes == [("replace", "alice-grpc-tls"), ("create", "natgw-grpc-tls"), ("replace", names[2])]
    assert len(_cas(api)) == 1 and _cas(api) != first
    # a node added to the Job: its Secret is missing, so again all of them
    api.writes.clear()
    assert labca.ensure_secrets(api, "lab", [*nodes, "bob"])[0] == "issued" and len(api.writes) == 4


def test_the_job_reissues_certificates_near_their_end():
    api = FakeSecrets()
    labca.ensure_secrets(api, "lab", ["alice"], days=labca.RENEW_DAYS - 1)
    assert not labca.still_good(api.secrets["alice-grpc-tls"], None)
    api.writes.clear()
    assert labca.ensure_secrets(api, "lab", ["alice"])[0] == "issued" and len(api.writes) == 2
    assert labca.still_good(api.secrets["alice-grpc-tls"], base64.b64decode(next(iter(_cas(api)))))


def test_a_secret_of_another_ca_or_mangled_is_not_kept(lab):
    good = SimpleNamespace(type="kubernetes.io/tls", data=lab.natgw.secret("n", "lab")["data"])
    assert labca.still_good(good, lab.ca)
    assert not labca.still_good(good, lab.foreign_natgw.ca)  # not the CA of the others
    mixed = dict(good.data, **{"ca.crt": base64.b64encode(lab.foreign_natgw.ca).decode()})
    assert not labca.still_good(SimpleNamespace(type="kubernetes.io/tls", data=mixed), None)  # not issued by it
    assert not labca.still_good(SimpleNamespace(type="Opaque", data=good.data), None)
    assert not labca.still_good(SimpleNamespace(type="kubernetes.io/tls", data={"tls.crt": "AA=="}), None)
