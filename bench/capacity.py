"""Benchmark: how many §7.3 calls one lab carries at 100 % success, against the goals (500 calls at once
with media; 100 new calls/s sustained for 60 s).

One lab (RFC timers), `pinhole load` step by step on it: first all of a step's calls at once, each holding
media; then a call rate for `--seconds`. Each step is judged on the wire like any load; stepping up stops at
the first step below 100 %, whose success is printed too (a slow fall, or a collapse). Per step: the CPU the
services spent per call and the controller's (capture and judging), from /proc. Run with `make bench` (root).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import procstat
from broken import main_or_broken

from pinhole.controller.load import LoadPlan, passed_enough, run_load
from pinhole.controller.run import lab_down, lab_up

LAB = "ph-bcap"
GOAL_AT_ONCE = 500
GOAL_RATE = 100.0


def step(lab: Any, plan: LoadPlan, out: Path) -> tuple[bool, str]:
    """Run one load; (100 % passed and not broken, one line of figures)."""
    before, controller = procstat.services(lab), procstat.controller_cpu_s()
    result, _ = run_load(plan, lab_name=LAB, out_root=out, progress=False)
    spent = procstat.cpu_between(before, procstat.services(lab))
    s = result["summary"]
    calls = max(s["calls"], 1)
    p50, p95 = (s["invite_to_media_s"][p] for p in ("p50", "p95"))
    line = (
        f"{s['passed']}/{s['calls']} passed ({s['success_percent']} %), {s['calls_per_second']} calls/s, "
        f"at once {s['peak_calls_at_once']}, INVITE->media p50 {p50 or 0:.2f} s p95 {p95 or 0:.2f} s; "
        f"CPU per call: services {1000 * sum(spent.values()) / calls:.0f} ms, "
        f"controller {1000 * (procstat.controller_cpu_s() - controller) / calls:.0f} ms"
        + (f"; broken: {result['broken']}" if result["broken"] else "")
    )
    return passed_enough(result, 100.0) and not result["broken"], line


def climb(label: str, plans: list[tuple[float, LoadPlan]], lab: Any, out: Path) -> float:
    """Run the plans in order until one is below 100 %; the last level that passed (0: none)."""
    best = 0.0
    for level, plan in plans:
        ok, line = step(lab, plan, out)
        print(f"{label} {level:g}: {line}", flush=True)
        if not ok:
            break
        best = level
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at-once", default="50,100,200,300,500", help="calls placed at once, step by step")
    parser.add_argument("--rates", default="5,10,20,50,100", help="new calls per second, step by step")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each rate is held")
    parser.add_argument("--media", type=float, default=1.0, help="seconds of SRTP each call holds")
    args = parser.parse_args()
    out = Path("out/bench/capacity")
    lab, _, _ = lab_up(LAB)
    try:
        at_once = climb(
            "calls at once",
            [(n, LoadPlan(calls=n, concurrency=n, media=args.media)) for n in map(int, args.at_once.split(","))],
            lab,
            out,
        )
        rate = climb(
            "calls/s",
            [
                (r, LoadPlan(calls=10**9, concurrency=10**6, rate=r, duration=args.seconds, media=args.media))
                for r in map(float, args.rates.split(","))
            ],
            lab,
            out,
        )
    finally:
        lab_down(lab)
    print(
        f"calls at once with {args.media:g} s of media at 100 % success: {at_once:g} "
        f"(goal {GOAL_AT_ONCE}, ratio {at_once / GOAL_AT_ONCE:.2f})"
    )
    print(
        f"new calls/s for {args.seconds:g} s at 100 % success: {rate:g} "
        f"(goal {GOAL_RATE:g}, ratio {rate / GOAL_RATE:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main_or_broken("bench/capacity.py", main))
