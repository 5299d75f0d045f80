"""A small NFLOG reader: the packets the NAT's drop rules log (`log group N`).

Conntrack events never show a dropped packet (its entry is never confirmed), so the NAT
gateway learns about drops from nfnetlink_log: a netlink socket (NETLINK_NETFILTER) bound to
one log group, in copy-packet mode, receives each logged packet with the rule's prefix, the
input interface and the IP packet itself.

The codec half is pure (`build_config`, `parse_messages`, `parse_packet`); `NflogReader` is
the socket, non-blocking so an asyncio loop can watch it with `loop.add_reader`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "LoggedPacket",
    "NflogError",
    "NflogReader",
    "build_config",
    "parse_messages",
    "parse_packet",
]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
NFNETLINK_V0 = 0

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_TYPE_MASK = 0x3FFF  # drops NLA_F_NESTED and NLA_F_NET_BYTEORDER

# enum nfulnl_attr_config
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
# enum nfulnl_msg_config_cmds
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
# copy modes
NFULNL_COPY_PACKET = 2
COPY_RANGE = 0xFFFF

# enum nfulnl_attr_type
NFULA_PACKET_HDR = 1
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (network order)
NLATTR = struct.Struct("=HH")  # len, type (host order)
RECV_BUFFER = 1 << 17
SO_RCVBUFFORCE = 33


class NflogError(ValueError):
    """NFLOG setup failed or a message is malformed; the message says which and where."""


@dataclass(frozen=True)
class LoggedPacket:
    """One packet logged by an nft `log group` rule.

    `prefix` is the rule's log prefix, `indev` the ifindex it came in on (0 if none),
    `payload` the IP packet (as much as the copy range allows), `timestamp` the kernel's
    receive time if the packet carried one, `hook` the netfilter hook number (1 = input,
    2 = forward for IPv4) if present.
    """

    prefix: str
    indev: int
    payload: bytes
    timestamp: float | None
    hook: int | None = None


def _attr(kind: int, value: bytes) -> bytes:
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, kind) + value + b"\0" * (-length % 4)


def build_config(group: int, seq: int, attrs: list[tuple[int, bytes]], family: int = 0) -> bytes:
    """An NFULNL_MSG_CONFIG request for `group` carrying `attrs` (type, value), asking for an
    acknowledgement (pure)."""
    if not 0 <= group <= 0xFFFF:
        raise NflogError(f"NFLOG group {group} is out of range 0..65535")
    body = NFGENMSG.pack(family, NFNETLINK_V0, group) + b"".join(_attr(t, v) for t, v in attrs)
    flags = NLM_F_REQUEST | NLM_F_ACK
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), MSG_CONFIG, flags, seq, 0) + body


def config_bind(group: int, seq: int) -> bytes:
    return build_config(group, seq, [(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))])


def config_unbind(group: int, seq: int) -> bytes:
    return build_config(group, seq, [(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))])


def config_mode(group: int, seq: int) -> bytes:
    """Copy whole packets (up to 0xffff bytes) and deliver each one at once (threshold 1)."""
    mode = struct.pack("!IBx", COPY_RANGE, NFULNL_COPY_PACKET)  # struct nfulnl_msg_config_mode
    return build_config(
        group,
        seq,
        [(NFULA_CFG_MODE, mode), (NFULA_CFG_QTHRESH, struct.pack("!I", 1))],
    )


def _iter_attrs(data: bytes, where: str) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            raise NflogError(f"{where}: attribute at offset {offset} has bad length {length}")
        yield kind & NLA_TYPE_MASK, data[offset + NLATTR.size : offset + length]
        offset += (length + 3) & ~3


def parse_packet(body: bytes) -> LoggedPacket:
    """Parse the body of an NFULNL_MSG_PACKET message (after the netlink header) (pure)."""
    if len(body) < NFGENMSG.size:
        raise NflogError(f"packet message body is {len(body)} bytes, shorter than nfgenmsg")
    prefix = ""
    indev = 0
    payload = b""
    timestamp = None
    hook = None
    for kind, value in _iter_attrs(body[NFGENMSG.size :], "packet message"):
        if kind == NFULA_PREFIX:
            prefix = value.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        elif kind == NFULA_IFINDEX_INDEV and len(value) >= 4:
            indev = struct.unpack_from("!I", value)[0]
        elif kind == NFULA_PAYLOAD:
            payload = bytes(value)
        elif kind == NFULA_TIMESTAMP and len(value) >= 16:
            sec, usec = struct.unpack_from("!QQ", value)
            timestamp = sec + usec / 1e6
        elif kind == NFULA_PACKET_HDR and len(value) >= 3:
            hook = value[2]  # struct nfulnl_msg_packet_hdr: be16 hw_protocol, u8 hook
    return LoggedPacket(prefix=prefix, indev=indev, payload=payload, timestamp=timestamp, hook=hook)


@dataclass
class ParsedBatch:
    packets: list[LoggedPacket]
    acks: dict[int, int]  # seq -> errno (0 = success) from NLMSG_ERROR messages
    odd: int  # messages we do not understand or could not parse


def parse_messages(data: bytes) -> ParsedBatch:
    """Split one netlink datagram into messages and parse them (pure; never raises)."""
    batch = ParsedBatch(packets=[], acks={}, odd=0)
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            batch.odd += 1
            return batch
        body = data[offset + NLMSGHDR.size : offset + length]
        if kind == MSG_PACKET:
            try:
                batch.packets.append(parse_packet(body))
            except NflogError:
                batch.odd += 1
        elif kind == NLMSG_ERROR and len(body) >= 4:
            batch.acks[seq] = -struct.unpack_from("=i", body)[0]
        elif kind not in (NLMSG_NOOP, NLMSG_DONE):
            batch.odd += 1
        offset += (length + 3) & ~3
    if offset < len(data):
        batch.odd += 1
    return batch


class NflogReader:
    """Receive the packets logged to NFLOG `group` in the current network namespace (or in
    `netns`, entered only to create the socket).

    `read()` never blocks and never raises on odd messages: they are counted in `odd`,
    receive-buffer overruns (ENOBUFS: the kernel dropped log messages) in `overruns`.
    """

    def __init__(self, group: int, *, netns: str | None = None, timeout: float = 2.0) -> None:
        self.group = group
        self.odd = 0
        self.overruns = 0
        self.errors = 0
        self._seq = 0
        if netns is None:
            self._sock = self._open()
        else:
            from netns.lab import in_netns

            with in_netns(netns):
                self._sock = self._open()
        try:
            self._configure(config_bind, "bind", timeout)
            self._configure(config_mode, "set copy mode", timeout)
        except BaseException:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 21)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind((0, 0))
        return sock

    def _configure(self, build: Callable[[int, int], bytes], what: str, timeout: float) -> None:
        self._seq += 1
        seq = self._seq
        self._sock.settimeout(timeout)
        self._sock.send(build(self.group, seq))
        while True:
            try:
                data = self._sock.recv(RECV_BUFFER)
            except TimeoutError:
                raise NflogError(f"NFLOG group {self.group}: no answer to {what} within {timeout} s") from None
            batch = parse_messages(data)
            self.odd += batch.odd
            if seq in batch.acks:
                err = batch.acks[seq]
                if err in (errno.EPERM, errno.EBUSY):
                    # The kernel answers EPERM when another socket owns the group's instance.
                    raise NflogError(
                        f"NFLOG group {self.group}: {what} refused ({errno.errorcode[err]}): "
                        "another socket in this namespace holds the group, or the process lacks "
                        "CAP_NET_ADMIN"
                    )
                if err:
                    raise NflogError(f"NFLOG group {self.group}: {what} failed: {os.strerror(err)}")
                return

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[LoggedPacket]:
        """Every packet queued now (possibly none)."""
        packets: list[LoggedPacket] = []
        while True:
            try:
                data = self._sock.recv(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                return packets
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            batch = parse_messages(data)
            self.odd += batch.odd
            self.errors += sum(1 for err in batch.acks.values() if err)
            packets.extend(batch.packets)

    def wait(self, timeout: float) -> list[LoggedPacket]:
        """Block until at least one packet is queued or `timeout` seconds pass; then `read()`."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.poll(timeout * 1000)
        return self.read()

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            self._seq += 1
            self._sock.send(config_unbind(self.group, self._seq))
        self._sock.close()

    def __enter__(self) -> NflogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
