"""Datagrams from a stranger: what someone who is not the call's peer can send to its media address.

A scenario's `strangers:` steps run this in a lab node (`python -m pinhole.stranger`) at a moment of
the call, to show that no such datagram touches the call's association (RFC 5763 §5 lets the
offerer serve a ClientHello before the answer names its peer, so anyone may send one then).
"""

from __future__ import annotations

import argparse
import socket

from pinhole import dtls

# the kinds of datagram a stranger sends, and why each is a test
KINDS = {
    "client-hello": "a well-formed ClientHello with a certificate no a=fingerprint names",
    "malformed-client-hello": "a ClientHello that parses but that OpenSSL rejects (bad renegotiation_info)",
}

_RENEGOTIATION_INFO = bytes.fromhex("ff01000100")  # RFC 5746 §3.2: type 65281, length 1, empty content


def client_hello() -> bytes:
    """The first flight of a fresh DTLS client with a throwaway certificate."""
    return dtls.DtlsEndpoint(dtls.Role.CLIENT, dtls.Certificate.generate("stranger")).start(0.0)[0]


def malformed_client_hello() -> bytes:
    """A ClientHello whose renegotiation_info claims one byte of renegotiated_connection it does not
    carry: every parser of the record layer reads it as a ClientHello, OpenSSL fails the handshake."""
    hello = client_hello()
    if _RENEGOTIATION_INFO not in hello:
        raise ValueError("this OpenSSL's ClientHello has no empty renegotiation_info extension to corrupt")
    return hello.replace(_RENEGOTIATION_INFO, bytes.fromhex("ff01000101"))


DATAGRAMS = {"client-hello": client_hello, "malformed-client-hello": malformed_client_hello}


def send(kind: str, destination: tuple[str, int], count: int = 1) -> None:
    """`count` datagrams of `kind` (each built afresh: a new random each) from one ephemeral port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(DATAGRAMS[kind](), destination)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pinhole.stranger", description=__doc__.splitlines()[0])
    parser.add_argument("--send", choices=sorted(KINDS), required=True)
    parser.add_argument("--to", required=True, metavar="HOST:PORT")
    parser.add_argument("--count", type=int, default=1, choices=range(1, 101), metavar="1..100")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"--to {args.to!r}: expected HOST:PORT")
    send(args.send, (host, int(port)), args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
