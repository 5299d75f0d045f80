"""A small NFQUEUE client: the packets an xtables `NFQUEUE` rule hands to user space, and their verdicts.

nfnetlink_queue (NETLINK_NETFILTER, subsystem 3) parks each queued packet in the kernel and sends a
copy to the socket bound to the queue; the packet goes on only when that socket sends a verdict for
its id: accept (the packet continues with the next hook function, optionally with a new mark) or
drop. Verdicts may come in any order and any time later: a packet can be held (a delay) while later
ones are accepted (reordering), which is what the fault engine (engine.py) does.

Why xtables: this kernel has no nftables `queue` statement (CONFIG_NFT_QUEUE is off, see
FIELD-NOTES), but the xtables NFQUEUE target is built in, so the gateway feeds the queue from an
`iptables -t mangle` rule (`install_queue_rules`) next to its nftables table. iptables-nft is
preferred: it loads the xtables target through nft_compat over netlink and needs CAP_NET_ADMIN
only, like nft (a pod's natgw has nothing more); iptables-legacy also needs CAP_NET_RAW (measured:
"Permission denied" without it). The mangle FORWARD hook (priority -150) runs before the NAT
table's filter chain (priority 0), so a packet whose verdict is accept still meets every rule of
the NAT ruleset, as if it had never been queued.

Failure policy (`fail_open`, on by default): the lab must never be blackholed by its own fault
engine. With NFQA_CFG_F_FAIL_OPEN the kernel accepts, instead of dropping, a packet it cannot queue
(queue full, or the socket's receive buffer full); with `--queue-bypass` on the rule it accepts
packets while no socket is bound (the gateway stopped or died). Such packets escape the faults, and
the kernel counts them nowhere (queue_dropped and user_dropped count only without fail-open; a packet
that finds the queue full gets no id, so id gaps do not show it either). So they are counted here:
the queue rule sits alone in a chain of its own (`queue_chain`), whose counter is every packet sent
towards the queue, and `NfQueue.bypassed(rule_hits)` is that count minus the ids the kernel gave
(kernel_stats: id_sequence), plus the ids whose message was lost (`missed`, gaps: the receive buffer
was full). Once nothing feeds the queue and the socket is drained, it equals rule hits minus
`received`, exactly.

Capacity, measured on the lab's 2-core machine (Python 3.11; 172-byte datagrams at a steady rate
for 5 s from a sender process on the same machine; a plan that looks at every packet): a packet costs
the engine 70-100 µs of CPU (parsing, the rules, the verdict), and every packet was judged up to
10,000 packets/s with the machine otherwise quiet (12,000/s: 30-50 % went by unjudged), up to
3,000/s while other work kept its load average near 10. Above that rate fail-open lets the excess
through, counted. The queue absorbs a burst of `max_length` packets over it (4096: about 0.4 s of
the engine's work, the longest it may add to a packet's way under overload; a longer queue would
delay packets past the protocols' own timers instead). `read()` takes at most `READ_BATCH`
packets at a time: a read that emptied the socket took a whole backlog (measured: 1,500 packets on
average under a flood, up to the 4096 of a full queue) before the first verdict, which kept the queue
full meanwhile and stalled the loop's timers (a delay's end) and RPCs for up to half a second. The
receive buffer holds `max_length` messages of full-size packets (`RCVBUF_PER_PACKET`), so the queue,
not the socket, overflows first.

The codec half is pure (`build_config`, `build_verdict`, `parse_messages`, `parse_packet`);
`NfQueue` is the socket, non-blocking so an asyncio loop can watch it with `loop.add_reader`.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pinhole.faults import nfnetlink
from pinhole.faults.nfnetlink import NFGENMSG, NLM_F_ACK, NLM_F_REQUEST, in_namespace

__all__ = [
    "ACCEPT",
    "DROP",
    "NfQueue",
    "NfqueueError",
    "QueueRuleError",
    "QueuedPacket",
    "build_config",
    "build_verdict",
    "install_queue_rules",
    "kernel_stats",
    "parse_messages",
    "parse_packet",
    "remove_queue_rules",
    "render_queue_rules",
]

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG

# enum nfqnl_attr_type
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_IFINDEX_PHYSINDEV = 7  # a bridged packet (br_netfilter): the bridge port it came in by
NFQA_IFINDEX_PHYSOUTDEV = 8  # ... and the port it leaves by
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
# enum nfqnl_attr_config
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
# enum nfqnl_msg_config_cmds
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
COPY_RANGE = 0xFFFF

# netfilter verdicts (include/uapi/linux/netfilter.h)
DROP = 0
ACCEPT = 1
VERDICTS = {DROP: "drop", ACCEPT: "accept"}

# IPv4 netfilter hooks, as NFQA_PACKET_HDR reports them
HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}

PACKET_HDR = struct.Struct("!IHB")  # struct nfqnl_msg_packet_hdr: be32 id, be16 hw_protocol, u8 hook
VERDICT_HDR = struct.Struct("!II")  # struct nfqnl_msg_verdict_hdr: be32 verdict, be32 id
DEFAULT_MAX_LENGTH = 4096
READ_BATCH = 64  # packets per read(): their verdicts go out before the next ones are read
RCVBUF_PER_PACKET = 2304  # receive buffer one queued 1500-byte packet's message takes (skb truesize, measured)


class NfqueueError(ValueError):
    """NFQUEUE setup failed or a message is malformed; the message says which and where."""


@dataclass(frozen=True)
class QueuedPacket:
    """One packet parked in the kernel until a verdict names its `packet_id`.

    `hook` is the netfilter hook (2 = forward), `indev`/`outdev` the ifindexes it came in on and
    will leave by (0 if none), `physindev`/`physoutdev` the bridge ports of a bridged packet (0 if
    it is routed, not bridged), `mark` its skb mark, `payload` the IP packet, `timestamp` the
    kernel's receive time if the packet carried one, else None; `received` is when this process
    read it (time.time()).
    """

    packet_id: int
    hook: int
    indev: int
    outdev: int
    payload: bytes
    mark: int = 0
    timestamp: float | None = None
    received: float = 0.0
    physindev: int = 0
    physoutdev: int = 0


def _check_queue(queue: int) -> None:
    if isinstance(queue, bool) or not isinstance(queue, int) or not 0 <= queue <= 0xFFFF:
        raise NfqueueError(f"queue number {queue!r} is out of range 0..65535")


def build_config(queue: int, seq: int, attrs: Sequence[tuple[int, bytes]]) -> bytes:
    """An NFQNL_MSG_CONFIG request for `queue` carrying `attrs` (type, value), acknowledged (pure)."""
    _check_queue(queue)
    return nfnetlink.build_message(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC, queue, attrs)


def config_bind(queue: int, seq: int) -> bytes:
    # struct nfqnl_msg_config_cmd: u8 command, u8 pad, be16 pf (ignored since Linux 3.8)
    return build_config(queue, seq, [(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0))])


def config_unbind(queue: int, seq: int) -> bytes:
    return build_config(queue, seq, [(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0))])


def config_params(queue: int, seq: int, max_length: int, fail_open: bool) -> bytes:
    """Copy whole packets, hold at most `max_length` of them, and the fail-open flag (set or cleared)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= 0xFFFFFFFF:
        raise NfqueueError(f"queue max length {max_length!r} is not a positive 32-bit integer")
    flags = NFQA_CFG_F_FAIL_OPEN if fail_open else 0
    return build_config(
        queue,
        seq,
        [
            (NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET)),  # packed: 5 bytes
            (NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", max_length)),
            (NFQA_CFG_FLAGS, struct.pack("!I", flags)),
            (NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)),
        ],
    )


