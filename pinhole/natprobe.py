"""RFC 5780 NAT behaviour discovery: classify a NAT's mapping (§4.3), filtering (§4.4) and hairpinning
(§3.4) from behind it.

The client needs a STUN server with two IP addresses and two ports (services/stunserver with
--alternate): its success responses carry OTHER-ADDRESS (A2:P2) and it honours CHANGE-REQUEST.

Filtering (§4.4), run FIRST on a fresh local port, because the mapping tests send to A2 and so
open the NAT towards it, which would make a later filtering test on that port look more permissive
than the NAT is (stunserver#26, go-stun PR #60):
  I    Binding to A1:P1                        -> connectivity, OTHER-ADDRESS
  II   Binding to A1:P1, change IP and port    -> answered (from A2:P2): endpoint-independent
  III  Binding to A1:P1, change port           -> answered (from A1:P2): address-dependent,
                                                  silent: address-and-port-dependent
Mapping (§4.3), then, on another fresh local port:
  I    Binding to A1:P1 -> XOR-MAPPED-ADDRESS M1; M1 = the socket's own address: no NAT at all
  II   Binding to A2:P1 -> M2; M2 = M1: endpoint-independent
  III  Binding to A2:P2 -> M3; M3 = M2: address-dependent, else address-and-port-dependent
Hairpinning (§3.4; RFC 4787 §6), last, on two more fresh local ports, when mapping test I saw a NAT:
  I    Binding to A1:P1 from the receiver        -> its mapping M
  II   Binding to A1:P1 from the sender          -> the sender's own mapping S (towards A1:P1)
  III  Binding from the sender to M              -> the NAT hairpins if the receiver gets it; the
                                                    receiver answers (XOR-MAPPED-ADDRESS: the source
                                                    it saw), back through the NAT
       seen from the NAT's external address: "External source IP address and port" (REQ-9 a; with
       endpoint-independent mapping it is S), from the sender's own address: "Internal source ..."
Port preservation: did every mapping seen keep the local port?

"Fresh" local port: one no earlier probe of this process used and, when the caller can tell
(`is_fresh`, e.g. the NAT gateway's conntrack table), one the NAT holds no mapping for (§4.1).
Every test is one RFC 5389 client transaction (§7.2.1: RTO, Rc, Rm; defaults 0.5 s, 7, 16, so a
test that gets no answer gives up after 39.5 s); new transactions start at most every `pace`
seconds (§5: no more than ten per second). A response must come from where Table 1 of §6.1 says
(a server ignoring CHANGE-REQUEST would otherwise fake endpoint-independent filtering).

`NatProbe` works on any UDP socket factory; `probe_lab` runs it from a node of a namespace lab
(the socket is created inside that node's namespace and stays there).
"""

from __future__ import annotations

import functools
import math
import select
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pinhole import stun
from pinhole.address import Address
from pinhole.address import fmt as address_text
from pinhole.lab import Lab, Topology
from pinhole.nat import Filtering, Hairpinning, Mapping, NatBehaviour
from pinhole.timers import STUN_RC, STUN_RM, STUN_RTO

__all__ = [
    "Decision",
    "Exchange",
    "NatProbe",
    "ProbeError",
    "ProbeResult",
    "ProbeTimers",
    "probe_lab",
]

fmt = functools.partial(address_text, missing="-")  # the probe prints an address not seen as -


class ProbeError(RuntimeError):
    """The probe could not run at all (no socket, no fresh port)."""


