"""External nodes: a third party's program (or image) in a lab node, in place of pinhole's own service.

What the lab under test is for: the user's SIP user agent, proxy or SBC runs in a node of the topology,
next to pinhole's services, and is judged by what it put on the wire. An `External` says what to run
(`program` on the namespace backend, `image` and `args` on containers and Kubernetes), which files to
render for it from templates (`{{variable}}`, the lab's addresses and the call's AORs), how to tell it is
ready (a SIP OPTIONS answered, a TCP port open, a line in its log: never a sleep), and, for a caller,
how to make it dial (a line on its standard input, or a command run in its node).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinhole.lab.backend import LabError
from pinhole.nsenter import in_netns
from pinhole.sip.message import Request, Response, SipParseError, new_branch, parse_message

ROLES = ("ua", "proxy", "peer")  # a user agent (caller or callee), a SIP proxy, any other box
READY_KINDS = ("sip", "udp", "tcp", "log")
KEYS = ("role", "program", "image", "args", "files", "env", "ready", "dial", "hangup", "key_log", "stop_timeout")
VARIABLE_RE = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
DEFAULT_READY_TIMEOUT = 20.0
SIP_T1 = 0.5  # RFC 3261 §17.1.1.1: the OPTIONS probe's first retransmission interval, doubling


class ExternalError(LabError):
    """An external node that cannot be run as declared, or did not come up: the message says where and why."""


@dataclass(frozen=True)
class Ready:
    """How to tell the program is ready: `sip` (an OPTIONS to `port` gets any response), `udp` (a socket is
    bound to `port`: for a program that must not be sent a probe), `tcp` (`port` accepts a connection) or `log`
    (a line of its output matches `pattern`), within `timeout` seconds."""

    kind: str
    port: int = 5060
    pattern: str = ""
    timeout: float = DEFAULT_READY_TIMEOUT


@dataclass(frozen=True)
class Action:
    """Something the controller makes the program do: a line on its standard input, or a command run in its
    node (both templates)."""

    stdin: str = ""
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class External:
    node: str
    role: str
    program: tuple[str, ...] = ()  # the command line, on the namespace backend (templates)
    image: str = ""  # the image, on containers and Kubernetes
    args: tuple[str, ...] = ()  # the image's arguments (templates)
    files: dict[str, str] = field(default_factory=dict)  # name in its config directory -> template text
    env: dict[str, str] = field(default_factory=dict)  # templates
    ready: Ready | None = None
    dial: Action | None = None  # a caller: how to make it call (None: it calls when it starts)
    hangup: Action | None = None  # how to make it hang up (None: the other side or its own end does)
    key_log: str = ""  # where it writes an NSS key log, if it can (template)
    stop_timeout: float = 5.0

    @property
    def label(self) -> str:
        """What runs there, in a word: the program's name or the image's."""
        return Path(self.program[0]).name if self.program else self.image


def _fail(where: str, what: str) -> ExternalError:
    return ExternalError(f"{where}: {what}")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise _fail(where, "a command line: a list of strings (or one string, split as a shell would)")
    return tuple(str(v) for v in value)


def _action(value: Any, where: str) -> Action:
    if isinstance(value, dict) and set(value) == {"stdin"} and isinstance(value["stdin"], str):
        return Action(stdin=value["stdin"] if value["stdin"].endswith("\n") else value["stdin"] + "\n")
    if isinstance(value, dict) and set(value) == {"command"}:
        command = _strings(value["command"], f"{where}.command")
        if not command:
            raise _fail(f"{where}.command", "empty")
        return Action(command=command)
    raise _fail(where, "either {stdin: TEXT} (a line written to the program) or {command: [ARGV]} (run in its node)")


def _ready(value: Any, where: str) -> Ready:
    if not isinstance(value, dict) or len(set(value) & set(READY_KINDS)) != 1 or set(value) - {*READY_KINDS, "timeout"}:
        raise _fail(where, "one of {sip: PORT}, {udp: PORT}, {tcp: PORT}, {log: REGEX}, with an optional timeout")
    timeout = value.get("timeout", DEFAULT_READY_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise _fail(f"{where}.timeout", f"{timeout!r}: seconds, 0..300")
    kind = next(k for k in READY_KINDS if k in value)
    if kind == "log":
        try:
            re.compile(str(value["log"]))
        except re.error as error:
            raise _fail(f"{where}.log", f"not a regular expression: {error}") from None
        return Ready("log", pattern=str(value["log"]), timeout=float(timeout))
    port = value[kind]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _fail(f"{where}.{kind}", f"{port!r} is not a port")
    return Ready(kind, port=port, timeout=float(timeout))


def parse(node: str, spec: Any, where: str, base: Path) -> External:
    """An `external:` entry of a scenario file; template files are read relative to `base` (the file's folder)."""
    if not isinstance(spec, dict):
        raise _fail(where, f"a mapping with {', '.join(KEYS)}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown key; known: {', '.join(KEYS)}")
    role = spec.get("role")
    if role not in ROLES:
        raise _fail(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
    program = _strings(spec["program"], f"{where}.program") if "program" in spec else ()
    image = spec.get("image", "")
    if not isinstance(image, str):
        raise _fail(f"{where}.image", f"{image!r} is not an image reference")
    if not program and not image:
        raise _fail(where, "say what runs there: program (namespaces) and/or image (containers, Kubernetes)")
    files: dict[str, str] = {}
    raw_files = spec.get("files", {})
    if not isinstance(raw_files, dict):
        raise _fail(f"{where}.files", "a mapping NAME: TEMPLATE-PATH (relative to the scenario file)")
    for name, path in raw_files.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise _fail(f"{where}.files", f"{name!r}: a plain file name (it lands in the node's config directory)")
        try:
            files[name] = (base / str(path)).read_text()
        except (OSError, UnicodeDecodeError, ValueError) as error:  # ValueError: a NUL in the path
            raise _fail(f"{where}.files.{name}", f"cannot read template {base / str(path)!r}: {error}") from None
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in env.items()):
        raise _fail(f"{where}.env", "a mapping NAME: VALUE")
    stop_timeout = spec.get("stop_timeout", 5.0)
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, (int, float)) or not 0 < stop_timeout <= 60:
        raise _fail(f"{where}.stop_timeout", f"{stop_timeout!r}: seconds, 0..60")
    external = External(
        node=node,
        role=role,
        program=program,
        image=image,
        args=_strings(spec.get("args", []), f"{where}.args"),
        files=files,
        env={k: str(v) for k, v in env.items()},
        ready=_ready(spec["ready"], f"{where}.ready") if "ready" in spec else None,
        dial=_action(spec["dial"], f"{where}.dial") if "dial" in spec else None,
        hangup=_action(spec["hangup"], f"{where}.hangup") if "hangup" in spec else None,
        key_log=str(spec.get("key_log", "")),
        stop_timeout=float(stop_timeout),
    )
    if external.dial is not None and role != "ua":
        raise _fail(f"{where}.dial", f"only a user agent dials (this node's role is {role})")
    return external


