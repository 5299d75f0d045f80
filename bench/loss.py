"""Benchmark: how many §7.3 calls complete with loss on every link, both ways (RFC timers).

The calls of `bench/loss.yaml` run on one lab with a new fault seed each, at each loss probability
asked for; the named peer is the same call with no loss, in the same run. A call completes when the
outcome is `works` (SRTP both ways, the BYE answered); a broken run (the lab could not run it) is
counted apart. Prints, per probability, the share that completed and why the others did not. Run with
`make bench` (root) or `python bench/loss.py --runs 100 --loss 0.1 0.3`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import tempfile
from pathlib import Path

from pinhole.controller.matrix import run_matrix
from pinhole.controller.scenario import Scenario, load

HERE = Path(__file__).parent


def with_loss(scenario: Scenario, probability: float, seed: int) -> Scenario:
    """The loss scenario at `probability` on every rule, with its own seed (0: no rule at all)."""
    assert scenario.faults is not None
    rules = [{**rule, "probability": probability} for rule in scenario.faults["rules"]] if probability else []
    name = f"loss-{probability:g}-seed-{seed}"
    return dataclasses.replace(scenario, name=name, faults={"rules": rules, "seed": seed} if rules else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="calls per loss probability (the issue's bar: 100)")
    parser.add_argument("--loss", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--peer-runs", type=int, default=5, help="calls with no loss, the peer")
    parser.add_argument("--timers", choices=("rfc", "short"), default="rfc")
    parser.add_argument("--lab", default="ph-bloss", help="the lab's name (two benches at once need two)")
    args = parser.parse_args()
    (base,) = load(HERE / "loss.yaml")
    plan = [(0.0, seed) for seed in range(args.peer_runs)]
    plan += [(p, seed) for p in args.loss for seed in range(1, args.runs + 1)]
    scenarios = [dataclasses.replace(with_loss(base, p, s), timers=args.timers) for p, s in plan]
    with tempfile.TemporaryDirectory(prefix="pinhole-loss-") as out:
        cells, _ = run_matrix(scenarios, timers_name=args.timers, lab_name=args.lab, out_root=Path(out))
    by_loss: dict[float, list] = collections.defaultdict(list)
    for (probability, _), cell in zip(plan, cells, strict=True):
        by_loss[probability].append(cell)
    print(
        f"{'loss each way, every link':>28} | {'calls':>5} | {'completed':>9} | {'failed':>6} | {'broken':>6} | s/call"
    )
    for probability, group in sorted(by_loss.items()):
        works = sum(c.observed == "works" for c in group)
        broken = sum(c.observed in ("broken", "error") for c in group)
        seconds = sum(c.seconds for c in group) / len(group)
        label = f"{probability:.0%}" + (" (peer)" if probability == 0 else "")
        print(
            f"{label:>28} | {len(group):>5} | {works / len(group):>8.0%} | {len(group) - works - broken:>6} | "
            f"{broken:>6} | {seconds:.1f}"
        )
        reasons = collections.Counter(c.reason.split(";")[0][:110] for c in group if c.observed != "works")
        for reason, count in reasons.most_common(5):
            print(f"{'':>30}{count} x {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