@dataclass(frozen=True)
class ProbeTimers:
    """RFC 5389 §7.2.1 client transaction timers, and the pace of new transactions (RFC 5780 §5)."""

    rto: float = STUN_RTO
    rc: int = STUN_RC
    rm: int = STUN_RM
    pace: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.rto, (int, float)) and math.isfinite(self.rto) and self.rto > 0):
            raise ValueError(f"rto must be a finite number of seconds > 0, got {self.rto!r}")
        for name in ("rc", "rm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.pace, (int, float)) and math.isfinite(self.pace) and self.pace >= 0):
            raise ValueError(f"pace must be a finite number of seconds >= 0, got {self.pace!r}")

    @property
    def give_up_after(self) -> float:
        """Seconds from the first send until an unanswered transaction fails: Rc sends at 0, RTO, 3 RTO,
        7 RTO ..., then Rm x RTO after the last (39.5 s with the defaults)."""
        return self.rto * (2 ** (self.rc - 1) - 1) + self.rm * self.rto

    def describe(self) -> str:
        return (
            f"RTO {self.rto:g} s, Rc {self.rc}, Rm {self.rm}: an unanswered test gives up after "
            f"{self.give_up_after:g} s; new tests at most every {self.pace:g} s"
        )


@dataclass
class Exchange:
    """One test: one Binding transaction, what was sent and what came back (the evidence)."""

    test: str  # "filtering II"
    local: Address
    destination: Address
    change: str  # "no change", "change IP and port", ...
    expected_source: Address  # where RFC 5780 Table 1 says the response comes from
    transaction_id: str
    started: float  # seconds since the probe began
    sends: int = 0
    elapsed: float | None = None  # first send -> response (or failure)
    source: Address | None = None  # where the response actually came from
    mapped: Address | None = None  # XOR-MAPPED-ADDRESS
    response_origin: Address | None = None
    other_address: Address | None = None
    error: str | None = None  # an error response, e.g. "420 Unknown Attribute"
    stray: list[str] = field(default_factory=list)  # other datagrams received meanwhile
    received_from: Address | None = None  # hairpinning: where the receiving socket saw the request come from

    @property
    def answered(self) -> bool:
        return self.mapped is not None

    @property
    def name(self) -> str:
        """The test as a sentence names it: filtering II -> filtering test II."""
        group, _, number = self.test.partition(" ")
        return f"{group} test {number}"

    def outcome(self) -> str:
        elapsed = self.elapsed or 0.0
        if self.answered:
            text = f"answered in {elapsed * 1000:.1f} ms from {fmt(self.source)}: mapped {fmt(self.mapped)}"
            if self.other_address is not None:
                text += f", OTHER-ADDRESS {fmt(self.other_address)}"
            return text
        if self.error is not None:
            return f"error response {self.error} from {fmt(self.source)}"
        if self.received_from is not None:
            return f"received from {fmt(self.received_from)}, but no response came back after {self.sends} sends"
        return f"no response (from {fmt(self.expected_source)}) after {self.sends} sends, {elapsed:.3g} s"

    def line(self) -> str:
        sent = f"{fmt(self.local)} -> {fmt(self.destination)}"
        return f"[{self.started:8.3f}s] {self.test:<15} {sent:<42} {self.change:<19} {self.outcome()}"


@dataclass
class Decision:
    """A classification and the test that decided it; `behaviour` None: the probe could not decide."""

    behaviour: str | None
    decided_by: str
    reason: str


@dataclass
class ProbeResult:
    server: Address
    local_ip: str
    other_address: Address | None
    filtering: Decision
    mapping: Decision
    hairpinning: Decision
    port_preserved: bool | None
    port_evidence: str
    behind_nat: bool | None
    exchanges: list[Exchange]
    timers: ProbeTimers
    duration: float
    skipped_ports: list[str] = field(default_factory=list)  # ports rejected as not fresh, and why
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.mapping.behaviour is not None and self.filtering.behaviour is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["complete"] = self.complete
        return data

    def render(self) -> str:
        def decision(what: str, d: Decision) -> str:
            return f"  {what:<11} {d.behaviour or 'UNDECIDED':<27} {d.decided_by}: {d.reason}"

        preserved = {True: "preserved", False: "not preserved", None: "unknown"}[self.port_preserved]
        lines = [
            f"NAT behaviour seen from {self.local_ip} (RFC 5780; STUN server {fmt(self.server)}, "
            f"OTHER-ADDRESS {fmt(self.other_address)})",
            decision("mapping", self.mapping),
            decision("filtering", self.filtering),
            decision("hairpinning", self.hairpinning),
            f"  {'port':<11} {preserved:<27} {self.port_evidence}",
            "evidence (filtering tests first; each group on fresh local ports):",
            *("  " + e.line() for e in self.exchanges),
            f"timers: {self.timers.describe()}; the probe took {self.duration:.3f} s",
        ]
        lines += [f"skipped local port {p}" for p in self.skipped_ports]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# Every local port a probe of this process used: never reused, so no test meets an earlier one's NAT state.
_USED_PORTS: set[Address] = set()


class NatProbe:
    """The RFC 5780 §4.3/§4.4/§3.4 tests against `server` (A1:P1), from sockets `open_socket` makes.

    `open_socket()` returns a new unbound UDP socket (made wherever the client lives: a namespace);
    `local_ip` is the client's address (found by routing towards the server when not given);
    `is_fresh(port)` may veto a local port (True: the NAT holds no state for it).
    """

    def __init__(
        self,
        server: Address,
        *,
        open_socket: Callable[[], socket.socket] | None = None,
        local_ip: str | None = None,
        timers: ProbeTimers | None = None,
        is_fresh: Callable[[int], bool] | None = None,
        software: str = "pinhole natprobe",
    ) -> None:
        self.server = server
        self.open_socket = open_socket or (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.local_ip = local_ip
        self.timers = timers or ProbeTimers()
        self.is_fresh = is_fresh
        self.software = software
        self.exchanges: list[Exchange] = []
        self.skipped_ports: list[str] = []
        self.warnings: list[str] = []
        self._t0 = 0.0
        self._last_start: float | None = None

    # -- the tests ---------------------------------------------------------------------------------

    def run(self) -> ProbeResult:
        if self.exchanges:
            raise ProbeError("a NatProbe runs once: make a new one (its tests need fresh ports anyway)")
        self._t0 = time.monotonic()
        if self.local_ip is None:
            self.local_ip = self._route_source()
        filtering, other = self._filtering()
        if self.exchanges[0].answered or self.exchanges[0].error:
            mapping, other_m = self._mapping()
        else:  # no UDP connectivity to the server: the mapping tests would only wait as long again
            mapping, other_m = Decision(None, "filtering test I", "not run: " + filtering.reason), None
        behind = self._ports()[2]
        if behind:
            hairpinning = self._hairpinning()
        else:
            why = "no NAT on the path" if behind is False else "no mapping seen"
            hairpinning = Decision(None, self.exchanges[-1].name, f"not run: {why}")
        preserved, port_evidence, behind = self._ports()
        return ProbeResult(
            server=self.server,
            local_ip=self.local_ip,
            other_address=other or other_m,
            filtering=filtering,
            mapping=mapping,
            hairpinning=hairpinning,
            port_preserved=preserved,
            port_evidence=port_evidence,
            behind_nat=behind,
            exchanges=self.exchanges,
            timers=self.timers,
            duration=time.monotonic() - self._t0,
            skipped_ports=self.skipped_ports,
            warnings=self.warnings,
        )

    def _filtering(self) -> tuple[Decision, Address | None]:
        """RFC 5780 §4.4: whom the NAT lets answer through a mapping made towards A1:P1."""
        with self._fresh_socket() as sock:
            first = self._exchange(sock, "filtering I", self.server, None, self.server)
            other, undecided = self._usable(first)
            if undecided is not None:
                return undecided, other
            assert other is not None
            a1, p2 = self.server[0], other[1]
            second = self._exchange(sock, "filtering II", self.server, stun.ChangeRequest(True, True), other)
            if second.answered or second.error:
                wrong = self._wrong_source(second)
                if wrong is not None:
                    return wrong, other
                return (
                    Decision(
                        Filtering.ENDPOINT_INDEPENDENT.value,
                        "filtering test II",
                        f"the answer from {fmt(other)} (an address and port {fmt(second.local)} never sent to) "
                        "got through the NAT",
                    ),
                    other,
                )
            third = self._exchange(sock, "filtering III", self.server, stun.ChangeRequest(False, True), (a1, p2))
            if third.answered or third.error:
                wrong = self._wrong_source(third)
                if wrong is not None:
                    return wrong, other
                return (
                    Decision(
                        Filtering.ADDRESS_DEPENDENT.value,
                        "filtering test III",
                        f"no answer from {fmt(other)} in test II, but the one from {fmt((a1, p2))} (the address "
                        f"sent to, another port) got through",
                    ),
                    other,
                )
            return (
                Decision(
                    Filtering.ADDRESS_AND_PORT_DEPENDENT.value,
                    "filtering test III",
                    f"neither the answer from {fmt(other)} (test II) nor the one from {fmt((a1, p2))} (test III) "
                    f"got through in {second.sends} and {third.sends} sends: only {fmt(self.server)}, which "
                    f"{fmt(first.local)} sent to, may answer",
                ),
                other,
            )

    def _mapping(self) -> tuple[Decision, Address | None]:
        """RFC 5780 §4.3: does the NAT reuse a mapping towards another address, another port?"""
        with self._fresh_socket() as sock:
            first = self._exchange(sock, "mapping I", self.server, None, self.server)
            other, undecided = self._usable(first)
            if first.mapped is not None and first.mapped == first.local:
                return (
                    Decision(
                        Mapping.ENDPOINT_INDEPENDENT.value,
                        "mapping test I",
                        f"XOR-MAPPED-ADDRESS {fmt(first.mapped)} is the socket's own address: no NAT on the path",
                    ),
                    other,
                )
            if undecided is not None:
                return undecided, other
            assert other is not None
            towards_a2 = (other[0], self.server[1])
            second = self._exchange(sock, "mapping II", towards_a2, None, towards_a2)
            if not second.answered:
                return self._unanswered(second), other
            if second.mapped == first.mapped:
                return (
                    Decision(
                        Mapping.ENDPOINT_INDEPENDENT.value,
                        "mapping test II",
                        f"towards {fmt(towards_a2)} the NAT reused test I's mapping {fmt(first.mapped)} "
                        f"(towards {fmt(self.server)})",
                    ),
                    other,
                )
            third = self._exchange(sock, "mapping III", other, None, other)
            if not third.answered:
                return self._unanswered(third), other
            if third.mapped == second.mapped:
                return (
                    Decision(
                        Mapping.ADDRESS_DEPENDENT.value,
                        "mapping test III",
                        f"a new mapping {fmt(second.mapped)} for the new address {other[0]} (test II, test I had "
                        f"{fmt(first.mapped)}), reused for its other port {other[1]} (test III)",
                    ),
                    other,
                )
            return (
                Decision(
                    Mapping.ADDRESS_AND_PORT_DEPENDENT.value,
                    "mapping test III",
                    f"a new mapping per destination: {fmt(first.mapped)}, {fmt(second.mapped)}, {fmt(third.mapped)} "
                    f"towards {fmt(self.server)}, {fmt(towards_a2)}, {fmt(other)}",
                ),
                other,
            )

    def _hairpinning(self) -> Decision:
        """RFC 5780 §3.4: does a request to a mapping from inside come back inside, and from where (RFC 4787 §6)?"""
        with self._fresh_socket() as receiver, self._fresh_socket() as sender:
            first = self._exchange(receiver, "hairpinning I", self.server, None, self.server)
            if first.mapped is None:
                return self._unanswered(first)
            second = self._exchange(sender, "hairpinning II", self.server, None, self.server)
            if second.mapped is None:
                return self._unanswered(second)
            third = self._exchange(sender, "hairpinning III", first.mapped, None, first.mapped, answer_from=receiver)
        mapped, own, seen = first.mapped, second.mapped, third.received_from
        if seen is None:
            return Decision(
                Hairpinning.NONE.value,
                "hairpinning test III",
                f"the request from {fmt(third.local)} to {fmt(mapped)} (test I's mapping of {fmt(first.local)}) "
                f"never came back inside in {third.sends} sends",
            )
        relayed = f"{fmt(mapped)} (test I's mapping) relayed the request from {fmt(third.local)} to {fmt(first.local)}"
        if seen == third.local:
            return Decision(
                Hairpinning.INTERNAL_SOURCE.value,
                "hairpinning test III",
                f"{relayed} from the sender's internal address (RFC 4787 REQ-9 a wants its external mapping)",
            )
        if seen[0] != mapped[0]:
            return Decision(
                None,
                "hairpinning test III",
                f"{relayed} from {fmt(seen)}: neither the sender's internal address nor the NAT's {mapped[0]}",
            )
        whose = (
            "the sender's own mapping (test II)"
            if seen == own
            else f"a mapping of the sender's other than test II's {fmt(own)} (its mapping towards {mapped[0]})"
        )
        return Decision(
            Hairpinning.EXTERNAL_SOURCE.value, "hairpinning test III", f"{relayed} from {fmt(seen)}, {whose}"
        )

    def _usable(self, first: Exchange) -> tuple[Address | None, Decision | None]:
        """OTHER-ADDRESS from a test I, or why the remaining tests cannot run."""
        if not first.answered:
            if first.error:
                return None, Decision(None, first.name, f"the server answered {first.error}")
            return None, Decision(
                None,
                first.name,
                f"no answer from {fmt(self.server)} after {first.sends} sends: no UDP connectivity to the server",
            )
        if first.other_address is None:
            return None, Decision(
                None,
                first.name,
                f"{fmt(self.server)} sent no OTHER-ADDRESS: it has no second address, so the RFC 5780 tests cannot run",
            )
        other = first.other_address
        if other[0] == self.server[0] or other[1] == self.server[1]:
            return None, Decision(
                None, first.name, f"OTHER-ADDRESS {fmt(other)} does not differ from {fmt(self.server)} in IP and port"
            )
        return other, None

    def _wrong_source(self, exchange: Exchange) -> Decision | None:
        """An answer to a change request must come from where Table 1 says, or the test means nothing."""
        if exchange.error:
            return Decision(None, exchange.name, exchange.outcome())
        if exchange.source == exchange.expected_source:
            return None
        reason = f"the answer came from {fmt(exchange.source)}, not {fmt(exchange.expected_source)}"
        if exchange.response_origin in (None, exchange.source):
            reason += ": the server did not honour CHANGE-REQUEST"
        else:
            reason += f" (RESPONSE-ORIGIN {fmt(exchange.response_origin)}): something on the path rewrote it"
        return Decision(None, exchange.name, reason)

    def _unanswered(self, exchange: Exchange) -> Decision:
        return Decision(None, exchange.name, exchange.outcome())

    def _ports(self) -> tuple[bool | None, str, bool | None]:
        """(port preserved, evidence, behind a NAT) from every mapping the tests saw.

        Port preservation (RFC 4787 §4.2.1) is judged on each local socket's first mapping: a NAT with
        dependent mapping cannot give a second mapping of the same endpoint the same port without
        reusing the first one, so only the first can keep it."""
        seen: dict[Address, Address] = {}
        first: dict[Address, Address] = {}  # local socket -> its first mapping
        for exchange in self.exchanges:
            if exchange.mapped is not None:
                seen.setdefault(exchange.mapped, exchange.local)
                first.setdefault(exchange.local, exchange.mapped)
        if not seen:
            return None, "no mapping seen", None
        preserved = all(mapped[1] == local[1] for local, mapped in first.items())
        behind = any(mapped != local for mapped, local in seen.items())
        evidence = ", ".join(f"{fmt(local)} -> {fmt(mapped)}" for mapped, local in seen.items())
        return preserved, evidence, behind

    # -- one transaction ---------------------------------------------------------------------------

    def _exchange(
        self,
        sock: socket.socket,
        test: str,
        destination: Address,
        change: stun.ChangeRequest | None,
        expected_source: Address,
        *,
        answer_from: socket.socket | None = None,
    ) -> Exchange:
        """Run one RFC 5389 §7.2.1 client transaction from `sock` (blocking) and record it. `answer_from`
        (the hairpinning test): a socket of ours that answers the request, as a STUN server would, if it
        receives it (`received_from`: the source it saw)."""
        self._wait_pace()
        request = stun.binding_request(software=self.software, change_request=change)
        transaction = stun.BindingTransaction(
            stun.encode(request), rto=self.timers.rto, rc=self.timers.rc, rm=self.timers.rm
        )
        local = sock.getsockname()
        exchange = Exchange(
            test=test,
            local=(self.local_ip or local[0], local[1]),
            destination=destination,
            change=str(change) if change is not None else "no change",
            expected_source=expected_source,
            transaction_id=request.transaction_id.hex(),
            started=time.monotonic() - self._t0,
        )
        self.exchanges.append(exchange)
        start = time.monotonic()
        self._last_start = start
        sock.sendto(transaction.start(start), destination)
        source: Address | None = None
        while transaction.state == "pending":
            now = time.monotonic()
            deadline = transaction.next_deadline
            assert deadline is not None
            if now >= deadline:
                data = transaction.on_deadline(now)
                if data is not None:
                    sock.sendto(data, destination)
                continue
            readable, _, _ = select.select([sock, *([answer_from] if answer_from else [])], [], [], deadline - now)
            if not readable:
                continue
            if answer_from in readable:
                self._answer(answer_from, request, exchange)
                if sock not in readable:
                    continue
            try:
                data, addr = sock.recvfrom(65535)
            except OSError as error:  # an ICMP error reported on the socket
                exchange.stray.append(f"socket error {error}")
                continue
            sender = (addr[0], addr[1])
            try:
                message = stun.decode(data)
            except stun.StunError as error:
                exchange.stray.append(f"{len(data)} bytes from {fmt(sender)}: not STUN ({error})")
                continue
            if transaction.on_response(message, time.monotonic()):
                source = sender
                break
            exchange.stray.append(
                f"{message.message_class.name.lower()} {message.transaction_id.hex()} from {fmt(sender)}"
            )
        exchange.sends = len(transaction.sends)
        exchange.elapsed = (transaction.completed_at or time.monotonic()) - start
        response = transaction.response
        if response is not None:
            exchange.source = source
            exchange.response_origin = response.response_origin
            exchange.other_address = response.other_address
            if response.message_class == stun.MessageClass.SUCCESS_RESPONSE:
                exchange.mapped = response.xor_mapped_address or response.mapped_address
                if exchange.mapped is None:
                    exchange.error = "success without XOR-MAPPED-ADDRESS"
            else:
                code = response.error_code
                exchange.error = f"{code[0]} {code[1]}" if code else "error response without ERROR-CODE"
        for stray in exchange.stray:
            self.warnings.append(f"{test}: unexpected datagram: {stray}")
        return exchange

    def _answer(self, receiver: socket.socket, request: stun.Message, exchange: Exchange) -> None:
        """Answer our own request where it arrived (a Binding success: XOR-MAPPED-ADDRESS = its source)."""
        try:
            data, addr = receiver.recvfrom(65535)
        except OSError as error:
            exchange.stray.append(f"socket error {error} on the receiving socket")
            return
        sender = (addr[0], addr[1])
        try:
            message = stun.decode(data)
        except stun.StunError as error:
            exchange.stray.append(f"{len(data)} bytes from {fmt(sender)} on the receiving socket: not STUN ({error})")
            return
        if message.message_class != stun.MessageClass.REQUEST or message.transaction_id != request.transaction_id:
            kind = message.message_class.name.lower()
            exchange.stray.append(f"{kind} {message.transaction_id.hex()} from {fmt(sender)} on the receiving socket")
            return
        if exchange.received_from is None:
            exchange.received_from = sender
        receiver.sendto(stun.encode(stun.binding_success(message, sender, self.software)), sender)

    def _wait_pace(self) -> None:
        if self._last_start is None:
            return
        wait = self._last_start + self.timers.pace - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    # -- sockets -----------------------------------------------------------------------------------

    def _fresh_socket(self) -> socket.socket:
        """A UDP socket on a local port no earlier probe used and the NAT holds nothing for (§4.1)."""
        held: list[socket.socket] = []  # kept open while trying, so the kernel does not offer them again
        try:
            for _ in range(64):
                sock = self.open_socket()
                try:
                    sock.bind((self.local_ip or "0.0.0.0", 0))
                except OSError:
                    sock.close()
                    raise
                port = sock.getsockname()[1]
                key = (self.local_ip or "0.0.0.0", port)
                if key in _USED_PORTS:
                    self.skipped_ports.append(f"{port}: used by an earlier probe of this process")
                    held.append(sock)
                    continue
                if self.is_fresh is not None and not self.is_fresh(port):
                    self.skipped_ports.append(f"{port}: the NAT already holds a mapping for it")
                    _USED_PORTS.add(key)
                    held.append(sock)
                    continue
                _USED_PORTS.add(key)
                return sock
            raise ProbeError("no fresh local port in 64 tries")
        finally:
            for sock in held:
                sock.close()

    def _route_source(self) -> str:
        """The address the client's routing picks towards the server (a UDP connect sends nothing)."""
        with self.open_socket() as sock:
            sock.connect(self.server)
            return str(sock.getsockname()[0])


# -- the lab ---------------------------------------------------------------------------------------


def probe_lab(
    lab: Lab,
    topology: Topology,
    *,
    client: str = "alice",
    timers: ProbeTimers | None = None,
    natgw: Any = None,
) -> ProbeResult:
    """Probe from `client`'s namespace against its STUN server (the topology's stun_server node).

    `natgw`: a NatGateway stub; when given, a local port the NAT holds a mapping for is never used.
    """
    from pinhole.nsenter import in_netns
    from pinhole.rpc.v1 import natgw_pb2

    node = topology.nodes[client]
    server_node = topology.nodes[node.extra["stun_server"]]
    server = (server_node.addresses[0].split("/")[0], int(server_node.extra.get("stun_port", 3478)))
    local_ip = node.addresses[0].split("/")[0]
    ns = lab.ns(client)

    def open_socket() -> socket.socket:
        with in_netns(ns):  # the socket stays in the namespace it was made in
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    is_fresh = None
    if natgw is not None:

        def is_fresh(port: int) -> bool:
            reply = natgw.ListMappings(natgw_pb2.ListMappingsRequest(), timeout=10)
            return not any(m.internal.ip == local_ip and m.internal.port == port for m in reply.mappings)

    return NatProbe(server, open_socket=open_socket, local_ip=local_ip, timers=timers, is_fresh=is_fresh).run()


def expected(nat: NatBehaviour) -> dict[str, Any]:
    """What the probe must classify for a gateway configured with `nat` (its defaults filled in); hairpinning
    on is seen as an external source (RFC 4787 REQ-9 a)."""
    if not nat.translate:
        return {"behind_nat": False}
    return {
        "mapping": nat.mapping.value,
        "filtering": nat.filtering.value,
        "hairpinning": (Hairpinning.EXTERNAL_SOURCE if nat.hairpins else Hairpinning.NONE).value,
        "port_preserved": nat.preserves_ports,
    }


def observed(result: ProbeResult) -> dict[str, Any]:
    """The probe's classifications, keyed as `expected` keys them."""
    return {
        "mapping": result.mapping.behaviour,
        "filtering": result.filtering.behaviour,
        "hairpinning": result.hairpinning.behaviour,
        "port_preserved": result.port_preserved,
        "behind_nat": result.behind_nat,
    }
