"""SRTP and SRTCP (RFC 3711) keyed by DTLS-SRTP (RFC 5764), on libsrtp through pylibsrtp.

The keys come from the DTLS exporter (RFC 5764 §4.2); `keys_from_keying_material` splits the exporter
output, `SrtpSession` protects what we send with the local keys and unprotects what we receive with the
remote ones. Pure apart from libsrtp itself: no sockets, no clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pylibsrtp

#: OpenSSL profile name -> (pylibsrtp profile constant, master key length, master salt length).
#: RFC 5764 §4.1.2 (AES-CM) and RFC 7714 §14.2 (AEAD-GCM) give the lengths.
PROFILES: dict[str, tuple[int, int, int]] = {
    "SRTP_AES128_CM_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
    "SRTP_AES128_CM_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14),
    "SRTP_AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    "SRTP_AEAD_AES_256_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
}


class SrtpError(ValueError):
    """Bad keys or a packet that libsrtp cannot process."""


class SrtpAuthError(SrtpError):
    """A received packet failed authentication or the replay check (RFC 3711 §3.3.2, §3.4)."""


# What pylibsrtp raises: its Error for what libsrtp refuses, ValueError for a packet longer than its
# 1500-byte buffer (checked before libsrtp sees it). Either way the packet cannot be processed.
_LIBSRTP_ERRORS = (pylibsrtp.Error, ValueError)


def _profile(name: str) -> tuple[int, int, int]:
    try:
        return PROFILES[name]
    except KeyError:
        raise SrtpError(f"unknown SRTP protection profile {name!r} (known: {', '.join(PROFILES)})") from None


def keying_material_length(profile: str) -> int:
    """Bytes to ask the DTLS exporter for: 2 * (key + salt) (RFC 5764 §4.2)."""
    _, key_len, salt_len = _profile(profile)
    return 2 * (key_len + salt_len)


@dataclass(frozen=True)
class SrtpKeys:
    """The master keys and salts of one DTLS-SRTP association, seen from one endpoint.

    `local_*` protect what this endpoint sends, `remote_*` check what it receives (RFC 5764 §4.2).
    """

    profile: str
    local_key: bytes
    local_salt: bytes
    remote_key: bytes
    remote_salt: bytes

    def __post_init__(self) -> None:
        _, key_len, salt_len = _profile(self.profile)
        for field, value, want in (
            ("local_key", self.local_key, key_len),
            ("local_salt", self.local_salt, salt_len),
            ("remote_key", self.remote_key, key_len),
            ("remote_salt", self.remote_salt, salt_len),
        ):
            if len(value) != want:
                raise SrtpError(f"{field} is {len(value)} bytes, {self.profile} needs {want}")

    def mirrored(self) -> SrtpKeys:
        """The same keys as the peer holds them (local and remote swapped)."""
        return SrtpKeys(self.profile, self.remote_key, self.remote_salt, self.local_key, self.local_salt)

    def __repr__(self) -> str:  # never put keys into logs
        return f"SrtpKeys(profile={self.profile!r}, <keys hidden>)"


def keys_from_keying_material(material: bytes, profile: str, *, is_client: bool) -> SrtpKeys:
    """Split the exporter output `client_key | server_key | client_salt | server_salt` (RFC 5764 §4.2).

    The DTLS client protects with the client keys, the server with the server keys.
    """
    _, key_len, salt_len = _profile(profile)
    want = 2 * (key_len + salt_len)
    if len(material) != want:
        raise SrtpError(f"keying material is {len(material)} bytes, {profile} needs {want}")
    client_key = material[:key_len]
    server_key = material[key_len : 2 * key_len]
    client_salt = material[2 * key_len : 2 * key_len + salt_len]
    server_salt = material[2 * key_len + salt_len :]
    if is_client:
        return SrtpKeys(profile, client_key, client_salt, server_key, server_salt)
    return SrtpKeys(profile, server_key, server_salt, client_key, client_salt)


class SrtpSession:
    """Protects outgoing RTP/RTCP with the local keys and unprotects incoming with the remote keys.

    libsrtp holds one wildcard template per direction, so outbound and inbound are two libsrtp sessions
    (any outbound SSRC, any inbound SSRC), each with its own replay window (RFC 3711 §3.3.2).
    """

    def __init__(self, keys: SrtpKeys) -> None:
        libsrtp_profile, _, _ = _profile(keys.profile)
        self.profile = keys.profile
        self._tx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=keys.local_key + keys.local_salt,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=libsrtp_profile,
            )
        )
        self._rx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=keys.remote_key + keys.remote_salt,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                srtp_profile=libsrtp_profile,
            )
        )

    def protect(self, rtp: bytes) -> bytes:
        """RTP -> SRTP (RFC 3711 §3.3)."""
        try:
            return self._tx.protect(rtp)
        except _LIBSRTP_ERRORS as exc:
            raise SrtpError(f"SRTP protect failed: {exc}") from None

    def unprotect(self, srtp: bytes) -> bytes:
        """SRTP -> RTP; SrtpAuthError with libsrtp's reason on an authentication or replay failure."""
        try:
            return self._rx.unprotect(srtp)
        except _LIBSRTP_ERRORS as exc:
            raise SrtpAuthError(f"SRTP unprotect failed: {exc}") from None

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """RTCP -> SRTCP (RFC 3711 §3.4)."""
        try:
            return self._tx.protect_rtcp(rtcp)
        except _LIBSRTP_ERRORS as exc:
            raise SrtpError(f"SRTCP protect failed: {exc}") from None

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        """SRTCP -> RTCP; SrtpAuthError with libsrtp's reason on an authentication or replay failure."""
        try:
            return self._rx.unprotect_rtcp(srtcp)
        except _LIBSRTP_ERRORS as exc:
            raise SrtpAuthError(f"SRTCP unprotect failed: {exc}") from None
