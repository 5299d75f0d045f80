"""`pinhole`: bring the lab up or down, run a scenario (locally or against a cluster), re-judge a saved run."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

from pinhole.controller import ladder, verdict
from pinhole.controller.run import DEFAULT_LAB, SCENARIOS, lab_down, lab_up, run
from pinhole.lab import DEFAULT_BACKEND, LabError, backends, list_labs, load_topology, open_lab
from pinhole.timers import TIMERS


def _require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("pinhole: network namespaces and the kernel NAT need root (run as root)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pinhole")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def cmd_lab(args: argparse.Namespace) -> int:
    if args.action != "status":
        args.name = args.name or DEFAULT_LAB
    if args.action == "up":
        _require_root()
        if args.name in list_labs(args.backend):
            print(f"lab {args.name} is already up")
            return 0
        lab, _, timings = lab_up(args.name, backend=args.backend)
        print(
            f"lab {args.name} up ({args.backend}): network {timings['network']:.3f}s, "
            f"services {timings['services']:.3f}s"
        )
        print(f"gRPC sockets in {lab.run_dir}")
        return 0
    if args.action == "down":
        _require_root()
        names = list_labs(args.backend) if args.all else [args.name]
        for name in names:
            seconds = lab_down(open_lab(name, args.backend, load_topology()))
            print(f"lab {name} down in {seconds:.3f}s")
        return 0
    labs = list_labs(args.backend)
    if args.name is not None:  # that lab only
        if args.name not in labs:
            print(f"no {args.backend} lab {args.name} is up", file=sys.stderr)
            return 1
        labs = [args.name]
    if not labs:
        print(f"no {args.backend} lab is up")
    for name in labs:
        print(json.dumps(open_lab(name, args.backend, load_topology()).status(), indent=2))
    return 0


SCENARIO_FILES = Path(__file__).resolve().parent.parent / "scenarios"


def _scenario(name: str) -> Any:
    """A built-in scenario by name, a file, or a file of scenarios/ by its name (rfc5763-7.1 is
    scenarios/rfc5763-7.1.yaml, hello-after-check scenarios/deviations/hello-after-check.yaml)."""
    if name in SCENARIOS:
        return SCENARIOS[name]
    from pinhole.controller.scenario import ScenarioError, load

    path = Path(name)
    if not path.exists():
        named = sorted(SCENARIO_FILES.rglob(f"{name}.yaml")) if "/" not in name else []
        if len(named) != 1:
            raise ScenarioError(
                f"{name}: neither a built-in scenario ({', '.join(sorted(SCENARIOS))}), a file, "
                f"nor the name of one in {SCENARIO_FILES}" + (f" (it names {len(named)})" if named else "")
            )
        path = named[0]
    scenarios = load(path)
    if len(scenarios) != 1:
        raise ScenarioError(f"{name}: a matrix of {len(scenarios)} cells; run it with `pinhole matrix {path}`")
    return scenarios[0]


def cmd_run(args: argparse.Namespace) -> int:
    _require_root()
    scenario = _scenario(args.scenario)
    result, out_dir = run(
        scenario,
        timers_name=args.timers or scenario.timers or "rfc",
        lab_name=args.lab,
        backend=args.backend,
        out_root=Path(args.out),
        forward_to=args.otlp_forward,
    )
    _report(result, out_dir)
    expectation = None
    if scenario.expect is not None and not result.broken:
        from pinhole.controller.matrix import judge_cell

        evidence = json.loads((out_dir / "evidence.json").read_text())
        cell = judge_cell(scenario, evidence, result.outcome, tuple(c.message for c in result.checks if not c.passed))
        print(f"call: {cell.observed} ({cell.reason}); expected {scenario.expect.outcome}: {scenario.expect.why}")
        # the last line says what the exit status means: 0 is "as the scenario expects", a pass or an expected failure
        expectation = (
            cell.matched,
            f"{'as expected' if cell.matched else 'NOT as expected'}: the call {cell.observed}",
        )
        print(expectation[1])
    elif not scenario.expect_pass and not result.broken:  # a built-in negative control: its verdict must fail
        failed = result.outcome == "fail"
        expectation = (failed, f"{'as expected' if failed else 'NOT as expected'}: verdict {result.outcome.upper()}")
        print(expectation[1])
    if args.junit:
        from pinhole.controller import junit

        junit.write(junit.run_report(result, scenario, out_dir, expectation), Path(args.junit))
    if result.broken:  # the lab did not run the scenario (or saw only part of the wire): no verdict
        print(f"pinhole run: broken: {result.broken}", file=sys.stderr)
        return 2
    if expectation is None:
        return 0 if result.passed else 1
    return 0 if expectation[0] else 1


def cmd_matrix(args: argparse.Namespace) -> int:
    """Exit 0 when every cell is as expected, 1 when any differs."""
    _require_root()
    from pinhole.controller.matrix import run_matrix, table
    from pinhole.controller.scenario import load_all

    scenarios = load_all(Path(args.target))
    cells, out_dir = run_matrix(
        scenarios, timers_name=args.timers, lab_name=args.lab, backend=args.backend, out_root=Path(args.out)
    )
    print(table(cells))
    print(f"artifacts: {out_dir} (index.html links every cell's ladder; matrix.json, matrix.md)")
    if args.junit:
        from pinhole.controller import junit

        junit.write(junit.matrix_report(cells, f"pinhole matrix {args.target}"), Path(args.junit))
    return 0 if all(c.matched for c in cells) else 1


def cmd_load(args: argparse.Namespace) -> int:
    """Exit 0 when at least --min-success % of the calls pass, 1 below, 2 when the lab could not run the load."""
    _require_root()
    from pinhole.controller.load import LoadPlan, passed_enough, render, run_load

    try:
        plan = LoadPlan(
            calls=args.calls,
            concurrency=args.concurrency,
            rate=args.rate,
            duration=args.duration,
            ramp=args.ramp,
            media=args.media,
            min_success=args.min_success,
        )
    except ValueError as error:
        print(f"pinhole load: {error}", file=sys.stderr)
        return 2
    scenario = _scenario(args.scenario)
    timers = args.timers or scenario.timers or "rfc"
    try:
        result, out_dir = run_load(
            plan, scenario, timers_name=timers, lab_name=args.lab, backend=args.backend, out_root=Path(args.out)
        )
    except ValueError as error:  # a template the load cannot carry out: refused before the lab is touched
        print(f"pinhole load: {error}", file=sys.stderr)
        return 2
    print(render(result))
    print(f"artifacts: {out_dir} (load.json; capture.pcapng: pinhole verdict --call-id ID {out_dir})")
    if result["broken"]:
        print(f"pinhole load: broken: {result['broken']}", file=sys.stderr)
        return 2
    if not passed_enough(result, plan.min_success):
        summary = result["summary"]
        passed, calls = summary["passed"], summary["calls"]
        print(f"pinhole load: {passed} of {calls} calls passed, below --min-success {plan.min_success:g} %")
        return 1
    return 0


def _report(result: verdict.Verdict, out_dir: Path) -> None:
    """The ladder, the verdict, what was measured and where the artifacts are."""
    print((out_dir / "ladder.txt").read_text())
    print(result.render())
    evidence = json.loads((out_dir / "evidence.json").read_text())
    measured = evidence["measurements"]
    call_id = evidence.get("call_id") or "?"
    print(f"trace: {evidence.get('trace_id') or '(none)'} (call {call_id})")
    print("measured: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in measured.items()))
    print(f"artifacts: {out_dir} (trace.json, ladder.html: pinhole trace ladder|verdict {out_dir})")


def cmd_cluster_run(args: argparse.Namespace) -> int:
    """Exit 0 on PASS, 1 on FAIL, 2 when the lab could not run the call (broken, unreachable, misconfigured)."""
    from pinhole.controller import cluster

    # defaults may come from the environment, which argparse does not check against the choices
    for what, value, known in (("scenario", args.scenario, SCENARIOS), ("timers", args.timers, TIMERS)):
        if value not in known:
            print(f"pinhole cluster-run: unknown {what} {value!r} (one of {', '.join(sorted(known))})", file=sys.stderr)
            return 2
    try:
        nat = cluster.nat_config(
            args.nat_mapping,
            args.nat_filtering,
            args.nat_mapping_timeout,
            args.nat_port_preservation,
            args.nat_hairpinning,
        )
        result, out_dir = cluster.cluster_run(
            args.scenario,
            args.timers,
            args.namespace,
            Path(args.out),
            otlp_listen=args.otlp_listen,
            services=dict(args.service),
            alice_address=args.alice_address,
            nat_inside=args.nat_inside,
            nat=nat,
            wait=args.wait,
            forward_to=args.otlp_forward,
            external=cluster.parse_external(args.external, args.external_dial),
            external_dial=args.external_dial,
            external_hangup=args.external_hangup,
        )
    except cluster.ClusterError as error:
        print(f"pinhole cluster-run: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # not SERVING in time, a gRPC error mid-call: the lab failed, not the flow
        print(f"pinhole cluster-run: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    _report(result, out_dir)
    if result.broken:  # the lab did not run the scenario (or saw only part of the wire): no verdict
        print(f"pinhole cluster-run: broken: {result.broken}", file=sys.stderr)
    return {"pass": 0, "fail": 1}.get(result.outcome, 2)


def _service_override(text: str) -> tuple[str, str]:
    """NODE=IP for --service."""
    from pinhole.controller.cluster import NODES

    node, sep, ip = text.partition("=")
    if not sep or node not in NODES:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NODE=IP with NODE one of {', '.join(NODES)}")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {ip!r} is not an IP address") from None
    return node, ip


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def cmd_verdict(args: argparse.Namespace) -> int:
    """Judge a saved run again from its capture (and, unless --from-capture, its trace): 0 pass, 1 fail, 2 broken."""
    from pinhole.controller.from_trace import TraceError
    from pinhole.controller.saved import SavedRunError, judge_run

    path = Path(args.run)
    try:
        result = judge_run(path, from_capture=args.from_capture, call_id=args.call_id)
    except (SavedRunError, TraceError) as error:
        print(f"pinhole verdict: broken: {error}", file=sys.stderr)
        return 2
    if args.ladder:
        evidence_path = (path if path.is_dir() else path.parent) / "evidence.json"
        if evidence_path.exists():
            print(ladder.render(json.loads(evidence_path.read_text())))
    print(result.render())
    return {"pass": 0, "fail": 1}.get(result.outcome, 2)


def cmd_trace(args: argparse.Namespace) -> int:
    from pinhole.controller import from_trace
    from pinhole.controller.ladder_html import write_html
    from pinhole.controller.saved import SavedRunError, judge_run, load_wire, run_dir_of
    from pinhole.wire import describe_call

    path = Path(args.source)
    try:
        result = judge_run(path, call_id=args.call_id)
        request = from_trace.load(path) if args.action == "ladder" else None  # the ladder needs the trace itself
    except (SavedRunError, from_trace.TraceError) as error:
        print(f"pinhole trace: broken: {error}", file=sys.stderr)
        return 2
    if args.action == "ladder":
        evidence = from_trace.evidence_from_trace(request, args.call_id)
        on_the_wire = load_wire(run_dir_of(path))  # judge_run read it already: the ladder draws the wire too
        call = on_the_wire.call(args.call_id or on_the_wire.info.get("call_id"))
        evidence["wire"] = describe_call(on_the_wire, call) if call is not None else []
        print(ladder.render(evidence))
        html = Path(args.html) if args.html else (path if path.is_dir() else path.parent) / "trace-ladder.html"
        write_html({**evidence, "verdict": result.to_dict()}, html, title=f"pinhole trace {evidence['trace_id']}")
        print(f"HTML ladder: {html}")
        return 0
    print(result.render())
    return {"pass": 0, "fail": 1}.get(result.outcome, 2)


def cmd_nat_probe(args: argparse.Namespace) -> int:
    """`pinhole nat probe`: RFC 5780 behaviour discovery of a namespace lab's NAT from Alice (bringing the lab
    up and down if it is not running); with a NAT asked for, Configure the gateway first and check the probe
    agrees. Exit 0 classified (and as configured), 1 undecided or disagreeing, 2 a NAT that cannot be."""
    import grpc

    from pinhole import natprobe
    from pinhole.controller.run import service_kinds
    from pinhole.controller.services import ServiceClients
    from pinhole.nat import NatBehaviour, NatError

    _require_root()
    on_off = {None: None, "on": True, "off": False}
    asked: dict[str, Any] = {
        key: value
        for key, value in (
            ("mapping", args.mapping),
            ("filtering", args.filtering),
            ("port_preservation", on_off[args.port_preservation]),
            ("hairpinning", on_off[args.hairpinning]),
        )
        if value is not None
    }
    try:
        timers = natprobe.ProbeTimers(rto=args.rto, rc=args.rc, rm=args.rm)
        if args.no_translation and asked:
            raise ValueError("--no-translation leaves no mapping, filtering, hairpinning or ports")
        nat = NatBehaviour(translate=False) if args.no_translation else NatBehaviour(**asked) if asked else None
    except (ValueError, NatError) as error:
        print(f"pinhole nat probe: {error}", file=sys.stderr)
        return 2
    wanted = None if nat is None else natprobe.expected(nat)
    configured = "" if nat is None else nat.describe()
    owned = args.lab not in list_labs("netns")
    if owned:
        print(f"building lab {args.lab} and starting its services", file=sys.stderr)
        lab, topology, _ = lab_up(args.lab)
    else:
        topology = load_topology()
        lab = open_lab(args.lab, "netns", topology)
    clients = ServiceClients.local(lab.run_dir, service_kinds(topology))
    try:
        if nat is not None:
            try:
                clients.stub("natgw").Configure(nat.to_proto(), timeout=30)
            except grpc.RpcError as error:
                print(
                    f"pinhole nat probe: the NAT gateway refused {configured}: {error.code().name}: {error.details()}",
                    file=sys.stderr,
                )
                return 2
        print(f"probing the NAT of lab {args.lab} ({timers.describe()})", file=sys.stderr)
        result = natprobe.probe_lab(lab, topology, timers=timers, natgw=clients.stub("natgw"))
    finally:
        clients.close()
        if owned:
            lab_down(lab)
    agrees = None
    if wanted is not None:
        seen = natprobe.observed(result)
        agrees = all(seen[key] == value for key, value in wanted.items())
    if args.json:
        data = result.to_dict()
        if wanted is not None:
            data["configured"] = wanted
            data["agrees"] = agrees
        print(json.dumps(data, indent=2))
    else:
        print(result.render())
        if wanted is not None:
            print(f"natgw configured with {configured}: {'the probe agrees' if agrees else 'the probe DISAGREES'}")
            if not owned:
                print(f"(lab {args.lab} keeps that NAT; every `pinhole run` configures §7.3's NAT again)")
    return 1 if agrees is False or not result.complete else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pinhole", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    backend_help = "netns: network namespaces (default); docker: containers through the docker API (podman)"
    lab = sub.add_parser(
        "lab",
        help="bring a lab up or down, or show what runs in it",
        description="up: build the topology (pinhole/lab/topology.toml) and start every node's service; down: stop "
        "them and remove the networks; status: the labs that are up (with --name, that one only: exit 1 if it is "
        "not), each node's processes and networks as JSON. Runs reuse a lab that is up.",
    )
    lab.add_argument("action", choices=["up", "down", "status"])
    lab.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(backends()), help=backend_help)
    lab.add_argument("--name", help=f"lab name, also the namespace prefix (default {DEFAULT_LAB}; status: every lab)")
    lab.add_argument("--all", action="store_true", help="with down: every pinhole lab on this machine")
    lab.set_defaults(func=cmd_lab)

    run_p = sub.add_parser("run", help="run a scenario end to end and judge it")
    run_p.add_argument(
        "scenario", nargs="?", default="rfc5763-7.3", help=f"{', '.join(sorted(SCENARIOS))} or a scenario file"
    )
    run_p.add_argument(
        "--timers", choices=sorted(TIMERS), help="rfc defaults or short test timers (default: the file's, else rfc)"
    )
    run_p.add_argument("--lab", default=DEFAULT_LAB, help="use this lab (brought up and down if not running)")
    run_p.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(backends()), help=backend_help)
    run_p.add_argument("--out", default="out", help="artifact root; each run writes out/<run-id>/")
    run_p.add_argument("--junit", metavar="FILE", help="also write JUnit XML there: one test case per check")
    run_p.add_argument(
        "--otlp-forward",
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="also send every span to this OTLP/gRPC endpoint (default: $OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    run_p.set_defaults(func=cmd_run)

    env = os.environ
    cluster_p = sub.add_parser(
        "cluster-run",
        help="run a scenario against a lab already running in a cluster (the k8s/controller Job)",
        description="Find the lab's pods (label app.kubernetes.io/name=<node>, gRPC on port 50051 of each pod "
        "IP), receive their spans over OTLP/gRPC, drive the call and judge it. Exit 0 on PASS, 1 on FAIL, "
        "2 when the lab could not run it. Defaults come from the ConfigMap pinhole-scenario (PINHOLE_*).",
    )
    cluster_p.add_argument(
        "scenario",
        nargs="?",
        default=env.get("PINHOLE_SCENARIO") or "rfc5763-7.3",
        choices=sorted(SCENARIOS),
        help="default: $PINHOLE_SCENARIO, else rfc5763-7.3",
    )
    cluster_p.add_argument(
        "--timers",
        default=env.get("PINHOLE_TIMERS") or "rfc",
        choices=sorted(TIMERS),
        help="rfc defaults or short test timers (default: $PINHOLE_TIMERS or rfc)",
    )
    cluster_p.add_argument(
        "--namespace",
        default=env.get("POD_NAMESPACE") or "pinhole",
        help="where the lab's pods are (default: $POD_NAMESPACE or pinhole)",
    )
    cluster_p.add_argument("--out", default="out", help="artifact root; each run writes OUT/<run-id>/")
    cluster_p.add_argument(
        "--external",
        default=env.get("PINHOLE_EXTERNAL", ""),
        help="NODE=WHAT,...: pods that run your image instead of pinhole's service, judged from the wire "
        "(default: $PINHOLE_EXTERNAL)",
    )
    cluster_p.add_argument(
        "--external-dial",
        default=env.get("PINHOLE_EXTERNAL_DIAL", ""),
        help="with an external alice: the command run in her pod to make her call, {{peer_aor}} etc. filled in "
        "(default: $PINHOLE_EXTERNAL_DIAL)",
    )
    cluster_p.add_argument(
        "--external-hangup",
        default=env.get("PINHOLE_EXTERNAL_HANGUP", ""),
        help="with an external alice: the command that makes her hang up (default: $PINHOLE_EXTERNAL_HANGUP; "
        "without one, Bob hangs up)",
    )
    cluster_p.add_argument(
        "--service",
        metavar="NODE=IP",
        type=_service_override,
        action="append",
        default=[],
        help="a node's pod IP instead of asking the Kubernetes API (repeatable; all six: no API at all)",
    )
    cluster_p.add_argument(
        "--alice-address",
        default="10.10.1.10",
        type=_ipv4,
        metavar="IP",
        help="Alice's lab address behind the NAT, on her VXLAN link (default 10.10.1.10)",
    )
    cluster_p.add_argument(
        "--nat-inside",
        default="10.10.1.1",
        type=_ipv4,
        metavar="IP",
        help="the NAT's address on Alice's LAN (default 10.10.1.1)",
    )
    cluster_p.add_argument(
        "--nat-mapping",
        default=env.get("PINHOLE_NAT_MAPPING") or None,
        help="RFC 4787 mapping: endpoint-independent, address-dependent or address-and-port-dependent "
        "(default: $PINHOLE_NAT_MAPPING, else endpoint-independent)",
    )
    cluster_p.add_argument(
        "--nat-filtering",
        default=env.get("PINHOLE_NAT_FILTERING") or None,
        help="RFC 4787 filtering, same names (default: $PINHOLE_NAT_FILTERING, else address-and-port-dependent)",
    )
    cluster_p.add_argument(
        "--nat-mapping-timeout",
        default=env.get("PINHOLE_NAT_MAPPING_TIMEOUT") or None,
        metavar="SECONDS",
        help="at least 120 (default: $PINHOLE_NAT_MAPPING_TIMEOUT, else 300)",
    )
    cluster_p.add_argument(
        "--nat-port-preservation",
        default=env.get("PINHOLE_NAT_PORT_PRESERVATION") or None,
        metavar="on|off",
        help="RFC 4787 §4.2.1 (default: $PINHOLE_NAT_PORT_PRESERVATION, else on for endpoint-independent mapping)",
    )
    cluster_p.add_argument(
        "--nat-hairpinning",
        default=env.get("PINHOLE_NAT_HAIRPINNING") or None,
        metavar="on|off",
        help="RFC 4787 §6, REQ-9 (default: $PINHOLE_NAT_HAIRPINNING, else on)",
    )
    cluster_p.add_argument(
        "--otlp-listen",
        default="0.0.0.0:4317",
        metavar="ADDRESS",
        help="where this controller receives the services' spans (default 0.0.0.0:4317, the Service's port)",
    )
    cluster_p.add_argument(
        "--wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for Ready pods and SERVING services (default 300)",
    )
    cluster_p.add_argument(
        "--otlp-forward", metavar="ENDPOINT", help="also send the run's whole trace to this OTLP/gRPC endpoint"
    )
    cluster_p.set_defaults(func=cmd_cluster_run)

    matrix = sub.add_parser("matrix", help="run every scenario of a file or directory; expected vs observed")
    matrix.add_argument("target", nargs="?", default="scenarios", help="a scenario file or a directory of them")
    matrix.add_argument("--timers", default="short", choices=sorted(TIMERS), help="unless a scenario says")
    matrix.add_argument("--lab", default=DEFAULT_LAB, help="use this lab (brought up and down if not running)")
    matrix.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(backends()), help=backend_help)
    matrix.add_argument("--out", default="out", help="artifact root; the matrix writes out/<id>-matrix/")
    matrix.add_argument("--junit", metavar="FILE", help="also write JUnit XML there: one test case per cell")
    matrix.set_defaults(func=cmd_matrix)

    load_p = sub.add_parser(
        "load",
        help="many calls of a scenario at once, each traced and judged on the wire",
        description="Place calls on Alice up to --concurrency at once (and at --rate per second for --duration "
        "seconds, climbing over --ramp), hold each --media seconds once SRTP flows both ways, hang up, then judge "
        "every call from the capture. A live line shows calls placed, up and done and INVITE->media latency; the "
        "end, a summary and out/<id>/load.json. Exit 0 when at least --min-success %% of the calls pass, 1 below, "
        "2 when the lab could not run it.",
    )
    load_p.add_argument("scenario", nargs="?", default="rfc5763-7.3", help="the call template (a name or a file)")
    load_p.add_argument("--calls", type=int, default=100, help="calls in all (with --rate: at most)")
    load_p.add_argument("--concurrency", type=int, default=10, help="calls in progress at once, at most")
    load_p.add_argument("--rate", type=float, default=0.0, help="new calls per second (0: as concurrency allows)")
    load_p.add_argument("--duration", type=float, default=0.0, help="with --rate: seconds to place calls for")
    load_p.add_argument("--ramp", type=float, default=0.0, help="seconds over which the rate climbs to --rate")
    load_p.add_argument("--media", type=float, default=1.0, help="seconds each call is held with SRTP flowing")
    load_p.add_argument("--min-success", type=float, default=100.0, help="percent of calls that must pass")
    load_p.add_argument("--timers", choices=sorted(TIMERS), help="default: the scenario's, else rfc")
    load_p.add_argument("--lab", default=DEFAULT_LAB, help="use this lab (brought up and down if not running)")
    load_p.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(backends()), help=backend_help)
    load_p.add_argument("--out", default="out", help="artifact root; the load writes out/<id>/")
    load_p.set_defaults(func=cmd_load)

    judge = sub.add_parser(
        "verdict",
        help="judge a saved run again from its capture (and its trace, for what no packet shows)",
        description="Read OUT/capture.pcapng and OUT/keys.log (and OUT/trace.json for the services' own word on what "
        "no packet can show) and print the verdict. Exit 0 on PASS, 1 on FAIL, 2 when broken.",
    )
    judge.add_argument("run", nargs="?", default="out/last", help="a run directory (default out/last)")
    judge.add_argument(
        "--from-capture", action="store_true", help="capture.pcapng and keys.log alone: no trace, no self-reports"
    )
    judge.add_argument("--call-id", help="which call, when the capture holds several (default: the run's)")
    judge.add_argument("--ladder", action="store_true", help="print the ladder first")
    judge.set_defaults(func=cmd_verdict)

    tracing = sub.add_parser("trace", help="the call's ladder or verdict from a trace file and the capture beside it")
    tracing.add_argument("action", choices=["ladder", "verdict"])
    tracing.add_argument("source", nargs="?", default="out/last", help="a run directory or a trace.json in one")
    tracing.add_argument("--call-id", help="which call, when the file holds several (default: the largest)")
    tracing.add_argument("--html", help="where to write the HTML ladder (default: next to the trace)")
    tracing.set_defaults(func=cmd_trace)

    from pinhole.nat import Filtering, Mapping

    nat = sub.add_parser("nat", help="the lab's NAT: RFC 5780 behaviour discovery")
    nat_sub = nat.add_subparsers(dest="nat_command", required=True)
    probe = nat_sub.add_parser(
        "probe",
        help="classify the NAT's mapping, filtering and hairpinning from Alice (RFC 5780 §4.3, §4.4, §3.4)",
        description="Run the RFC 5780 filtering tests, then the mapping tests, then the hairpinning test, each on "
        "fresh ports of sockets in Alice's namespace, against the lab's STUN server (two addresses, two ports). "
        "Prints each "
        "classification, the test that decided it and every test's evidence. Exit 0 when classified "
        "(and as configured), 1 when undecided or not as configured, 2 when the NAT gateway refuses the "
        "configuration.",
    )
    probe.add_argument("--lab", default=DEFAULT_LAB, help="a namespace lab (brought up and down if not running)")
    probe.add_argument(
        "--mapping",
        choices=[m.value for m in Mapping],
        help="first Configure the NAT gateway with this RFC 4787 mapping, then check the probe agrees",
    )
    probe.add_argument("--filtering", choices=[f.value for f in Filtering], help="likewise for the filtering")
    probe.add_argument(
        "--port-preservation",
        choices=["on", "off"],
        help="likewise for port preservation (gateway default: on for endpoint-independent mapping only)",
    )
    probe.add_argument(
        "--no-translation",
        action="store_true",
        help="first make the gateway a plain router (RFC 5763 §7.1), then check the probe finds no NAT",
    )
    probe.add_argument(
        "--hairpinning", choices=["on", "off"], help="likewise for hairpinning (RFC 4787 REQ-9; gateway default: on)"
    )
    probe.add_argument("--rto", type=float, default=0.5, help="STUN RTO in seconds (RFC 5389 default 0.5)")
    probe.add_argument("--rc", type=int, default=7, help="sends per STUN transaction (RFC 5389 Rc, default 7)")
    probe.add_argument("--rm", type=int, default=16, help="wait after the last send in RTOs (RFC 5389 Rm, 16)")
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.set_defaults(func=cmd_nat_probe)

    args = parser.parse_args(argv)
    from pinhole.controller.scenario import ScenarioError

    try:
        return args.func(args)
    except (LabError, ScenarioError) as error:  # a lab or a scenario that cannot be: say why, no traceback
        print(f"pinhole: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
