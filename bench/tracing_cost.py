"""Benchmark: what tracing costs the services per call, under load, against the same lab with it off.

Two labs are up side by side in the same run: one with every service tracing (spans exported to the lab's
receiver), the named peer with the OpenTelemetry SDK disabled (OTEL_SDK_DISABLED, the standard switch).
The same `pinhole load` runs on each in turn, `--rounds` times, so both see the same machine; charged to a
lab is the CPU its services spent (from /proc), divided by its calls. The controller's share (capture,
judging, receiving spans) is printed apart. Run with `make bench` (root). Goal: at most 1.15x.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import procstat
from broken import main_or_broken

from pinhole.controller.load import LoadPlan, passed_enough, run_load
from pinhole.controller.run import lab_down, lab_up

LABS = {"tracing": ("ph-btron", None), "no tracing": ("ph-btroff", {"OTEL_SDK_DISABLED": "true"})}
GOAL = 1.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=60, help="calls per round and lab")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--media", type=float, default=1.0)
    args = parser.parse_args()
    plan = LoadPlan(calls=args.calls, concurrency=args.concurrency, media=args.media)
    labs = {}
    spent = {label: {"services": 0.0, "controller": 0.0, "calls": 0, "passed": 0} for label in LABS}
    try:
        for label, (name, env) in LABS.items():
            labs[label] = lab_up(name, extra_env=env)[0]
        for _ in range(args.rounds):
            for label, (name, _) in LABS.items():
                before, controller = procstat.services(labs[label]), procstat.controller_cpu_s()
                result, _ = run_load(
                    plan, lab_name=name, out_root=Path("out/bench/tracing"), progress=False,
                    spans=label == "tracing",
                )  # fmt: skip
                after = procstat.services(labs[label])
                totals = spent[label]
                totals["services"] += sum(procstat.cpu_between(before, after).values())
                totals["controller"] += procstat.controller_cpu_s() - controller
                totals["calls"] += result["summary"]["calls"]
                totals["passed"] += result["summary"]["passed"]
                if not passed_enough(result, 100.0) or result["broken"]:
                    print(f"{label}: {result['summary']['failing'] or result['broken']}", flush=True)
    finally:
        for lab in labs.values():
            lab_down(lab)
    per_call = {label: {k: t[k] / max(t["calls"], 1) for k in ("services", "controller")} for label, t in spent.items()}
    for label, t in spent.items():
        print(
            f"{label}: {t['passed']}/{t['calls']} calls passed; CPU per call: services "
            f"{1000 * per_call[label]['services']:.0f} ms, controller {1000 * per_call[label]['controller']:.0f} ms"
        )
    on, off = per_call["tracing"], per_call["no tracing"]
    print(
        f"services' CPU per call under load ({args.concurrency} at once, {args.media:g} s of media), "
        f"ratio tracing/no-tracing {on['services'] / off['services']:.2f} (goal <= {GOAL})"
    )
    print(f"controller's CPU per call, ratio tracing/no-tracing {on['controller'] / off['controller']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main_or_broken("bench/tracing_cost.py", main))
