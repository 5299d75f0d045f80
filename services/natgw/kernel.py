"""Running the kernel's NAT tools (nft, conntrack) in the gateway's network namespace.

The service itself runs inside that namespace (`netns=None`); tests and the controller pass the
namespace name and enter it for the call only.
"""

from __future__ import annotations

import fcntl
import ipaddress
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable

from pinhole.faults.nfnetlink import in_namespace  # shared with the fault engine

SIOCGIFADDR = 0x8915


def run_tool(
    tool: str,
    args: list[str],
    *,
    netns: str | None,
    error: type[Exception],
    stdin: str | None = None,
    package: str = "",
) -> str:
    """Run `tool args` (inside `netns`), returning stdout; failures raise `error` with the tool's stderr."""
    path = shutil.which(tool)
    if path is None:
        raise error(f"{tool} ({package or tool}) is not installed")
    with in_namespace(netns):
        result = subprocess.run([path, *args], input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise error(f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def interface_with(matches: Callable[[ipaddress.IPv4Address], bool], what: str) -> str:
    """The name of this namespace's interface whose IPv4 address `matches` (SIOCGIFADDR: the primary one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("16s16x", name.encode())
            try:
                reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
            except OSError:  # no IPv4 address
                continue
            if matches(ipaddress.IPv4Address(reply[20:24])):
                return name
    raise SystemExit(f"natgw: no interface holds {what}; name it with --lan-if/--wan-if")
