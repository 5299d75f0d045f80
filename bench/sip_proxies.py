"""Benchmark: SIP-only calls/s through pinhole's two proxies against Kamailio 5.6 in their place, same SIPp load.

One lab, one run, the kernel NAT of §7.3 in the path: SIPp on Alice's node (behind the NAT) calls SIPp on Bob's
through proxy-a and proxy-b (bench/sipp/: INVITE, 100/180, 200, ACK, a short hold, BYE, 200; plain RTP SDP, no
media). The proxies are first pinhole's own (RFC timers), then Debian's Kamailio with the interop recipe's
kamailio.cfg (scenarios/interop/kamailio-proxies.yaml). Each steps the call rate up, a fixed number of seconds of
calls per step, until a step has a failed call (SIPp's own statistics); per step, the CPU seconds of every process
in the two proxy nodes. The goal: pinhole's proxies carry at least 0.5x Kamailio's calls/s at 100 % success.
Run with `python bench/sip_proxies.py` (root; needs sip-tester and kamailio: `make setup`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import procstat

from netns.lab import pids_in_netns
from pinhole.controller.externals import Externals
from pinhole.controller.run import Endpoints, configure, external_variables, lab_down, lab_up, service_kinds
from pinhole.controller.scenario import Scenario, load
from pinhole.controller.services import ServiceClients
from pinhole.lab import Lab, LabError
from pinhole.lab.external import External, Ready
from pinhole.timers import TIMERS

HERE = Path(__file__).parent
KAMAILIO = HERE.parent / "scenarios" / "interop" / "kamailio-proxies.yaml"
KAMAILIO_MEMORY = ("-m", "256", "-M", "16")  # MB: the recipe's 32 of shared memory hold too few transactions
PROXIES = ("proxy-a", "proxy-b")
RATES = [10, 15, 20, 30, 45, 70, 100, 150, 220, 330, 500, 800]  # calls/s: x1.5 a step, pinhole's limit is low
SIPP: tuple[str, ...] = ("sipp", "-i", "{{address}}", "-p", "{{sip_port}}", "-nostdin")
SIPP += ("-trace_err", "-error_file", "{{config_dir}}/errors.log")
Variables = Callable[[str], dict[str, str]]


@dataclass(frozen=True)
class Step:
    rate: int
    attempted: int
    ok: int
    failed: int  # every call of the step that did not succeed
    cpu_s: float  # every process in both proxy nodes
    why: str  # SIPp's failure counters that are not zero, datagrams a node's kernel dropped (buffer full)

    def cpu_ms_per_call(self) -> float:
        return self.cpu_s * 1000 / self.ok if self.ok else float("nan")

    def __str__(self) -> str:
        return (
            f"{self.rate:>5}/s | attempted {self.attempted:>6} | ok {self.ok:>6} | failed {self.failed:>5} | "
            f"proxies' CPU {self.cpu_s:6.2f} s = {self.cpu_ms_per_call():.2f} ms/call"
            + (f" | {self.why}" if self.why else "")
        )


def sipp(node: str, scenario: str, *options: str) -> External:
    """SIPp at `node` on its SIP port, running bench/sipp/`scenario` rendered with the lab's values."""
    files = {scenario: (HERE / "sipp" / scenario).read_text()}
    ready = Ready("udp", port=5060) if node == "bob" else None  # the callee: bound before the caller starts
    return External(node, "ua", (*SIPP, "-sf", f"{{{{config_dir}}}}/{scenario}", *options), files=files, ready=ready)


def cpu_seconds(lab: Lab) -> float:
    """CPU seconds of every process in the proxy nodes (Kamailio forks: all of them count)."""
    return sum(
        usage.cpu_s
        for node in PROXIES
        for pid in pids_in_netns(lab.ns(node))
        if (usage := procstat.usage(pid)) is not None  # None: gone meanwhile
    )


def udp_drops(lab: Lab) -> dict[str, int]:
    """Per call node, the datagrams its kernel dropped on a full socket receive buffer (Udp RcvbufErrors)."""
    drops = {}
    for node in ("alice", *PROXIES, "bob"):
        snmp = lab.exec_in(node, ["cat", "/proc/net/snmp"]).stdout.decode().splitlines()
        names, values = (line.split() for line in snmp if line.startswith("Udp:"))
        drops[node] = int(values[names.index("RcvbufErrors")])
    return drops


def step(lab: Lab, variables: Variables, out: Path, rate: int, args: Namespace) -> Step:
    """`args.seconds` of calls at `rate` calls/s from Alice's node, counted by SIPp's statistics file."""
    calls = rate * args.seconds
    pace = ("-r", str(rate), "-m", str(calls), "-d", str(args.hold), "-l", str(rate * 20), "-recv_timeout", "10000")
    stats = ("-timeout", f"{args.seconds + 60}s", "-trace_stat", "-fd", "1", "-stf", "{{config_dir}}/stat.csv")
    caller = Externals(lab, {"alice": sipp("alice", "uac-load.xml", *pace, *stats, "{{proxy}}")}, out, variables, None)
    before, dropped = cpu_seconds(lab), udp_drops(lab)
    try:
        caller.dial("alice")
        code = caller.processes["alice"].wait(timeout=args.seconds + 90)
        cpu = cpu_seconds(lab) - before
    finally:
        caller.stop()
    dropped = {node: n - dropped[node] for node, n in udp_drops(lab).items()}
    try:
        with open(out / "alice.d" / "stat.csv", newline="") as f:
            last = list(csv.DictReader(f, delimiter=";"))[-1]
    except (OSError, IndexError):
        raise LabError(f"SIPp at alice exited {code} with no statistics (see {out / 'alice.log'})") from None
    ok, failed = int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"])
    why = [f"{k[6:-3]} {v}" for k, v in last.items() if k.startswith("Failed") and k != "FailedCall(C)" and v != "0"]
    why += [f"not ended {calls - ok - failed}"] if calls > ok + failed else []  # SIPp's -timeout came first
    why += [f"SIPp exit {code}"] if code not in (0, 1) else []
    why += [f"{node} dropped {n}" for node, n in dropped.items() if n]  # datagrams: a full receive buffer
    return Step(rate, int(last["TotalCallCreated"]), ok, calls - ok, cpu, ", ".join(why))


