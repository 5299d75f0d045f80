"""The netns lab backend: the RFC 5763 §7.3 topology as Linux network namespaces.

A topology (pinhole.lab.topology) is data; `NetnsLab` renders it with pyroute2: one namespace per
node, named "<lab>-<node>", veth pairs created straight into their namespaces, a bridge inside
its own namespace for the public segment, addresses, routes and sysctls. Nothing touches the
host's namespace, so several labs with different names coexist.

The lab also runs processes in nodes (`spawn`, `ip netns exec` underneath, PIDs recorded in
<run_dir>/state.json so another process can clean up) and says where each link is captured
(`capture_points`, for pinhole.capture).

Entering a namespace is per thread (pinhole.nsenter.in_netns), so a single process can open
sockets in several namespaces; a socket stays in the namespace where it was created.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pinhole.capture import CapturePoint
from pinhole.lab import LAB_NAME_RE, RUN_BASE, LabError, Node, Topology, TopologyError, load_topology
from pinhole.lab.external import Rendered
from pinhole.nsenter import CLONE_NEWNET, NETNS_DIR, in_netns
from pinhole.nsenter import setns as _setns

STATE_FILE = "state.json"
ETC_NETNS = Path("/etc/netns")  # per-namespace /etc files that `ip netns exec` mounts
CHECKOUT = Path(__file__).resolve().parents[1]  # holds netns/ and services/

FIRST_IFINDEX = 100  # link N gets ifindex 100+2N and 101+2N
CARRIER_TIMEOUT = 3.0
BR_STATE_FORWARDING = 3


# --------------------------------------------------------------------------- namespaces

_libc = ctypes.CDLL(None, use_errno=True)


MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2


def _ensure_shared_rundir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so namespace mounts made
    later propagate into mount namespaces created earlier (e.g. by `ip netns exec`)."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    rundir = bytes(NETNS_DIR)
    if _libc.mount(b"none", rundir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(rundir, rundir, b"none", MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind-mounting {NETNS_DIR} onto itself: {os.strerror(err)}")
    if _libc.mount(b"none", rundir, b"none", MS_SHARED | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"making {NETNS_DIR} a shared mount: {os.strerror(err)}")


def _netns_create(ns: str) -> None:
    """Create a named network namespace without forking: unshare(2) the calling thread into a
    new namespace, bind-mount it at /run/netns/NAME, and setns(2) back. (pyroute2's create()
    forks a Python child, which is unsafe in a process with gRPC or other threads running.)"""
    _ensure_shared_rundir()
    path = NETNS_DIR / ns
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET) for {ns}: {os.strerror(err)}")
        try:
            source = b"/proc/thread-self/ns/net"
            if _libc.mount(source, bytes(path), b"none", MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bind-mounting namespace {ns}: {os.strerror(err)}")
        finally:
            _setns(saved)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(saved)


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        path.write_text(value + "\n")
    except FileNotFoundError:
        raise LabError(f"sysctl {name} does not exist in this kernel") from None
    except OSError as e:
        raise LabError(f"sysctl {name}={value}: {e.strerror}") from e


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _netns_remove(ns: str) -> bool:
    """Unmount and unlink /run/netns/NAME (and its /etc/netns/NAME files); the kernel frees the namespace
    once nothing uses it."""
    shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    path = NETNS_DIR / ns
    _libc.umount2(bytes(path), MNT_DETACH)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _add_veth(ipr: Any, end_a: tuple[str, int], end_b: tuple[str, int], peer_ns: str | None) -> None:
    """Create a veth pair with both ifindexes chosen: pyroute2's `peer=` cannot set the peer's
    ifindex (it lives in the peer's ifinfomsg header, VETH_INFO_PEER), so build the request."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    fd = None if peer_ns is None else os.open(NETNS_DIR / peer_ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer_attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", end_b[0])]
        if fd is not None:
            peer_attrs.append(("IFLA_NET_NS_FD", fd))
        peer = {"index": end_b[1], "attrs": peer_attrs}
        msg = ifinfmsg()
        msg["index"] = end_a[1]
        msg["attrs"] = [
            ("IFLA_IFNAME", end_a[0]),
            (
                "IFLA_LINKINFO",
                {
                    "attrs": [
                        ("IFLA_INFO_KIND", "veth"),
                        (
                            "IFLA_INFO_DATA",
                            {"attrs": [("VETH_INFO_PEER", peer)]},
                        ),
                    ]
                },
            ),
        ]
        msg["header"]["type"] = RTM_NEWLINK
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        tuple(ipr.nlm_request_batch([msg]))
    finally:
        if fd is not None:
            os.close(fd)


def _wait_carrier(iprs: dict[str, Any], topology: Topology, deadline: float) -> None:
    """Wait until every veth end is operationally up and every bridge port forwards, so the
    lab carries packets when up() returns (the kernel applies carrier changes asynchronously)."""
    pending = {(n, ifname) for link in topology.links for n, ifname in (link.a, link.b)}
    while True:
        for node in sorted({n for n, _ in pending}):
            for msg in iprs[node].get_links():
                key = (node, msg.get_attr("IFLA_IFNAME"))
                if key not in pending or msg.get_attr("IFLA_OPERSTATE") != "UP":
                    continue
                if topology.nodes[node].kind == "switch":
                    info = msg.get_attr("IFLA_LINKINFO")
                    slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info else None
                    if slave is None or slave.get_attr("IFLA_BRPORT_STATE") != BR_STATE_FORWARDING:
                        continue
                pending.discard(key)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{n}:{i}" for n, i in sorted(pending))
            raise LabError(f"interfaces not up after {CARRIER_TIMEOUT} s: {names}")
        time.sleep(0.001)


def pids_in_netns(ns: str) -> list[int]:
    """PIDs of every process whose network namespace is `ns` (for leak checks)."""
    try:
        st = os.stat(NETNS_DIR / ns)
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino):
            out.append(int(entry))
    return sorted(out)


