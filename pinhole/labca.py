"""The lab's certificate authority: mutual TLS for the services' gRPC control planes in Kubernetes.

A local lab reaches each service over a unix socket in a root-only run directory, and that directory is
the access control. In a cluster the control plane is TCP (port 50051 of each pod), which any pod could
reach, so there it is mutual TLS with certificates made at deploy time (the k8s/base Job pinhole-lab-ca
runs `python -m pinhole.labca secrets`), under these rules:

  - each service has a server certificate for its node's name (alice, natgw, ...: its Deployment's and
    Service's name, plus the Service's DNS names), extended key usage serverAuth only;
  - the controller has the one client certificate, for CONTROLLER (common name and DNS name), extended
    key usage clientAuth only;
  - a service's gRPC server trusts the lab CA for clients and admits only a peer whose certificate names
    CONTROLLER (pinhole.service): a service's certificate fails the handshake (its purpose is serverAuth),
    and a lab certificate for any other name is refused the call, so a lab pod taken over cannot drive
    another pod's control plane (reconfigure the NAT, place calls);
  - the controller verifies each service against the lab CA, for the node's name rather than the pod IP,
    which nobody knows when the certificate is made (pinhole.controller.services.control_channel).

The CA's private key lives only in the process that issues and is never written anywhere: nothing can
sign another certificate later. Issuing again makes a new CA and replaces every Secret; the lab's pods
load their certificate at start, so they must be restarted then.

Each certificate is a Secret of type kubernetes.io/tls holding ca.crt, tls.crt and tls.key (the layout
cert-manager writes, so a Certificate of an Issuer of your own can take its place): <node>-grpc-tls for
each service, pinhole-controller-grpc-tls for the controller.

    python -m pinhole.labca secrets --namespace pinhole alice bob natgw ...   # the Job: create the Secrets
    python -m pinhole.labca files --out DIR alice bob natgw ...             # DIR/<secret>/{ca.crt,tls.crt,tls.key}
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTROLLER = "pinhole-controller"  # the one client identity a service admits (CN and DNS name of its certificate)
TLS_DIR_ENV = "PINHOLE_GRPC_TLS_DIR"  # a directory holding CA_FILE, CERT_FILE, KEY_FILE: mTLS on (services, controller)
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"  # the keys of a kubernetes.io/tls Secret
SECRET_TYPE = "kubernetes.io/tls"
SECRET_SUFFIX = "-grpc-tls"
CLUSTER_DOMAIN = "cluster.local"
DAYS = 365  # a lab's lifetime, generously
RENEW_DAYS = 30  # the Job issues again when a certificate expires sooner than this
CLOCK_SKEW = datetime.timedelta(minutes=5)  # not-before lies this far back: a node's clock may lag the Job's
LABELS = {"app.kubernetes.io/part-of": "pinhole", "app.kubernetes.io/component": "grpc-tls"}
MANAGED_BY = "pinhole-lab-ca"
REQUEST_TIMEOUT = 10  # seconds an API request may take


class LabCaError(RuntimeError):
    """Certificates that cannot be read or issued as asked."""


def secret_name(name: str) -> str:
    """The Secret holding `name`'s certificate (a node, or CONTROLLER)."""
    return f"{name}{SECRET_SUFFIX}"


def service_dns_names(node: str, namespace: str) -> list[str]:
    """The names a service's certificate holds: the node (what the controller verifies) and its Service's DNS names."""
    return [node, f"{node}.{namespace}", f"{node}.{namespace}.svc", f"{node}.{namespace}.svc.{CLUSTER_DOMAIN}"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of a CA bundle, a certificate and its key: one Secret's worth."""

    ca: bytes
    cert: bytes
    key: bytes

    def files(self) -> dict[str, bytes]:
        return {CA_FILE: self.ca, CERT_FILE: self.cert, KEY_FILE: self.key}

    def secret(self, name: str, namespace: str, owner: str = "") -> dict[str, Any]:
        """The Secret manifest (type kubernetes.io/tls, as cert-manager writes it)."""
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(LABELS)}
        if owner:
            metadata["labels"]["app.kubernetes.io/managed-by"] = MANAGED_BY
            metadata["annotations"] = {"pinhole/certificate-for": owner}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SECRET_TYPE,
            "metadata": metadata,
            "data": {key: base64.b64encode(value).decode() for key, value in self.files().items()},
        }


