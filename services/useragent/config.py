"""What a user agent is configured with (AgentConfig, IdentityPolicy) and what a configuration must
satisfy before the agent takes it: one value per setting, one default, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pinhole import sdp
from pinhole.address import Address
from pinhole.media import MediaTimers
from pinhole.sip import SipTimers

DEFAULT_PROFILES = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")
MAX_CALLS = 200  # calls in progress at once, unless configured: at 300 with media a 2-core lab saturates


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


@dataclass(frozen=True)
class IdentityPolicy:
    """RFC 8224 at this UA: what it signs its INVITEs with, what it verifies incoming ones against."""

    key: ec.EllipticCurvePrivateKey | None = None  # P-256: sign with ES256 (authentication service)
    chain: tuple[x509.Certificate, ...] = ()  # the key's certificate (covering the aor) first
    trust_anchors: tuple[x509.Certificate, ...] = ()  # verify INVITEs that carry Identity (verification service)
    require: bool = False  # with trust anchors: an INVITE without Identity gets 428


@dataclass
class AgentConfig:
    aor: str = ""
    display_name: str = ""
    outbound_proxy: Address | None = None
    stun_server: Address | None = None
    answer_setup: sdp.Setup = sdp.Setup.ACTIVE
    auto_answer: bool = True
    ring_seconds: float = 0.0  # auto-answer after ringing this long; DTLS and early media start at once
    max_calls: int = MAX_CALLS  # calls in progress at once, at most
    deviations: frozenset[str] = frozenset()  # pinhole.deviations: misbehaviour on purpose, by name
    srtp_profiles: tuple[str, ...] = DEFAULT_PROFILES
    sip_timers: SipTimers = field(default_factory=SipTimers)
    media_timers: MediaTimers = field(default_factory=MediaTimers)
    media_packets: int = 50
    latching: bool = False  # send media where the peer's packets come from (MediaSession), not the SDP address
    rtcp_mux: bool = True  # RFC 5761: RTP and RTCP on one port and one DTLS association
    rtcp_mux_fallback: bool = True  # offers with rtcp-mux reserve an RTCP port too, named in a=rtcp
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)  # RFC 8224: sign, verify, or neither


def check_config(config: AgentConfig) -> None:
    """Raise ConfigError for a value the agent cannot use."""
    if not config.aor.startswith("sip:") or "@" not in config.aor:
        raise ConfigError(f"aor: expected a sip: URI with a user, got {config.aor!r}")
    for profile in config.srtp_profiles:
        if profile not in DEFAULT_PROFILES + ("SRTP_AES128_CM_SHA1_32",):
            raise ConfigError(f"srtp_profiles: unknown profile {profile!r}")
