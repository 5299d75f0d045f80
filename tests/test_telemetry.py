"""Telemetry contracts of a service process: every event is a span, and SIGTERM loses none."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pinhole import stun
from pinhole.controller.otlp import OtlpReceiver
from pinhole.controller.services import channel, local_targets, wait_healthy
from pinhole.rpc.v1 import events_pb2, stunserver_pb2_grpc


def test_sigterm_loses_no_span(tmp_path):
    """A service stopped with SIGTERM flushes: spans received == events it recorded, counted."""
    receiver = OtlpReceiver(f"unix:{tmp_path}/otlp.sock")
    receiver.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"unix:{tmp_path}/otlp.sock",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="600000",  # nothing leaves before the stop: only the flush can deliver
    )
    argv = [
        sys.executable,
        "-m",
        "services.stunserver",
        "--name",
        "stun",
        "--grpc",
        f"unix:{tmp_path}/stun.sock",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(local_targets(tmp_path, ["stun"]), timeout=30, pids={"stun": process.pid}, logs=tmp_path)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            for _ in range(25):
                client.sendto(stun.encode(stun.binding_request()), ("127.0.0.1", port))
                client.recv(2048)
            client.sendto(b"garbage", ("127.0.0.1", port))
            client.sendto(stun.encode(stun.binding_request()), ("127.0.0.1", port))
            client.recv(2048)  # answered after the garbage: the garbage was handled
        with channel(tmp_path, "stun") as ch:
            events = list(
                stunserver_pb2_grpc.StunServerStub(ch).WatchEvents(
                    events_pb2.WatchEventsRequest(follow=False), timeout=10
                )
            )
        assert len(events) == 1 + 26 * 2 + 1  # started, 26 requests and responses, one malformed
        assert receiver.span_count() == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        receiver.stop()
    spans = [s for s in receiver.spans() if "pinhole.call_id" in s.attrs]
    assert len(spans) == len(events)
    assert sorted(s.name for s in spans) == sorted(e.kind for e in events)
    assert {s.service for s in spans} == {"stun"}


def test_sip_hops_chain_spans_and_a_request_without_context_starts_a_trace():
    """record_message: a send injects its own span as traceparent; a receive continues it, or starts a
    trace when the request carries none (a third-party user agent)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pinhole.events import EventLog
    from pinhole.sip import parse_message
    from pinhole.sip.describe import record_message

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    invite = (
        b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa\r\n"
        b"Max-Forwards: 70\r\nTo: <sip:bob@b.example>\r\nFrom: <sip:alice@a.example>;tag=1\r\n"
        b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    tracer = provider.get_tracer("test")
    proxy, bob = EventLog("proxy-a", tracer=tracer), EventLog("bob", tracer=tracer)
    incoming = parse_message(invite)
    record_message(proxy, "recv", incoming, ("10.0.0.1", 5060))  # no traceparent: a new trace
    forwarded = parse_message(invite)
    record_message(proxy, "send", forwarded, ("10.0.0.2", 5060))
    assert forwarded.headers.get("traceparent")
    record_message(bob, "recv", parse_message(forwarded.encode()), ("10.0.0.3", 5060))
    recv, send, at_bob = exporter.get_finished_spans()
    assert recv.parent is None, "the proxy started the trace"
    assert send.parent.span_id == recv.context.span_id and at_bob.parent.span_id == send.context.span_id
    assert len({s.context.trace_id for s in (recv, send, at_bob)}) == 1