def render(text: str, variables: dict[str, str], where: str) -> str:
    """`text` with every {{name}} replaced; an unknown name is an error naming it and the known ones."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            known = ", ".join(sorted(k for k in variables if "." not in k))
            raise _fail(where, f"unknown template variable {{{{{name}}}}} (known: {known}, and <node>.address ...)")
        return variables[name]

    return VARIABLE_RE.sub(one, text)


@dataclass(frozen=True)
class Rendered:
    """An External with every template filled in for one run: what the backend starts."""

    external: External
    argv: tuple[str, ...]  # the program's command line (namespaces)
    args: tuple[str, ...]  # the image's arguments (containers, Kubernetes)
    env: dict[str, str]
    config_dir: Path
    key_log: str
    dial: Action | None
    hangup: Action | None


def rendered(external: External, variables: dict[str, str], config_dir: Path) -> Rendered:
    """Fill `external`'s templates ({{config_dir}} included) and write its files into `config_dir`."""
    variables = {**variables, "config_dir": str(config_dir)}
    where = f"external.{external.node}"

    def action(a: Action | None, name: str) -> Action | None:
        if a is None:
            return None
        return Action(
            stdin=render(a.stdin, variables, f"{where}.{name}"),
            command=tuple(render(part, variables, f"{where}.{name}") for part in a.command),
        )

    files = {name: render(text, variables, f"{where}.files.{name}") for name, text in external.files.items()}
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (config_dir / name).write_text(text)
    return Rendered(
        external,
        tuple(render(part, variables, f"{where}.program") for part in external.program),
        tuple(render(part, variables, f"{where}.args") for part in external.args),
        {k: render(v, variables, f"{where}.env.{k}") for k, v in external.env.items()},
        config_dir,
        render(external.key_log, variables, f"{where}.key_log"),
        action(external.dial, "dial"),
        action(external.hangup, "hangup"),
    )


