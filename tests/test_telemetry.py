"""Telemetry contracts of a service process: every event is a span, and SIGTERM loses none."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from pinhole import stun
from pinhole.controller.otlp import OtlpReceiver
from pinhole.controller.services import REPO_ROOT, channel, wait_healthy
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
        PYTHONPATH=str(REPO_ROOT),
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
        wait_healthy(tmp_path, ["stun"], timeout=30, pids={"stun": process.pid})
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
