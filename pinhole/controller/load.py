"""`pinhole load`: many §7.3 calls through one lab at once, each traced and judged on the wire.

SIPp loads a SIP system with calls that carry no DTLS-SRTP; here every call is the whole §7.3 flow through
the kernel NAT. The controller places calls on Alice at a rate and/or up to a number at once, holds each one
`media` seconds once SRTP is decrypted on both sides, hangs up, and in the end judges every call from the
capture of every link with the same verdict as `pinhole run` (the services' word only where no packet can
show). A call succeeds when its verdict passes. Artifacts: load.json (the plan, the summary and one row per
call), capture.pcapng with the key log, trace.json, and the ladders of a sample of the failed calls.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pinhole import pcapng, wire
from pinhole.capture import LinkCapture
from pinhole.controller import from_trace, ladder, verdict
from pinhole.controller.otlp import write_otlp_json
from pinhole.controller.run import (
    _RECEIVERS,
    AORS,
    DEFAULT_LAB,
    Endpoints,
    configure,
    lab_down,
    lab_up,
    new_run_dir,
    receiver_for,
    run_info,
    service_kinds,
)
from pinhole.controller.scenario import SCENARIOS, Scenario
from pinhole.controller.services import EventCollector, ServiceClients
from pinhole.lab import list_labs, load_topology, open_lab
from pinhole.pcapng import write_pcapng
from pinhole.rpc.v1 import events_pb2, useragent_pb2
from pinhole.timers import TIMERS

AGENTS = ("alice", "bob")
LADDERS_KEPT = 5  # failed calls whose ladder is drawn
NOT_IN_A_LOAD = ("faults", "restarts", "strangers", "reinvites", "external")  # what a call template cannot have
KEY_LOG_WAIT_S = 35.0  # longer than a GetKeyLog's own 30 s deadline
FRAMES_PER_CALL = 2_000  # capture room per call: signalling, handshakes and a few seconds of SRTP on every link


@dataclass(frozen=True)
class LoadPlan:
    """How many calls, how fast, how long each. `rate` 0: as fast as `concurrency` lets them start."""

    calls: int = 100
    concurrency: int = 10
    rate: float = 0.0
    duration: float = 0.0  # with a rate: seconds to place calls for (the calls are then at most rate*duration)
    ramp: float = 0.0  # seconds over which the rate climbs from 0 to `rate`
    media: float = 1.0  # seconds a call is held once SRTP is decrypted on both sides
    min_success: float = 100.0  # percent of the calls that must pass; below it the load fails (exit 1)

    def __post_init__(self) -> None:
        numbers = (self.rate, self.duration, self.ramp, self.media, self.min_success)
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError("rate, duration, ramp, media and min_success must be finite numbers")
        if self.calls < 1 or self.concurrency < 1:
            raise ValueError("calls and concurrency must be at least 1")
        if self.rate < 0 or self.duration < 0 or self.ramp < 0 or self.media < 0:
            raise ValueError("rate, duration, ramp and media cannot be negative")
        if self.rate and not self.duration:
            raise ValueError("a rate needs a duration (--duration)")
        if not 0 <= self.min_success <= 100:
            raise ValueError("min_success is a percentage (0 to 100)")
        if self.total < 1:
            raise ValueError(f"{self.rate:g} calls/s for {self.duration:g} s (ramp {self.ramp:g} s) is no call")

    @property
    def total(self) -> int:
        """The calls placed: `calls`, or with a rate those due by the end of `duration` (the ramp included)."""
        return min(self.calls, math.floor(round(self.due(self.duration), 6))) if self.rate else self.calls

    def due(self, elapsed: float) -> float:
        """How many calls should have started `elapsed` seconds in (rate-paced, the ramp linear)."""
        if not self.rate:
            return float("inf")
        if elapsed < self.ramp:
            return self.rate * elapsed * elapsed / (2 * self.ramp)
        return self.rate * (elapsed - self.ramp / 2)


@dataclass
class LoadCall:
    """One call of the load: what the controller saw of it, then its verdict."""

    number: int
    placed: float  # unix time PlaceCall was sent
    call_id: str = ""
    state: str = "placing"  # placing, ringing (placed, not up yet), up, hanging-up, done
    up_s: float | None = None  # PlaceCall to SRTP decrypted on both sides
    ended: dict[str, str] = field(default_factory=dict)  # agent -> how its call ended
    refused: str = ""  # PlaceCall's error, if it had one
    hang_up_at: float = 0.0  # monotonic: when to hang up (or give up on it)
    verdict: str = ""  # pass, fail, broken
    failing: str = ""  # the first failing check, with its RFC section

    def row(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "call_id": self.call_id,
            "verdict": self.verdict,
            "failing": self.failing,
            "refused": self.refused,
            "invite_to_media_s": None if self.up_s is None else round(self.up_s, 4),
            "ended": self.ended,
        }


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of sorted `values`."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


class Load:
    """The driver: starts calls on the plan's schedule, follows them by their events, hangs them up."""

    def __init__(self, clients: ServiceClients, plan: LoadPlan, timers_name: str, kinds: dict[str, str]) -> None:
        self.clients, self.plan = clients, plan
        self.timers = TIMERS[timers_name]
        self.calls: list[LoadCall] = []
        self.active: list[LoadCall] = []  # placed and not done
        self.events: dict[str, list[dict[str, Any]]] = {}  # call id -> its events, for the verdict
        self.decrypting: dict[str, set[str]] = {}
        self.ended: dict[str, dict[str, str]] = {}
        self.up_times: list[float] = []  # sorted
        self.collector = EventCollector(clients, list(kinds), since=time.time(), on_event=self._on_event)
        self.lock = self.collector._changed
        self.up_budget = self.timers.handshake_budget() + 64 * self.timers.sip_t1 + 10
        self.peak = 0  # calls in progress at once, at most
        self._inflight: set[Any] = set()  # RPC futures until done: grpc cancels a future nobody holds
        self.key_futures: list[Any] = []

    # -- events (the collector's threads, under its lock) ------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        call_id = event["call_id"]
        if not call_id:
            return
        self.events.setdefault(call_id, []).append(event)
        kind, service = event["kind"], event["service"]
        if service in AGENTS and kind == "srtp.first_received":
            self.decrypting.setdefault(call_id, set()).add(service)
        elif service in AGENTS and kind in ("call.failed", "call.terminated"):
            self.ended.setdefault(call_id, {}).setdefault(service, event["attrs"].get("reason", kind))

    # -- the schedule ------------------------------------------------------------------------------

    def run(self, show: bool) -> None:
        self.collector.start()
        start = last_shown = time.monotonic()
        alice = self.clients.stub("alice")
        try:
            while True:
                now = time.monotonic()
                with self.lock:
                    while (
                        len(self.calls) < self.plan.total
                        and len(self.active) < self.plan.concurrency
                        and len(self.calls) < self.plan.due(now - start)
                    ):
                        self._place(alice)
                    self.peak = max(self.peak, len(self.active))
                    for call in self.active:
                        self._advance(call, now)
                    self.active = [c for c in self.active if c.state != "done"]
                    finished = len(self.calls) >= self.plan.total and not self.active
                if show and (finished or now - last_shown >= (1 if sys.stderr.isatty() else 10)):  # a log: every 10 s
                    self._show(now - start, final=finished)
                    last_shown = now
                if finished:
                    return
                with self.lock:
                    self.lock.wait(timeout=0.05)  # woken by each event; the pace and the hold are timed
        except BaseException:
            self.collector.stop()
            raise

    def _place(self, alice: Any) -> None:
        call = LoadCall(len(self.calls) + 1, time.time(), hang_up_at=time.monotonic() + self.up_budget)
        self.calls.append(call)
        self.active.append(call)
        future = self._hold(alice.PlaceCall.future(useragent_pb2.PlaceCallRequest(target=AORS["bob"]), timeout=90))

        def placed(done: Any) -> None:
            with self.lock:
                try:
                    call.call_id = done.result().call_id
                    call.state = "ringing"
                except grpc.RpcError as error:
                    call.refused = f"PlaceCall: {error.code().name}: {error.details()}"
                    call.state = "done"
                except Exception as error:  # noqa: BLE001  (a cancelled future): the call is over, said why
                    call.refused = f"PlaceCall: {type(error).__name__}: {error}"
                    call.state = "done"
                self.lock.notify_all()

        future.add_done_callback(placed)

    def _advance(self, call: LoadCall, now: float) -> None:
        """One step of a call's life, from what its events say; called under the lock."""
        if call.state == "placing":
            return
        ended = self.ended.get(call.call_id, {})
        if call.state == "ringing" and self.decrypting.get(call.call_id, set()) >= set(AGENTS):
            call.up_s = (
                max(e["t"] for e in self.events[call.call_id] if e["kind"] == "srtp.first_received") - call.placed
            )
            bisect.insort(self.up_times, call.up_s)
            call.state, call.hang_up_at = "up", now + self.plan.media
        if call.state in ("ringing", "up") and ("alice" in ended or now >= call.hang_up_at):
            if "alice" not in ended:
                self._hang_up(call)
            call.state, call.hang_up_at = "hanging-up", now + 64 * self.timers.sip_t1 + 5
        if call.state == "hanging-up" and (len(ended) == len(AGENTS) or now >= call.hang_up_at):
            call.ended = dict(ended)
            call.state = "done"
            for agent in AGENTS:  # a side that never ended (its BYE lost) must not hold one of its max_calls
                if agent not in ended:
                    self._hang_up(call, agent)
            self._keys(call)

    def _hold(self, future: Any) -> Any:
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return future

    def _hang_up(self, call: LoadCall, agent: str = "alice") -> None:
        request = useragent_pb2.HangUpRequest(call_id=call.call_id)
        self._hold(self.clients.stub(agent).HangUp.future(request, timeout=30))

    def _keys(self, call: LoadCall) -> None:
        """Each agent's key log lines for the call, asked for at once (an agent forgets old calls); read by
        `key_log()` at the end."""
        for agent in AGENTS:
            request = useragent_pb2.GetKeyLogRequest(call_id=call.call_id)
            self.key_futures.append(self._hold(self.clients.stub(agent).GetKeyLog.future(request, timeout=30)))

    def key_log(self) -> str:
        """Every call's key log lines, each once (a call an agent no longer knows has none). Waited for at
        most KEY_LOG_WAIT_S in all: an interrupted load left requests that never completed, and hung here."""
        lines: dict[str, None] = {}
        deadline = time.monotonic() + KEY_LOG_WAIT_S
        for future in self.key_futures:
            try:
                if future.exception(timeout=max(0.0, deadline - time.monotonic())) is None:
                    lines.update(dict.fromkeys(future.result().lines))
            except grpc.FutureTimeoutError:
                future.cancel()
        return "".join(f"{line}\n" for line in lines)

    def _show(self, elapsed: float, *, final: bool) -> None:
        done = [c for c in self.calls if c.state == "done"]
        up = sum(c.state == "up" for c in self.active)
        failed = sum(c.up_s is None for c in done)
        p50, p95 = percentile(self.up_times, 50), percentile(self.up_times, 95)
        line = (
            f"load: {elapsed:6.1f} s  placed {len(self.calls)}/{self.plan.total}  up {up}  done {len(done)} "
            f"(failed {failed})  {len(self.calls) / max(elapsed, 1e-9):.1f} calls/s  INVITE->media "
            f"p50 {_s(p50)} p95 {_s(p95)}"
        )
        print(("\r" if sys.stderr.isatty() else "") + line, end="\n" if final or not sys.stderr.isatty() else "",
              file=sys.stderr, flush=True)  # fmt: skip


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def judge(load: Load, on_the_wire: wire.Wire, address_map: dict[str, str], out_dir: Path, scenario: str) -> None:
    """Each call's verdict from the wire (and its services' reports); the ladder of a few failed ones."""
    drawn = 0
    for call in load.calls:
        if call.refused:
            call.verdict, call.failing = "fail", call.refused
            continue
        result = verdict.judge(on_the_wire, call_id=call.call_id, reports=load.events.get(call.call_id, []),
                               scenario=scenario)  # fmt: skip
        call.verdict = result.outcome
        failing = next((c for c in result.checks if not c.passed), None)
        call.failing = result.broken or (
            f"{failing.message} {failing.title} ({failing.rfc}): {failing.detail}" if failing else ""
        )
        if call.verdict != "pass" and drawn < LADDERS_KEPT:
            seen = on_the_wire.call(call.call_id)
            evidence = {
                "call_id": call.call_id,
                "events": load.events.get(call.call_id, []),
                "address_map": address_map,
                "wire": wire.describe_call(on_the_wire, seen) if seen is not None else [],
            }
            (out_dir / f"ladder-{call.number}.txt").write_text(ladder.render(evidence) + "\n")
            drawn += 1


