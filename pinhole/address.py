"""A UDP transport address as every module passes it, (host, port), and the one way events, ladders and
verdicts print it."""

from __future__ import annotations

Address = tuple[str, int]


def fmt(address: Address | None, missing: str = "") -> str:
    """host:port; `missing` when there is no address."""
    return missing if address is None else f"{address[0]}:{address[1]}"