def build_verdict(queue: int, packet_id: int, verdict: int, *, mark: int | None = None, seq: int = 0) -> bytes:
    """An NFQNL_MSG_VERDICT for one packet: accept or drop, optionally setting its mark (pure).

    No acknowledgement is asked for: a verdict the kernel refuses (an unknown id) comes back as
    an error message on the socket, which `NfQueue.read` counts in `verdict_errors`.
    """
    _check_queue(queue)
    if verdict not in VERDICTS:
        raise NfqueueError(f"verdict {verdict!r} is not accept (1) or drop (0)")
    if not 0 <= packet_id <= 0xFFFFFFFF:
        raise NfqueueError(f"packet id {packet_id} is not a 32-bit unsigned integer")
    attrs = [(NFQA_VERDICT_HDR, VERDICT_HDR.pack(verdict, packet_id))]
    if mark is not None:
        if not 0 <= mark <= 0xFFFFFFFF:
            raise NfqueueError(f"mark {mark} is not a 32-bit unsigned integer")
        attrs.append((NFQA_MARK, struct.pack("!I", mark)))
    return nfnetlink.build_message(MSG_VERDICT, NLM_F_REQUEST, seq, socket.AF_UNSPEC, queue, attrs)


def parse_packet(body: bytes, received: float = 0.0) -> QueuedPacket:
    """Parse the body of an NFQNL_MSG_PACKET message (after the netlink header) (pure)."""
    if len(body) < NFGENMSG.size:
        raise NfqueueError(f"packet message body is {len(body)} bytes, shorter than nfgenmsg")
    header: tuple[int, int, int] | None = None
    indev = outdev = physindev = physoutdev = mark = 0
    payload = b""
    timestamp = None
    for kind, value in nfnetlink.iter_attrs(body[NFGENMSG.size :], "packet message", NfqueueError):
        if kind == NFQA_PACKET_HDR:
            if len(value) < PACKET_HDR.size:
                raise NfqueueError(f"packet header attribute is {len(value)} bytes, expected {PACKET_HDR.size}")
            header = PACKET_HDR.unpack_from(value)
        elif kind == NFQA_IFINDEX_INDEV and len(value) >= 4:
            indev = struct.unpack_from("!I", value)[0]
        elif kind == NFQA_IFINDEX_OUTDEV and len(value) >= 4:
            outdev = struct.unpack_from("!I", value)[0]
        elif kind == NFQA_IFINDEX_PHYSINDEV and len(value) >= 4:
            physindev = struct.unpack_from("!I", value)[0]
        elif kind == NFQA_IFINDEX_PHYSOUTDEV and len(value) >= 4:
            physoutdev = struct.unpack_from("!I", value)[0]
        elif kind == NFQA_MARK and len(value) >= 4:
            mark = struct.unpack_from("!I", value)[0]
        elif kind == NFQA_PAYLOAD:
            payload = bytes(value)
        elif kind == NFQA_TIMESTAMP and len(value) >= 16:
            sec, usec = struct.unpack_from("!QQ", value)
            timestamp = sec + usec / 1e6
    if header is None:
        raise NfqueueError("packet message has no NFQA_PACKET_HDR (no packet id: no verdict possible)")
    packet_id, _hw_protocol, hook = header
    return QueuedPacket(
        packet_id=packet_id,
        hook=hook,
        indev=indev,
        outdev=outdev,
        payload=payload,
        mark=mark,
        timestamp=timestamp,
        received=received,
        physindev=physindev,
        physoutdev=physoutdev,
    )


