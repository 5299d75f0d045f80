"""The user agent's command line, declared once: its `__main__` parses it, the controller renders it for a lab
node (pinhole.controller.services.service_argv), and tests/test_service_commands.py checks the k8s manifests'
`args` against it."""

from __future__ import annotations

import argparse

from pinhole.service import argument_parser


def parser() -> argparse.ArgumentParser:
    parser = argument_parser("pinhole SIP user agent")
    parser.add_argument("--sip-listen", required=True, help="UDP host:port for SIP")
    parser.add_argument("--media-ip", required=True, help="local address for media sockets")
    return parser
