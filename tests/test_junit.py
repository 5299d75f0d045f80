"""JUnit XML for CI: a matrix's cells and a run's checks as test cases, failures and errors as the exit
status counts them. The lab test runs `pinhole run --junit` end to end (root)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pinhole import cli
from pinhole.controller import junit
from pinhole.controller.matrix import Cell
from pinhole.controller.scenario import SCENARIOS, Expectation, Scenario
from pinhole.controller.verdict import Check, Verdict

EXPECTS_FAIL = Scenario("s-fails", "d", expect=Expectation("fails", "RFC 5763 §6.7.2", verdict="fail", failing=("5",)))


def parsed(report: ET.Element, tmp_path: Path) -> ET.Element:
    """Written and read back, as a CI system reads it."""
    junit.write(report, tmp_path / "junit.xml")
    return ET.parse(tmp_path / "junit.xml").getroot()


def test_a_matrix_is_one_case_per_cell_failed_when_not_as_expected(tmp_path: Path) -> None:
    cells = [
        Cell(SCENARIOS["rfc5763-7.3"], "works", "SRTP both ways", True, 1.5, run_dir=tmp_path / "a"),
        Cell(EXPECTS_FAIL, "works", "SRTP both ways", False, 2.0, failing=()),
        Cell(EXPECTS_FAIL, "broken", "the capture lost frames", False, 0.5),
    ]
    root = parsed(junit.matrix_report(cells), tmp_path)
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("time")) == ("3", "1", "1", "4.000")
    ok, wrong, broken = root.iter("testcase")
    assert ok.find("failure") is None and "ladder: " in (ok.findtext("system-out") or "")
    assert wrong.find("failure").get("message") == "expected fails, observed works: SRTP both ways"
    assert "RFC 5763 §6.7.2" in wrong.findtext("failure")
    assert broken.find("error").get("type") == "broken"


def _verdict(*failing: str, broken: str = "") -> Verdict:
    checks = [Check(m, f"check {m}", "RFC 5763 §5", m not in failing, "what the wire showed") for m in ("1", "5", "9")]
    return Verdict("s", not failing, checks, broken=broken)


def test_a_run_is_one_case_per_check_with_its_rfc_section(tmp_path: Path) -> None:
    root = parsed(junit.run_report(_verdict("9"), SCENARIOS["rfc5763-7.3"], tmp_path), tmp_path)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "0")
    failure = root.find(".//failure")
    assert failure.get("message") == "RFC 5763 §5: what the wire showed"
    assert [c.get("name") for c in root.iter("testcase")] == ["(1) check 1", "(5) check 5", "(9) check 9"]


def test_an_expected_failure_passes_and_an_unexpected_outcome_fails(tmp_path: Path) -> None:
    as_expected = junit.run_report(_verdict("5"), EXPECTS_FAIL, None, (True, "as expected: the call fails"))
    root = parsed(as_expected, tmp_path)
    assert (root.get("tests"), root.get("failures")) == ("4", "0")  # check 5 fails as the scenario expects
    assert "fails as the scenario expects" in root.findtext(".//system-out")
    other = junit.run_report(_verdict("9"), EXPECTS_FAIL, None, (False, "NOT as expected: the call works"))
    root = parsed(other, tmp_path)
    assert root.get("failures") == "2"  # the expectation, and check 9 which was not to fail
    broken = parsed(junit.run_report(_verdict(broken="bob: UNAVAILABLE"), EXPECTS_FAIL, None), tmp_path)
    assert (broken.get("errors"), broken.find(".//error").get("message")) == ("1", "bob: UNAVAILABLE")


@pytest.mark.lab
def test_run_writes_junit(lab, tmp_path: Path) -> None:
    running, _, _ = lab
    out = tmp_path / "junit.xml"
    args = ["run", "rfc5763-7.3", "--timers", "short", "--lab", running.name, "--out", str(tmp_path), "--junit"]
    assert cli.main([*args, str(out)]) == 0
    root = ET.parse(out).getroot()
    assert int(root.get("tests")) >= 12 and (root.get("failures"), root.get("errors")) == ("0", "0")
    assert "ladder.html" in root.findtext(".//system-out")


@pytest.mark.lab
def test_a_negative_control_fails_as_expected_with_exit_0(lab, tmp_path: Path, capsys) -> None:
    """`pinhole run no-stun-check` must FAIL (Bob's ClientHellos die at the NAT): that is as expected, exit 0,
    said in the last line, and its JUnit counts no failure."""
    running, _, _ = lab
    out = tmp_path / "junit.xml"
    args = ["run", "no-stun-check", "--timers", "short", "--lab", running.name, "--out", str(tmp_path), "--junit"]
    assert cli.main([*args, str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "as expected: verdict FAIL"
    root = ET.parse(out).getroot()
    assert (root.get("failures"), root.get("errors")) == ("0", "0")
    assert "fails as the scenario expects" in ET.tostring(root, encoding="unicode")
