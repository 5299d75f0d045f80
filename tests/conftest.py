"""Shared fixtures: a namespace lab per test module, always torn down, and a leak check."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest


def _namespaces(prefix: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


LAB_NAMES: list[str] = []  # every lab this test session built (other sessions' labs are left alone)


@pytest.fixture(scope="session", autouse=True)
def no_leaked_namespaces():
    """After the whole session, no namespace of a lab this session built may be left behind."""
    yield
    leaked = sorted(ns for name in LAB_NAMES for ns in _namespaces(name + "-"))
    if leaked:
        from netns.lab import NetnsLab

        for name in LAB_NAMES:
            NetnsLab.cleanup_stragglers(name + "-")
        pytest.fail(f"namespaces leaked by the tests (now removed): {leaked}")


@pytest.fixture(scope="module")
def lab():
    """A running §7.3 lab (namespaces + every service), torn down even if the tests fail."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from pinhole.controller.run import lab_down, lab_up

    name = f"ph-t{uuid.uuid4().hex[:6]}"
    LAB_NAMES.append(name)
    running, topology, timings = lab_up(name)
    try:
        yield running, topology, timings
    finally:
        from netns.lab import pids_in_netns

        pids = [pid for ns in running.namespaces() for pid in pids_in_netns(ns)]
        lab_down(running)
        alive = [pid for pid in pids if _running(pid)]
        assert not alive, f"processes left behind by lab {name}: {alive}"


@pytest.fixture(scope="module")
def clients(lab):
    """gRPC stubs for the module's lab; afterwards the gateway is as §7.3 has it again (no faults, its
    default NAT), since the lab is shared by the module's tests."""
    from pinhole.controller.run import service_kinds
    from pinhole.controller.services import ServiceClients
    from pinhole.nat import NatBehaviour
    from pinhole.rpc.v1 import natgw_pb2

    running, topology, _ = lab
    stubs = ServiceClients.local(running.run_dir, service_kinds(topology))
    try:
        yield stubs
    finally:
        try:
            stubs.stub("natgw").ClearFaults(natgw_pb2.ClearFaultsRequest(), timeout=10)
            stubs.stub("natgw").Configure(NatBehaviour().to_proto(), timeout=10)
        finally:
            stubs.close()


def _running(pid: int) -> bool:
    """True for a live process (a zombie waiting to be reaped has already ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


IMAGE_BUILD: dict[str, float] = {}


@pytest.fixture(scope="session")
def images():
    """Every image (services and controller), built once per session from this tree by containers/images.sh
    (cached layers: a no-op rebuild when nothing changed; PINHOLE_IMAGES_BUILT=1 skips it when you just
    built them). Skips without root or podman."""
    import shutil
    import time

    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make image-tools)")
    if os.environ.get("PINHOLE_IMAGES_BUILT") == "1":
        return
    root = Path(__file__).resolve().parent.parent
    started = time.monotonic()
    build = subprocess.run(
        [str(root / "containers" / "images.sh"), "images"], capture_output=True, text=True, timeout=1200
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    IMAGE_BUILD["images_s"] = round(time.monotonic() - started, 1)
