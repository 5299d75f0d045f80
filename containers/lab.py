"""The lab as containers: the topology of pinhole.lab run by a container engine (docker SDK).

Same nodes, addresses and services as the namespace lab, so a run gets the same verdict:
- every L2 segment of the topology (a switch and its links, or a point-to-point link) is an
  *internal* engine network: no NAT to the outside, no default route in the containers;
- every node with a service is a container of that service's image (localhost/pinhole-<service>),
  unprivileged and read-only, except the NAT gateway: root with exactly NET_ADMIN, no other capability;
- a node's routes (Alice's default route through the NAT) and further addresses (the STUN server's
  second one) are set by a one-shot helper container with NET_ADMIN in the node's network namespace, as
  the init container does on Kubernetes: the docker API can neither make another container a network's
  gateway nor give a container two addresses on one network;
- the controller reaches each service over a unix socket in the lab's run directory, which every
  container mounts at /run/pinhole, and captures the NAT's interfaces from the host through
  /proc/PID/ns/net. So the controller runs as root on the engine's machine.

Engine: $DOCKER_HOST if set, else /var/run/docker.sock if present, else a Podman API service that the
lab starts itself (`podman system service`, configured by containers/*.conf) and stops at down.
On Podman the lab's networks are made through its own API without DNS, so the host's bridges get no
address in the lab (Docker always gives them the network's gateway address, .254 here, which no
container routes to); internal networks are never forwarded out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinhole.capture import CapturePoint
from pinhole.lab import LAB_NAME_RE, RUN_BASE, LabError, Node, Topology
from pinhole.lab.external import Rendered
from pinhole.nsenter import in_netns

HERE = Path(__file__).resolve().parent
STATE_FILE = "containers.json"
IMAGE_PREFIX = os.environ.get("PINHOLE_IMAGE_PREFIX", "localhost/pinhole-")
CONTAINER_RUN_DIR = Path("/run/pinhole")  # where every container mounts the lab's run directory
SERVICE_USER = "10001:10001"  # the images' unprivileged user
LABEL = "io.pinhole.lab"
ENGINE_START_TIMEOUT = 30.0
# In the network namespace of the container the helper shares (argv[1]: JSON {"addresses": [[interface's
# first address, extra address/len], ...], "routes": [{"to", "via"}, ...]}): the node's further addresses
# on an interface (an engine gives each network one) and its routes.
NETWORK_SCRIPT = """
import ipaddress, json, socket, sys
from pyroute2 import IPRoute
plan = json.loads(sys.argv[1])
with IPRoute() as ipr:
    where = {e.get_attr("IFA_ADDRESS"): e["index"] for e in ipr.get_addr(family=socket.AF_INET)}
    for first, extra in plan["addresses"]:
        address = ipaddress.ip_interface(extra)
        ipr.addr("replace", index=where[first], address=str(address.ip), prefixlen=address.network.prefixlen)
    for route in plan["routes"]:
        to = ipaddress.ip_network("0.0.0.0/0" if route["to"] == "default" else route["to"])
        ipr.route("replace", dst=str(to.network_address), dst_len=to.prefixlen, gateway=route["via"])
"""


@dataclass(frozen=True)
class Segment:
    """One L2 segment of the topology: an engine network. `ends` are the (node, ifname) on it."""

    name: str
    subnet: ipaddress.IPv4Network
    gateway: str  # the engine's own address on it (its host bridge), unused by any node
    ends: tuple[tuple[str, str], ...]


def segments(topology: Topology) -> list[Segment]:
    """The topology's L2 segments: each switch with every link to it, each other link alone."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for link in topology.links:
        switch = next((n for n, _ in (link.a, link.b) if topology.nodes[n].kind == "switch"), None)
        label = switch or f"{link.a[0]}-{link.b[0]}"
        groups.setdefault(label, []).extend(end for end in (link.a, link.b) if end[0] != switch)
    out = []
    for label, ends in groups.items():
        # IPv4 only: the topology's loader checked every address
        interfaces = [ipaddress.IPv4Interface(topology.nodes[n].interfaces[i][0]) for n, i in ends]
        subnets = {i.network for i in interfaces}
        if len(subnets) != 1:
            raise LabError(f"segment {label}: its interfaces are on {len(subnets)} subnets, one network needs one")
        subnet = subnets.pop()
        used = {i.ip for i in interfaces}
        gateway = next(h for h in reversed(list(subnet.hosts())) if h not in used)
        out.append(Segment(label, subnet, str(gateway), tuple(ends)))
    return out


