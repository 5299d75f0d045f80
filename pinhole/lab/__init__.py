"""The lab, backend-neutral: its topology (topology.py) and the Lab protocol with its backends (backend.py).

Backends (netns/, containers/) implement the protocol and import from here, never from each other;
the controller opens a lab by backend name and drives it only through the protocol.
"""

from pinhole.lab.backend import (
    DEFAULT_BACKEND,
    Backend,
    Lab,
    LabError,
    Process,
    backend,
    backends,
    list_labs,
    open_lab,
)
from pinhole.lab.topology import (
    DEFAULT_TOPOLOGY,
    LAB_NAME_RE,
    RUN_BASE,
    Link,
    Node,
    Route,
    Topology,
    TopologyError,
    load_topology,
    parse_topology,
)

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_TOPOLOGY",
    "LAB_NAME_RE",
    "RUN_BASE",
    "Backend",
    "Lab",
    "LabError",
    "Link",
    "Node",
    "Process",
    "Route",
    "Topology",
    "TopologyError",
    "backend",
    "backends",
    "list_labs",
    "load_topology",
    "open_lab",
    "parse_topology",
]