def read_tls_dir(directory: str | os.PathLike[str]) -> TlsFiles:
    """The three files of a mounted Secret (or `files` output); a LabCaError names the one missing."""
    path = Path(directory)
    contents = []
    for name in (CA_FILE, CERT_FILE, KEY_FILE):
        try:
            contents.append((path / name).read_bytes())
        except OSError as error:
            raise LabCaError(f"{TLS_DIR_ENV}={path}: cannot read {name}: {error.strerror or error}") from None
    return TlsFiles(*contents)


def write_tls_dir(tls: TlsFiles, directory: Path, *, uid: int = -1, gid: int = -1, mode: int = 0o440) -> None:
    """The files as a Secret volume shows them, one per key (owner and mode: what defaultMode and fsGroup make)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in tls.files().items():
        path = directory / name
        path.unlink(missing_ok=True)  # a previous one is read-only
        path.write_bytes(content)
        os.chown(path, uid, gid)
        path.chmod(mode)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, pkcs8, serialization.NoEncryption())


class Authority:
    """A CA whose key stays in this object: it issues the lab's certificates, then is dropped."""

    def __init__(
        self, common_name: str = "pinhole lab CA", *, days: int = DAYS, now: datetime.datetime | None = None
    ) -> None:
        """`now`: the time the CA's validity is reckoned from (default the clock's; tests pass their own)."""
        self.days = days
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = now or datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pinhole"), _cn(common_name)])
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def ca_pem(self) -> bytes:
        return _pem(self.certificate)

    def issue(self, common_name: str, dns_names: Iterable[str], *, server: bool) -> TlsFiles:
        """A leaf certificate and its new key: serverAuth (a service) or clientAuth (the controller), not both."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        ca_key_id = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pinhole"), _cn(common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return TlsFiles(self.ca_pem, _pem(cert), _key_pem(key))

    def service(self, node: str, namespace: str) -> TlsFiles:
        return self.issue(node, service_dns_names(node, namespace), server=True)

    def controller(self) -> TlsFiles:
        return self.issue(CONTROLLER, [CONTROLLER], server=False)


def _cn(name: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, name)


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> Any:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def issue_lab(nodes: Iterable[str], namespace: str, *, days: int = DAYS) -> dict[str, TlsFiles]:
    """Secret name -> its certificate: a new CA, a server certificate per node, the controller's client one."""
    nodes = list(nodes)
    if CONTROLLER in nodes or len(set(nodes)) != len(nodes) or not nodes:
        raise LabCaError(f"nodes {nodes}: expected distinct service names, none of them {CONTROLLER}")
    authority = Authority(f"pinhole lab CA ({namespace})", days=days)
    issued = {secret_name(node): authority.service(node, namespace) for node in nodes}
    issued[secret_name(CONTROLLER)] = authority.controller()
    return issued


def peer_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The subject alternative names of a gRPC peer's certificate (its auth context; empty without one)."""
    return [value.decode(errors="replace") for value in auth_context.get("x509_subject_alternative_name", [])]


def is_controller(auth_context: Mapping[str, Iterable[bytes]]) -> bool:
    """Whether a gRPC peer authenticated with the controller's certificate (the chain was verified by then)."""
    return CONTROLLER in peer_names(auth_context)


# --------------------------------------------------------------------------- Secrets (the Job)


def still_good(secret: Any, ca_pem: bytes | None, *, renew_days: int = RENEW_DAYS) -> bool:
    """Whether a Secret read through the API (the client's V1Secret) holds a certificate of the CA `ca_pem`
    (None: any CA, as the first one looked at), that CA, and more than `renew_days` of life for both."""
    if getattr(secret, "type", None) != SECRET_TYPE or not getattr(secret, "data", None):
        return False
    try:
        files = {k: base64.b64decode(secret.data[k]) for k in (CA_FILE, CERT_FILE, KEY_FILE)}
        ca = x509.load_pem_x509_certificate(files[CA_FILE])
        cert = x509.load_pem_x509_certificate(files[CERT_FILE])
        serialization.load_pem_private_key(files[KEY_FILE], password=None)
        cert.verify_directly_issued_by(ca)
    except (KeyError, ValueError, TypeError, InvalidSignature):
        return False
    if ca_pem is not None and files[CA_FILE] != ca_pem:
        return False
    horizon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=renew_days)
    return min(ca.not_valid_after_utc, cert.not_valid_after_utc) > horizon


