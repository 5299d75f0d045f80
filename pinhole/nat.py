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
