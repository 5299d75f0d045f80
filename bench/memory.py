"""Benchmark: every service's resident memory against the calls it has carried, up to 10,000 calls.

One lab (RFC timers), `pinhole load` in chunks of `--chunk` calls; after each chunk, once the calls' 64*T1
of transaction state has passed, the RSS of every service from /proc. Memory is bounded when it is flat
from the first thousand calls on: printed is each service's RSS per chunk (a text plot) and its ratio to
the reading after the first chunk, against the goal of +-10 %. Run with `make bench` (root).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import procstat
from broken import main_or_broken

from pinhole.controller.load import LoadPlan, passed_enough, run_load
from pinhole.controller.run import lab_down, lab_up
from pinhole.timers import TIMERS

LAB = "ph-bmem"
GOAL = 0.10
BAR = 40  # characters of the widest bar in the plot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=1000, help="calls per reading")
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--media", type=float, default=0.0)
    args = parser.parse_args()
    plan = LoadPlan(calls=args.chunk, concurrency=args.concurrency, media=args.media)
    settle = 64 * TIMERS["rfc"].sip_t1  # a finished call is forgotten once its transactions can no longer fire
    readings: list[tuple[int, dict[str, int]]] = []
    lab, _, _ = lab_up(LAB)
    try:
        readings.append((0, {node: u.rss for node, u in procstat.services(lab).items()}))
        for chunk in range(1, args.chunks + 1):
            result, _ = run_load(plan, lab_name=LAB, out_root=Path("out/bench/memory"), progress=False)
            s = result["summary"]
            if not passed_enough(result, 100.0) or result["broken"]:
                print(f"chunk {chunk}: {s['passed']}/{s['calls']} passed {result['broken']}", flush=True)
            time.sleep(settle)  # the calls' own timers, not a wait for readiness: forgetting is timed
            readings.append((chunk * args.chunk, {node: u.rss for node, u in procstat.services(lab).items()}))
            print(f"after {chunk * args.chunk} calls: " + ", ".join(
                f"{node} {rss / 2**20:.0f} MB" for node, rss in readings[-1][1].items()), flush=True)  # fmt: skip
    finally:
        lab_down(lab)
    widest = max(rss for _, reading in readings for rss in reading.values())
    for node in readings[0][1]:
        print(f"{node}:")
        for calls, reading in readings:
            rss = reading.get(node, 0)
            print(f"  {calls:>6} calls {rss / 2**20:7.1f} MB {'#' * round(BAR * rss / widest)}")
    for node, first in readings[1][1].items() if len(readings) > 1 else ():
        last = readings[-1][1].get(node, 0)
        print(
            f"{node}: RSS after {readings[-1][0]} calls / after {readings[1][0]} calls = {last / first:.2f} "
            f"(goal {1 - GOAL:.2f}-{1 + GOAL:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main_or_broken("bench/memory.py", main))