@dataclass
class ParsedBatch:
    packets: list[QueuedPacket] = field(default_factory=list)
    acks: dict[int, int] = field(default_factory=dict)  # seq -> errno (0 = success) of NLMSG_ERROR messages
    odd: int = 0  # messages we do not understand or could not parse


def parse_messages(data: bytes, received: float = 0.0) -> ParsedBatch:
    """Split one netlink datagram into messages and parse them (pure; never raises)."""
    batch = ParsedBatch()
    for kind, _seq, body in nfnetlink.walk_messages(data, batch):
        if kind == MSG_PACKET:
            try:
                batch.packets.append(parse_packet(body, received))
            except NfqueueError:
                batch.odd += 1
        else:
            batch.odd += 1
    return batch


def _parse_now(data: bytes) -> ParsedBatch:
    return parse_messages(data, time.time())


class NfQueue(nfnetlink.NfnetlinkClient[ParsedBatch]):
    """The packets of NFQUEUE `queue` in the current network namespace (or in `netns`, entered only
    to create the socket), and their verdicts.

    `read()` never blocks and never raises on odd messages; `accept`/`drop` may be called for the
    packets read in any order, at any later time. Packets not decided yet are in `pending`
    (id -> the time read); `close()` accepts them (the kernel would drop them on unbind).
    Counters: `received` (packets read), `odd` (unparsable messages), `overruns` (ENOBUFS: messages
    the kernel could not deliver), `missed` (gaps in packet ids: queued packets this socket never
    saw), `verdict_errors` (verdicts the kernel refused, e.g. an id it no longer holds).
    """

    _holds = "queue"
    _error = NfqueueError

    def __init__(
        self,
        queue: int,
        *,
        netns: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        fail_open: bool = True,
        timeout: float = 2.0,
    ) -> None:
        _check_queue(queue)
        self.queue = queue
        self.netns = netns
        self.max_length = max_length
        self.fail_open = fail_open
        self.pending: dict[int, float] = {}
        self.received = 0
        self.odd = 0
        self.overruns = 0
        self.missed = 0
        self.verdict_errors = 0
        self.accepted = 0
        self.dropped = 0
        self._last_id: int | None = None
        self._seq = 0
        self._label = f"NFQUEUE {queue}"
        self._sock = nfnetlink.open_socket(max_length * RCVBUF_PER_PACKET, netns)
        try:
            self._configure(lambda seq: config_bind(queue, seq), "bind", timeout, _parse_now)
            self._configure(
                lambda seq: config_params(queue, seq, max_length, fail_open), "configure", timeout, _parse_now
            )
        except BaseException:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def _during_configure(self, batch: ParsedBatch) -> None:
        """A packet queued before the configuration was acknowledged: let it go on."""
        for packet in batch.packets:
            self._note(packet)
            self._verdict(packet.packet_id, ACCEPT, None)

    def _note(self, packet: QueuedPacket) -> None:
        if self._last_id is not None and packet.packet_id > self._last_id + 1:
            self.missed += packet.packet_id - self._last_id - 1
        self._last_id = packet.packet_id
        self.pending[packet.packet_id] = packet.received
        self.received += 1

    def read(self, limit: int = READ_BATCH) -> list[QueuedPacket]:
        """The packets queued now, at most `limit` (possibly none); each waits for `accept`
        or `drop`. Bounded, so that a backlog is judged while it is read (see the module docstring)."""
        packets: list[QueuedPacket] = []
        for data in self._datagrams():
            batch = parse_messages(data, time.time())
            self.odd += batch.odd
            self.verdict_errors += sum(1 for err in batch.acks.values() if err)
            for packet in batch.packets:
                self._note(packet)
            packets.extend(batch.packets)
            if len(packets) >= limit:
                break
        return packets

    def bypassed(self, rule_hits: int) -> int:
        """How many of the `rule_hits` packets the queue rule sent here never reached this socket:
        those the kernel gave no id (queue full, or no socket bound yet) and those whose message
        was lost (`missed`). A lower bound while packets are on their way, exact once the socket is
        drained and nothing feeds the queue (then it is `rule_hits - received`)."""
        stats = kernel_stats(self.queue, netns=self.netns)
        ids = stats["id_sequence"] if stats is not None else 0
        return max(rule_hits - ids, 0) + self.missed

    def wait(self, timeout: float) -> list[QueuedPacket]:
        """Block until at least one packet is queued or `timeout` seconds pass; then `read()`."""
        self._poll(timeout)
        return self.read()

    def _verdict(self, packet_id: int, verdict: int, mark: int | None) -> None:
        message = build_verdict(self.queue, packet_id, verdict, mark=mark)
        while True:
            try:
                self._sock.send(message)
                break
            except InterruptedError:
                continue
            except BlockingIOError:  # the kernel handles a verdict synchronously; never seen, but never lose one
                select.select([], [self._sock], [], 0.1)
        self.pending.pop(packet_id, None)
        if verdict == ACCEPT:
            self.accepted += 1
        else:
            self.dropped += 1

    def accept(self, packet_id: int, *, mark: int | None = None) -> None:
        """Let the packet go on (with `mark` as its new skb mark, if given)."""
        self._verdict(packet_id, ACCEPT, mark)

    def drop(self, packet_id: int) -> None:
        self._verdict(packet_id, DROP, None)

    def release_all(self) -> int:
        """Accept every packet still waiting for a verdict; returns how many."""
        ids = list(self.pending)
        for packet_id in ids:
            with contextlib.suppress(OSError):
                self._verdict(packet_id, ACCEPT, None)
        return len(ids)

    def close(self) -> None:
        """Accept what is still held or queued, unbind and close (idempotent): unbinding would drop
        what is queued (checked: the kernel flushes the queue with NF_DROP)."""
        if self._sock.fileno() < 0:
            return
        self._sock.setblocking(False)
        with contextlib.suppress(OSError):
            self.read(self.max_length)  # bounded: a rule may still feed the queue
            self.release_all()
        self._unbind_and_close(lambda seq: config_unbind(self.queue, seq))


