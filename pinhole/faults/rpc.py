"""SetFaults and ClearFaults, the same for every service that runs the fault engine (the NAT gateway,
the switch): one validation, one set of status codes, one reply.

A servicer mixes `FaultsServicer` in and says which object holds its faults (`fault_host`): something
with `fault_links()` (plain or async), `set_faults(plan)`, `clear_faults()`, `fault_plan` and
`injector`. `precondition_errors` are the host's own errors that mean "cannot impair here".
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import grpc

from pinhole.faults import nfqueue
from pinhole.faults.engine import FaultError
from pinhole.faults.wire import fault_plan, fault_plan_proto
from pinhole.rpc.v1 import faults_pb2


class FaultsServicer:
    precondition_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def fault_host(self) -> Any:
        raise NotImplementedError

    async def SetFaults(self, request: faults_pb2.FaultPlan, context: Any) -> faults_pb2.FaultsReply:  # noqa: N802
        host = self.fault_host()
        try:
            links = host.fault_links()
            plan = fault_plan(request, await links if inspect.isawaitable(links) else links)
        except FaultError as error:  # a rule this service cannot carry out, named by its field
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except self.precondition_errors as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"finding the links to impair failed: {error}")
        try:
            await host.set_faults(plan)
        except (nfqueue.QueueRuleError,) + self.precondition_errors as error:  # iptables missing or refused
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"installing the fault queue failed: {error}")
        except (nfqueue.NfqueueError, OSError, RuntimeError) as error:
            await context.abort(grpc.StatusCode.INTERNAL, f"setting up the fault engine failed: {error}")
        return self._faults_reply()

    async def ClearFaults(self, request: Any, context: Any) -> faults_pb2.FaultsReply:  # noqa: N802
        try:
            await self.fault_host().clear_faults()
        except (OSError, RuntimeError) as error:
            await context.abort(grpc.StatusCode.INTERNAL, f"removing the fault queue failed: {error}")
        return self._faults_reply()

    def _faults_reply(self) -> faults_pb2.FaultsReply:
        host = self.fault_host()
        return faults_pb2.FaultsReply(effective=fault_plan_proto(host.fault_plan), active=host.injector is not None)
