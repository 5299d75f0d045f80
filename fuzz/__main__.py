"""``python -m fuzz --target NAME|all --inputs N --seed S [--max-seconds T]``: a bounded campaign.

Each target runs in a worker process (``--jobs`` at a time) until N inputs ran or T seconds passed. Per
target it prints the inputs run, inputs/s, the slowest input and the crashes; then the traceback of each
distinct crash site once, with the files its inputs were written to. Exit 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fuzz import CRASHES
from fuzz.engine import BUDGET, Report
from fuzz.worker import Worker, engine_available


def campaign(
    inputs: dict[str, int],
    *,
    engine: str,
    seed: int,
    max_seconds: float | None,
    jobs: int,
    budget: float = BUDGET,
    crash_dir: Path = CRASHES,
    echo: bool = True,
) -> list[Report]:
    """Run each target on its number of inputs, ``jobs`` workers at a time; the reports in the order given."""
    pending, running, reports = list(inputs), [], {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            running.append(
                Worker(
                    name,
                    engine=engine,
                    inputs=inputs[name],
                    seed=seed,
                    max_seconds=max_seconds,
                    budget=budget,
                    crash_dir=crash_dir,
                )
            )
        time.sleep(0.2)
        for worker in list(running):
            finished = worker.process.poll() is not None
            reason = "" if finished else worker.stuck()
            if not finished and not reason:
                continue
            running.remove(worker)
            report = reports[worker.target] = worker.collect(reason)
            worker.cleanup()
            if echo:
                print(report.line(), flush=True)
    return [reports[name] for name in inputs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="all", help="all, or one target (see fuzz/targets.py)")
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per target (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, help="time limit per target")
    parser.add_argument(
        "--engine",
        choices=["auto", "atheris", "mutate"],
        default="auto",
        help="atheris (coverage-guided) if installed with auto; mutate: deterministic",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="workers at a time")
    parser.add_argument("--budget", type=float, default=BUDGET, help=f"seconds one input may take (default {BUDGET:g})")
    parser.add_argument("--list", action="store_true", help="the targets, their seed counts and what they run")
    args = parser.parse_args(argv)

    from fuzz.targets import TARGETS

    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:13} {len(target.seeds()):>4} seeds  {target.doc}")
        return 0

    names = list(TARGETS) if args.target == "all" else [args.target]
    if any(name not in TARGETS for name in names):
        parser.error(f"unknown target {args.target!r}; known: {', '.join(TARGETS)}")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if engine_available("atheris") else "mutate"
    elif not engine_available(engine):
        parser.error(f"{engine} is not installed (pip install {engine}), --engine mutate needs nothing")
    limit = f", at most {args.max_seconds:g} s" if args.max_seconds else ""
    print(
        f"fuzz: {len(names)} target(s), {args.inputs:,} inputs each{limit}, seed {args.seed}, engine {engine}, "
        f"{args.jobs} job(s)",
        flush=True,
    )
    start = time.monotonic()
    reports = campaign(
        dict.fromkeys(names, args.inputs),
        engine=engine,
        seed=args.seed,
        max_seconds=args.max_seconds,
        jobs=args.jobs,
        budget=args.budget,
    )
    print(f"\n{'target':14} {'engine':8} summary ({time.monotonic() - start:.0f} s)")
    for report in reports:
        print(report.line())
    for report in reports:
        if report.slowest_file:
            print(f"slowest {report.target} input ({report.slowest:.2f} s): {report.slowest_file}")
    crashed = [report for report in reports if report.crashes]
    for report in crashed:
        for crash in report.crashes.values():
            print(f"\n=== {report.target}: {crash.site} ({crash.inputs} input(s)) ===\n{crash.traceback}")
            for path in crash.files:
                print(f"input: {path}")
    total = sum(report.inputs for report in reports)
    print(f"\n{total:,} inputs, {sum(len(r.crashes) for r in reports)} distinct crash site(s)")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
