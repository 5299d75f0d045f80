"""`pinhole load`: many §7.3 calls at once on one lab, each judged from the capture like `pinhole run`.

The schedule's arithmetic is tested alone; on the lab, a load of the §7.3 call passes call by call, and the
same load of a call whose answer carries the wrong fingerprint fails every call at its check (the check can
fail under load too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinhole.controller.load import LoadPlan, passed_enough, percentile, run_load
from pinhole.controller.scenario import SCENARIOS, load


def test_a_plan_paces_calls_with_a_linear_ramp_and_refuses_what_cannot_be() -> None:
    plan = LoadPlan(calls=1000, rate=10, duration=30, ramp=4)
    assert plan.total == 280  # placing ends with the duration: the ramp's half-rate seconds place fewer
    assert LoadPlan(calls=1000, rate=0.29, duration=100).total == 29  # not 28 (0.29 * 100 in floating point)
    assert plan.due(0) == 0 and plan.due(2) == pytest.approx(5) and plan.due(4) == pytest.approx(20)
    assert plan.due(10) == pytest.approx(80)  # after the ramp: 10/s, the ramp's area behind
    assert LoadPlan(calls=7).due(0) == float("inf") and LoadPlan(calls=7).total == 7
    nan = float("nan")
    bad_plans = ({"calls": 0}, {"rate": 5}, {"media": -1}, {"min_success": 101}, {"concurrency": 0},
                 {"rate": 0.01, "duration": 10}, {"rate": nan, "duration": 1}, {"media": float("inf")})  # fmt: skip
    for bad in bad_plans:
        with pytest.raises(ValueError):
            LoadPlan(**bad)  # type: ignore[arg-type]


def test_the_success_bar_is_compared_exactly() -> None:
    """99.995 % rounds to 100.00 but is not 100 %: one failed call in 20,001 fails --min-success 100."""
    assert not passed_enough({"summary": {"passed": 20_000, "calls": 20_001}}, 100.0)
    assert passed_enough({"summary": {"passed": 99, "calls": 100}}, 99.0)
    assert not passed_enough({"summary": {"passed": 0, "calls": 1}}, 0.1)


@pytest.mark.parametrize("template", ["fault-media-loss", "restart-proxy-mid-call", "stranger-client-hello"])
def test_a_template_whose_faults_restarts_or_strangers_a_load_would_leave_out_is_refused(template, tmp_path) -> None:
    """Calls placed without them would be judged as if they had them: refused before any lab is touched."""
    (scenario,) = load(Path(__file__).parent.parent / "scenarios" / f"{template}.yaml")
    with pytest.raises(ValueError, match="a load does not carry out"):
        run_load(LoadPlan(calls=1), scenario, lab_name="ph-never", out_root=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile(values, 100) == 100
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


@pytest.mark.lab
@pytest.mark.parametrize(("scenario", "passed"), [("rfc5763-7.3", 6), ("bad-fingerprint", 0)])
def test_a_load_judges_every_call_on_the_wire(lab, tmp_path, scenario, passed) -> None:
    running, _, _ = lab
    plan = LoadPlan(calls=6, concurrency=3, media=0.5)
    result, out_dir = run_load(
        plan, SCENARIOS[scenario], timers_name="short", lab_name=running.name, out_root=tmp_path, progress=False
    )
    assert not result["broken"], result["broken"]
    calls = result["calls"]
    assert len(calls) == 6 and len({c["call_id"] for c in calls}) == 6
    assert sum(c["verdict"] == "pass" for c in calls) == passed == result["summary"]["passed"]
    assert 1 <= result["summary"]["peak_calls_at_once"] <= 3
    if passed:
        assert all(c["invite_to_media_s"] > 0 and c["ended"] == {"alice": "local hang-up", "bob": "BYE received"}
                   for c in calls)  # fmt: skip
    else:  # each call fails at the check the answer's fingerprint breaks, named with its RFC section
        assert all(c["failing"].startswith("4 ") and "RFC 5763" in c["failing"] for c in calls), calls
        assert list(out_dir.glob("ladder-*.txt"))  # a sample of the failures, drawn
    assert json.loads((out_dir / "load.json").read_text())["summary"] == result["summary"]
    assert (out_dir / "capture.pcapng").stat().st_size > 0 and (out_dir / "keys.log").read_text()
