"""The Lab protocol: what the controller needs of a lab, and the registry of the backends that build one.

A backend renders a `Topology` (network namespaces, containers, ...) and runs programs in its nodes.
Backends are found by name through the entry points of the group "pinhole.labs" (pyproject.toml), so
the library never imports one: `netns` (namespaces, the default) and `docker` (containers through the
docker SDK) ship with pinhole; a third one is a package that declares its own entry point.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pinhole.capture import CapturePoint
from pinhole.lab.topology import Node, Topology

if TYPE_CHECKING:  # external.py builds on LabError
    from pinhole.lab.external import Rendered

ENTRY_POINT_GROUP = "pinhole.labs"
DEFAULT_BACKEND = "netns"


class LabError(RuntimeError):
    """A lab operation failed (the lab is not up, a node is unknown, a process is not ours)."""


class Process(Protocol):
    """A program a lab started in a node: its PID on this host."""

    pid: int

    def poll(self) -> int | None: ...  # its exit status once it has exited, else None (as subprocess.Popen)


@runtime_checkable
class Lab(Protocol):
    """A topology made real. `run_dir` is where the controller finds the services' gRPC sockets, their
    logs and the lab's state, on this host; `service_run_dir` the same directory as the services see it."""

    name: str
    topology: Topology
    run_dir: Path
    socket_mode: int | None  # of the lab's OTLP socket (0o666 when services run as another user)
    names_interfaces: bool  # a node's interfaces carry the topology's names

    @property
    def service_run_dir(self) -> Path: ...

    def hosts_service(self, node: Node) -> bool:
        """Whether this lab runs `node`'s service (a container lab's switches are engine networks)."""
        ...

    def service_env(self, settings: dict[str, str]) -> dict[str, str]:
        """The environment of a service started with the controller's `settings`."""
        ...

    def ns(self, node: str) -> str:
        """`node`'s network namespace, as pinhole.nsenter.in_netns enters it (a name or a /proc path)."""
        ...

    def exists(self) -> bool: ...

    def up(self) -> float:
        """Build the networks; returns the seconds it took."""
        ...

    def down(self, timeout: float = 5.0, *, keep_logs: Path | None = None) -> float:
        """Stop every process, remove every network; `keep_logs` gets each node's log first."""
        ...

    def spawn(self, node: str, argv: list[str], *, log_path: Path, env: dict[str, str]) -> Process:
        """Run `argv` in `node`, its output to `log_path`; recorded so that `down` ends it."""
        ...

    def kill(self, node: str, *, crash: bool = True, timeout: float = 5.0) -> list[Any]:
        """End what runs in `node` as a fault: SIGKILL (crash) or SIGTERM."""
        ...

    def start_external(self, node: str, program: Rendered, *, log_path: Path) -> Process:
        """Run a third party's program (or image) in `node`, pinhole's service there stopped first."""
        ...

    def stop_external(self, node: str, process: Process, timeout: float = 5.0) -> list[int]:
        """End it and everything it started; returns what had to be killed beyond its own group."""
        ...

    def exec_in(self, node: str, argv: list[str], *, timeout: float = 10.0) -> Any:
        """Run a short command in `node` (a dial action) and wait for it; `.returncode`, `.stdout`."""
        ...

    def capture_points(self) -> list[CapturePoint]:
        """Every link of the lab once, where pinhole.capture can read it."""
        ...

    def logs_hint(self) -> Path | str:
        """Where a node's log is when its service fails."""
        ...

    def status(self) -> dict[str, Any]: ...


class Backend(Protocol):
    """A lab class: built from a topology and a name, and able to list and clean up its labs on this host."""

    def __call__(self, topology: Topology, name: str = ...) -> Lab: ...

    @staticmethod
    def list_labs() -> list[str]: ...

    @staticmethod
    def cleanup_stragglers(prefix: str = "ph-") -> list[str]: ...


def backends() -> dict[str, Any]:
    """name -> entry point of every installed backend."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend(name: str) -> Backend:
    """The lab class of backend `name`; LabError naming the installed ones when there is none."""
    found = backends()
    if name not in found:
        have = ", ".join(sorted(found)) or f"none: is pinhole installed (pip install -e .)? group {ENTRY_POINT_GROUP}"
        raise LabError(f"unknown lab backend {name!r} (installed: {have})")
    cls: Backend = found[name].load()
    return cls


def open_lab(name: str, backend_name: str, topology: Topology) -> Lab:
    """The lab `name` of a backend over `topology` (not brought up: see Lab.up)."""
    return backend(backend_name)(topology, name=name)


def list_labs(backend_name: str = DEFAULT_BACKEND) -> list[str]:
    return backend(backend_name).list_labs()
