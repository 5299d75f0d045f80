"""The one NAT value: its defaults, its one validation, its labels and its conversion to and from the proto."""

from __future__ import annotations

import pytest

from pinhole.nat import (
    MAX_MAPPING_TIMEOUT,
    MIN_MAPPING_TIMEOUT,
    Filtering,
    Mapping,
    NatBehaviour,
    NatError,
)
from pinhole.rpc.v1 import natgw_pb2


def test_the_default_is_section_7_3s_nat() -> None:
    """EIM+APDF with a 300 s timer (RFC 4787 REQ-5's recommendation), ports preserved, hairpinning on."""
    nat = NatBehaviour()
    assert (nat.mapping, nat.filtering, nat.mapping_timeout) == (
        Mapping.ENDPOINT_INDEPENDENT,
        Filtering.ADDRESS_AND_PORT_DEPENDENT,
        300,
    )
    assert (nat.port_preservation, nat.hairpinning) == (None, None)  # the gateway's defaults, filled in below
    assert (nat.preserves_ports, nat.hairpins, nat.label()) == (True, True, "EIM+APDF")
    assert nat.to_proto() == natgw_pb2.NatConfig(
        mapping=natgw_pb2.MAPPING_ENDPOINT_INDEPENDENT,
        filtering=natgw_pb2.FILTERING_ADDRESS_AND_PORT_DEPENDENT,
        mapping_timeout_seconds=300,
    )


def test_names_from_files_become_the_rfc_enums() -> None:
    nat = NatBehaviour(mapping="address-and-port-dependent", filtering="address-dependent")  # type: ignore[arg-type]
    assert (nat.mapping, nat.filtering) == (Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_DEPENDENT)
    assert nat == NatBehaviour(Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_DEPENDENT)


def test_port_preservation_and_hairpinning_default_to_the_kernels() -> None:
    """masquerade keeps free ports (endpoint-independent mapping); fully-random does not. Hairpinning is on
    while translating (REQ-9); without translation every port is kept and nothing hairpins."""
    assert NatBehaviour(mapping=Mapping.ADDRESS_DEPENDENT).preserves_ports is False
    assert NatBehaviour(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT).preserves_ports is False
    assert NatBehaviour(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT, port_preservation=True).preserves_ports is True
    router = NatBehaviour(translate=False)
    assert (router.preserves_ports, router.hairpins, router.label()) == (True, False, "no NAT")
    assert router.effective() == NatBehaviour(port_preservation=True, translate=False, hairpinning=False)
    assert NatBehaviour(port_preservation=False).describe() == (
        "endpoint-independent mapping, address-and-port-dependent filtering, ports not preserved"
    )
    assert NatBehaviour(hairpinning=False).label() == "EIM+APDF+no-hairpin"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mapping": "full-cone"},
            "mapping: 'full-cone' is not one of endpoint-independent, address-dependent, "
            "address-and-port-dependent (RFC 4787)",
        ),
        (
            {"filtering": ["x"]},
            "filtering: ['x'] is not one of endpoint-independent, address-dependent, "
            "address-and-port-dependent (RFC 4787)",
        ),
        ({"mapping_timeout": 0}, "mapping_timeout: 0 is not a positive whole number of seconds"),
        ({"mapping_timeout": True}, "mapping_timeout: True is not a positive whole number of seconds"),
        ({"mapping_timeout": 2**32}, f"mapping_timeout: {2**32}: at most {MAX_MAPPING_TIMEOUT} (what conntrack keeps)"),
        ({"port_preservation": "yes"}, "port_preservation: 'yes' is not true, false or unset"),
        ({"hairpinning": "on"}, "hairpinning: 'on' is not true, false or unset"),
        ({"translate": "no"}, "translate: 'no' is not true or false"),
        (
            {"translate": False, "filtering": "endpoint-independent"},
            "translate: without translation there is no endpoint-independent mapping or endpoint-independent filtering",
        ),
        (
            {"translate": False, "port_preservation": False},
            "port_preservation: without translation every port is kept: it cannot be false",
        ),
        (
            {"translate": False, "hairpinning": True},
            "hairpinning: without translation there is no mapping to hairpin through",
        ),
    ],
)
def test_one_validation_names_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(NatError) as info:
        NatBehaviour(**kwargs)  # type: ignore[arg-type]
    assert f"{info.value.field}: {info.value}" == message


def test_what_users_configure_meets_req5() -> None:
    """Short timers are the kernel tests' (the value takes 1 s); a configured NAT keeps two minutes."""
    assert NatBehaviour(mapping_timeout=MIN_MAPPING_TIMEOUT).require_req5().mapping_timeout == MIN_MAPPING_TIMEOUT
    with pytest.raises(NatError, match=f"at least {MIN_MAPPING_TIMEOUT} \\(RFC 4787 REQ-5\\)"):
        NatBehaviour(mapping_timeout=MIN_MAPPING_TIMEOUT - 1).require_req5()


NATS = [
    NatBehaviour(mapping, filtering, 137, preserve, True, hairpin)
    for mapping in Mapping
    for filtering in Filtering
    for preserve in (None, True, False)
    for hairpin in (None, True, False)
] + [NatBehaviour(translate=False), NatBehaviour(mapping_timeout=240, port_preservation=True, translate=False)]


@pytest.mark.parametrize("nat", NATS, ids=lambda nat: f"{nat.label()}-{nat.port_preservation}")
def test_the_proto_round_trips(nat: NatBehaviour) -> None:
    assert NatBehaviour.from_proto(nat.to_proto()) == nat
    assert NatBehaviour.from_proto(nat.effective().to_proto()).effective() == nat.effective()


def test_unspecified_fields_take_the_defaults() -> None:
    assert NatBehaviour.from_proto(natgw_pb2.NatConfig()) == NatBehaviour()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mapping": 9}, "mapping: unknown value 9"),
        ({"hairpinning": 7}, "hairpinning: unknown value 7"),
        (
            {"translation_off": True, "mapping": natgw_pb2.MAPPING_ENDPOINT_INDEPENDENT},
            "translation_off: no translation contradicts mapping MAPPING_ENDPOINT_INDEPENDENT (leave mapping and "
            "filtering UNSPECIFIED, port_preservation UNSPECIFIED or ON)",
        ),
        (
            {"translation_off": True, "hairpinning": natgw_pb2.HAIRPINNING_OFF},
            "translation_off: without translation there is no mapping to hairpin through (leave hairpinning "
            "UNSPECIFIED, not HAIRPINNING_OFF)",
        ),
        ({"mapping_timeout_seconds": 2**32 - 1}, f"mapping_timeout: {2**32 - 1}: at most {MAX_MAPPING_TIMEOUT}"),
    ],
)
def test_a_bad_config_names_the_proto_field(config: dict[str, object], message: str) -> None:
    with pytest.raises(NatError) as info:
        NatBehaviour.from_proto(natgw_pb2.NatConfig(**config))  # type: ignore[arg-type]
    assert f"{info.value.field}: {info.value}".startswith(message)
