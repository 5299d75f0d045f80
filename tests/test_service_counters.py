"""Counters every service reports beside its own: datagrams the kernel dropped before the service read them."""

from __future__ import annotations

import socket

from pinhole.service import receive_buffer_drops


def test_a_full_receive_buffer_is_counted():
    """A socket nobody reads, with a small receive buffer, gets a burst: what did not fit is counted (the
    kernel's sk_drops for this process's sockets), and nothing before it was."""
    before = receive_buffer_drops()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as slow,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fast,
    ):
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel doubles it: still a few datagrams
        slow.bind(("127.0.0.1", 0))
        for _ in range(200):
            fast.sendto(bytes(1000), slow.getsockname())
        kept = 0
        slow.setblocking(False)
        while True:
            try:
                slow.recv(2000)
            except BlockingIOError:
                break
            kept += 1
        assert receive_buffer_drops() - before == 200 - kept > 0