def bench(label: str, lab: Lab, variables: Variables, proxies: dict[str, External], args: Namespace) -> list[Step]:
    """Start `proxies` (none: pinhole's own stay) and SIPp's UAS at Bob, then step the rate up to a failed call."""
    nodes = Externals(lab, {**proxies, "bob": sipp("bob", "uas-load.xml")}, args.out / label, variables, None)
    steps: list[Step] = []
    try:
        nodes.start()
        for rate in args.rates:
            steps.append(step(lab, variables, args.out / label / str(rate), rate, args))
            print(f"{label:>8} | {steps[-1]}", flush=True)
            if steps[-1].failed:
                break
    finally:
        nodes.stop()
    return steps


def run(args: Namespace) -> dict[str, list[Step]]:
    """The lab up, pinhole's proxies configured (RFC timers), both benches, the lab down whatever happens."""
    lab = None  # lab_up takes down what it built when it fails
    try:
        lab, topology, _ = lab_up(args.lab, extra_env={"OTEL_SDK_DISABLED": "true"} if args.no_tracing else None)
        endpoints = Endpoints.of_topology(topology)
        kinds = {n: k for n, k in service_kinds(topology, lab).items() if n not in ("alice", "bob")}
        clients = ServiceClients.local(lab.run_dir, kinds)
        try:
            configure(clients, endpoints, Scenario("bench-sip-proxies", ""), TIMERS["rfc"])
        finally:
            clients.close()
        variables = partial(external_variables, topology, endpoints)
        (recipe,) = load(KAMAILIO)
        kamailio = {n: dataclasses.replace(x, program=x.program + KAMAILIO_MEMORY) for n, x in recipe.external.items()}
        print(
            f"SIPp UAC (alice, behind the NAT) -> proxy-a -> proxy-b -> SIPp UAS (bob), {args.seconds} s per step, "
            f"pinhole's tracing {'off' if args.no_tracing else 'on'}; load average {os.getloadavg()[0]:.1f}, "
            f"{os.cpu_count()} CPUs"
        )
        return {
            "pinhole": bench("pinhole", lab, variables, {}, args),
            "kamailio": bench("kamailio", lab, variables, kamailio, args),
        }
    finally:
        if lab is not None:
            lab_down(lab)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=RATES, help="calls/s, one step each, in order")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of new calls per step")
    parser.add_argument("--hold", type=int, default=1000, help="ms from the ACK to the BYE")
    parser.add_argument("--lab", default="ph-bsip", help="the lab's name (two benches at once need two)")
    parser.add_argument("--out", type=Path, help="keep SIPp's and Kamailio's logs and statistics here")
    parser.add_argument("--no-tracing", action="store_true", help="pinhole's services with the OpenTelemetry SDK off")
    args = parser.parse_args()
    missing = [p for p in ("sipp", "kamailio") if shutil.which(p) is None]
    if missing:
        print(f"bench/sip_proxies.py: cannot run: {', '.join(missing)} not installed (make setup)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the lab comes down (finally) on SIGTERM too
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pinhole-sip-proxies-") as tmp:
        args.out = (args.out or Path(tmp)).resolve()
        try:
            steps = run(args)
        except Exception as error:  # a lab, a program or SIPp that cannot run: one line, exit 2
            print(f"bench/sip_proxies.py: cannot run: {type(error).__name__}: {str(error).splitlines()[0]}")
            return 2
    tops = {label: next((s for s in reversed(done) if not s.failed), None) for label, done in steps.items()}
    for label, top in tops.items():
        result = f"{top.rate} calls/s, {top.cpu_ms_per_call():.2f} ms CPU per call" if top else "none"
        print(f"{label}: the highest rate with 0 failed calls: {result}")
    ph, ka = tops["pinhole"], tops["kamailio"]
    goal = "goal: pinhole's proxies >= 0.5x Kamailio's calls/s at 100 % success:"
    if ph is None or ka is None:
        print(f"{goal} no ratio (a side failed at the first step)")
    else:
        capped = " (an upper bound: Kamailio had no failed call at the top step)" if ka.rate == args.rates[-1] else ""
        print(f"pinhole/kamailio calls/s at 100 % success: {ph.rate / ka.rate:.2f}{capped}")
        print(f"{goal} {'met' if ph.rate >= 0.5 * ka.rate else 'not met'}")
        print(f"CPU per call pinhole/kamailio: {ph.cpu_ms_per_call() / ka.cpu_ms_per_call():.2f}")
        same = [next(s for s in steps[label] if s.rate == min(ph.rate, ka.rate)) for label in ("pinhole", "kamailio")]
        ratio = same[0].cpu_ms_per_call() / same[1].cpu_ms_per_call()
        print(f"CPU per call pinhole/kamailio at {same[0].rate} calls/s, the top rate both carried: {ratio:.2f}")
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
