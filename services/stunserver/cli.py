"""The STUN server's command line, declared once: its `__main__` parses it, the controller renders it for a lab
node (pinhole.controller.services.service_argv), and tests/test_service_commands.py checks the k8s manifests'
`args` against it."""

from __future__ import annotations

import argparse

from pinhole.service import argument_parser


def parser() -> argparse.ArgumentParser:
    parser = argument_parser("pinhole STUN server")
    parser.add_argument("--listen", default="0.0.0.0:3478", help="UDP address to answer on (A1:P1)")
    parser.add_argument(
        "--alternate",
        metavar="IP:PORT",
        help="RFC 5780: this host's second IP and the second port (A2:P2); needs a specific --listen IP",
    )
    parser.add_argument(
        "--alternate-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the --alternate IP to appear on this host before serving without it",
    )
    return parser
