"""A saved run judged again: its capture and key log, and (unless told otherwise) its trace.

`pinhole verdict`, `pinhole trace verdict` and `pinhole verdict --from-capture` all come here, so they
cannot disagree: the checks read the same wire; the trace only adds the services' own word for what no
packet can show, and `--from-capture` does without it.
"""

from __future__ import annotations

from pathlib import Path

from pinhole import pcapng, wire
from pinhole.controller import from_trace, verdict

CAPTURE, KEYS, TRACE = "capture.pcapng", "keys.log", "trace.json"


class SavedRunError(RuntimeError):
    """The run directory lacks what the verdict reads: the message names the file."""


def run_dir_of(path: Path) -> Path:
    """The run directory of `path`: itself, or the directory of a file in it (trace.json, capture.pcapng)."""
    return path if path.is_dir() else path.parent


def load_wire(run_dir: Path) -> wire.Wire:
    """The run's capture decoded, with keys.log beside it added to the key log it embeds."""
    capture_path = run_dir / CAPTURE
    if not capture_path.exists():
        raise SavedRunError(f"{capture_path}: no capture: the verdict reads the wire")
    try:
        capture = pcapng.read_pcapng(capture_path)
    except pcapng.PcapngError as error:
        raise SavedRunError(str(error)) from None
    keys = run_dir / KEYS
    return wire.decode(capture, keys.read_text() if keys.exists() else "")


def judge_run(path: Path, *, from_capture: bool = False, call_id: str | None = None) -> verdict.Verdict:
    """The verdict of a saved run (a run directory, or a file in one)."""
    run_dir = run_dir_of(path)
    on_the_wire = load_wire(run_dir)
    reports = None
    trace = path if path.is_file() and path.name != CAPTURE else run_dir / TRACE
    if not from_capture and trace.exists():
        call_id = call_id or on_the_wire.info.get("call_id")
        reports = from_trace.evidence_from_trace(from_trace.load(trace), call_id)["events"]
    return verdict.judge(on_the_wire, call_id=call_id, reports=reports)
