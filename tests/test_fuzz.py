"""A short fuzzing campaign (fuzz/, the deterministic mode, a fixed seed): no parser crashes or hangs.

``make fuzz`` runs the long one. Here every target gets 2,000 inputs, the three that read whole runs
(~50 inputs/s) 500, two workers at a time: about half a minute on two cores. A crash fails the test with
its traceback and the input, written under the test's tmp_path.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fuzz import bundle, engine
from fuzz.__main__ import campaign
from fuzz.mutate import Mutator
from fuzz.targets import TARGETS, Target

SEED = 5763
SLOW = {"wire": 500, "scenario": 500, "trace": 500}  # a saved run, a scenario, a trace per input


def test_a_short_campaign_finds_no_crash(tmp_path: Path) -> None:
    inputs = {name: SLOW.get(name, 2000) for name in TARGETS}
    reports = campaign(inputs, engine="mutate", seed=SEED, max_seconds=None, jobs=2, crash_dir=tmp_path, echo=False)
    for report in reports:
        print(report.line())  # the throughput, for whoever runs pytest -s
    assert [(r.target, r.inputs) for r in reports] == list(inputs.items())
    crashes = [f"{r.target}: {c.site}\n{c.traceback}\ninputs: {c.files}" for r in reports for c in r.crashes.values()]
    assert not crashes, "\n\n".join(crashes)


def test_the_mutator_is_deterministic_and_starts_with_the_seeds() -> None:
    target = TARGETS["sip"]
    seeds = target.seeds()

    def inputs() -> list[bytes]:
        mutator, rng = Mutator(seeds, target.kind), random.Random(SEED)
        return [mutator.input(rng, index) for index in range(len(seeds) + 200)]

    first = inputs()
    assert first == inputs() and first[: len(seeds)] == seeds and first[len(seeds) :] != seeds[:200]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_has_seeds_from_the_repo_that_do_not_crash_it(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    assert len(seeds) >= 10
    report = engine.Report(name, "seeds")
    with engine.Runner(target, report).armed() as runner:
        for data in seeds[:50]:
            runner.one(data)
    assert not report.crashes, "\n\n".join(c.traceback for c in report.crashes.values())


def test_a_crash_is_kept_once_per_site_with_its_input(tmp_path: Path) -> None:
    def parse(data: bytes) -> None:
        if data.startswith(b"x"):
            int(data)  # ValueError, always from this line
        if data == b"loop":
            while True:
                pass

    target = Target("demo", parse, lambda: [b"1", b"x1", b"x2", b"loop"], "binary")
    report = engine.Report("demo", "seeds")
    with engine.Runner(target, report, budget=0.2, crash_dir=tmp_path).armed() as runner:
        for data in target.seeds():
            runner.one(data)
    assert report.inputs == 4
    by_site = {site.split(" at ")[0].split(" in ")[0]: crash for site, crash in report.crashes.items()}
    assert sorted(by_site) == ["Hang", "ValueError"] and by_site["ValueError"].inputs == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(f).name for crash in report.crashes.values() for f in crash.files
    )
    assert "int(data)" in by_site["ValueError"].traceback


def test_a_bundle_becomes_the_capture_of_its_run() -> None:
    run = bundle.runs()[0]
    data = bundle.join(0, list(run.chunks[:5]))
    assert bundle.split(data) == (0, list(run.chunks[:5]))
    capture = bundle.capture(data)
    assert len(capture.packets) == 5 and capture.secrets == list(run.secrets)
    assert bundle.split(b"\x00\x01\xff") == (0, [(1, b"")])  # any bytes are an input
