"""The scenarios of scenarios/ on a real lab: every cell as the RFCs predict (short timers).

The whole NAT x role x check x latching matrix and the §7.3 scenarios with their negative controls,
each cell a full run judged from its trace; a cell that differs from its expectation fails the test
with the cell's reason and the path of its ladder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinhole.controller.matrix import run_matrix, table
from pinhole.controller.scenario import load_all

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
