"""RFC 4787's vocabulary for NAT behaviour, shared by the gateway, the RFC 5780 probe and scenario files.

The RFC 3489 cone names are not used in code: RFC 4787 §3 shows why they do not describe a NAT.
"""

from __future__ import annotations

from enum import Enum


class Mapping(str, Enum):
    """RFC 4787 §4.1 mapping behaviour: what decides whether an outbound flow reuses a mapping."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(str, Enum):
    """RFC 4787 §5 filtering behaviour: which outside endpoints may send in through a mapping."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Hairpinning(str, Enum):
    """RFC 4787 §6 hairpinning behaviour: how a packet from one internal endpoint to another's external
    mapping comes back inside, as the RFC 5780 §3.4 test sees it. REQ-9 makes hairpinning a MUST, and
    a) its source MUST be the sender's external mapping; an internal source "may cause problems"."""

    EXTERNAL_SOURCE = "external-source"  # "External source IP address and port" (REQ-9 a)
    INTERNAL_SOURCE = "internal-source"  # "Internal source IP address and port"
    NONE = "none"  # not hairpinned at all (REQ-9 broken)


# RFC 4787 §4.3 REQ-5: a UDP mapping timer MUST NOT expire in less than two minutes.
MIN_MAPPING_TIMEOUT = 120
# The longest mapping timer Linux can keep, on every kernel: conntrack holds a flow's timeout in jiffies and
# compares it as a signed 32-bit number, so it clamps timeouts to INT_MAX jiffies, which is INT_MAX / HZ
# seconds (the nf_conntrack_udp_timeout sysctl refuses more, an nft `ct timeout` policy silently wraps past
# 2^32 jiffies); HZ is at most 1000, so 2147483 s (24.8 days) holds whatever the kernel's HZ.
MAX_MAPPING_TIMEOUT = (2**31 - 1) // 1000
