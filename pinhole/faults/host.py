"""The fault host: what a service that impairs packets with the fault engine holds and does.

The NAT gateway (its routed lan and wan links) and the switch (its bridge ports) differ only in how they
find their links, where the queue rule goes and how a fault finds the call it hit. The rest is here, once:
a new plan replaces the old one's decisions and counts; the queue is bound before its rule feeds it; on
clearing, what is held is let go before the rule's table goes (deleting its hooks would drop it); the
queue's own counts are kept past each plan; every injected fault and every unjudged packet is an event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable
from typing import Any, ClassVar

from pinhole.calls import CallFlow
from pinhole.events import Counters, EventLog
from pinhole.faults import nfqueue
from pinhole.faults.engine import Bypassed, FaultEngine, FaultInjector, FaultPlan, Injected, LinkMap

log = logging.getLogger("faults")


class FaultHost:
    """A service's fault engine. A subclass says where its packets are queued (`fault_links`,
    `_install_queue`, `_remove_queue`), which hooks its injector gets and how a fault finds its call."""

    kind: ClassVar[str]  # the prefix of its events: "nat", "switch"

    def __init__(self, *, events: EventLog, counters: Counters, fault_queue: int = 1) -> None:
        self.events, self.counters = events, counters
        self.fault_queue = fault_queue
        self.fault_plan = FaultPlan()
        self.injector: FaultInjector | None = None
        self.fault_counts: Counter[str] = Counter()  # over every plan this host ran

    # -- what a host says -----------------------------------------------------------------------

    def fault_links(self) -> LinkMap | Awaitable[LinkMap]:
        """The engine's links now (plain or awaitable)."""
        raise NotImplementedError

    def _install_queue(self, plan: FaultPlan) -> dict[str, object]:
        """Send what `plan` impairs to the queue (in a thread); returns what the faults_set event says of it."""
        raise NotImplementedError

    def _remove_queue(self, *, final: bool) -> int | None:
        """Stop queueing (in a thread); `final` also removes the rule's table. Not final: the rule's count."""
        raise NotImplementedError

    def _injector_hooks(self) -> dict[str, Any]:
        """The service's own hooks for the injector (expire a mapping, observe SIP on the way)."""
        return {}

    def _flow_of(self, injected: Injected) -> CallFlow | None:
        """The call a fault hit, for its event's trace."""
        raise NotImplementedError

    # -- the engine's life ----------------------------------------------------------------------

    async def set_faults(self, plan: FaultPlan) -> None:
        """Apply `plan` to the packets to come (no rules: clear)."""
        if not plan.rules:
            await self.clear_faults()
            return
        links = self.fault_links()
        engine = FaultEngine(plan, await links if isinstance(links, Awaitable) else links)
        self.injector = FaultInjector.running(
            self.injector,
            engine,
            lambda: nfqueue.NfQueue(self.fault_queue),
            on_fault=self._fault_injected,
            counts=self.fault_counts,
            rule_hits=nfqueue.queue_rule_hits,
            on_bypass=self._fault_bypassed,
            **self._injector_hooks(),
        )
        try:
            where = await asyncio.to_thread(self._install_queue, plan)
        except BaseException:
            await self.clear_faults()
            raise
        self.fault_plan = plan
        self.counters["fault_plans_set"] += 1
        self.events.emit(
            f"{self.kind}.faults_set",
            attributes={
                "rules": len(plan.rules),
                "seed": plan.seed,
                **where,
                "plan": json.dumps(plan.to_dict(), separators=(",", ":")),
            },
        )

    async def clear_faults(self) -> None:
        """Nothing is queued any more; what is held is let go at once, then the rule's table goes."""
        rule_hits = await asyncio.to_thread(self._remove_queue, final=False)
        had = self._stop_injector(rule_hits)
        await asyncio.to_thread(self._remove_queue, final=True)
        self.fault_plan = FaultPlan()
        if had:
            self.events.emit(
                f"{self.kind}.faults_cleared",
                injected=self.fault_counts["faults_injected"],
                bypassed=self.fault_counts["faults_queue_bypassed"],
            )

    def fault_stats(self) -> Counter[str]:
        """Every plan's counts, and the running queue's."""
        out = Counter(self.fault_counts)
        if self.injector is not None:
            for name, value in self.injector.stats().items():
                if name.startswith("faults_queue_") or name == "faults_held":
                    out[name] += value
        return out

    async def fault_counters(self) -> Counters:
        """The service's counters with the fault engine's, its bypass count brought up to date."""
        if self.injector is not None:
            await self.injector.check_bypass()
        counters = Counters(self.counters)
        counters.update(self.fault_stats())
        return counters

    def close_faults(self) -> None:
        """At the service's end: the engine stops and its rule goes (best effort: the rule lets packets
        pass anyway, --queue-bypass)."""
        self._stop_injector()
        try:
            self._remove_queue(final=True)
        except Exception as error:
            log.warning("removing the fault queue failed: %s", error)

    def _stop_injector(self, rule_hits: int | None = None) -> bool:
        if self.injector is None:
            return False
        self.injector.stop(rule_hits)
        for name, value in self.injector.stats().items():  # the queue's own counts, kept past its end
            if name.startswith("faults_queue_"):
                self.fault_counts[name] += value
        self.injector = None
        return True

    def _fault_bypassed(self, bypassed: Bypassed) -> None:
        """Packets that crossed unjudged (NFQUEUE fail-open): at most one event per check interval."""
        self.events.emit("fault.bypassed", attributes=bypassed.event_attributes())

    def _fault_injected(self, injected: Injected) -> None:
        """One fault, as an event in the trace of the call it hit."""
        flow = self._flow_of(injected)
        self.events.emit(
            "fault.injected",
            flow.call_id if flow else "",
            injected.event_attributes(),
            parent=flow.context if flow else None,
            at_ns=int(injected.at * 1e9),
        )
