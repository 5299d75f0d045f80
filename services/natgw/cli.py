"""The NAT gateway's command line, declared once: its `__main__` parses it, the controller renders it for a lab
node (pinhole.controller.services.service_argv), and tests/test_service_commands.py checks the k8s manifests'
`args` against it."""

from __future__ import annotations

import argparse

from pinhole.service import argument_parser


def parser() -> argparse.ArgumentParser:
    parser = argument_parser("pinhole NAT gateway")
    parser.add_argument("--lan-if", help="inside interface (default: the one with an address in --lan-prefix)")
    parser.add_argument("--wan-if", help="outside interface (default: the one holding --wan-address)")
    parser.add_argument("--wan-address", required=True, help="the NAT's outside address")
    parser.add_argument("--lan-prefix", required=True, help="the private LAN, e.g. 10.10.1.0/24")
    parser.add_argument("--log-group", type=int, default=1, help="NFLOG group for dropped packets")
    parser.add_argument("--fault-queue", type=int, default=1, help="NFQUEUE number of the fault engine (SetFaults)")
    parser.add_argument(
        "--wan-allow",
        action="append",
        default=[],
        metavar="PROTO/PORT",
        help="a port this gateway serves on its outside address (tcp/50051: probes; udp/4789: VXLAN)",
    )
    return parser