# --------------------------------------------------------------------------- processes

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[19])


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _open_if_ours(entry: dict[str, Any]) -> int | None:
    """A pidfd on the recorded process if it is still the one we started: same start time
    (PIDs are reused, start times are not) and the command line we ran, either still
    `ip netns exec NS ARGV...` or ARGV after the exec. None if it is gone or not ours."""
    pid = int(entry["pid"])
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    stat = _proc_stat(pid)
    cmdline = _proc_cmdline(pid)
    argv = list(entry["argv"])
    forms = [argv] + [[ip, "netns", "exec", entry["netns"], *argv] for ip in ("ip", entry["ip"])]
    ours = stat is not None and stat[1] == entry["starttime"] and stat[0] not in ("Z", "X")
    if not ours or (cmdline not in forms and not entry.get("group")):  # a third party may retitle itself
        os.close(fd)
        return None
    return fd


def _wait_pidfds(fds: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait until the processes behind `fds` (pid -> pidfd) exit; returns those still alive."""
    alive = dict(fds)
    poller = select.poll()
    by_fd = {fd: pid for pid, fd in alive.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ev in poller.poll(remaining * 1000):
            poller.unregister(fd)
            alive.pop(by_fd[fd], None)
    return alive


def _terminate(
    entries: list[dict[str, Any]], timeout: float, first: signal.Signals = signal.SIGTERM
) -> dict[int, int | None]:
    """Send `first` (SIGTERM) to the recorded processes that are still ours, wait, SIGKILL the rest.
    Returns pid -> exit status for the ones that were our children (None otherwise)."""
    fds: dict[int, int] = {}
    for entry in entries:
        fd = _open_if_ours(entry)
        if fd is not None:
            fds[int(entry["pid"])] = fd
    groups = [int(e["pid"]) for e in entries if e.get("group") and int(e["pid"]) in fds]  # leaders of their session
    try:
        for fd in fds.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, first)
        for pgid in groups:  # and every process the program made, still in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, first)
        alive = _wait_pidfds(fds, timeout)
        for fd in alive.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        _wait_pidfds(alive, 5.0)
    finally:
        for fd in fds.values():
            os.close(fd)
    result: dict[int, int | None] = {}
    for entry in entries:
        pid = int(entry["pid"])
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(pid)
            # Reap our own children once they are gone (signalled by us or exited before).
            if child is not None and (pid in fds or child.poll() is not None):
                del _CHILDREN[pid]
            else:
                child = None
        status = None
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = child.wait(timeout=5.0)
        result[pid] = status
    return result


# --------------------------------------------------------------------------- the lab


class NetnsLab:
    """A topology rendered as network namespaces named "<name>-<node>" (a pinhole.lab.Lab)."""

    socket_mode = None  # the services run as root, like the controller
    names_interfaces = True

    def __init__(self, topology: Topology, name: str = "ph-lab", run_dir: Path | None = None) -> None:
        if not LAB_NAME_RE.match(name):
            raise LabError(f"lab name {name!r} does not match ^ph-[a-z0-9-]{{1,20}}$")
        self.topology = topology
        self.name = name
        self.run_dir = RUN_BASE / name if run_dir is None else Path(run_dir)
        self._lock = threading.Lock()

    @property
    def service_run_dir(self) -> Path:
        """The run directory as the services see it (the same: they share the host's filesystem)."""
        return self.run_dir

    def logs_hint(self) -> Path:
        """Where a service's log is when it fails: <run_dir>/<node>.log."""
        return self.run_dir

    def hosts_service(self, node: Node) -> bool:
        """Every node's service runs in its namespace, a switch's too (it hosts the segment's faults)."""
        return bool(node.service)

    def service_env(self, settings: dict[str, str]) -> dict[str, str]:
        """The controller's environment minus its OTEL_* settings (none of the caller's sampler, limits or
        SDK switch may change the evidence), plus `settings`, with this checkout's packages importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
        return env

    # ---- names

    def ns(self, node: str) -> str:
        if node not in self.topology.nodes:
            raise LabError(f"lab {self.name} has no node {node!r}")
        return f"{self.name}-{node}"

    def address(self, node: str, ifname: str | None = None) -> str:
        """The node's first IPv4 address (of `ifname` if given), without the prefix length."""
        self.ns(node)
        spec = self.topology.nodes[node]
        if ifname is None:
            addresses = spec.addresses
        elif ifname in spec.interfaces:
            addresses = spec.interfaces[ifname]
        else:
            raise LabError(f"node {node!r} of lab {self.name} has no interface {ifname!r}")
        if not addresses:
            where = node if ifname is None else f"{node}:{ifname}"
            raise LabError(f"{where} of lab {self.name} has no address")
        return addresses[0].split("/")[0]

    def namespaces(self) -> list[str]:
        return [self.ns(node) for node in self.topology.nodes]

    def exists(self) -> bool:
        present = set(_netns_names())
        return any(ns in present for ns in self.namespaces())

    # ---- state

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write state.json under a lock (threads and other processes)."""
        with self._lock:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / ".lock", "a+") as lockf:
                fcntl.flock(lockf, fcntl.LOCK_EX)
                state = _read_state(self.state_path) or {
                    "lab": self.name,
                    "namespaces": [],
                    "processes": [],
                }
                yield state
                tmp = self.state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=2) + "\n")
                os.replace(tmp, self.state_path)

    def processes(self) -> list[dict[str, Any]]:
        """The processes recorded in state.json (pid, node, argv, log, ...)."""
        state = _read_state(self.state_path)
        return list(state["processes"]) if state else []

    def status(self) -> dict[str, Any]:
        """What exists now: namespaces present, recorded processes and whether each is still
        running (and still ours)."""
        present = set(_netns_names())
        processes = []
        for entry in self.processes():
            fd = _open_if_ours(entry)
            if fd is not None:
                os.close(fd)
            processes.append({**entry, "running": fd is not None})
        return {
            "lab": self.name,
            "up": self.exists(),
            "run_dir": str(self.run_dir),
            "namespaces": {ns: ns in present for ns in self.namespaces()},
            "processes": processes,
        }

    # ---- up / down

    def up(self) -> float:
        """Build every namespace, link, address, route and sysctl; returns seconds taken.

        On any failure everything made so far is torn down and the error re-raised.
        """
        from pyroute2 import IPRoute

        started = time.perf_counter()
        if self.exists():
            raise LabError(f"lab {self.name} is already up; call down() first")
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            state = _read_state(self.state_path)
            if state is None or state.get("lab") != self.name:
                raise LabError(f"run_dir {self.run_dir} is not empty and holds no state of lab {self.name}")
        created: list[str] = []
        iprs: dict[str, Any] = {}
        try:
            with self._state() as state:
                state.update(lab=self.name, namespaces=[], processes=[], created=time.time())
            for node in self.topology.nodes:
                self._create_recorded(self.ns(node))
                created.append(self.ns(node))
            for node in self.topology.nodes:
                with in_netns(self.ns(node)):
                    if not self.topology.ipv6 and Path("/proc/sys/net/ipv6").exists():
                        # Before any interface exists, so none ever gets an IPv6 address.
                        _write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                        _write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
                    # Opened in the namespace by this thread: IPRoute(netns=...) would fork
                    # a child per namespace just to open the socket.
                    iprs[node] = IPRoute()
            for node, spec in self.topology.nodes.items():
                ipr = iprs[node]
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                if spec.kind == "switch":
                    ipr.link("add", ifname=spec.bridge, kind="bridge")
            for number, link in enumerate(self.topology.links):
                (node_a, if_a), (node_b, if_b) = link.a, link.b
                # Distinct ifindexes for the two ends: the kernel treats a carrier change as
                # urgent only when a device's ifindex differs from its peer's (iflink), and
                # otherwise delays it by up to a second, which a bridge port waits for.
                _add_veth(
                    iprs[node_a],
                    (if_a, FIRST_IFINDEX + 2 * number),
                    (if_b, FIRST_IFINDEX + 2 * number + 1),
                    None if node_b == node_a else self.ns(node_b),
                )
            for node, spec in self.topology.nodes.items():
                ipr = iprs[node]
                if spec.kind == "switch":
                    bridge_index = ipr.link_lookup(ifname=spec.bridge)[0]
                    for port in self.topology.ports(node):
                        index = ipr.link_lookup(ifname=port)[0]
                        ipr.link("set", index=index, master=bridge_index)
                        ipr.link("set", index=index, state="up")
                    ipr.link("set", index=bridge_index, state="up")
                    continue
                for ifname, addrs in spec.interfaces.items():
                    index = ipr.link_lookup(ifname=ifname)[0]
                    for addr in addrs:
                        iface = ipaddress.IPv4Interface(addr)
                        ipr.addr(
                            "add",
                            index=index,
                            address=str(iface.ip),
                            prefixlen=iface.network.prefixlen,
                            broadcast=str(iface.network.broadcast_address),
                        )
                    ipr.link("set", index=index, state="up")
                for route in spec.routes:
                    dst = "0.0.0.0/0" if route.to == "default" else route.to
                    ipr.route("add", dst=dst, gateway=route.via)
            _wait_carrier(iprs, self.topology, deadline=time.monotonic() + CARRIER_TIMEOUT)
            for node, spec in self.topology.nodes.items():
                # a node forwards only if it says so: a new namespace may inherit the host's
                # ip_forward (container runtimes turn it on), and a host must not route
                sysctls = {"net.ipv4.ip_forward": "0", **spec.sysctls}
                with in_netns(self.ns(node)):
                    for key, value in sysctls.items():
                        _write_sysctl(key, value)
        except BaseException:
            for ipr in iprs.values():
                with contextlib.suppress(Exception):
                    ipr.close()
            iprs.clear()
            for ns in created:
                with contextlib.suppress(OSError):
                    _netns_remove(ns)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:
            for ipr in iprs.values():
                with contextlib.suppress(Exception):
                    ipr.close()
        return time.perf_counter() - started

    def _create_recorded(self, ns: str) -> None:
        """Record `ns` in state.json, then create it: down() deletes only what is recorded, so a crash
        mid-up still leaves a record, and a namespace someone else made under our name is never ours."""
        with self._state() as state:
            state["namespaces"].append(ns)
        try:
            _netns_create(ns)
        except BaseException as error:
            with self._state() as state:
                state["namespaces"].remove(ns)
            if isinstance(error, FileExistsError):
                raise LabError(f"namespace {ns} already exists and is not lab {self.name}'s") from None
            raise

    def down(self, timeout: float = 5.0, *, keep_logs: Path | None = None) -> float:
        """Stop recorded processes (those still ours), delete the namespaces the lab recorded creating
        (never one that merely shares its prefix), remove run_dir. Idempotent; returns seconds taken.
        `keep_logs`: a directory that gets each process's whole log (<node>.log) once it has ended."""
        started = time.perf_counter()
        state = _read_state(self.state_path)
        if state is not None:
            _terminate(list(state.get("processes", [])), timeout)
            if keep_logs is not None:
                for entry in state.get("processes", []):
                    with contextlib.suppress(OSError, KeyError):
                        shutil.copy(entry["log"], Path(keep_logs) / f"{entry['node']}.log")
        for ns in sorted(set((state or {}).get("namespaces", []))):
            _netns_remove(ns)
        if state is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        elif self.run_dir.is_dir():
            (self.run_dir / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only if empty: run_dir may be a directory we do not own
        return time.perf_counter() - started

    # ---- processes

    def spawn(
        self,
        node: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        group: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Run `argv` inside the node's namespace (`ip netns exec`, which execs, so the PID is
        the program's); stdout and stderr go to `log_path`. The PID is recorded in state.json.

        `group`: a program of a third party, in a session of its own with its stdin a pipe: ending it ends
        every process it made (its process group), whatever it calls itself by then."""
        ns = self.ns(node)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise LabError(f"spawn on {node}: argv must be a non-empty list of strings")
        if not (NETNS_DIR / ns).exists():
            raise LabError(f"spawn on {node}: lab {self.name} is not up")
        ip = shutil.which("ip")
        if ip is None:
            raise LabError("spawn: the ip command (iproute2) is not installed")
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [ip, "netns", "exec", ns, *argv],
                stdin=subprocess.PIPE if group else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                close_fds=True,
                start_new_session=group,
            )
        stat = _proc_stat(proc.pid)
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = proc
        with self._state() as state:
            state["processes"].append(
                {
                    "pid": proc.pid,
                    "starttime": stat[1] if stat else -1,
                    "node": node,
                    "netns": ns,
                    "ip": ip,
                    "argv": list(argv),
                    "log": str(log_path),
                    **({"group": True} if group else {}),
                }
            )
        return proc

    # ---- third parties' programs

    def start_external(self, node: str, program: Rendered, *, log_path: Path) -> subprocess.Popen[bytes]:
        """Run a third party's program in `node` (pinhole's service there must be stopped first): its own
        session, its stdin a pipe for dial actions, names resolved inside the lab only."""
        if not program.argv:
            raise LabError(f"{node}: external node {program.external.label!r} has no program for namespaces")
        if shutil.which(program.argv[0]) is None and not Path(program.argv[0]).is_file():
            raise LabError(f"{node}: {program.argv[0]} is not installed (make setup installs the recipes' programs)")
        self._contain_names(node)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(program.config_dir), **program.env}
        return self.spawn(node, list(program.argv), log_path=log_path, env=env, cwd=program.config_dir, group=True)

    def stop_external(self, node: str, process: subprocess.Popen[bytes], timeout: float = 5.0) -> list[int]:
        """End the program and every process it made (its group, SIGTERM then SIGKILL); then any process
        still in the node that the lab did not record (one that left its group) is killed too. Returns the
        PIDs of those stragglers."""
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        with contextlib.suppress(LabError):  # already gone from the records: the group may still be there
            self.stop(process.pid, timeout)
        recorded = {int(p["pid"]) for p in self.processes()}
        stragglers = [pid for pid in pids_in_netns(self.ns(node)) if pid not in recorded and pid != os.getpid()]
        fds = {}
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                fds[pid] = os.pidfd_open(pid)
                signal.pidfd_send_signal(fds[pid], signal.SIGKILL)
        try:
            _wait_pidfds(fds, timeout)  # gone before the node is reused
        finally:
            for fd in fds.values():
                os.close(fd)
        return stragglers

    def exec_in(self, node: str, argv: list[str], *, timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
        """Run a short command in `node` and wait for it (a dial action): output captured, never a shell."""
        self._contain_names(node)
        try:
            return subprocess.run(
                ["ip", "netns", "exec", self.ns(node), *argv], capture_output=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise LabError(f"{node}: {' '.join(argv)}: {error}") from None

    def _contain_names(self, node: str) -> None:
        """`ip netns exec` mounts /etc/netns/<ns>/ over /etc: a resolver that asks nobody (no DNS query can
        leave the lab) and a hosts file with the lab's node names."""
        folder = ETC_NETNS / self.ns(node)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text("# pinhole lab: no DNS outside the lab\nnameserver 127.0.0.1\n")
        hosts = [f"{n.addresses[0].split('/')[0]}\t{name}" for name, n in self.topology.nodes.items() if n.addresses]
        (folder / "hosts").write_text("127.0.0.1\tlocalhost\n" + "\n".join(hosts) + "\n")

    def stop(self, pid: int, timeout: float = 5.0) -> int | None:
        """SIGTERM a process this lab spawned, SIGKILL after `timeout`; returns its exit
        status when it was a child of this Python process (None otherwise)."""
        state = _read_state(self.state_path)
        entries = [p for p in (state or {}).get("processes", []) if int(p["pid"]) == pid]
        if not entries:
            raise LabError(f"pid {pid} was not spawned by lab {self.name}")
        status = _terminate(entries, timeout)[pid]
        with self._state() as st:
            st["processes"] = [p for p in st["processes"] if int(p["pid"]) != pid]
        return status

    def kill(self, node: str, *, crash: bool = True, timeout: float = 5.0) -> list[int]:
        """End the node's service as a fault: SIGKILL (a crash: nothing flushed) or, with crash=False,
        SIGTERM (a graceful restart). The namespace stays; spawn() starts the service again."""
        entries = [p for p in self.processes() if p.get("node") == node]
        if not entries:
            raise LabError(f"kill {node}: lab {self.name} runs no process there")
        _terminate(entries, timeout, signal.SIGKILL if crash else signal.SIGTERM)
        ended = {int(p["pid"]) for p in entries}
        with self._state() as st:
            st["processes"] = [p for p in st["processes"] if int(p["pid"]) not in ended]
        return sorted(ended)

    # ---- capture

    def capture_points(self) -> list[CapturePoint]:
        """Every link of the lab, once, at the end `Topology.capture_ends` picks (pinhole.capture)."""
        return [
            CapturePoint(f"{node}:{ifname}", ifname, self.ns(node), description)
            for node, ifname, description in self.topology.capture_ends()
        ]

    # ---- every lab on the machine

    @staticmethod
    def list_labs() -> list[str]:
        """Names of the labs that have namespaces ("ph-*") or live state under /run/pinhole.

        A namespace without state is attributed to a lab by stripping a node name of the
        default topology (else its last "-" part) from its name.
        """
        present = [ns for ns in _netns_names() if ns.startswith("ph-")]
        labs: set[str] = set()
        claimed: set[str] = set()
        for name, state in _all_states().items():
            own = set(state.get("namespaces", []))
            claimed |= own
            if own & set(present):
                labs.add(name)
        for ns in present:
            if ns not in claimed:
                labs.add(_guess_lab(ns))
        return sorted(labs)

    @staticmethod
    def cleanup_stragglers(prefix: str = "ph-") -> list[str]:
        """Bring down every lab whose name starts with `prefix` (for `make clean`): the processes and
        namespaces its state recorded, nothing else (a namespace without a record is not pinhole's to
        delete). Returns the namespaces removed."""
        if not prefix.startswith("ph-"):
            raise LabError(f"prefix {prefix!r} must start with 'ph-' (only pinhole labs are cleaned)")
        before = set(_netns_names())
        states = _all_states()
        for name, state in states.items():
            if name.startswith(prefix):
                _terminate(list(state.get("processes", [])), 5.0)
                for ns in state.get("namespaces", []):
                    _netns_remove(ns)
                shutil.rmtree(RUN_BASE / name, ignore_errors=True)
        return sorted(before - set(_netns_names()))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _all_states() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not RUN_BASE.is_dir():
        return out
    for path in sorted(RUN_BASE.glob(f"*/{STATE_FILE}")):
        state = _read_state(path)
        if state is not None:
            out[path.parent.name] = state
    return out


def _guess_lab(ns: str) -> str:
    try:
        nodes = sorted(load_topology().nodes, key=len, reverse=True)
    except TopologyError:
        nodes = []
    for node in nodes:
        if ns.endswith("-" + node) and LAB_NAME_RE.match(ns[: -len(node) - 1]):
            return ns[: -len(node) - 1]
    return ns.rsplit("-", 1)[0]
