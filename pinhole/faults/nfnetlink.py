"""The nfnetlink plumbing NFLOG (the gateway's nflog.py) and NFQUEUE (nfqueue.py) share: attributes, the
socket, config acks, message walking, and entering a lab namespace for a call.

Both clients speak the same framing (netlink header, nfgenmsg, attributes) on a NETLINK_NETFILTER
socket and configure their subsystem the same way (a request, then wait for its NLMSG_ERROR ack);
only the subsystem's messages and the words of their errors differ, so those stay in each module.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, Self, TypeVar

NETLINK_NETFILTER = 12
NFNETLINK_V0 = 0

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_TYPE_MASK = 0x3FFF  # drops NLA_F_NESTED and NLA_F_NET_BYTEORDER

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (network order)
NLATTR = struct.Struct("=HH")  # len, type (host order)
RECV_BUFFER = 1 << 17
SO_RCVBUFFORCE = 33


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes as the kernel expects."""
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, kind) + value + b"\0" * (-length % 4)


def build_message(
    kind: int, flags: int, seq: int, family: int, res_id: int, attrs: Sequence[tuple[int, bytes]]
) -> bytes:
    """A netlink message of type `kind`: nfgenmsg (family, res_id) followed by `attrs` (type, value) (pure)."""
    body = NFGENMSG.pack(family, NFNETLINK_V0, res_id) + b"".join(attr(t, v) for t, v in attrs)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def iter_attrs(data: bytes, where: str, error: type[Exception]) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each attribute in `data`; a bad length raises `error` (the caller's own class)."""
    offset = 0
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            raise error(f"{where}: attribute at offset {offset} has bad length {length}")
        yield kind & NLA_TYPE_MASK, data[offset + NLATTR.size : offset + length]
        offset += (length + 3) & ~3


class Tally(Protocol):
    """Where `walk_messages` puts what is not a subsystem message (each module's ParsedBatch)."""

    acks: dict[int, int]
    odd: int


BatchT = TypeVar("BatchT", bound=Tally)


def walk_messages(data: bytes, tally: Tally) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, body) of each subsystem message of one datagram (pure; never raises).

    Acks and errors (NLMSG_ERROR) go to `tally.acks` (seq -> errno, 0 = success), NOOP and DONE are
    skipped, and a truncated message or trailing bytes count one in `tally.odd` (the walk stops there).
    """
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            tally.odd += 1
            return
        body = data[offset + NLMSGHDR.size : offset + length]
        if kind == NLMSG_ERROR:
            if len(body) >= 4:
                tally.acks[seq] = -struct.unpack_from("=i", body)[0]
            else:
                tally.odd += 1
        elif kind not in (NLMSG_NOOP, NLMSG_DONE):
            yield kind, seq, body
        offset += (length + 3) & ~3
    if offset < len(data):
        tally.odd += 1


@contextlib.contextmanager
def in_namespace(netns: str | None) -> Iterator[None]:
    """Run the body in network namespace `netns` (None: here). A service runs inside its namespace;
    tests and the controller pass the namespace's name and enter it for the call only."""
    if netns is None:
        yield
        return
    from pinhole.nsenter import in_netns  # only callers outside the namespace (tests, controller)

    with in_netns(netns):
        yield


def open_socket(rcvbuf: int, netns: str | None = None) -> socket.socket:
    """A NETLINK_NETFILTER socket with a `rcvbuf` receive buffer (forced past rmem_max when allowed),
    created in `netns` if given (entered only for this)."""
    if netns is not None:
        with in_namespace(netns):
            return open_socket(rcvbuf)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((0, 0))
    return sock


class NfnetlinkClient(Generic[BatchT]):
    """The socket side both clients share; a subclass sets `_sock`, `_seq`, `odd` and `overruns`
    and names itself and its errors (`_label`, `_holds`, `_error`). `BatchT` is what its parser returns."""

    _sock: socket.socket
    _seq: int
    odd: int
    overruns: int
    _label: str  # e.g. "NFLOG group 5", the start of every error message
    _holds: str  # what another socket may hold: "group" or "queue"
    _error: type[Exception]

    def _configure(
        self, build: Callable[[int], bytes], what: str, timeout: float, parse: Callable[[bytes], BatchT]
    ) -> None:
        """Send `build(seq)` and wait for its ack; what else comes meanwhile goes to `_during_configure`.

        One deadline covers the whole wait, so messages that keep arriving (logged or queued packets)
        cannot stretch it past `timeout`."""
        self._seq += 1
        seq = self._seq
        self._sock.settimeout(timeout)
        self._sock.send(build(seq))
        deadline = time.monotonic() + timeout
        while True:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = self._sock.recv(RECV_BUFFER)
            except TimeoutError:
                raise self._error(f"{self._label}: no answer to {what} within {timeout} s") from None
            batch = parse(data)
            self.odd += batch.odd
            self._during_configure(batch)
            if seq in batch.acks:
                err = batch.acks[seq]
                if err in (errno.EPERM, errno.EBUSY):
                    # The kernel answers EPERM when another socket owns the group's or queue's instance.
                    raise self._error(
                        f"{self._label}: {what} refused ({errno.errorcode[err]}): another socket in this "
                        f"namespace holds the {self._holds}, or the process lacks CAP_NET_ADMIN"
                    )
                if err:
                    raise self._error(f"{self._label}: {what} failed: {os.strerror(err)}")
                return

    def _during_configure(self, batch: BatchT) -> None:
        """What to do with the subsystem's messages that arrive before an ack (default: nothing)."""

    def _datagrams(self) -> Iterator[bytes]:
        """Every datagram queued now, without blocking; ENOBUFS (the kernel dropped messages) counts in
        `overruns` and the reading goes on."""
        while True:
            try:
                data = self._sock.recv(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            yield data

    def _poll(self, timeout: float) -> None:
        """Block until a datagram is queued or `timeout` seconds pass."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.poll(timeout * 1000)

    def fileno(self) -> int:
        return self._sock.fileno()

    def _unbind_and_close(self, build: Callable[[int], bytes]) -> None:
        """Send the unbind `build(seq)` without waiting for its ack (best effort: the kernel unbinds a
        closed socket anyway), then close."""
        with contextlib.suppress(OSError):
            self._seq += 1
            self._sock.send(build(self._seq))
        self._sock.close()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
