"""A saved trace read back (pinhole/controller/from_trace.py, otlp.read_otlp_json): whatever the file holds, a bad
one is a TraceError naming the file, and `pinhole verdict` / `pinhole trace` say so on one line, exit 2."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_scenario import mutate

from fuzz.corpus import otlp_json as otlp_doc  # the trace.json a run writes, holding given events
from pinhole import cli
from pinhole.controller import from_trace
from pinhole.controller.from_trace import TraceError

DATA = Path(__file__).parent / "data"
EVIDENCE = json.loads((DATA / "evidence" / "rfc5763-7.3.json").read_text())  # a saved run's events, from its trace

SMALL = otlp_doc(EVIDENCE["events"][:16])  # the run span, Alice's STUN, the NAT's mapping, the INVITE: quick to parse


def read_back(path: Path) -> dict[str, Any]:
    """Everything the verdict and the ladder read of a trace file."""
    request = from_trace.load(path)
    evidence = from_trace.evidence_from_trace(request)
    from_trace.lost_spans(request, evidence["events"])
    return evidence


def test_the_saved_runs_events_come_back_from_their_trace_file(tmp_path: Path) -> None:
    """The fixture is a real trace: its events, read back, are the saved run's."""
    (tmp_path / "trace.json").write_text(json.dumps(otlp_doc(EVIDENCE["events"]), indent=1))
    evidence = read_back(tmp_path)
    assert evidence["call_id"] == EVIDENCE["call_id"] and evidence["trace_id"] == EVIDENCE["trace_id"]
    assert [(e["service"], e["kind"], e["span_id"]) for e in evidence["events"]] == [
        (e["service"], e["kind"], e["span_id"]) for e in EVIDENCE["events"]
    ]


def _span(attrs: list[dict[str, Any]]) -> str:
    doc = copy.deepcopy(SMALL)
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = attrs
    return json.dumps(doc)


# each raised something else than a TraceError before (the raw exception in the comment)
BAD_TRACES = {
    "not-utf8": (b'{"resourceSpans": [\xff]}', "not UTF-8 text"),  # UnicodeDecodeError
    "truncated": (json.dumps(SMALL, indent=1)[:500], "not JSON: "),  # JSONDecodeError
    "empty": ("", "not JSON: Expecting value"),  # JSONDecodeError
    "a-list": ("[1, 2]", "an OTLP/JSON document is an object with resourceSpans, not list"),  # AttributeError
    "null": ("null", "not NoneType"),  # AttributeError
    "spans-a-string": (  # AttributeError
        json.dumps({"resourceSpans": [{"scopeSpans": ["x"]}]}),
        "resourceSpans[0].scopeSpans[0]: an object, not str",
    ),
    "id-not-hex": (  # ValueError, from bytes.fromhex
        json.dumps(SMALL).replace(SMALL["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"], "zz"),
        "resourceSpans[0].scopeSpans[0].spans[0].spanId: 'zz' is not an id in hex",
    ),
    "value-a-list": (  # json_format.ParseError
        json.dumps(SMALL).replace('"stringValue": "controller"', '"stringValue": ["controller"]'),
        "Failed to parse resourceSpans field",
    ),
    "nested-deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply to be a trace"),  # RecursionError
    "second-line-broken": (json.dumps(SMALL) + "\n{\n", "line 2: not JSON"),  # JSONDecodeError
    "time-1e999": (  # OverflowError, from int(inf) in json_format (found by fuzz/)
        json.dumps(SMALL).replace('"kind": 1', '"kind": 1e999'),
        "not an OTLP/JSON document: cannot convert float infinity to integer",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_TRACES))
def test_a_bad_trace_file_is_a_trace_error_that_names_it(tmp_path: Path, name: str) -> None:
    content, message = BAD_TRACES[name]
    path = tmp_path / "trace.json"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(TraceError) as info:
        read_back(tmp_path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_missing_trace_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as info:
        from_trace.load(tmp_path)
    assert str(info.value) == f"{tmp_path / 'trace.json'}: cannot read: No such file or directory"


def test_an_address_map_the_file_makes_up_is_left_out(tmp_path: Path) -> None:
    """The run span's pinhole.address_map is the file's word: nested too deep (RecursionError before) or not
    {IP: column}, it adds no column."""
    for told in ("[" * 100_000, "[1, 2]", '{"203.0.113.1": ["bob"]}'):
        (tmp_path / "trace.json").write_text(_span([{"key": "pinhole.address_map", "value": {"stringValue": told}}]))
        assert read_back(tmp_path)["address_map"].get("203.0.113.1") in (None, "alice")


def test_fuzzed_trace_files_are_read_or_refused_as_trace_errors(tmp_path: Path) -> None:
    """1,000 mutations of a saved trace (fixed seed; the scenario files' mutations): each reads back, or is a
    TraceError naming the file, on one line."""
    rng, text, path = random.Random(5763), json.dumps(SMALL, indent=1), tmp_path / "trace.json"
    refused = 0
    for _ in range(1000):
        content = mutate(rng, SMALL, text, json.dumps)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        try:
            read_back(path)
        except TraceError as error:
            assert "\n" not in str(error) and str(error).startswith(f"{path}: "), str(error)
            refused += 1
    assert refused > 500  # most mutations break the file: the loop did test the refusals


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A saved run's capture, as `pinhole run` leaves it; its trace.json is up to the test."""
    shutil.copy(DATA / "runs" / "rfc5763-7.3" / "capture.pcapng", tmp_path / "capture.pcapng")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        (["verdict"], "pinhole verdict: broken: "),
        (["trace", "verdict"], "pinhole trace: broken: "),
        (["trace", "ladder"], "pinhole trace: broken: "),
    ],
)
def test_the_cli_says_a_bad_trace_on_one_line_and_exits_2(
    run_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], prefix: str
) -> None:
    (run_dir / "trace.json").write_text("[" * 100_000)
    assert cli.main([*argv, str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"{prefix}{run_dir / 'trace.json'}: nested too deeply to be a trace\n"


def test_the_ladder_of_a_run_without_its_trace_is_broken_not_a_traceback(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The verdict does without a trace (the wire is the witness); the ladder reads one (FileNotFoundError before)."""
    assert cli.main(["trace", "ladder", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"pinhole trace: broken: {run_dir / 'trace.json'}: cannot read: No such file or directory\n"


def test_a_number_too_long_for_int_is_a_trace_error(tmp_path):
    """Found by fuzz/: json's int() refuses 4,300+ digits with a ValueError of its own."""
    path = tmp_path / "trace.json"
    path.write_text('{"resourceSpans": [{"x": ' + "9" * 5000 + "}]}")
    with pytest.raises(TraceError, match="not a trace: Exceeds the limit"):
        from_trace.load(path)


def test_a_key_protobuf_cannot_encode_is_a_trace_error(tmp_path):
    """Found by fuzz/: a lone surrogate in a key makes upb raise SystemError."""
    path = tmp_path / "trace.json"
    path.write_text('{"resourceSpans": [{"\\ud800": 1}]}')
    with pytest.raises(TraceError, match="not an OTLP/JSON document"):
        from_trace.load(path)
