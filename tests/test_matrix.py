"""The scenarios of scenarios/ on a real lab: every cell as the RFCs predict (short timers).

The whole NAT x role x check x latching matrix and the §7.3 scenarios with their negative controls,
each cell a full run judged from its trace; a cell that differs from its expectation fails the test
with the cell's reason and the path of its ladder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinhole.controller import junit
from pinhole.controller.matrix import run_matrix, table
from pinhole.controller.saved import judge_run
from pinhole.controller.scenario import load_all
from pinhole.controller.verdict import SELF_REPORTED, messages

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent


def test_every_scenario_is_as_the_rfcs_predict(lab, tmp_path):
    running, _, _ = lab
    scenarios = load_all(ROOT / "scenarios")
    cells, out_dir = run_matrix(scenarios, lab_name=running.name, out_root=tmp_path, progress=False)
    print(table(cells))
    wrong = [
        f"{c.scenario.name}: expected {c.scenario.expect.outcome}, {c.observed}: {c.reason} ({c.run_dir})"
        for c in cells
        if not c.matched
    ]
    assert not wrong, "\n".join(wrong)
    rows = json.loads((out_dir / "matrix.json").read_text())
    assert len(rows) == len(scenarios) and all(r["matched"] for r in rows)
    # every cell that works says how fast: INVITE to SRTP both ways
    assert all(r["invite_to_media_s"] for r in rows if r["observed"] == "works")
    html = (out_dir / "index.html").read_text()
    assert html.count("ladder.html") == len(scenarios)
    report = junit.matrix_report(cells)  # what `pinhole matrix --junit` writes: one case per cell
    assert (len(report.findall(".//testcase")), report.get("failures"), report.get("errors")) == (len(cells), "0", "0")
    # every cell judged again from its capture and key log alone, and from its trace: the same outcome
    for row in rows:
        run_dir = Path(row["run"])
        saved = json.loads((run_dir / "verdict.json").read_text())["verdict"]
        alone = judge_run(run_dir, from_capture=True)
        traced = judge_run(run_dir / "trace.json")
        assert alone.outcome == traced.outcome == saved, (row["cell"], alone.outcome, traced.outcome, saved)
        # check by check too, but for what only a self-report can show: from the capture alone that part
        # is not judged, and the check says so
        for a, t in zip(alone.checks, traced.checks, strict=True):
            unjudged = a.evidence == SELF_REPORTED and "no trace given" in a.detail
            assert a.passed == t.passed or unjudged, (row["cell"], a.message, a.detail, t.detail)


def test_every_check_of_both_figures_has_a_scenario_that_fails_it():
    """A check no input can fail would be a defect: the scenarios (scenarios/deviations/ above all) name one
    cell at least that must fail each message of the §7.3 and the §7.1 figure."""
    scenarios = load_all(ROOT / "scenarios")
    for flow in ("rfc5763-7.3", "rfc5763-7.1"):
        failed = {m for s in scenarios if s.flow == flow and s.expect for m in s.expect.failing}
        assert failed == set(messages(flow)), (flow, sorted(set(messages(flow)) - failed))