def ensure_secrets(api: Any, namespace: str, nodes: Iterable[str], *, days: int = DAYS) -> tuple[str, list[str]]:
    """Make every Secret exist with certificates of one CA: ("kept", names) when they already do, else a new CA
    issues all of them again and each is created or replaced: ("issued", names). `api`: a CoreV1Api."""
    nodes = list(nodes)
    names = [secret_name(node) for node in nodes] + [secret_name(CONTROLLER)]
    existing = {name: _read_secret(api, namespace, name) for name in names}
    first = existing[names[0]]
    ca_pem = base64.b64decode(first.data[CA_FILE]) if still_good(first, None) else None
    if ca_pem is not None and all(still_good(existing[name], ca_pem) for name in names):
        return "kept", names
    for name, tls in issue_lab(nodes, namespace, days=days).items():
        owner = CONTROLLER if name == secret_name(CONTROLLER) else name.removesuffix(SECRET_SUFFIX)
        body = tls.secret(name, namespace, owner)
        if existing[name] is None:
            api.create_namespaced_secret(namespace, body, _request_timeout=REQUEST_TIMEOUT)
        else:
            api.replace_namespaced_secret(name, namespace, body, _request_timeout=REQUEST_TIMEOUT)
    return "issued", names


def _read_secret(api: Any, namespace: str, name: str) -> Any:
    try:
        return api.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
    except Exception as error:
        if getattr(error, "status", None) == 404:
            return None
        raise


def _core_v1() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


def main(argv: list[str] | None = None, api: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pinhole.labca", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    secrets = commands.add_parser("secrets", help="create the lab's Secrets through the API (kept when still good)")
    secrets.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE") or "pinhole")
    files = commands.add_parser("files", help="write the certificates as DIR/<secret>/{ca.crt,tls.crt,tls.key}")
    files.add_argument("--out", type=Path, required=True)
    files.add_argument("--namespace", default="pinhole", help="for the services' DNS names")
    for command in (secrets, files):
        command.add_argument("--days", type=int, default=DAYS, help=f"validity (default {DAYS})")
        command.add_argument("nodes", nargs="+", metavar="NODE", help="a service's node name (its Deployment's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "files":
            for name, tls in issue_lab(args.nodes, args.namespace, days=args.days).items():
                write_tls_dir(tls, args.out / name)
            print(f"labca: {len(args.nodes) + 1} certificates of a new CA in {args.out}")
            return 0
        api = api if api is not None else _core_v1()
        outcome, names = ensure_secrets(api, args.namespace, args.nodes, days=args.days)
    except LabCaError as error:
        print(f"labca: {error}", file=sys.stderr)
        return 2
    if outcome == "kept":
        print(f"labca: Secrets {', '.join(names)} in {args.namespace} hold certificates of one CA: kept")
    else:
        print(
            f"labca: a new CA issued {', '.join(names)} in {args.namespace}; pods started before now still hold the "
            f"old ones: kubectl -n {args.namespace} rollout restart deployment"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- SIP identities (RFC 8224)


def issue_identity(
    authority: Authority,
    aor: str,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> TlsFiles:
    """A signer's certificate for an RFC 8224 authentication service: the AoR it may assert as a subjectAltName
    URI (RFC 8224 §7.1 lets any credential that covers the identity serve; RFC 8226 TNAuthList is for numbers),
    digitalSignature only, no extended key usage. `key` (default a new P-256 one) and the validity bounds are
    there so tests can make the credentials a verifier must refuse (another curve, expired)."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key_id = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pinhole"), _cn(aor)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - CLOCK_SKEW)
        .not_valid_after(not_after or now + datetime.timedelta(days=authority.days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(aor)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
        .sign(authority._key, hashes.SHA256())
    )
    return TlsFiles(authority.ca_pem, _pem(cert), _key_pem(key))
