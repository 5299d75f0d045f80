"""Run a target on inputs, each under a time budget, and keep one traceback per distinct crash site.

A crash is whatever escapes the target (see :mod:`fuzz.targets`), or an input that runs past the budget
(:class:`Hang`, raised by SIGALRM; a BaseException, so no ``except Exception`` in the code under test can
swallow it). Its site is the innermost frame in pinhole's own code (else the innermost frame), so the same
bug reached by a thousand inputs is reported once; every distinct crashing input is written to
fuzz/crashes/<target>-<sha1>.bin. Throughput (inputs/s) and the slowest input are measured and printed,
never asserted: a campaign's numbers depend on the machine.

:class:`Heartbeat` lets the parent process watch a worker that no signal can interrupt (a loop in C): the
worker writes the input it is about to run into a small shared file, the parent reads it back if the
worker dies or stops making progress.
"""

from __future__ import annotations

import hashlib
import mmap
import random
import signal
import struct
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from fuzz import CRASHES, REPO

if TYPE_CHECKING:
    from fuzz.targets import Target

BUDGET = 5.0  # seconds one input may take before it is a hang
OWN_CODE = (str(REPO / "pinhole") + "/", str(REPO / "services") + "/")


class Hang(BaseException):
    """An input ran past the per-input time budget."""


@dataclass
class Crash:
    site: str  # "ExceptionType at file:line in function"
    traceback: str
    inputs: int = 0  # how many inputs crashed here
    files: list[str] = field(default_factory=list)  # the first few of them, as written


@dataclass
class Report:
    target: str
    engine: str
    inputs: int = 0
    seconds: float = 0.0
    slowest: float = 0.0  # seconds of the slowest input
    slowest_file: str = ""  # written when it took more than a tenth of the budget
    seeds: int = 0
    crashes: dict[str, Crash] = field(default_factory=dict)
    died: str = ""  # the worker did not end by itself (signal, unresponsive): what the parent saw

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def crashing_inputs(self) -> int:
        return sum(c.inputs for c in self.crashes.values())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Report:
        crashes = {site: Crash(**crash) for site, crash in data.pop("crashes").items()}  # type: ignore[attr-defined]
        return cls(**data, crashes=crashes)  # type: ignore[arg-type]

    def line(self) -> str:
        verdict = (
            f"{len(self.crashes)} crash site(s), {self.crashing_inputs} crashing input(s)" if self.crashes else "0"
        )
        return (
            f"{self.target:13} {self.engine:8} inputs {self.inputs:>9,}  {self.rate:>8,.0f}/s  "
            f"slowest {self.slowest * 1000:>7.1f} ms  seeds {self.seeds:>4}  crashes {verdict}"
        )