# --------------------------------------------------------------------------- the kernel rule feeding the queue

PROC_QUEUES = Path("/proc/thread-self/net/netfilter/nfnetlink_queue")  # /proc/net: the main thread's netns
CHAIN = "PINHOLE_FAULTS"
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


class QueueRuleError(RuntimeError):
    """iptables refused the queue rules, or is missing; the message carries its stderr."""


def kernel_stats(queue: int, *, netns: str | None = None) -> dict[str, int] | None:
    """The kernel's view of `queue` (/proc/net/netfilter/nfnetlink_queue): held (queue_total),
    queue_dropped (full queue, without fail-open), user_dropped (socket buffer full, without
    fail-open), id_sequence (the last packet id). None while no socket is bound to it."""
    with in_namespace(netns):
        try:
            text = PROC_QUEUES.read_text()
        except FileNotFoundError:
            return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].isdigit() and int(fields[0]) == queue:
            return {
                "held": int(fields[2]),
                "queue_dropped": int(fields[5]),
                "user_dropped": int(fields[6]),
                "id_sequence": int(fields[7]),
            }
    return None


def iptables_tool() -> str:
    """iptables-nft if installed (CAP_NET_ADMIN is enough), else iptables, else iptables-legacy."""
    for name in ("iptables-nft", "iptables", "iptables-legacy"):
        path = shutil.which(name)
        if path is not None:
            return path
    raise QueueRuleError("iptables is not installed (Debian package iptables): the NFQUEUE rule needs it")


