"""Each service's command line is declared once (services/<service>/cli.py): the controller's rendering for
every lab node and the k8s manifests' `args` must both be what that declaration parses. No root."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest
import yaml

from pinhole.controller.services import service_argv
from pinhole.lab import load_topology
from pinhole.service import command_line

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("natgw", "proxy", "stunserver", "switch", "useragent")


def parser_of(service: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"services.{service}.cli").parser()


def parse(service: str, args: list[str]) -> argparse.Namespace:
    """The service's own parse, an error as a test failure (argparse would exit)."""
    parser = parser_of(service)
    parser.exit_on_error = False
    try:
        return parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as error:
        pytest.fail(f"services.{service} refuses {args}: {error}")


@pytest.mark.parametrize("node", [n for n in load_topology().nodes.values() if n.service], ids=lambda n: n.name)
def test_the_controller_renders_what_the_service_parses(node) -> None:
    argv = service_argv(node, Path("/run/pinhole/x"))
    assert argv[1:3] == ["-m", f"services.{node.service}"]
    args = parse(node.service, argv[3:])
    assert (args.name, args.grpc) == (node.name, f"unix:/run/pinhole/x/{node.name}.sock")


def test_rendering_names_an_option_the_service_lacks() -> None:
    with pytest.raises(ValueError, match="no option for 'bridge'"):
        command_line(parser_of("proxy"), {"name": "p", "bridge": "br0"})
    assert command_line(parser_of("natgw"), {"wan_allow": ["tcp/1", "udp/2"]}) == [
        "--wan-allow",
        "tcp/1",
        "--wan-allow",
        "udp/2",
    ]


def manifest_commands() -> list[tuple[str, str, list[str]]]:
    """(file, service, args) of every container in k8s/ that runs `python -m services.<service>`."""
    found = []
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            spec = ((document or {}).get("spec") or {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                command = container.get("command") or []
                if command[1:2] == ["-m"] and command[2].startswith("services."):
                    found.append((path.relative_to(ROOT).as_posix(), command[2].split(".")[1], container["args"]))
    return found


def test_every_service_has_a_manifest() -> None:
    assert {service for _, service, _ in manifest_commands()} == set(SERVICES) - {"switch"}  # k8s: the pod network


@pytest.mark.parametrize(
    ("path", "service", "args"), manifest_commands(), ids=lambda v: v if isinstance(v, str) else "-"
)
def test_the_manifests_args_are_what_the_service_parses(path: str, service: str, args: list[str]) -> None:
    values = [re.sub(r"\$\((\w+)\)", "10.244.0.7", str(a)) for a in args]  # $(POD_IP) as the kubelet fills it
    parsed = parse(service, values)
    assert parsed.name and parsed.grpc, path