def crash_site(error: BaseException) -> str:
    """Where a crash happened: the exception type and the innermost frame of pinhole's own code; for a hang,
    the function it was in (where the alarm lands within it varies)."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if f.filename.startswith(OWN_CODE)] or frames
    if not own:
        return type(error).__name__
    frame = own[-1]
    path = Path(frame.filename)
    where = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else frame.filename
    if isinstance(error, Hang):
        return f"Hang in {where} {frame.name}"
    return f"{type(error).__name__} at {where}:{frame.lineno} in {frame.name}"


def save(target: str, data: bytes, directory: Path = CRASHES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{target}-{hashlib.sha1(data).hexdigest()}.bin"
    path.write_bytes(data)
    return path


class Heartbeat:
    """A shared file: input counter (8 bytes), input length (4 bytes), then the input (up to ``size``)."""

    HEADER = struct.Struct("<QI")

    def __init__(self, path: Path, size: int = 1 << 21) -> None:
        self.path, self.size = path, size
        with open(path, "wb") as f:
            f.truncate(self.HEADER.size + size)
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)

    def beat(self, count: int, data: bytes) -> None:
        data = data[: self.size]
        self._map[self.HEADER.size : self.HEADER.size + len(data)] = data
        self.HEADER.pack_into(self._map, 0, count, len(data))

    @classmethod
    def read(cls, path: Path) -> tuple[int, bytes]:
        raw = path.read_bytes()
        count, length = cls.HEADER.unpack_from(raw)
        return count, raw[cls.HEADER.size : cls.HEADER.size + length]


@contextmanager
def time_budget(seconds: float) -> Iterator[Callable[[], None]]:
    """Within: ``arm()`` before each input; SIGALRM raises Hang ``seconds`` later. Main thread only."""

    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"input ran longer than the {seconds:g} s budget")

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        yield lambda: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Runner:
    """Runs one target's inputs one at a time and books the outcome into a Report."""

    def __init__(
        self,
        target: Target,
        report: Report,
        *,
        budget: float = BUDGET,
        crash_dir: Path = CRASHES,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.target, self.report, self.budget, self.crash_dir = target, report, budget, crash_dir
        self.heartbeat = heartbeat
        self._arm: Callable[[], None] = lambda: None
        self._slowest = b""

    @contextmanager
    def armed(self) -> Iterator[Runner]:
        with time_budget(self.budget) as arm:
            self._arm = arm
            yield self

    def one(self, data: bytes) -> None:
        report = self.report
        if self.heartbeat is not None:
            self.heartbeat.beat(report.inputs, data)
        start = time.perf_counter()
        try:
            try:
                self._arm()
                self.target.run(data)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except (Exception, Hang) as error:  # noqa: BLE001  that is what a crash is
            self._crash(data, error)
        elapsed = time.perf_counter() - start
        if elapsed > report.slowest:
            report.slowest, self._slowest = elapsed, data
        report.inputs += 1

    def finish(self) -> None:
        """Keep the slowest input when it is worth a look (over a tenth of the budget)."""
        if self.report.slowest > self.budget / 10:
            self.report.slowest_file = str(save(f"{self.target.name}-slowest", self._slowest, self.crash_dir))

    def _crash(self, data: bytes, error: BaseException) -> None:
        site = crash_site(error)
        crash = self.report.crashes.get(site)
        if crash is None:
            crash = self.report.crashes[site] = Crash(site, _shortened(traceback.format_exception(error)))
        crash.inputs += 1
        if len(crash.files) < 5:
            crash.files.append(str(save(self.target.name, data, self.crash_dir)))


def run(
    target: Target,
    *,
    inputs: int,
    seed: int,
    max_seconds: float | None = None,
    budget: float = BUDGET,
    crash_dir: Path = CRASHES,
    heartbeat: Heartbeat | None = None,
) -> Report:
    """The deterministic mode: the target's seeds, then mutants from ``random.Random(seed)``, until ``inputs``
    have run or ``max_seconds`` have passed, whichever comes first."""
    from fuzz.mutate import Mutator

    seeds = target.seeds()
    report = Report(target.name, "mutate", seeds=len(seeds))
    mutator, rng = Mutator(seeds, target.kind), random.Random(seed)
    runner = Runner(target, report, budget=budget, crash_dir=crash_dir, heartbeat=heartbeat)
    start = time.monotonic()
    deadline = start + max_seconds if max_seconds else float("inf")
    with runner.armed():
        for index in range(inputs):
            if index % 64 == 0 and time.monotonic() > deadline:
                break
            runner.one(mutator.input(rng, index))
    report.seconds = time.monotonic() - start
    runner.finish()
    return report


def _shortened(lines: list[str], head: int = 12, tail: int = 30) -> str:
    """A traceback, its middle left out when it is long (a recursion repeats the same frames)."""
    text = "".join(lines).rstrip().splitlines()
    if len(text) > head + tail + 1:
        text = [*text[:head], f"    ... {len(text) - head - tail} lines left out ...", *text[-tail:]]
    return "\n".join(text)
