"""CPU time and resident memory of a lab's services, read from /proc: what a benchmark charges the calls.

A service's CPU counts the programs it ran and waited for (the NAT gateway's `conntrack`). The controller
(capture, judging) is charged apart: it is the lab's observer, not the system under load.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system, its waited-for children included
    rss: int  # bytes resident now


def usage(pid: int) -> Usage | None:
    """One process's usage, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # field n of proc(5) is fields[n - 3]
    return Usage(sum(int(x) for x in fields[11:15]) / TICKS, int(fields[21]) * PAGE)


def services(lab: Any) -> dict[str, Usage]:
    """node -> usage of the service running there (a netns lab's recorded processes)."""
    out = {}
    for entry in lab.processes():
        found = usage(int(entry["pid"]))
        if found is not None:
            out[entry["node"]] = found
    return out


def controller_cpu_s() -> float:
    """This process's CPU time so far, its threads (the capture) included."""
    self = resource.getrusage(resource.RUSAGE_SELF)
    return self.ru_utime + self.ru_stime


def cpu_between(before: dict[str, Usage], after: dict[str, Usage]) -> dict[str, float]:
    """CPU seconds each service spent between two readings."""
    return {node: after[node].cpu_s - before[node].cpu_s for node in after if node in before}
