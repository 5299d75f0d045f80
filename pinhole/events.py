"""Evidence every service emits: an append-only event log and named counters.

Each service records what it sent, received and decided as `Event`s (the contract in
proto/pinhole/rpc/v1/events.proto). The controller follows every service's log over gRPC,
merges them by time and judges the call from that evidence alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as _Counter
from collections.abc import AsyncIterator, Mapping

from pinhole.rpc.v1 import events_pb2


class EventLog:
    """Append-only, bounded log of one service's events with live followers."""

    def __init__(self, service: str, *, limit: int = 200_000) -> None:
        self.service = service
        self.limit = limit
        self._events: list[events_pb2.Event] = []
        self._sequence = 0
        self._waiters: list[asyncio.Future[None]] = []

    def emit(
        self, kind: str, call_id: str = "", attributes: Mapping[str, object] | None = None, **more: object
    ) -> events_pb2.Event:
        """Record one event; attribute values are stringified (they end up in traces and JSON).

        Dotted attribute names (dtls.handshake_types) go in `attributes`, plain ones may be keywords.
        """
        merged = {**(attributes or {}), **more}
        self._sequence += 1
        event = events_pb2.Event(
            time_unix_nano=time.time_ns(),
            service=self.service,
            kind=kind,
            call_id=call_id,
            attributes={k: str(v) for k, v in merged.items() if v is not None},
            sequence=self._sequence,
        )
        self._events.append(event)
        if len(self._events) > self.limit:
            del self._events[: len(self._events) - self.limit]
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return event

    def since(self, after_sequence: int = 0) -> list[events_pb2.Event]:
        return [e for e in self._events if e.sequence > after_sequence]

    async def follow(self, after_sequence: int = 0, follow: bool = True) -> AsyncIterator[events_pb2.Event]:
        """Replay events after `after_sequence`, then (if follow) stream new ones as they come."""
        last = after_sequence
        while True:
            for event in self.since(last):
                last = event.sequence
                yield event
            if not follow:
                return
            if self._sequence == last:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter


class Counters(_Counter[str]):
    """Named monotonic counters (packets, malformed input, retransmissions...)."""

    def as_reply(self) -> events_pb2.CountersReply:
        return events_pb2.CountersReply(
            counters=[events_pb2.Counter(name=name, value=value) for name, value in sorted(self.items())]
        )
