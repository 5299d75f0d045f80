"""The layers hold: the library never imports a lab backend, the backends never import each other, and every
installed backend is a pinhole.lab.Lab."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pinhole.lab import Lab, backend, backends, load_topology

ROOT = Path(__file__).resolve().parent.parent
BACKEND_PACKAGES = ("netns", "containers")


def imported(path: Path) -> set[str]:
    """Top-level package of every import in a module, wherever it stands (a lazy import counts)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ["pinhole", "services", *BACKEND_PACKAGES])
def test_no_layer_imports_a_backend_but_its_own(package):
    others = set(BACKEND_PACKAGES) - {package}
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported(path) & others)
        for path in (ROOT / package).rglob("*.py")
        if "rpc/v1" not in str(path) and imported(path) & others
    }
    assert not wrong


def modules_imported(path: Path) -> set[str]:
    """Every module a module imports, by its full name (a lazy import counts)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return out


def test_services_do_not_import_the_controller():
    wrong = {
        str(path.relative_to(ROOT)): sorted(m for m in modules_imported(path) if m.startswith("pinhole.controller"))
        for path in (ROOT / "services").rglob("*.py")
    }
    assert not {path: modules for path, modules in wrong.items() if modules}


def test_the_shipped_backends_are_registered_and_are_labs():
    assert {"netns", "docker"} <= set(backends())
    topology = load_topology()
    for name in ("netns", "docker"):
        lab = backend(name)(topology, name="ph-unbuilt")  # constructed, never brought up
        assert isinstance(lab, Lab), name
        assert lab.hosts_service(topology.nodes["alice"])


def test_an_unknown_backend_is_a_clear_lab_error():
    from pinhole.lab import LabError

    with pytest.raises(LabError, match="unknown lab backend 'vagrant'.*installed: .*netns"):
        backend("vagrant")
