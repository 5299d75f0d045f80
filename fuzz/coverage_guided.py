"""The targets under atheris: libFuzzer's coverage feedback over pinhole's own code.

The same targets, crash definition and bookkeeping as the deterministic mode (:mod:`fuzz.engine`); what
changes is where inputs come from. libFuzzer starts from the seed corpus (written to a scratch directory)
and keeps every input that reaches new code; half of its mutations are its own, half are
:mod:`fuzz.mutate`'s, which know lines, numbers, documents and bundles. Crashes are booked and the run
goes on (libFuzzer would stop at the first); the input count and the time limit are enforced here, and
the report handed over before the process ends (libFuzzer leaves with exit(), atexit handlers never run).

Only pinhole is instrumented: :func:`instrumented_targets` must import it, before anything else does.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # imported in run(): they import pinhole, which must be instrumented first
    from fuzz.engine import Heartbeat, Report
    from fuzz.targets import Target


def instrumented_targets() -> dict[str, Target]:
    """fuzz.targets, with pinhole's modules imported under atheris' coverage instrumentation."""
    import atheris

    if any(name == "pinhole" or name.startswith("pinhole.") for name in sys.modules):
        raise RuntimeError("pinhole was imported before atheris could instrument it")
    with atheris.instrument_imports(include=["pinhole"]):
        from fuzz.targets import TARGETS
    return TARGETS


def run(
    target: Target,
    *,
    inputs: int,
    seed: int,
    max_seconds: float | None,
    budget: float,
    crash_dir: Path,
    heartbeat: Heartbeat | None,
    done: Callable[[Report], None],
) -> NoReturn:
    """Fuzz until ``inputs`` ran or ``max_seconds`` passed, hand the report to ``done``, end the process."""
    import atheris

    from fuzz import targets
    from fuzz.engine import Report, Runner
    from fuzz.mutate import Mutator

    seeds = target.seeds()
    report = Report(target.name, "atheris", seeds=len(seeds))
    runner = Runner(target, report, budget=budget, crash_dir=crash_dir, heartbeat=heartbeat)
    mutator = Mutator(seeds, target.kind)
    corpus_dir = Path(tempfile.mkdtemp(prefix=f"pinhole-fuzz-{target.name}-"))
    for index, data in enumerate(seeds):
        (corpus_dir / f"seed-{index:05}").write_bytes(data)
    start = time.monotonic()
    deadline = start + max_seconds if max_seconds else float("inf")

    def finish() -> NoReturn:
        report.seconds = time.monotonic() - start
        runner.finish()
        shutil.rmtree(corpus_dir, ignore_errors=True)
        targets.cleanup()
        done(report)
        sys.stdout.flush()
        os._exit(0)

    def one(data: bytes) -> None:
        if report.inputs >= inputs or (report.inputs % 64 == 0 and time.monotonic() > deadline):
            finish()
        runner.one(data)

    def mutate(data: bytes, max_size: int, mutation_seed: int) -> bytes:
        rng = random.Random(mutation_seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        return mutator.mutate(rng, data)[:max_size]

    max_len = min(max(len(data) for data in seeds) + 4096, 1 << 21)
    options = [f"-seed={seed + 1}", "-timeout=0", f"-max_len={max_len}", "-rss_limit_mb=4096", "-print_final_stats=0"]
    with runner.armed():
        atheris.Setup([sys.argv[0], *options, str(corpus_dir)], one, custom_mutator=mutate)
        atheris.Fuzz()
    finish()