# --------------------------------------------------------------------------- readiness


def wait_ready(ready: Ready, *, netns: str, address: str, log: Path, alive: Callable[[], bool], what: str) -> float:
    """Block until the program is ready as `ready` says; returns the seconds it took. Raises ExternalError
    when it exits first or `ready.timeout` passes (naming its log)."""
    started = time.monotonic()
    deadline = started + ready.timeout
    with _prober(ready, netns, address, log) as attempt:
        while True:
            if attempt(deadline):
                return time.monotonic() - started
            if not alive():
                raise ExternalError(f"{what} exited before it was ready (see {log})")
            if time.monotonic() >= deadline:
                raise ExternalError(f"{what} not ready after {ready.timeout:.0f}s ({ready.kind} probe; see {log})")


@contextlib.contextmanager
def _prober(ready: Ready, netns: str, address: str, log: Path) -> Iterator[Callable[[float], bool]]:
    if ready.kind == "sip":
        with in_netns(netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind((address, 0))
            interval = [SIP_T1]
            yield lambda deadline: _sip_answered(sock, (address, ready.port), interval, deadline)
    elif ready.kind == "udp":
        yield lambda deadline: _udp_bound(netns, ready.port, deadline)
    elif ready.kind == "tcp":
        yield lambda deadline: _tcp_open(netns, (address, ready.port), deadline)
    else:
        offset = [0]
        pattern = re.compile(ready.pattern)
        yield lambda deadline: _log_says(log, pattern, offset, deadline)


def _sip_answered(sock: socket.socket, target: tuple[str, int], interval: list[float], deadline: float) -> bool:
    """One OPTIONS (RFC 3261 §11), then wait for any response to it until its retransmission time."""
    host, port = sock.getsockname()
    call_id = f"{uuid.uuid4().hex}@pinhole-ready"
    uri = f"sip:{target[0]}:{target[1]}"
    request = Request("OPTIONS", uri)
    for name, value in (
        ("Via", f"SIP/2.0/UDP {host}:{port};rport;branch={new_branch()}"),
        ("Max-Forwards", "70"),
        ("To", f"<{uri}>"),
        ("From", f"<sip:ready@{host}>;tag={uuid.uuid4().hex[:8]}"),
        ("Call-ID", call_id),
        ("CSeq", "1 OPTIONS"),
    ):
        request.headers.add(name, value)
    with contextlib.suppress(OSError):  # nothing listening yet: ICMP port unreachable comes back as an error
        sock.sendto(request.encode(), target)
    until = min(time.monotonic() + interval[0], deadline)
    interval[0] = min(interval[0] * 2, 4.0)  # RFC 3261 §17.1.2.2: T1 doubling to T2
    while (remaining := until - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            reply = parse_message(sock.recv(65535))
        except (TimeoutError, ConnectionRefusedError, SipParseError):
            continue
        except OSError:
            return False
        if isinstance(reply, Response) and reply.call_id == call_id:
            return True
    return False


def _udp_bound(netns: str, port: int, deadline: float) -> bool:
    """Whether a UDP socket in the node is bound to `port` (its /proc/net/udp, read from inside it)."""
    with in_netns(netns), open("/proc/thread-self/net/udp") as table:
        bound = any(int(line.split()[1].split(":")[1], 16) == port for line in table.readlines()[1:])
    if not bound:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))  # not yet: look again after a beat
    return bound


def _tcp_open(netns: str, target: tuple[str, int], deadline: float) -> bool:
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            sock.connect(target)
            return True
        except OSError:
            time.sleep(0.05)  # refused at once: the next attempt after a beat, not a busy loop
            return False


def _log_says(log: Path, pattern: re.Pattern[str], offset: list[int], deadline: float) -> bool:
    """Whether a new line of the log matches; waits a little for more output when none does."""
    try:
        with open(log, "rb") as f:
            f.seek(offset[0])
            chunk = f.read()
    except FileNotFoundError:
        chunk = b""
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode(errors="replace").splitlines():
        if pattern.search(line):
            return True
    offset[0] += end
    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return False
