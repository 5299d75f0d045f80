"""The RFC timer numbers, written once, and the lab's two timer profiles.

Every protocol module takes its defaults from here (SIP transactions, the DTLS flight timer, STUN
client transactions), and a run picks a `TimerProfile`: `rfc`, the numbers below, or `short`, which
shrinks them so that tests finish fast while keeping every protocol's own ratios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pinhole.rpc.v1 import useragent_pb2

# RFC 3261 §17.1.1.1, Table 4: T1 (the RTT estimate), T2 (the longest non-INVITE retransmit interval), T4
SIP_T1 = 0.5
SIP_T2 = 4.0
SIP_T4 = 5.0
# RFC 6347 §4.2.4.1: the flight timer starts at 1 s and doubles, up to 60 s
DTLS_INITIAL = 1.0
DTLS_MAXIMUM = 60.0
# RFC 6347 leaves the number of retransmissions to the implementation; 8 sends of a flight (255 s with
# the RFC timer) are longer than any call setup of the lab waits
DTLS_MAX_TRANSMISSIONS = 8
# RFC 5389 §7.2.1: RTO 500 ms, Rc 7 sends, Rm 16 RTOs after the last one (39.5 s in all)
STUN_RTO = 0.5
STUN_RC = 7
STUN_RM = 16


@dataclass(frozen=True)
class TimerProfile:
    """The DTLS, STUN and SIP timers of a run, as the controller hands them to every service."""

    sip_t1: float = SIP_T1
    dtls_initial: float = DTLS_INITIAL
    dtls_maximum: float = DTLS_MAXIMUM
    dtls_max_transmissions: int = DTLS_MAX_TRANSMISSIONS
    stun_rto: float = STUN_RTO

    def handshake_budget(self) -> float:
        """Seconds until the active side gives up on a handshake (sum of its flight timers)."""
        total, timer = 0.0, self.dtls_initial
        for _ in range(self.dtls_max_transmissions):
            total += timer
            timer = min(timer * 2, self.dtls_maximum)
        return total

    def proto(self) -> useragent_pb2.Timers:
        from pinhole.rpc.v1 import useragent_pb2  # the codecs import this module; the RPC types only this

        return useragent_pb2.Timers(
            sip_t1_seconds=self.sip_t1,
            dtls_initial_seconds=self.dtls_initial,
            dtls_maximum_seconds=self.dtls_maximum,
            dtls_max_transmissions=self.dtls_max_transmissions,
            stun_rto_seconds=self.stun_rto,
        )


TIMERS = {
    "rfc": TimerProfile(),
    "short": TimerProfile(sip_t1=0.1, dtls_initial=0.1, dtls_maximum=0.8, dtls_max_transmissions=6, stun_rto=0.1),
}
