"""A small NFLOG reader: the packets the NAT's drop rules log (`log group N`).

Conntrack events never show a dropped packet (its entry is never confirmed), so the NAT
gateway learns about drops from nfnetlink_log: a netlink socket (NETLINK_NETFILTER) bound to
one log group, in copy-packet mode, receives each logged packet with the rule's prefix, the
input interface and the IP packet itself.

The codec half is pure (`build_config`, `parse_messages`, `parse_packet`); `NflogReader` is
the socket, non-blocking so an asyncio loop can watch it with `loop.add_reader`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pinhole.faults import nfnetlink
from pinhole.faults.nfnetlink import NFGENMSG, NLM_F_ACK, NLM_F_REQUEST

__all__ = [
    "LoggedPacket",
    "NflogError",
    "NflogReader",
    "build_config",
    "parse_messages",
    "parse_packet",
]

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG

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


def build_config(group: int, seq: int, attrs: list[tuple[int, bytes]], family: int = 0) -> bytes:
    """An NFULNL_MSG_CONFIG request for `group` carrying `attrs` (type, value), asking for an
    acknowledgement (pure)."""
    if not 0 <= group <= 0xFFFF:
        raise NflogError(f"NFLOG group {group} is out of range 0..65535")
    return nfnetlink.build_message(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, family, group, attrs)


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


def parse_packet(body: bytes) -> LoggedPacket:
    """Parse the body of an NFULNL_MSG_PACKET message (after the netlink header) (pure)."""
    if len(body) < NFGENMSG.size:
        raise NflogError(f"packet message body is {len(body)} bytes, shorter than nfgenmsg")
    prefix = ""
    indev = 0
    payload = b""
    timestamp = None
    hook = None
    for kind, value in nfnetlink.iter_attrs(body[NFGENMSG.size :], "packet message", NflogError):
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
    for kind, _seq, body in nfnetlink.walk_messages(data, batch):
        if kind == MSG_PACKET:
            try:
                batch.packets.append(parse_packet(body))
            except NflogError:
                batch.odd += 1
        else:
            batch.odd += 1
    return batch


class NflogReader(nfnetlink.NfnetlinkClient):
    """Receive the packets logged to NFLOG `group` in the current network namespace (or in
    `netns`, entered only to create the socket).

    `read()` never blocks and never raises on odd messages: they are counted in `odd`,
    receive-buffer overruns (ENOBUFS: the kernel dropped log messages) in `overruns`.
    """

    _holds = "group"
    _error = NflogError

    def __init__(self, group: int, *, netns: str | None = None, timeout: float = 2.0) -> None:
        self.group = group
        self.odd = 0
        self.overruns = 0
        self.errors = 0
        self._seq = 0
        self._label = f"NFLOG group {group}"
        self._sock = nfnetlink.open_socket(1 << 21, netns)
        try:
            self._configure(lambda seq: config_bind(group, seq), "bind", timeout, parse_messages)
            self._configure(lambda seq: config_mode(group, seq), "set copy mode", timeout, parse_messages)
        except BaseException:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def read(self) -> list[LoggedPacket]:
        """Every packet queued now (possibly none)."""
        packets: list[LoggedPacket] = []
        for data in self._datagrams():
            batch = parse_messages(data)
            self.odd += batch.odd
            self.errors += sum(1 for err in batch.acks.values() if err)
            packets.extend(batch.packets)
        return packets

    def wait(self, timeout: float) -> list[LoggedPacket]:
        """Block until at least one packet is queued or `timeout` seconds pass; then `read()`."""
        self._poll(timeout)
        return self.read()

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        self._unbind_and_close(lambda seq: config_unbind(self.group, seq))
