"""DtlsEndpoint against Debian's `openssl s_server` / `s_client` over loopback UDP (RFC 5764 keys).

The CLI is OpenSSL 3.0 (pyOpenSSL runs on the OpenSSL 4.0 in the cryptography wheel), so this is
two different OpenSSL builds. Both sides export EXTRACTOR-dtls_srtp keying material (RFC 5764 §4.2);
the CLI prints it and the test compares it with the keys our endpoint derived. Loopback only; the CLI
process is ended by its PID.
"""

from __future__ import annotations

import queue
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pinhole.dtls import Certificate, DtlsEndpoint, RetransmitTimer, Role
from pinhole.srtp import SrtpKeys, keying_material_length

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")

TIMEOUT = 10.0
LOOPBACK = "127.0.0.1"


class Cli:
    """An `openssl` subprocess whose merged output is read line by line by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            ["openssl", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def poll_for(self, pattern: str) -> re.Match[str] | None:
        """Consume the lines read so far; the first match of `pattern`, if any (never blocks)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return None
            if line is None:
                self.lines.put(None)
                return None
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        end = time.monotonic() + timeout
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} from openssl; output:\n" + "\n".join(self.output))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # this PID only
        self.process.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)


@pytest.fixture
def cli_runner() -> Iterator[Callable[[list[str]], Cli]]:
    started: list[Cli] = []

    def start(args: list[str]) -> Cli:
        cli = Cli(args)
        started.append(cli)
        return cli

    yield start
    for cli in started:
        cli.stop()
        assert cli.process.returncode is not None


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    yield sock
    sock.close()


def write_credentials(tmp_path: Path, cert: Certificate) -> tuple[str, str]:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.certificate_pem)
    key_path.write_bytes(cert.key_pem)
    return str(cert_path), str(key_path)


def drive(
    endpoint: DtlsEndpoint,
    sock: socket.socket,
    peer: tuple[str, int] | None,
    done: Callable[[], bool],
    initial: Sequence[bytes] = (),
) -> tuple[str, int]:
    """A small UDP loop: datagrams and timer expiries in, datagrams out, until `done()`."""
    for datagram in initial:
        assert peer is not None
        sock.sendto(datagram, peer)
    end = time.monotonic() + TIMEOUT
    while not done():
        now = time.monotonic()
        assert now < end, f"timed out in state {endpoint.state} ({endpoint.failure_reason})"
        wait = 0.05
        if endpoint.next_deadline is not None:
            wait = max(0.0, min(wait, endpoint.next_deadline - now))
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            datagram, source = sock.recvfrom(65535)
            assert source[0] == LOOPBACK
            peer = peer or source
            for out in endpoint.receive(datagram, time.monotonic()):
                sock.sendto(out, peer)
        if peer is not None:
            for out in endpoint.on_deadline(time.monotonic()):
                sock.sendto(out, peer)
    assert peer is not None
    return peer


def material_as_client_sees_it(keys: SrtpKeys, role: Role) -> bytes:
    """Rebuild client_key | server_key | client_salt | server_salt (RFC 5764 §4.2)."""
    if role is Role.CLIENT:
        return keys.local_key + keys.remote_key + keys.local_salt + keys.remote_salt
    return keys.remote_key + keys.local_key + keys.remote_salt + keys.local_salt


def srtp_args(profile: str) -> list[str]:
    return [
        "-dtls1_2",
        "-use_srtp",
        profile,
        "-keymatexport",
        "EXTRACTOR-dtls_srtp",
        "-keymatexportlen",
        str(keying_material_length(profile)),
    ]


PROFILES = ["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"]
KEYING_MATERIAL = r"Keying material: ([0-9A-F]+)"


