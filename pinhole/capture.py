"""Capturing every link of a lab into one pcapng: the wire is the witness.

One AF_PACKET socket per link, opened in the namespace of the node at one end of it and bound to
that node's interface before `start()` returns, so nothing sent afterwards is missed. One reader
thread keeps every frame with its kernel timestamp (SO_TIMESTAMPNS) and its direction as that
interface saw it (the socket address's packet type: PACKET_OUTGOING or not). `stop()` drains what
is queued and reads each socket's kernel counters (PACKET_STATISTICS: frames the socket queue
overflowed on). A capture that dropped frames, or that hit its packet or time limit, is
incomplete: `problems()` says so, and a run with such a capture is broken, not silently judged on
part of the wire.

The backends say where the links are (`CapturePoint`s: a namespace and the kernel's name of the
interface there); this module is the same for namespaces, containers and a service capturing its
own pod.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pinhole import pcapng
from pinhole.nsenter import in_netns

__all__ = ["CaptureError", "CapturePoint", "LinkCapture"]

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35  # SOL_SOCKET; SCM_TIMESTAMPNS carries a struct timespec
SOL_PACKET = 263
PACKET_STATISTICS = 6  # struct tpacket_stats {u32 tp_packets, tp_drops}; reading resets it
PACKET_OUTGOING = 4
FRAME_BUFFER = 262144
SOCKET_RCVBUF = 64 * 1024 * 1024  # a burst of a load's media waits here while the reader is busy
SO_RCVBUFFORCE = 33  # as root, past net.core.rmem_max (which caps SO_RCVBUF: 208 KB by default)
DRAIN_BATCH = 4096


class CaptureError(RuntimeError):
    """A link could not be captured (the interface or the namespace is not there)."""


@dataclass(frozen=True)
class CapturePoint:
    """One link, captured at one of its ends.

    `name` is how the file names it (`node:ifname`), `description` the link it is on
    (`natgw:lan0 <-> alice:eth0`); `netns` the namespace to open the socket in (a name under
    /run/netns, a /proc/PID/ns/net path, or None for the caller's own), `device` the kernel's
    name of the interface there (a container engine may call wan0 eth1).
    """

    name: str
    device: str
    netns: str | None = None
    description: str = ""


def _open(point: CapturePoint) -> socket.socket:
    """A raw packet socket on one link, in its namespace, bound, non-blocking, with kernel timestamps."""
    with in_netns(point.netns) if point.netns else contextlib.nullcontext():
        # protocol 0 receives nothing until bind() sets ETH_P_ALL on this one interface
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_RCVBUF)
        except PermissionError:  # not root: as much as rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.bind((point.device, ETH_P_ALL))
        except OSError as e:
            raise CaptureError(f"capture on {point.name}: {e.strerror}") from e
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class LinkCapture:
    """A running capture of several links; stops by itself after `max_packets` frames or `max_seconds`."""

    def __init__(self, points: list[CapturePoint], *, max_packets: int = 200_000, max_seconds: float = 900.0) -> None:
        if not points:
            raise CaptureError("nothing to capture: no links given")
        names = [p.name for p in points]
        if len(set(names)) != len(names):
            raise CaptureError(f"links named twice: {sorted({n for n in names if names.count(n) > 1})}")
        self.points = list(points)
        self.max_packets = max_packets
        self.max_seconds = max_seconds
        self.packets: list[pcapng.Packet] = []
        self.counts = [0] * len(points)
        self.kernel_drops = [0] * len(points)
        self.stop_reason: str | None = None
        self._socks: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._arrived = threading.Condition()  # notified as frames come in: wait_for() watches the wire
        self._gone: dict[int, str] = {}  # links whose socket failed, and why
        self._rebuild = False  # refresh() swapped a socket: the reader polls the new ones

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LinkCapture:
        """Open every socket (bound before this returns) and start the reader; idempotent."""
        if self._thread is not None:
            return self
        try:
            for point in self.points:
                self._socks.append(_open(point))
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name="link-capture", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> pcapng.Capture:
        """Stop, take in everything queued, read the kernel's drop counters, close.

        Returns the capture (interfaces, packets in time order, per-link statistics)."""
        if self._thread is not None:
            self._stop.set()
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        self._read_statistics()
        self._close()
        return self.result()

    def refresh(self, points: list[CapturePoint]) -> list[str]:
        """Follow links whose end moved to another namespace (a container replaced by another on the same
        networks): their sockets are reopened there, the frames and counts so far kept. Returns their names."""
        moved = []
        for index, point in enumerate(points):
            if index < len(self.points) and point.name == self.points[index].name and point != self.points[index]:
                sock = _open(point)
                with self._arrived:
                    old = self._socks[index]
                    self._read_statistics(only=index)
                    self._socks[index], self.points[index] = sock, point
                    self._gone.pop(index, None)
                    self._rebuild = True
                old.close()
                moved.append(point.name)
        if moved and self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"r")  # the reader picks up the new sockets
        return moved

    def result(self, comments: list[str] | None = None, key_log: str = "") -> pcapng.Capture:
        """The capture so far as a pcapng model; `key_log` becomes its Decryption Secrets Block."""
        interfaces = [pcapng.Interface(p.name, p.description) for p in self.points]
        statistics = [
            pcapng.InterfaceStatistics(i, self.counts[i], self.kernel_drops[i]) for i in range(len(self.points))
        ]
        secrets = [(pcapng.SECRETS_TLS_KEY_LOG, key_log.encode())] if key_log else []
        packets = sorted(self.packets, key=lambda p: p.t)
        return pcapng.Capture(list(comments or []), interfaces, packets, statistics, secrets)

    def wait_for(self, match: Callable[[pcapng.Packet], bool], timeout: float) -> pcapng.Packet | None:
        """The first frame captured so far or later that `match`es, waiting up to `timeout` seconds for it
        (None then): the controller's way to follow a call that no pinhole service takes part in."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._arrived:
            while True:
                for packet in self.packets[seen:]:
                    if match(packet):
                        return packet
                seen = len(self.packets)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or self.stop_reason is not None:  # no more to come
                    return None
                self._arrived.wait(remaining)

    def problems(self) -> list[str]:
        """Why the capture is not the whole wire: kernel drops per link, a limit reached."""
        out = [
            f"the capture on {p.name} lost {self.kernel_drops[i]} frame(s) in the kernel (socket queue overflow)"
            for i, p in enumerate(self.points)
            if self.kernel_drops[i]
        ]
        out += [f"the capture on {self.points[i].name} stopped: {why}" for i, why in sorted(self._gone.items())]
        if self.stop_reason not in (None, "stopped"):
            out.append(f"the capture stopped early ({self.stop_reason}) with {len(self.packets)} frames")
        return out

    def __enter__(self) -> LinkCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the reader thread

    def _poller(self) -> tuple[select.poll, dict[int, int]]:
        poller = select.poll()
        by_fd = {sock.fileno(): index for index, sock in enumerate(self._socks) if index not in self._gone}
        for fd in (*by_fd, self._wake_r):
            poller.register(fd, select.POLLIN)
        return poller, by_fd

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        poller, by_fd = self._poller()
        try:
            while not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop_reason = "max_seconds"
                    return
                for fd, _ in poller.poll(remaining * 1000):
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 64)
                    elif fd in by_fd:
                        self._drain(by_fd[fd])
                with self._arrived:
                    if self._rebuild or any(self._socks[i].fileno() in by_fd for i in self._gone):
                        self._rebuild = False
                        poller, by_fd = self._poller()
                with self._arrived:  # once per wake-up, not per frame
                    self._arrived.notify_all()
                if len(self.packets) >= self.max_packets:
                    self.stop_reason = "max_packets"
                    return
            self.stop_reason = "stopped"
            for index in range(len(self._socks)):
                self._drain(index)
        except Exception as e:  # the thread must not die silently: the capture is then incomplete
            self.stop_reason = f"error: {e}"
        finally:
            with self._arrived:  # a waiter learns that nothing more is coming
                self._arrived.notify_all()

    def _drain(self, index: int) -> None:
        """Take what is queued on one socket, at most DRAIN_BATCH frames per call (poll() comes back
        for the rest, and stop() does not chase a never-ending stream)."""
        sock = self._socks[index]
        for _ in range(DRAIN_BATCH):
            if len(self.packets) >= self.max_packets:
                return
            try:
                data, ancdata, _flags, address = sock.recvmsg(FRAME_BUFFER, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # its interface is gone (a container removed): the other links go on
                self._gone[index] = error.strerror or str(error)
                return
            t = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", payload[:16])
                    t = seconds + nanoseconds / 1e9
            outgoing = len(address) > 2 and address[2] == PACKET_OUTGOING
            direction = pcapng.DIRECTION_OUTBOUND if outgoing else pcapng.DIRECTION_INBOUND
            self.packets.append(pcapng.Packet(index, time.time() if t is None else t, data, len(data), direction))
            self.counts[index] += 1

    def _read_statistics(self, only: int | None = None) -> None:
        for index, sock in enumerate(self._socks):
            if only is not None and index != only:
                continue
            with contextlib.suppress(OSError):
                _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                self.kernel_drops[index] += drops

    def _close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