def queue_chain(chain: str = CHAIN) -> str:
    """The chain holding the queue rule alone: its counter survives a new plan's rules in `chain`."""
    return f"{chain}_NFQUEUE"


def render_queue_rules(
    queue: int, paths: Sequence[tuple[str, str]], *, chain: str = CHAIN, bridged: bool = False
) -> list[list[str]]:
    """The iptables argument lists (table mangle): first the queue rule (in `queue_chain`: to
    `queue`, with --queue-bypass: no socket bound, accept), then the rules of `chain` that send it
    the UDP packets forwarded along each (in interface, out interface) of `paths`. Pure. Only
    forwarded packets: what the gateway itself sends or receives (gRPC, the VXLAN carrying Alice's
    link in a pod) is never queued. `bridged`: the interfaces are bridge ports ("" = any port) and
    only bridged packets are queued (`-m physdev`: br_netfilter hands bridged IPv4 to the same
    FORWARD hook when bridge-nf-call-iptables is 1)."""
    _check_queue(queue)
    if not IFNAME_RE.match(chain) or len(queue_chain(chain)) > 28:
        raise QueueRuleError(f"chain name {chain!r} is not an iptables chain name of at most 20 characters")
    rules = [["-t", "mangle", "-A", queue_chain(chain), "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]]
    for in_if, out_if in paths:
        for name in (in_if, out_if):
            if not isinstance(name, str) or not (IFNAME_RE.match(name) or (bridged and name == "")):
                raise QueueRuleError(f"{name!r} is not an interface name (1-15 of [A-Za-z0-9_.-])")
        if bridged:
            where = ["-m", "physdev", "--physdev-is-bridged"]
            where += (["--physdev-in", in_if] if in_if else []) + (["--physdev-out", out_if] if out_if else [])
        else:
            where = ["-i", in_if, "-o", out_if]
        rules.append(["-t", "mangle", "-A", chain, *where, "-p", "udp", "-j", queue_chain(chain)])
    return rules


def _iptables(args: list[str], netns: str | None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    tool = iptables_tool()
    with in_namespace(netns):
        result = subprocess.run([tool, "-w", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise QueueRuleError(f"{os.path.basename(tool)} {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def install_queue_rules(
    queue: int,
    paths: Sequence[tuple[str, str]],
    *,
    netns: str | None = None,
    chain: str = CHAIN,
    bridged: bool = False,
) -> None:
    """(Re)load the queue rules: chain `chain` in table mangle holds exactly the rules of `paths`
    (see render_queue_rules), and FORWARD jumps to it first. Idempotent; the queue rule, and so its
    counter, is kept while it stays the same."""
    target, *rules = render_queue_rules(queue, paths, chain=chain, bridged=bridged)
    counted = queue_chain(chain)
    existed = _ensure_chain(counted, netns)
    if not existed or _iptables(["-t", "mangle", "-C", *target[3:]], netns, check=False).returncode:
        _iptables(["-t", "mangle", "-F", counted], netns)
        _iptables(target, netns)
    if _ensure_chain(chain, netns):
        _iptables(["-t", "mangle", "-F", chain], netns)
    for rule in rules:
        _iptables(rule, netns)
    if _iptables(["-t", "mangle", "-C", "FORWARD", "-j", chain], netns, check=False).returncode != 0:
        _iptables(["-t", "mangle", "-I", "FORWARD", "1", "-j", chain], netns)


def _ensure_chain(name: str, netns: str | None) -> bool:
    """Create chain `name` in table mangle unless it exists; whether it did."""
    if _iptables(["-t", "mangle", "-n", "-L", name], netns, check=False).returncode == 0:
        return True
    _iptables(["-t", "mangle", "-N", name], netns)
    return False


def queue_rule_hits(*, netns: str | None = None, chain: str = CHAIN) -> int | None:
    """How many packets the queue rule sent towards its queue since it was installed (its counter),
    None if there is no queue rule."""
    listing = _iptables(["-t", "mangle", "-n", "-v", "-x", "-L", queue_chain(chain)], netns, check=False)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if "NFQUEUE" in fields[1:3] and fields[0].isdigit():  # pkts bytes target ...
            return int(fields[0])
    return None


def remove_queue_rules(*, netns: str | None = None, chain: str = CHAIN, prune: bool = True) -> int | None:
    """Take the queue rules away (idempotent; fine when iptables is missing and nothing was installed).
    Returns the queue rule's final count (None: there was none), read once nothing jumps to it any
    more: what of it the engine did not receive, it never judged (NfQueue.bypassed).

    `prune`: also delete the table iptables-nft made when nothing else is in it, so no hook is left
    behind. Deleting a hook makes the kernel drop every packet queued in the namespace (checked), so
    a running engine prunes only once it has let its packets go (prune=False before stopping it)."""
    try:
        iptables_tool()
    except QueueRuleError:
        return None
    while _iptables(["-t", "mangle", "-D", "FORWARD", "-j", chain], netns, check=False).returncode == 0:
        pass
    hits = None
    for name in (chain, queue_chain(chain)):  # the rules that jump first, then the one they jump to
        if _iptables(["-t", "mangle", "-n", "-L", name], netns, check=False).returncode != 0:
            continue
        if name != chain:
            hits = queue_rule_hits(netns=netns, chain=chain)
        _iptables(["-t", "mangle", "-F", name], netns)
        _iptables(["-t", "mangle", "-X", name], netns)
    if prune and "nf_tables" in _iptables(["-V"], netns).stdout:
        # iptables-nft made table `ip mangle` with base chains on every hook: when nothing else is in
        # it, delete it, so no hook is left behind (no faults, no cost)
        listing = _iptables(["-t", "mangle", "-S"], netns).stdout.splitlines()
        if all(line.startswith("-P ") and line.endswith(" ACCEPT") for line in listing):
            nft = shutil.which("nft")
            if nft is not None:
                with in_namespace(netns):
                    subprocess.run([nft, "delete", "table", "ip", "mangle"], capture_output=True, check=False)
    return hits
