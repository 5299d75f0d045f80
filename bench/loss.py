"""Benchmark: how many §7.3 calls complete with loss on every link, both ways (RFC timers).

The calls of `bench/loss.yaml` run on one lab with a new fault seed each, at each loss probability
asked for; the named peer is the same call with no loss, in the same run. A call completes when the
outcome is `works` (SRTP both ways, the BYE answered); a broken run (the lab could not run it) is
counted apart. Prints, per probability, the share that completed and why the others did not. Run with
`make bench` (root) or `python bench/loss.py --runs 100 --loss 0.1 0.3 --labs 4`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pinhole.controller.matrix import run_matrix
from pinhole.controller.scenario import Scenario, load

HERE = Path(__file__).parent


def with_loss(scenario: Scenario, probability: float, seed: int) -> Scenario:
    """The loss scenario at `probability` on every rule, with its own seed (0: no rule at all)."""
    assert scenario.faults is not None
    rules = [{**rule, "probability": probability} for rule in scenario.faults["rules"]] if probability else []
    name = f"loss-{probability:g}-seed-{seed}"
    return dataclasses.replace(scenario, name=name, faults={"rules": rules, "seed": seed} if rules else None)


def run_shard(plan: list[tuple[float, int]], timers: str, lab: str) -> list[dict[str, object]]:
    """Run these (probability, seed) calls one after another on one lab; one outcome row per call."""
    (base,) = load(HERE / "loss.yaml")
    scenarios = [dataclasses.replace(with_loss(base, p, s), timers=timers) for p, s in plan]
    with tempfile.TemporaryDirectory(prefix="pinhole-loss-") as out:
        cells, _ = run_matrix(scenarios, timers_name=timers, lab_name=lab, out_root=Path(out), progress=False)
    return [
        {"loss": p, "seed": s, "observed": c.observed, "reason": c.reason, "seconds": c.seconds}
        for (p, s), c in zip(plan, cells, strict=True)
    ]


def run_labs(plan: list[tuple[float, int]], timers: str, lab: str, labs: int) -> list[dict[str, object]]:
    """The plan dealt round-robin to `labs` labs, each run by its own process (`--shard`): loss makes a call
    wait on its timers, so several labs at once use the machine while each call keeps RFC timing."""
    with tempfile.TemporaryDirectory(prefix="pinhole-loss-shards-") as tmp:
        jobs = []
        for index in range(min(labs, len(plan))):
            path = Path(tmp) / f"{index}.json"
            argv = [sys.executable, __file__, "--shard", f"{index}/{labs}", "--shard-out", str(path)]
            share = plan[index :: min(labs, len(plan))]
            argv += ["--timers", timers, "--lab", f"{lab}{index}", "--plan", json.dumps(share)]
            jobs.append((subprocess.Popen(argv), path))
        rows: list[dict[str, object]] = []
        for process, path in jobs:
            if process.wait() != 0 or not path.exists():
                for other, _ in jobs:  # the other shards stop too (each takes its own lab down on SIGTERM)
                    if other.poll() is None:
                        other.terminate()
                        other.wait()
                raise SystemExit(f"bench/loss.py: broken: shard {path.stem} exited {process.returncode}")
            rows += json.loads(path.read_text())
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="calls per loss probability (the issue's bar: 100)")
    parser.add_argument("--loss", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--peer-runs", type=int, default=5, help="calls with no loss, the peer")
    parser.add_argument("--timers", choices=("rfc", "short"), default="rfc")
    parser.add_argument("--lab", default="ph-bloss", help="the lab's name (two benches at once need two)")
    parser.add_argument("--labs", type=int, default=1, help="labs at once, each its own process (names LAB0..)")
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--shard-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard:  # one lab's share, run by run_labs
        plan = [(float(p), int(s)) for p, s in json.loads(args.plan)]
        args.shard_out.write_text(json.dumps(run_shard(plan, args.timers, args.lab)))
        return 0
    plan = [(0.0, seed) for seed in range(args.peer_runs)]
    plan += [(p, seed) for p in args.loss for seed in range(1, args.runs + 1)]
    if args.labs > 1:
        rows = run_labs(plan, args.timers, args.lab, args.labs)
    else:
        rows = run_shard(plan, args.timers, args.lab)
    by_loss: dict[float, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        by_loss[float(row["loss"])].append(row)  # type: ignore[arg-type]
    print(
        f"{'loss each way, every link':>28} | {'calls':>5} | {'completed':>9} | {'failed':>6} | {'broken':>6} | s/call"
    )
    for probability, group in sorted(by_loss.items()):
        works = sum(r["observed"] == "works" for r in group)
        broken = sum(r["observed"] in ("broken", "error") for r in group)
        seconds = sum(r["seconds"] for r in group) / len(group)
        label = f"{probability:.0%}" + (" (peer)" if probability == 0 else "")
        print(
            f"{label:>28} | {len(group):>5} | {works / len(group):>8.0%} | {len(group) - works - broken:>6} | "
            f"{broken:>6} | {seconds:.1f}"
        )
        reasons = collections.Counter(r["reason"].split(";")[0][:110] for r in group if r["observed"] != "works")
        for reason, count in reasons.most_common(5):
            print(f"{'':>30}{count} x {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