@pytest.mark.parametrize("profile", PROFILES)
def test_our_client_with_openssl_s_server(
    tmp_path: Path, cli_runner: Callable[[list[str]], Cli], udp: socket.socket, profile: str
) -> None:
    ours, theirs = Certificate.generate("bob"), Certificate.generate("s_server")
    cert_path, key_path = write_credentials(tmp_path, theirs)
    server = cli_runner(
        [
            "s_server",
            "-accept",
            f"{LOOPBACK}:0",
            "-cert",
            cert_path,
            "-key",
            key_path,
            "-Verify",
            "1",
            "-naccept",
            "1",
            *srtp_args(profile),
        ]
    )
    port = int(server.wait_for(r"^ACCEPT .*:(\d+)$").group(1))
    client = DtlsEndpoint(
        Role.CLIENT,
        ours,
        peer_fingerprints=[("sha-256", theirs.digest())],
        timer=RetransmitTimer(initial=0.2),
    )
    peer = (LOOPBACK, port)
    drive(client, udp, peer, lambda: client.state != "handshaking", client.start(time.monotonic()))
    assert client.state == "connected", client.failure_reason
    assert client.fingerprint_verified and client.selected_profile == profile
    assert client.peer_certificate_der == theirs.der

    # s_server does a HelloVerifyRequest cookie round (RFC 6347 §4.2.1) before printing its summary
    server.wait_for(rf"^SRTP Extension negotiated, profile={profile}$")
    cli_material = bytes.fromhex(server.wait_for(KEYING_MATERIAL).group(1))
    assert material_as_client_sees_it(client.srtp_keys(), Role.CLIENT) == cli_material

    for datagram in client.close(time.monotonic()):
        udp.sendto(datagram, peer)
    assert server.process.wait(timeout=TIMEOUT) == 0  # -naccept 1: exits after our close_notify


@pytest.mark.parametrize("profile", PROFILES)
def test_our_server_with_openssl_s_client(
    tmp_path: Path, cli_runner: Callable[[list[str]], Cli], udp: socket.socket, profile: str
) -> None:
    ours, theirs = Certificate.generate("alice"), Certificate.generate("s_client")
    cert_path, key_path = write_credentials(tmp_path, theirs)
    server = DtlsEndpoint(Role.SERVER, ours, peer_fingerprints=[("sha-256", theirs.digest())])
    server.start(time.monotonic())
    port = udp.getsockname()[1]
    client = cli_runner(
        [
            "s_client",
            "-connect",
            f"{LOOPBACK}:{port}",
            "-cert",
            cert_path,
            "-key",
            key_path,
            *srtp_args(profile),
        ]
    )
    material: list[bytes] = []

    def done() -> bool:
        match = client.poll_for(KEYING_MATERIAL)
        if match:
            material.append(bytes.fromhex(match.group(1)))
        return server.state != "handshaking" and bool(material)

    peer = drive(server, udp, None, done)
    assert server.state == "connected", server.failure_reason
    assert server.fingerprint_verified and server.selected_profile == profile
    assert server.peer_certificate_der == theirs.der
    assert material_as_client_sees_it(server.srtp_keys(), Role.SERVER) == material[0]
    assert f"SRTP Extension negotiated, profile={profile}" in client.output

    for datagram in server.close(time.monotonic()):
        udp.sendto(datagram, peer)


def test_openssl_s_server_sees_our_bad_certificate_alert(
    tmp_path: Path, cli_runner: Callable[[list[str]], Cli], udp: socket.socket
) -> None:
    ours, theirs, other = (Certificate.generate(n) for n in ("bob", "s_server", "mallory"))
    cert_path, key_path = write_credentials(tmp_path, theirs)
    server = cli_runner(
        [
            "s_server",
            "-accept",
            f"{LOOPBACK}:0",
            "-cert",
            cert_path,
            "-key",
            key_path,
            "-Verify",
            "1",
            "-naccept",
            "1",
            *srtp_args("SRTP_AES128_CM_SHA1_80"),
        ]
    )
    port = int(server.wait_for(r"^ACCEPT .*:(\d+)$").group(1))
    client = DtlsEndpoint(Role.CLIENT, ours, peer_fingerprints=[("sha-256", other.digest())])
    drive(
        client,
        udp,
        (LOOPBACK, port),
        lambda: client.state != "handshaking",
        client.start(time.monotonic()),
    )
    assert client.state == "failed"
    assert client.failure_reason == (
        f"peer certificate sha-256 {theirs.fingerprint()} matches no a=fingerprint (RFC 5763 §5)"
    )
    server.wait_for(r"alert bad certificate.*SSL alert number 42")
