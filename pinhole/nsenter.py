"""Entering a network namespace from one thread: how a single process works in several lab nodes.

The lab backends build namespaces (netns) or find them (a container's /proc/PID/ns/net); the
library enters them to open sockets there: captures, the NAT probe, netfilter queues. setns(2)
acts on the calling thread only, so other threads (gRPC, a capture reader) stay where they were,
and a socket stays in the namespace where it was created.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["NETNS_DIR", "NamespaceError", "in_netns"]

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(LookupError):
    """The namespace to enter does not exist (a lab that is down, a container that has stopped)."""


def setns(fd: int) -> None:
    """setns(2) the calling thread into the network namespace open at `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the calling thread inside network namespace `ns`, then return to where it was.

    `ns`: a name under /run/netns, or a path such as /proc/PID/ns/net (a container's).
    Sockets created inside stay in `ns`; files under /proc/sys/net opened inside belong to
    `ns`; child processes forked inside start in `ns`. Other threads are not affected (unlike
    pyroute2's pushns/popns, whose saved stack is process-wide and which saves /proc/self,
    the main thread's namespace).
    """
    try:
        target = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(f"network namespace {ns!r} does not exist") from None
    try:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
            try:
                yield
            finally:
                setns(saved)
        finally:
            os.close(saved)
    finally:
        os.close(target)