def summary(load: Load, seconds: float) -> dict[str, Any]:
    calls = load.calls
    passed = sum(c.verdict == "pass" for c in calls)
    failing: dict[str, int] = {}
    for call in calls:
        if call.verdict != "pass":
            failing[call.failing[:120]] = failing.get(call.failing[:120], 0) + 1
    return {
        "calls": len(calls),
        "passed": passed,
        "success_percent": round(100 * passed / len(calls), 2) if calls else 0.0,
        "refused": sum(bool(c.refused) for c in calls),
        "seconds": round(seconds, 2),
        "calls_per_second": round(len(calls) / seconds, 2) if seconds else 0.0,
        "invite_to_media_s": {f"p{p}": percentile(load.up_times, p) for p in (50, 95, 99)},
        "peak_calls_at_once": load.peak,
        "failing": dict(sorted(failing.items(), key=lambda kv: -kv[1])),
    }


def run_load(
    plan: LoadPlan,
    scenario: Scenario | None = None,
    *,
    timers_name: str = "rfc",
    lab_name: str = DEFAULT_LAB,
    backend: str = "netns",
    out_root: Path = Path("out"),
    progress: bool = True,
    spans: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Run the load on a local lab (brought up and down here unless it is up); returns load.json's dict and
    the artifact directory. `spans` False: the services trace nothing (OpenTelemetry off), none is missed."""
    scenario = scenario or SCENARIOS["rfc5763-7.3"]
    left_out = [part for part in NOT_IN_A_LOAD if getattr(scenario, part)]
    if left_out:  # judged as written, calls without them would pass or fail for the wrong reason
        raise ValueError(
            f"{scenario.name}: a load does not carry out a scenario's {', '.join(left_out)} (pinhole run does)"
        )
    scenario = dataclasses.replace(scenario, name=f"load-{scenario.name}")
    frames = FRAMES_PER_CALL * plan.total
    _, out_dir = new_run_dir(out_root, scenario)
    owned = lab_name not in list_labs(backend)
    if owned:
        lab, topology, _ = lab_up(lab_name, backend=backend)
    else:
        topology = load_topology()
        lab = open_lab(lab_name, backend, topology)
    broken = ""
    seconds = 0.0
    try:
        kept = _RECEIVERS.get(lab_name)  # a lab this process brought up (here or a benchmark) has its receiver
        receiver = kept if kept is not None else receiver_for(lab)
        if kept is None:
            receiver.start()
        receiver.clear()
        kinds = service_kinds(topology, lab)
        clients = ServiceClients.local(lab.run_dir, kinds)
        endpoints = Endpoints.of_topology(topology)
        capture = LinkCapture(lab.capture_points(), max_packets=frames, max_seconds=86_400)
        load = Load(clients, plan, timers_name, kinds)
        started = time.monotonic()
        try:
            capture.start()
            configure(clients, endpoints, scenario, TIMERS[timers_name])
            load.run(progress)
            for node in kinds:  # every span reaches the receiver, and every event the collector
                clients.stub(node).FlushTelemetry(events_pb2.FlushRequest(), timeout=30)
        except grpc.RpcError as error:  # a service failed the load: judged on what was gathered, broken
            broken = f"the load: {error}"
        finally:
            seconds = time.monotonic() - started
            load.collector.stop()
            broken = broken or "; ".join(load.collector.errors)
            key_log = load.key_log()
            captured = capture.stop()
            clients.close()
            trace_request = receiver.request()
            if kept is None:
                receiver.stop()
    finally:
        if owned:
            lab_down(lab, keep_logs=out_dir)
    captured.comments = [run_info(endpoints, scenario, TIMERS[timers_name], timers_name, "").comment()]
    captured.secrets = [(pcapng.SECRETS_TLS_KEY_LOG, key_log.encode())] if key_log else []
    write_pcapng(out_dir / "capture.pcapng", captured)
    (out_dir / "keys.log").write_text(key_log)
    write_otlp_json(trace_request, out_dir / "trace.json", indent=None)
    on_the_wire = wire.decode(pcapng.read_pcapng(out_dir / "capture.pcapng"))
    judge(load, on_the_wire, endpoints.address_map(), out_dir, scenario.name)
    lost = from_trace.lost_spans(trace_request, [e for events in load.events.values() for e in events]) if spans else []
    broken = broken or "; ".join(capture.problems()) or (f"{len(lost)} spans never reached the trace" if lost else "")
    result = {
        "plan": dataclasses.asdict(plan),
        "scenario": scenario.name,
        "timers": timers_name,
        "summary": summary(load, seconds),
        "broken": broken,
        "calls": [c.row() for c in load.calls],
    }
    (out_dir / "load.json").write_text(json.dumps(result, indent=1))
    return result, out_dir


def passed_enough(result: dict[str, Any], min_success: float) -> bool:
    """At least `min_success` % of the calls passed, compared exactly (99.995 % is not 100 %)."""
    s = result["summary"]
    return s["passed"] * 100 >= min_success * s["calls"]


def render(result: dict[str, Any]) -> str:
    """The summary table printed at the end."""
    s = result["summary"]
    lat = s["invite_to_media_s"]
    rows = [
        ("calls", f"{s['calls']}"),
        ("passed", f"{s['passed']} ({s['success_percent']} %)"),
        ("refused by PlaceCall", f"{s['refused']}"),
        ("duration", f"{s['seconds']} s"),
        ("calls/s", f"{s['calls_per_second']}"),
        ("calls at once, at most", f"{s['peak_calls_at_once']}"),
        ("INVITE->media p50/p95/p99", " / ".join(_s(lat[f"p{p}"]) for p in (50, 95, 99))),
    ]
    lines = [f"{name:>28} | {value}" for name, value in rows]
    for failing, count in list(s["failing"].items())[:5]:
        lines.append(f"{count:>28} x {failing}")
    return "\n".join(lines)
