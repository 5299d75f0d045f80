"""Shared fixtures: a namespace lab per test module, always torn down, and a leak check."""

from __future__ import annotations

import os
import subprocess
import uuid

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
        lab_down(running)
