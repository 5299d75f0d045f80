"""The scenario's external nodes during one run: pinhole's service on each node stopped, the third party's
program started there and ready, made to dial or hang up when the call needs it, and afterwards ended with
everything it started (and pinhole's service back, when the lab outlives the run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pinhole.lab import Lab, LabError
from pinhole.lab.external import Action, External, ExternalError, Rendered, rendered, wait_ready


class Externals:
    """`externals`: node -> External; `variables(node)`: its template variables; `service_back(node)` starts
    pinhole's service again on a node where it ran before (None: the lab goes down after the run anyway)."""

    def __init__(
        self,
        lab: Lab,
        externals: dict[str, External],
        out_dir: Path,
        variables: Callable[[str], dict[str, str]],
        service_back: Callable[[str], None] | None,
    ) -> None:
        self.lab, self.externals, self.out_dir = lab, externals, out_dir
        self.variables, self.service_back = variables, service_back
        self.programs: dict[str, Rendered] = {}
        self.processes: dict[str, Any] = {}
        self.replaced: list[str] = []  # nodes whose pinhole service was stopped for the run
        self.notes: list[str] = []  # what the verdict's notes say of them (stragglers, a missing key log)
        self.ready_s: dict[str, float] = {}  # node -> seconds until it was ready: the run's measurements
        self.on_started: Callable[[str], object] | None = None  # e.g. the capture following a node's new namespace

    def __bool__(self) -> bool:
        return bool(self.externals)

    def start(self) -> None:
        """Each node in turn: stop pinhole's service, render the files, start the program, wait until ready.
        A caller that calls as soon as it runs (no dial action) starts when the call is placed (dial)."""
        for node, external in self.externals.items():
            if node == "alice" and external.dial is None:
                continue
            self._start(node, external)

    def _start(self, node: str, external: External) -> None:
        """Stop pinhole's service on `node`, render the files, start the program, wait until it is ready."""
        spec = self.lab.topology.nodes[node]
        if self.lab.hosts_service(spec):
            with contextlib.suppress(LabError):  # not running (a lab left half up): nothing to stop
                self.lab.kill(node, crash=False)
            self.replaced.append(node)
        program = rendered(external, self.variables(node), (self.out_dir / f"{node}.d").resolve())
        log = self.out_dir / f"{node}.log"
        process = self.lab.start_external(node, program, log_path=log)
        self.programs[node], self.processes[node] = program, process
        if self.on_started is not None:
            self.on_started(node)
        if external.ready is not None:
            address = spec.addresses[0].split("/")[0]
            self.ready_s[node] = wait_ready(
                external.ready,
                netns=self.lab.ns(node),
                address=address,
                log=log,
                alive=lambda: process.poll() is None,
                what=f"{node} ({external.label})",
            )

    def dial(self, node: str) -> bool:
        """Make `node` call: its dial action, or, for a program that calls as soon as it runs, starting it."""
        if node not in self.programs:
            self._start(node, self.externals[node])
            return True
        return self._act(node, self.programs[node].dial, "dial")

    def hang_up(self, node: str) -> bool:
        """Make `node` hang up; False when it has no hang-up action."""
        return node in self.programs and self._act(node, self.programs[node].hangup, "hangup")

    def _act(self, node: str, action: Action | None, name: str) -> bool:
        if action is None:
            return False
        if action.stdin:
            stdin = self.processes[node].stdin
            if stdin is None:
                raise ExternalError(f"{node}: {name} writes to its standard input, which this backend does not offer")
            try:
                stdin.write(action.stdin.encode())
                stdin.flush()
            except OSError as error:
                raise ExternalError(f"{node}: {name}: its standard input is closed ({error}): did it exit?") from None
        if action.command:
            done = self.lab.exec_in(node, list(action.command))
            if done.returncode != 0:
                said = (done.stdout + done.stderr).decode(errors="replace").strip()[-300:]
                raise ExternalError(f"{node}: {name} command exited {done.returncode}: {said}")
        return True

    def key_log(self) -> list[str]:
        """The NSS key log lines the programs wrote, where they can and the scenario says where."""
        lines = []
        for node, program in self.programs.items():
            if not program.key_log:
                continue
            try:
                lines += [line for line in Path(program.key_log).read_text().splitlines() if line.strip()]
            except OSError as error:
                self.notes.append(f"{node}: no key log at {program.key_log} ({error.strerror})")
        return lines

    def stop(self) -> None:
        """End every program (and all it started), then start pinhole's services again where they ran."""
        for node, process in self.processes.items():
            stragglers = self.lab.stop_external(node, process, self.externals[node].stop_timeout)
            if stragglers:
                self.notes.append(f"{node}: {len(stragglers)} process(es) left its process group and were killed")
        self.processes.clear()
        if self.service_back is not None:
            for node in self.replaced:
                self.service_back(node)