class ExternalContainer:
    """A third party's container as the controller follows it: its main process, whether it has exited, no
    standard input to write to (dial with a command)."""

    stdin = None

    def __init__(self, container: Any) -> None:
        self.container = container
        self.pid = int(container.attrs["State"]["Pid"])

    def poll(self) -> int | None:
        with contextlib.suppress(Exception):
            self.container.reload()
            state = self.container.attrs["State"]
            return None if state.get("Running") else int(state.get("ExitCode", 0))
        return 0


@dataclass
class Started:
    """A service container as the controller tracks it (pid: its main process, on this host)."""

    node: str
    container_id: str
    pid: int


class ContainerLab:
    """A topology run as containers of the service images (a pinhole.lab.Lab)."""

    socket_mode = 0o666  # the lab's OTLP socket: the services run as an unprivileged user
    service_run_dir = CONTAINER_RUN_DIR
    names_interfaces = False  # the engine names them: the NAT finds its sides by address

    def __init__(self, topology: Topology, name: str = "ph-lab", *, image_prefix: str = IMAGE_PREFIX) -> None:
        if not LAB_NAME_RE.match(name):
            raise LabError(f"lab name {name!r} does not match ^ph-[a-z0-9-]{{1,20}}$")
        self.topology = topology
        self.name = name
        self.image_prefix = image_prefix
        self.run_dir = RUN_BASE / name
        self._client: Any = None
        self._lock = threading.Lock()

    # ---- engine

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state, indent=1))

    def client(self) -> Any:
        """The docker SDK client of this lab's engine (started first if the lab runs its own)."""
        if self._client is None:
            import docker

            url = self._state().get("engine_url") or engine_url()
            if url is None:
                raise LabError(f"lab {self.name}: no container engine (is the lab up?)")
            self._client = docker.DockerClient(base_url=url, timeout=60)
        return self._client

    def _start_engine(self, state: dict[str, Any]) -> None:
        url = engine_url()
        if url is not None:
            state["engine_url"] = url
            return
        podman = shutil.which("podman")
        if podman is None:
            raise LabError("no container engine: set DOCKER_HOST, or install podman (make image-tools)")
        sock = self.run_dir / "podman.sock"
        env = {**os.environ}
        env.setdefault("CONTAINERS_CONF", str(HERE / "containers.conf"))
        env.setdefault("CONTAINERS_STORAGE_CONF", str(HERE / "storage.conf"))
        log = open(self.run_dir / "podman-service.log", "ab")  # noqa: SIM115 - the service keeps it
        with log:
            process = subprocess.Popen(
                [podman, "system", "service", "--time=0", f"unix://{sock}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives `pinhole lab up`; `lab down` ends it by its PID
            )
        state.update(engine_url=f"unix://{sock}", engine_pid=process.pid, engine_starttime=_starttime(process.pid))
        self._save(state)
        import docker

        deadline = time.monotonic() + ENGINE_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise LabError(f"podman system service exited ({process.returncode}); see {log.name}")
            if sock.is_socket():
                with contextlib.suppress(Exception):
                    docker.DockerClient(base_url=state["engine_url"], timeout=5).ping()
                    return
            if time.monotonic() > deadline:
                raise LabError(f"podman system service not answering after {ENGINE_START_TIMEOUT:.0f}s")
            time.sleep(0.05)

    # ---- up / down

    def exists(self) -> bool:
        return bool(self._state().get("containers") or self._state().get("networks"))

    def up(self) -> float:
        """Start (or find) the engine and create the lab's networks; returns seconds taken."""
        started = time.perf_counter()
        if self.exists():
            raise LabError(f"lab {self.name} is already up; bring it down first")
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            raise LabError(f"{self.run_dir} is in use (a namespace lab of the same name?); pick another --name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o1777)  # unprivileged services create their sockets here
        state: dict[str, Any] = {"lab": self.name, "backend": "docker", "networks": [], "containers": []}
        self._save(state)
        try:
            self._start_engine(state)
            for segment in segments(self.topology):
                state["networks"].append(self._create_network(segment))
                self._save(state)
        except BaseException:
            self.down()
            raise
        return time.perf_counter() - started

    def _create_network(self, segment: Segment) -> str:
        """An internal network for the segment; returns its id.

        Podman's own API can make it without DNS, and then the host's bridge gets no address at all
        (the docker API cannot say so: Docker, and Podman through it, put the gateway address on it).
        """
        client, name = self.client(), f"{self.name}-{segment.name}"
        if any(c.get("Name") == "Podman Engine" for c in client.version().get("Components", [])):
            api = client.api
            spec = {
                "name": name,
                "driver": "bridge",
                "internal": True,
                "dns_enabled": False,
                "labels": {LABEL: self.name},
                "subnets": [{"subnet": str(segment.subnet)}],
            }
            reply = api._post(
                f"{api.base_url}/v4.0.0/libpod/networks/create",
                data=json.dumps(spec),
                headers={"Content-Type": "application/json"},
            )
            api._raise_for_status(reply)
            return reply.json()["id"]
        from docker.types import IPAMConfig, IPAMPool

        pool = IPAMPool(subnet=str(segment.subnet), gateway=segment.gateway)
        network = client.networks.create(
            name, driver="bridge", internal=True, labels={LABEL: self.name}, ipam=IPAMConfig(pool_configs=[pool])
        )
        return network.id

    def spawn(self, node: str, argv: list[str], *, log_path: Path, env: dict[str, str]) -> Started:
        """Run the node's service as a container (argv[0], the interpreter, becomes the image's python).

        `log_path` is where down() keeps the container's log."""
        spec = self.topology.nodes[node]
        privileged = spec.service == "natgw"  # the NAT alone: nftables, conntrack and NFLOG need NET_ADMIN
        sysctls = {"net.ipv4.ip_forward": "0", **spec.sysctls}
        if privileged:  # per-mapping packet counts: /proc/sys is read-only once the container runs
            sysctls["net.netfilter.nf_conntrack_acct"] = "1"
        container = self._start(
            node,
            log_path,
            image=f"{self.image_prefix}{spec.service}",
            command=["python", *argv[1:]],
            environment=env,
            user="0:0" if privileged else SERVICE_USER,
            cap_drop=["ALL"],
            cap_add=["NET_ADMIN"] if privileged else None,
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": "size=16m"},
            volumes={str(self.run_dir): {"bind": str(CONTAINER_RUN_DIR), "mode": "rw"}},
            sysctls=sysctls,
            mem_limit="256m",
            pids_limit=256,
        )
        return Started(node, container.id, int(container.attrs["State"]["Pid"]))

    def _start(self, node: str, log_path: Path, *, sysctls: dict[str, str] | None = None, **create: Any) -> Any:
        """Create a container for `node` on every network of its segments with its addresses, start it, add
        its further addresses and routes; `create`: the rest of docker's containers.create arguments."""
        spec = self.topology.nodes[node]
        ends = [(seg, ifname) for seg in segments(self.topology) for n, ifname in seg.ends if n == node]
        if not ends:
            raise LabError(f"node {node} is on no network")
        sysctls = dict(sysctls or {"net.ipv4.ip_forward": "0", **spec.sysctls})
        if not self.topology.ipv6:
            sysctls.update({"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
        from docker.types import EndpointConfig

        client = self.client()
        first, first_if = ends[0]
        address = lambda ifname: spec.interfaces[ifname][0].split("/")[0]  # noqa: E731
        container = client.containers.create(
            name=f"{self.name}-{node}",
            hostname=node,
            labels={LABEL: self.name, "io.pinhole.node": node},
            sysctls=sysctls,
            network=f"{self.name}-{first.name}",
            networking_config={
                f"{self.name}-{first.name}": EndpointConfig(client.api._version, ipv4_address=address(first_if))
            },
            **create,
        )
        self._record(container.id, node, log_path)
        for segment, ifname in ends[1:]:
            client.networks.get(f"{self.name}-{segment.name}").connect(container, ipv4_address=address(ifname))
        container.start()
        extra = [(addrs[0].split("/")[0], more) for addrs in spec.interfaces.values() for more in addrs[1:]]
        if spec.routes or extra:
            self._set_network(container, node, extra, [{"to": r.to, "via": r.via} for r in spec.routes])
        container.reload()
        self._forget_neighbours(node)
        return container

    def _forget_neighbours(self, node: str) -> None:
        """A container that replaces another has the same addresses and a new MAC: the others' neighbour
        entries for it would send to the old one until they go stale, so they are deleted (ARP asks again)."""
        from pyroute2 import IPRoute

        addresses = {a.split("/")[0] for a in self.topology.nodes[node].addresses}
        for other in self.topology.nodes:
            if other == node or not self.hosts_service(self.topology.nodes[other]):
                continue
            with contextlib.suppress(Exception):  # not running (yet): it has no stale entry either
                with in_netns(self.ns(other)), IPRoute() as ipr:
                    for entry in ipr.get_neighbours(family=2):
                        if entry.get_attr("NDA_DST") in addresses:
                            ipr.neigh("del", dst=entry.get_attr("NDA_DST"), ifindex=entry["ifindex"])

    # ---- third parties' images

    def start_external(self, node: str, program: Rendered, *, log_path: Path) -> ExternalContainer:
        """Run a third party's image in `node` (pinhole's service container there stopped first): its rendered
        files at the same path inside, its DNS pointed at nothing (no name leaves the lab)."""
        if not program.external.image:
            raise LabError(f"{node}: external node {program.external.label!r} has no image for containers")
        import docker.errors

        try:
            container = self._start(
                node,
                log_path,
                image=program.external.image,
                command=list(program.args) or None,
                environment=program.env,
                volumes={str(program.config_dir): {"bind": str(program.config_dir), "mode": "rw"}},
                dns=["127.0.0.1"],
                mem_limit="512m",
                pids_limit=512,
            )
        except docker.errors.APIError as error:  # no such image (the lab pulls nothing), a bad argument
            raise LabError(f"{node}: cannot run image {program.external.image}: {error.explanation or error}") from None
        return ExternalContainer(container)

    def stop_external(self, node: str, process: ExternalContainer, timeout: float = 5.0) -> list[int]:
        """Stop its container (SIGTERM, then SIGKILL: every process in it ends with it), keep its log, remove it."""
        self.kill(node, crash=False, timeout=timeout)
        return []

    def exec_in(self, node: str, argv: list[str], *, timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
        """Run a short command in `node`'s container (a dial action) and wait for it."""
        try:
            container = self.client().containers.get(f"{self.name}-{node}")
            code, output = container.exec_run(argv, demux=True)
        except Exception as error:  # noqa: BLE001 - the engine's refusal, whatever it is
            raise LabError(f"{node}: {' '.join(argv)}: {error}") from None
        stdout, stderr = output if isinstance(output, tuple) else (output, b"")
        return subprocess.CompletedProcess(argv, code, stdout or b"", stderr or b"")

    def kill(self, node: str, *, crash: bool = True, timeout: float = 5.0) -> list[str]:
        """End the node's service container as a fault: SIGKILL (a crash) or SIGTERM (graceful), keep its
        log, remove it; spawn() starts the service again, as a new container on the same networks."""
        with self._lock:
            state = self._state()
            entries = [c for c in state.get("containers", []) if c["node"] == node]
        if not entries:
            raise LabError(f"kill {node}: lab {self.name} runs no container there")
        client = self.client()
        for entry in entries:
            with contextlib.suppress(Exception):
                container = client.containers.get(entry["id"])
                if crash:
                    container.kill()
                else:
                    container.stop(timeout=int(timeout))
                with open(entry["log"], "ab") as log:
                    log.write(container.logs())
                container.remove(force=True)
        with self._lock:
            state = self._state()
            state["containers"] = [c for c in state.get("containers", []) if c["node"] != node]
            self._save(state)
        return [e["id"] for e in entries]

    def _record(self, container_id: str, node: str, log_path: Path) -> None:
        with self._lock:
            state = self._state()
            state["containers"].append({"id": container_id, "node": node, "log": str(log_path)})
            self._save(state)

    def _set_network(
        self, container: Any, node: str, addresses: list[tuple[str, str]], routes: list[dict[str, str]]
    ) -> None:
        """A helper with NET_ADMIN in the node's network namespace adds its further addresses and its
        routes, then exits."""
        self.client().containers.run(
            f"{self.image_prefix}natgw",  # any pinhole image has python and pyroute2
            command=["python", "-c", NETWORK_SCRIPT, json.dumps({"addresses": addresses, "routes": routes})],
            name=f"{self.name}-{node}-network",
            labels={LABEL: self.name},
            network_mode=f"container:{container.id}",
            user="0:0",
            cap_drop=["ALL"],
            cap_add=["NET_ADMIN"],
            security_opt=["no-new-privileges"],
            read_only=True,
            remove=True,
        )

    def down(self, timeout: float = 5.0, *, keep_logs: Path | None = None) -> float:
        """Stop every container (SIGTERM: the services flush their spans), keep their logs, remove
        containers and networks, stop the engine if the lab started it. Idempotent; seconds taken."""
        started = time.perf_counter()
        state = self._state()
        if not state:
            return time.perf_counter() - started
        try:
            client = self.client()
            found = client.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"})

            def stop(container: Any) -> None:
                with contextlib.suppress(Exception):
                    container.stop(timeout=int(timeout))
                node = container.labels.get("io.pinhole.node")
                if keep_logs is not None and node:
                    with contextlib.suppress(Exception):
                        (Path(keep_logs) / f"{node}.log").write_bytes(container.logs())
                with contextlib.suppress(Exception):
                    container.remove(force=True)

            with ThreadPoolExecutor(max_workers=max(1, len(found))) as pool:
                list(pool.map(stop, found))
            for network in client.networks.list(filters={"label": f"{LABEL}={self.name}"}):
                with contextlib.suppress(Exception):
                    network.remove()
            client.close()
        except LabError:
            pass
        except Exception as error:  # the engine is gone: say so, still end what is ours
            print(f"lab {self.name}: container engine: {error}")
        finally:
            self._client = None
            _stop_engine(state, timeout)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return time.perf_counter() - started

    # ---- capture and status

    def capture_points(self) -> list[CapturePoint]:
        """Every link of the lab, once (`Topology.capture_ends`), in the container of the node at that end:
        its namespace through /proc, the interface found by the topology's address on it (the engine
        names interfaces by network, e.g. wan0 is eth1)."""
        from pyroute2 import IPRoute

        points = []
        for node, ifname, description in self.topology.capture_ends():
            netns = self.ns(node)
            with in_netns(netns), IPRoute() as ipr:
                by_address = {entry.get_attr("IFA_ADDRESS"): entry["index"] for entry in ipr.get_addr(family=2)}
                links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            address = self.topology.nodes[node].interfaces[ifname][0].split("/")[0]
            if address not in by_address:
                raise LabError(f"capture on {node}: no interface holds {address} ({ifname})")
            points.append(CapturePoint(f"{node}:{ifname}", links[by_address[address]], netns, description))
        return points

    def ns(self, node: str) -> str:
        """The network namespace of `node`'s container, as pinhole.nsenter.in_netns enters it."""
        container = self.client().containers.get(f"{self.name}-{node}")
        return f"/proc/{container.attrs['State']['Pid']}/ns/net"

    def logs_hint(self) -> str:
        return "its container's log"

    def hosts_service(self, node: Node) -> bool:
        """A switch is an engine network here, not a container: no switch service."""
        return bool(node.service) and node.kind != "switch"

    def service_env(self, settings: dict[str, str]) -> dict[str, str]:
        """The controller's settings alone: the image holds the rest."""
        return dict(settings)

    def status(self) -> dict[str, Any]:
        state = self._state()
        containers = []
        with contextlib.suppress(Exception):
            for c in self.client().containers.list(all=True, filters={"label": f"{LABEL}={self.name}"}):
                containers.append({"name": c.name, "image": c.image.tags, "status": c.status})
        return {"lab": self.name, "backend": "docker", "engine": state.get("engine_url"), "containers": containers}

    @staticmethod
    def list_labs() -> list[str]:
        """Container labs with live state under /run/pinhole."""
        if not RUN_BASE.is_dir():
            return []
        return sorted(p.parent.name for p in RUN_BASE.glob(f"*/{STATE_FILE}"))

    @staticmethod
    def cleanup_stragglers(prefix: str = "ph-") -> list[str]:
        """Bring down every container lab whose name starts with `prefix` (for `make clean`)."""
        if not prefix.startswith("ph-"):
            raise LabError(f"prefix {prefix!r} must start with 'ph-' (only pinhole labs are cleaned)")
        removed = []
        for name in ContainerLab.list_labs():
            if name.startswith(prefix):
                ContainerLab(Topology({}, [], {}), name=name).down()
                removed.append(name)
        return removed


def engine_url() -> str | None:
    """An engine the user runs: $DOCKER_HOST, or the standard docker socket; None if neither."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if Path("/var/run/docker.sock").is_socket():
        return "unix:///var/run/docker.sock"
    return None


def _starttime(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def _stop_engine(state: dict[str, Any], timeout: float) -> None:
    """End the podman service this lab started: by its PID, and only if it is still that process."""
    pid, starttime = state.get("engine_pid"), state.get("engine_starttime")
    if not pid or _starttime(pid) != starttime:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _starttime(pid) == starttime and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
    if _starttime(pid) == starttime:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
