"""JUnit XML, the report every CI system reads: a matrix's cells or a run's checks as test cases.

A case fails as the exit status does: a matrix cell when it is not as its rules predict, a run's check when
the run was to pass and the check did not (a scenario that expects a failure lists the checks it expects to
fail as passed cases that say so). A broken run or cell is an <error>: the lab could not run it. Each case
names its run's directory and ladder, where CI keeps the artifacts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pinhole.controller.matrix import Cell
    from pinhole.controller.scenario import Scenario
    from pinhole.controller.verdict import Verdict


def _suite(parent: ET.Element, name: str) -> ET.Element:
    return ET.SubElement(parent, "testsuite", name=name)


def _case(suite: ET.Element, classname: str, name: str, seconds: float | None = None) -> ET.Element:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    if seconds is not None:
        case.set("time", f"{seconds:.3f}")
    return case


def _artifacts(case: ET.Element, run_dir: Path | None) -> None:
    if run_dir is not None:
        ET.SubElement(case, "system-out").text = f"run: {run_dir}\nladder: {run_dir / 'ladder.html'}\n"


def _count(root: ET.Element) -> ET.Element:
    """tests, failures, errors and time on every suite and on the root, as JUnit readers expect."""
    totals = {"tests": 0, "failures": 0, "errors": 0}
    seconds = 0.0
    for suite in root.iter("testsuite"):
        cases = suite.findall("testcase")
        counts = {
            "tests": len(cases),
            "failures": sum(c.find("failure") is not None for c in cases),
            "errors": sum(c.find("error") is not None for c in cases),
        }
        time = sum(float(c.get("time", "0")) for c in cases)
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{time:.3f}")
        seconds += time
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{seconds:.3f}")
    return root


def matrix_report(cells: list[Cell], name: str = "pinhole matrix") -> ET.Element:
    """One case per cell: failed when the cell is not as its rules predict, an error when it was broken."""
    root = ET.Element("testsuites", name=name)
    suite = _suite(root, name)
    for cell in cells:
        expect = cell.scenario.expect
        expected = expect.outcome if expect else "works"
        case = _case(suite, "pinhole.matrix", cell.scenario.name, cell.seconds)
        what = f"expected {expected}, observed {cell.observed}: {cell.reason}"
        if cell.observed in ("broken", "error"):
            ET.SubElement(case, "error", message=what, type=cell.observed).text = what
        elif not cell.matched:
            failing = f"; failing checks: {', '.join(cell.failing)}" if cell.failing else ""
            text = what + failing + (f"\nwhy ({expected}): {expect.why}" if expect and expect.why else "")
            ET.SubElement(case, "failure", message=what, type="not as expected").text = text
        _artifacts(case, cell.run_dir)
    return _count(root)


def run_report(
    result: Verdict, scenario: Scenario, run_dir: Path | None, expectation: tuple[bool, str] | None = None
) -> ET.Element:
    """One case per check of the run's verdict (the RFC section in a failure's message), and for a scenario
    with an expectation one more: (as expected, what was observed)."""
    root = ET.Element("testsuites", name=f"pinhole run {scenario.name}")
    suite = _suite(root, scenario.name)
    if expectation is not None:
        matched, observed = expectation
        case = _case(suite, "pinhole.expectation", "as expected")
        if not matched:
            ET.SubElement(case, "failure", message=observed, type="not as expected").text = observed
    expected_failing = set(scenario.expect.failing) if scenario.expect else set()
    if scenario.expect is None:  # a built-in scenario: a negative control's verdict must fail
        expects_failure = not scenario.expect_pass
    else:
        expects_failure = scenario.expect.outcome == "fails" or scenario.expect.verdict == "fail"
    if result.broken:
        case = _case(suite, f"pinhole.{result.flow}", "run")
        ET.SubElement(case, "error", message=result.broken, type="broken").text = result.broken
    for check in result.checks:
        case = _case(suite, f"pinhole.{result.flow}", f"({check.message}) {check.title}")
        if check.passed:
            continue
        message = f"{check.rfc}: {check.detail}"
        if expects_failure and (not expected_failing or check.message in expected_failing):
            ET.SubElement(case, "system-out").text = f"fails as the scenario expects: {message}\n"
            continue
        ET.SubElement(case, "failure", message=message, type=check.kind or "rfc").text = message
    if root.find(".//testcase") is not None:
        _artifacts(root.findall(".//testcase")[-1], run_dir)
    return _count(root)


def write(report: ET.Element, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.indent(report)
    ET.ElementTree(report).write(path, encoding="utf-8", xml_declaration=True)
