"""One target in its own process: ``python -m fuzz.worker``, started and watched by ``python -m fuzz``.

A process per target keeps the campaign going whatever happens in one of them: a crash in C (libsrtp,
OpenSSL) or a loop no signal interrupts ends that worker only. The worker writes its report as JSON; the
parent (:class:`Worker`) watches its heartbeat and, if it dies or stops making progress, books the input
it was running as a crash with the end of its stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fuzz import CRASHES, REPO

if TYPE_CHECKING:
    from fuzz.engine import Report

UNRESPONSIVE = 60.0  # seconds without a new input before the parent gives up on a worker


def engine_available(name: str) -> bool:
    if name != "atheris":
        return True
    import importlib.util

    return importlib.util.find_spec("atheris") is not None


class Worker:
    """The parent's handle on one worker process."""

    def __init__(
        self,
        target: str,
        *,
        engine: str,
        inputs: int,
        seed: int,
        max_seconds: float | None,
        budget: float,
        crash_dir: Path = CRASHES,
    ) -> None:
        self.target, self.engine, self.max_seconds, self.budget = target, engine, max_seconds, budget
        self.crash_dir = crash_dir
        self.scratch = Path(tempfile.mkdtemp(prefix=f"pinhole-fuzz-{target}-"))
        self.report_path, self.heartbeat_path = self.scratch / "report.json", self.scratch / "heartbeat"
        self.stderr = open(self.scratch / "stderr", "wb")  # closed in collect()
        options: dict[str, object] = {
            "--engine": engine,
            "--inputs": inputs,
            "--seed": seed,
            "--budget": budget,
            "--crash-dir": crash_dir,
            "--report": self.report_path,
            "--heartbeat": self.heartbeat_path,
        }
        if max_seconds:
            options["--max-seconds"] = max_seconds
        argv = [sys.executable, "-m", "fuzz.worker", target, *(str(item) for pair in options.items() for item in pair)]
        self.process = subprocess.Popen(argv, cwd=REPO, stdout=self.stderr, stderr=self.stderr)
        self.started = time.monotonic()
        self._progress: tuple[int, float] = (-1, self.started)

    def stuck(self) -> str:
        """Why the worker should be stopped ("" while it is fine)."""
        now = time.monotonic()
        if self.max_seconds and now - self.started > self.max_seconds + 10 * UNRESPONSIVE:
            return f"still running {now - self.started:.0f} s after a {self.max_seconds:g} s limit"
        try:
            count, _ = self._heartbeat()
        except (OSError, ValueError):
            count = -1
        if count != self._progress[0]:
            self._progress = (count, now)
        elif now - self._progress[1] > max(UNRESPONSIVE, 10 * self.budget):
            return f"unresponsive: input {count} ran {now - self._progress[1]:.0f} s and no signal stopped it"
        return ""

    def _heartbeat(self) -> tuple[int, bytes]:
        from fuzz.engine import Heartbeat

        return Heartbeat.read(self.heartbeat_path)

    def collect(self, reason: str = "") -> Report:
        """The worker's Report; a worker that ended otherwise becomes a report of that one crash."""
        from fuzz.engine import Crash, Report, save  # noqa: F811  the real one, not only the type

        if reason:
            self.process.kill()
        code = self.process.wait()
        self.stderr.close()
        log = (self.scratch / "stderr").read_text(errors="replace")
        try:
            if not reason and code == 0:
                return Report.from_dict(json.loads(self.report_path.read_text()))
        except (OSError, ValueError):
            pass
        report = Report(self.target, self.engine, seconds=time.monotonic() - self.started)
        reason = reason or (f"killed by signal {-code}" if code < 0 else f"exited with status {code}")
        report.died = reason
        crash = Crash(f"worker {reason}", "\n".join(log.splitlines()[-40:]) or "(no output)", inputs=1)
        try:
            count, data = self._heartbeat()
            report.inputs = count + 1
            crash.files.append(str(save(self.target, data, self.crash_dir)))
        except (OSError, ValueError):
            pass
        report.crashes[crash.site] = crash
        return report

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.worker")
    parser.add_argument("target")
    parser.add_argument("--engine", choices=["atheris", "mutate"], default="mutate")
    parser.add_argument("--inputs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--crash-dir", type=Path, default=CRASHES)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--heartbeat", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.engine == "atheris":  # before anything imports pinhole
        from fuzz import coverage_guided

        targets = coverage_guided.instrumented_targets()
    else:
        from fuzz.targets import TARGETS as targets
    from fuzz import engine

    target = targets[args.target]
    heartbeat = engine.Heartbeat(args.heartbeat)

    def done(report: engine.Report) -> None:
        temporary = args.report.with_suffix(".tmp")
        temporary.write_text(json.dumps(report.to_dict()))
        os.replace(temporary, args.report)

    options = dict(
        inputs=args.inputs,
        seed=args.seed,
        max_seconds=args.max_seconds,
        budget=args.budget,
        crash_dir=args.crash_dir,
        heartbeat=heartbeat,
    )
    if args.engine == "atheris":
        coverage_guided.run(target, **options, done=done)
    done(engine.run(target, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
