"""RFC 4787's vocabulary for NAT behaviour and the one NAT value (`NatBehaviour`) every part of pinhole uses.

The RFC 3489 cone names are not used in code: RFC 4787 §3 shows why they do not describe a NAT.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from pinhole.rpc.v1 import natgw_pb2


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


# RFC 4787 §4.3 REQ-5: "The value of the 'NAT UDP mapping timer' MAY be configurable. A default value of
# 5 minutes or more is RECOMMENDED": the default of every NAT the lab builds.
DEFAULT_MAPPING_TIMEOUT = 300

# RFC 4787 §4 and §5 abbreviate behaviours so: EIM+APDF is §7.3's NAT
SHORT = {"endpoint-independent": "EI", "address-dependent": "AD", "address-and-port-dependent": "APD"}

ON_OFF = {None: "UNSPECIFIED", True: "ON", False: "OFF"}  # a proto switch's value names


class NatError(ValueError):
    """A NAT behaviour that cannot be: `field` names what is wrong (a scenario key, a proto field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class NatBehaviour:
    """A NAT in RFC 4787 terms: the one value the scenario, the cluster, the gRPC API and the gateway share.

    The default is what §7.3 of RFC 5763 assumes and what Linux masquerading does: endpoint-independent
    mapping (REQ-1), address-and-port-dependent filtering, a 300 s mapping timer (REQ-5). A field left
    None takes the gateway's default, which `effective()` fills in: port preservation (§4.1) is what the
    kernel does for the mapping (on for endpoint-independent mapping, `masquerade`; off otherwise,
    `masquerade fully-random`), hairpinning (§6, REQ-9: a MUST) is on while translating. `translate`
    False is no NAT at all (RFC 5763 §7.1): the gateway routes, every port is kept and there is no
    mapping to hairpin through. `mapping_timeout` is 1..MAX_MAPPING_TIMEOUT here (the kernel's tests run
    short timers); what a user configures must also meet REQ-5 (`require_req5`).
    """

    mapping: Mapping = Mapping.ENDPOINT_INDEPENDENT
    filtering: Filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
    mapping_timeout: int = DEFAULT_MAPPING_TIMEOUT
    port_preservation: bool | None = None
    translate: bool = True
    hairpinning: bool | None = None

    def __post_init__(self) -> None:
        for name, kind in (("mapping", Mapping), ("filtering", Filtering)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))  # a name from a file or a proto: one of the enum's
            except ValueError:
                raise NatError(name, f"{value!r} is not one of {', '.join(k.value for k in kind)} (RFC 4787)") from None
        if not isinstance(self.translate, bool):
            raise NatError("translate", f"{self.translate!r} is not true or false")
        for name in ("port_preservation", "hairpinning"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise NatError(name, f"{getattr(self, name)!r} is not true, false or unset")
        seconds = self.mapping_timeout
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise NatError("mapping_timeout", f"{seconds!r} is not a positive whole number of seconds")
        if seconds > MAX_MAPPING_TIMEOUT:
            raise NatError("mapping_timeout", f"{seconds}: at most {MAX_MAPPING_TIMEOUT} (what conntrack keeps)")
        if not self.translate:
            if (self.mapping, self.filtering) != (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT):
                raise NatError(
                    "translate",
                    f"without translation there is no {self.mapping.value} mapping or {self.filtering.value} filtering",
                )
            if self.port_preservation is False:
                raise NatError("port_preservation", "without translation every port is kept: it cannot be false")
            if self.hairpinning:
                raise NatError("hairpinning", "without translation there is no mapping to hairpin through")

    def require_req5(self) -> NatBehaviour:
        """Itself, if its mapping timer meets RFC 4787 REQ-5 (at least two minutes): what users configure."""
        if self.mapping_timeout < MIN_MAPPING_TIMEOUT:
            raise NatError(
                "mapping_timeout", f"{self.mapping_timeout}: at least {MIN_MAPPING_TIMEOUT} (RFC 4787 REQ-5)"
            )
        return self

    @property
    def preserves_ports(self) -> bool:
        """Port preservation as the gateway applies it."""
        if self.port_preservation is not None:
            return self.port_preservation
        return self.mapping is Mapping.ENDPOINT_INDEPENDENT or not self.translate

    @property
    def hairpins(self) -> bool:
        """Hairpinning as the gateway applies it."""
        return self.translate if self.hairpinning is None else self.hairpinning

    def effective(self) -> NatBehaviour:
        """The same NAT with every default filled in: what the gateway runs and reports."""
        return replace(self, port_preservation=self.preserves_ports, hairpinning=self.hairpins)

    def label(self) -> str:
        """EIM+APDF, as RFC 4787 abbreviates, with what was set explicitly; "no NAT" without translation."""
        if not self.translate:
            return "no NAT"
        label = f"{SHORT[self.mapping.value]}M+{SHORT[self.filtering.value]}F"
        if self.port_preservation is not None:  # said explicitly: part of what tells two cells apart
            label += "+pp" if self.port_preservation else "+no-pp"
        if self.hairpinning is not None:
            label += "+hairpin" if self.hairpinning else "+no-hairpin"
        return label

    def describe(self) -> str:
        """'endpoint-independent mapping, address-and-port-dependent filtering, ports preserved'."""
        if not self.translate:
            return "no translation (a plain router)"
        ports = "ports preserved" if self.preserves_ports else "ports not preserved"
        hairpinning = "" if self.hairpins else ", no hairpinning"
        return f"{self.mapping.value} mapping, {self.filtering.value} filtering, {ports}{hairpinning}"

    def to_proto(self) -> natgw_pb2.NatConfig:
        """The gateway's NatConfig: an unset field stays UNSPECIFIED (the gateway's default)."""
        preservation = f"PORT_PRESERVATION_{ON_OFF[self.port_preservation]}"
        if not self.translate:
            return natgw_pb2.NatConfig(
                translation_off=True, mapping_timeout_seconds=self.mapping_timeout, port_preservation=preservation
            )
        return natgw_pb2.NatConfig(
            mapping=f"MAPPING_{self.mapping.name}",
            filtering=f"FILTERING_{self.filtering.name}",
            mapping_timeout_seconds=self.mapping_timeout,
            port_preservation=preservation,
            hairpinning=f"HAIRPINNING_{ON_OFF[self.hairpinning]}",
        )

    @classmethod
    def from_proto(cls, config: natgw_pb2.NatConfig) -> NatBehaviour:
        """The NAT a NatConfig asks for, UNSPECIFIED taking the default; errors name the proto field. With
        translation_off, a field that says anything else than its default contradicts it."""
        enums = {
            "mapping": natgw_pb2.NatMappingBehaviour,
            "filtering": natgw_pb2.NatFilteringBehaviour,
            "port_preservation": natgw_pb2.NatPortPreservation,
            "hairpinning": natgw_pb2.NatHairpinning,
        }
        names = {}
        for name, enum in enums.items():
            number = getattr(config, name)
            try:
                names[name] = enum.Name(number)
            except ValueError:
                raise NatError(name, f"unknown value {number}") from None
        if config.translation_off:
            contradictions = [
                f"{name} {names[name]}"
                for name in ("mapping", "filtering", "port_preservation")
                if not names[name].endswith(("_UNSPECIFIED", "PORT_PRESERVATION_ON"))
            ]
            if contradictions:
                raise NatError(
                    "translation_off",
                    f"no translation contradicts {', '.join(contradictions)} "
                    "(leave mapping and filtering UNSPECIFIED, port_preservation UNSPECIFIED or ON)",
                )
            if names["hairpinning"] != "HAIRPINNING_UNSPECIFIED":
                raise NatError(
                    "translation_off",
                    "without translation there is no mapping to hairpin through "
                    f"(leave hairpinning UNSPECIFIED, not {names['hairpinning']})",
                )
        on_off = {name: value for value, name in ON_OFF.items()}
        mapping, filtering = names["mapping"].removeprefix("MAPPING_"), names["filtering"].removeprefix("FILTERING_")
        return cls(
            mapping=Mapping[mapping] if mapping != "UNSPECIFIED" else cls.mapping,
            filtering=Filtering[filtering] if filtering != "UNSPECIFIED" else cls.filtering,
            mapping_timeout=config.mapping_timeout_seconds or DEFAULT_MAPPING_TIMEOUT,
            port_preservation=on_off[names["port_preservation"].rpartition("_")[2]],
            translate=not config.translation_off,
            hairpinning=on_off[names["hairpinning"].rpartition("_")[2]],
        )
