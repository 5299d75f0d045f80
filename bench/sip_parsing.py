"""Benchmark: parsing a SIP request stays linear in its size, however many Route values it carries.

One 64 KB UDP datagram with 8,000 comma-separated Route values once stalled a proxy for 8 s: each
value was fetched from the header list by index, a rescan of every entry. Here INVITEs with 1k,
2k, 4k and 8k Route values, then the 64 KB datagram, are parsed by `parse_message`, which checks
every value as a name-addr. Linear means the time per value stays the same as the count doubles
(the "x per value" column stays near 1.00; quadratic doubles it). The named peer, measured in the
same run on the same bytes, is the standard library: `email.parser` splitting the header section
into fields and `str.split(',')` the Route values, which checks nothing, a floor. No root needed.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from email.parser import BytesHeaderParser

from pinhole.sip.message import parse_message

ROUNDS = 7
MAX_UDP_PAYLOAD = 65_507  # IPv4: 65,535 - 20 (IP header) - 8 (UDP header)


def invite(routes: list[str]) -> bytes:
    return (
        "INVITE sip:bob@b.example SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK776asdhds\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:bob@b.example>\r\n"
        'From: "Alice" <sip:alice@a.example>;tag=1928301774\r\n'
        "Call-ID: a84b4c76e66710@192.0.2.1\r\n"
        "CSeq: 314159 INVITE\r\n"
        f"Route: {','.join(routes)}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def pinhole(data: bytes) -> int:
    return len(parse_message(data).headers.get_all("Route"))


def stdlib(data: bytes) -> int:
    """The peer: header fields by the email parser, the Route values by a plain split."""
    head = data.partition(b"\r\n")[2]  # the parser reads RFC 5322 fields, not a SIP start line
    return len((BytesHeaderParser().parsebytes(head)["Route"] or "").split(","))


def median_seconds(parse: Callable[[bytes], int], data: bytes, values: int) -> float:
    """Median of ROUNDS after a warm-up, the garbage collector off while timing (as timeit has it)."""
    parse(data)
    times = []
    for _ in range(ROUNDS):
        gc.disable()
        try:
            started = time.perf_counter()
            count = parse(data)
            times.append(time.perf_counter() - started)
        finally:
            gc.enable()
        if count != values:
            raise RuntimeError(f"{parse.__name__} read {count} Route values, expected {values}")
    return statistics.median(times)


def main() -> int:
    cases = [
        (f"{n} values", invite([f"<sip:proxy{i}.example.com;lr>" for i in range(n)]), n)
        for n in (1000, 2000, 4000, 8000)
    ]
    smallest = invite(["<sip:a>"] * 8000)  # 8 bytes a value, comma included: as many as fit
    assert len(smallest) <= MAX_UDP_PAYLOAD
    cases.append((f"{len(smallest) // 1000} KB datagram", smallest, 8000))
    print(f"parse_message vs email.parser + str.split(',') (peer), median of {ROUNDS}")
    print(f"{'input':>16} {'bytes':>7} {'pinhole ms':>11} {'us/value':>9} {'x per value':>12} "
          f"{'peer ms':>8} {'us/value':>9} {'pinhole/peer':>13}")  # fmt: skip
    previous: float | None = None
    for label, data, values in cases:
        ours, peer = median_seconds(pinhole, data, values), median_seconds(stdlib, data, values)
        per_value = ours / values
        growth = f"{per_value / previous:.2f}" if previous is not None and label.endswith("values") else ""
        previous = per_value
        print(
            f"{label:>16} {len(data):>7} {ours * 1e3:>11.1f} {per_value * 1e6:>9.2f} {growth:>12} "
            f"{peer * 1e3:>8.1f} {peer / values * 1e6:>9.2f} {ours / peer:>13.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
