"""`pinhole matrix`: many scenarios on one lab, and a table of what the RFCs predict against what happened.

Every cell is a full run (pinhole.controller.run.run: its own trace, ladder, verdict and artifacts);
the lab stays up between cells and the gateway is reconfigured for each. A cell matches when the call
works or fails as its scenario expects (outcome.py) and, where the scenario names it, the §7.3 verdict
agrees check by check. The table links each cell's HTML ladder.
"""

from __future__ import annotations

import html
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinhole.controller import outcome as outcomes
from pinhole.controller.run import DEFAULT_LAB, lab_down, lab_up, link_last, run
from pinhole.controller.scenario import Scenario
from pinhole.lab import list_labs


@dataclass
class Cell:
    scenario: Scenario
    observed: str  # works, fails, broken (the run's evidence is incomplete), error (it could not run)
    reason: str
    matched: bool
    seconds: float
    media_time: float | None = None
    verdict: str | None = None  # the §7.3 verdict's outcome
    failing: tuple[str, ...] = ()
    run_dir: Path | None = None

    def row(self) -> dict[str, Any]:
        expect = self.scenario.expect
        return {
            "cell": self.scenario.name,
            **self.scenario.knobs,
            "expected": expect.outcome if expect else "works",
            "why": expect.why if expect else "",
            "observed": self.observed,
            "reason": self.reason,
            "matched": self.matched,
            "verdict_7_3": self.verdict,
            "failing_7_3": list(self.failing),
            "invite_to_media_s": self.media_time,
            "seconds": round(self.seconds, 2),
            "run": str(self.run_dir) if self.run_dir else None,
        }


def judge_cell(scenario: Scenario, evidence: dict[str, Any], verdict_outcome: str, failing: tuple[str, ...]) -> Cell:
    """Observed against expected for one finished run."""
    result = outcomes.judge_outcome(evidence)
    expect = scenario.expect
    matched = expect is None or result.name == expect.outcome
    if expect is not None and expect.verdict is not None:
        matched = matched and verdict_outcome == expect.verdict
        if expect.failing:
            matched = matched and set(failing) == set(expect.failing)
    if expect is not None and expect.forks:  # forking: which Bob's fork works is part of the prediction
        matched = matched and result.forks == dict(expect.forks)
    return Cell(scenario, result.name, result.reason, matched, 0.0, result.invite_to_media, verdict_outcome, failing)


