"""The switch's command line, declared once: its `__main__` parses it, the controller renders it for a lab
node (pinhole.controller.services.service_argv), and tests/test_service_commands.py checks the k8s manifests'
`args` against it."""

from __future__ import annotations

import argparse

from pinhole.service import argument_parser


def parser() -> argparse.ArgumentParser:
    parser = argument_parser("pinhole switch (the public segment's bridge, impaired per port)")
    parser.add_argument("--bridge", default="br0", help="the bridge whose ports carry the public links")
    parser.add_argument("--fault-queue", type=int, default=1, help="NFQUEUE number of the fault engine (SetFaults)")
    return parser