class Bar:
    """A progress bar on stderr: where the matrix is, how many cells matched so far."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.tty = total, enabled, sys.stderr.isatty()
        self.started = time.monotonic()

    def show(self, done: int, mismatches: int, current: str) -> None:
        if not self.enabled:
            return
        width = 24
        filled = width * done // max(self.total, 1)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
            f"{mismatches} mismatch(es) {time.monotonic() - self.started:5.0f}s  {current}"
        )
        sys.stderr.write(("\r\033[K" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def run_matrix(
    scenarios: list[Scenario],
    *,
    timers_name: str = "short",
    lab_name: str = DEFAULT_LAB,
    backend: str = "netns",
    out_root: Path = Path("out"),
    progress: bool = True,
) -> tuple[list[Cell], Path]:
    """Run every scenario on one lab (brought up and down here unless it is up already)."""
    matrix_id = time.strftime("%Y%m%d-%H%M%S") + "-matrix"
    out_dir = out_root / matrix_id
    out_dir.mkdir(parents=True, exist_ok=True)
    owned = lab_name not in list_labs(backend)
    lab = lab_up(lab_name, backend=backend)[0] if owned else None
    cells: list[Cell] = []
    bar = Bar(len(scenarios), progress)
    try:
        for index, scenario in enumerate(scenarios):
            bar.show(index, sum(not c.matched for c in cells), scenario.name)
            started = time.monotonic()
            try:
                result, run_dir = run(
                    scenario,
                    timers_name=scenario.timers or timers_name,
                    lab_name=lab_name,
                    backend=backend,
                    out_root=out_dir / "runs",
                    progress=False,
                )
                evidence = json.loads((run_dir / "evidence.json").read_text())
                failing = tuple(c.message for c in result.checks if not c.passed)
                cell = judge_cell(scenario, evidence, result.outcome, failing)
                if result.broken:
                    cell.observed, cell.reason, cell.matched = "broken", result.broken, False
                cell.run_dir = run_dir
            except Exception as error:  # one cell that cannot run must not hide the others
                detail = "".join(traceback.format_exception_only(error)).strip()
                cell = Cell(scenario, "error", detail, False, 0.0)
            cell.seconds = time.monotonic() - started
            cells.append(cell)
        bar.show(len(scenarios), sum(not c.matched for c in cells), "")
        bar.done()
    finally:
        if lab is not None:
            lab_down(lab)
    write_reports(cells, out_dir)
    link_last(out_root, matrix_id)
    return cells, out_dir


def _flag(value: Any) -> str:
    return {True: "on", False: "off"}.get(value, str(value))


def table(cells: list[Cell]) -> str:
    """The verdicts as a Markdown table (also fine in a terminal)."""
    lines = [
        "| cell | NAT | Bob's a=setup | check | Bob latches | expected | observed | INVITE→media | why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        row = cell.row()
        mark = "" if cell.matched else " ✗"
        media = f"{row['invite_to_media_s']:.2f} s" if row["invite_to_media_s"] is not None else "—"
        why = row["why"] if cell.matched else f"expected: {row['why']} / observed: {row['reason']}"
        lines.append(
            f"| {row['cell']} | {row.get('nat', '')} | {row.get('answerer', '')} | {_flag(row.get('stun_check'))} "
            f"| {_flag(row.get('latching'))} | {row['expected']} | **{row['observed']}**{mark} | {media} | {why} |"
        )
    matched = sum(c.matched for c in cells)
    lines.append("")
    lines.append(f"{matched}/{len(cells)} cells as the RFCs predict")
    return "\n".join(lines)


def pivot(cells: list[Cell]) -> str:
    """The matrix cells as NAT x role rows against check x latching columns: outcome and INVITE-to-media time.

    One table per matrix file that varies the check or latching (the NAT matrix); other files' cells,
    which would land on the same knobs (rtcp-mux off, faults), are left to the full table."""
    tables = []
    for source in dict.fromkeys(c.scenario.source for c in cells):
        mine = [c for c in cells if c.scenario.source == source and "[" in c.scenario.name]
        varied = {(c.scenario.knobs.get("stun_check"), c.scenario.knobs.get("latching")) for c in mine}
        if len(varied) > 2:
            tables.append(_pivot(mine))
    return "\n\n".join(tables)


def _pivot(cells: list[Cell]) -> str:
    knobs = ("nat", "answerer", "stun_check", "latching")
    by_knobs: dict[tuple[Any, ...], Cell] = {tuple(c.scenario.knobs.get(k) for k in knobs): c for c in cells}
    rows = list(dict.fromkeys(k[:2] for k in by_knobs))  # in the order of the matrix's axes
    columns = [(True, False), (True, True), (False, False), (False, True)]
    lines = [
        "| NAT | Bob's a=setup | check | check + Bob latches | no check | no check + Bob latches |",
        "|---|---|---|---|---|---|",
    ]
    for nat, answerer in rows:
        out = [nat, answerer]
        for check, latching in columns:
            cell = by_knobs.get((nat, answerer, check, latching))
            if cell is None:
                out.append("")
                continue
            text = f"{cell.observed} ({cell.media_time:.2f} s)" if cell.media_time is not None else cell.observed
            out.append(text if cell.matched else f"**{text}** ✗ (expected {cell.row()['expected']})")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def write_reports(cells: list[Cell], out_dir: Path) -> None:
    """matrix.json (every row), matrix.md (the pivot and the table), index.html (the table, each cell
    linked to its ladder)."""
    (out_dir / "matrix.json").write_text(json.dumps([c.row() for c in cells], indent=1))
    (out_dir / "matrix.md").write_text(pivot(cells) + "\n\n" + table(cells) + "\n")
    rows = []
    for cell in cells:
        row = cell.row()
        link = (
            f'<a href="{html.escape(str(cell.run_dir.relative_to(out_dir)))}/ladder.html">ladder</a>'
            if cell.run_dir
            else ""
        )
        style = "" if cell.matched else ' class="mismatch"'
        rows.append(
            f"<tr{style}><td>{html.escape(row['cell'])}</td><td>{row['expected']}</td>"
            f"<td>{row['observed']}</td><td>{html.escape(row['why'])}</td><td>{html.escape(row['reason'])}</td>"
            f"<td>{link}</td></tr>"
        )
    (out_dir / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>pinhole matrix</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px 6px}"
        "table{border-collapse:collapse}.mismatch{background:#fdd}</style>"
        "<table><tr><th>cell</th><th>expected</th><th>observed</th><th>why (RFC)</th><th>what happened</th>"
        "<th></th></tr>" + "".join(rows) + "</table>"
    )
