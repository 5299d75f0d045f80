"""The NSS key log (the SSLKEYLOGFILE format) of a run, and the SRTP keys that follow from it.

Each DTLS 1.2 association leaves one line, `CLIENT_RANDOM <32-byte client random> <48-byte master
secret>` in hex. With the randoms and the cipher suite from the handshake on the wire, the master
secret gives everything else: the record keys that decrypt both Finished messages (RFC 5246 §6.3)
and the DTLS-SRTP exporter output (RFC 5705, label EXTRACTOR-dtls_srtp), split into the SRTP master
keys and salts of each direction (RFC 5764 §4.2). Pure: text in, keys out.

`srtp-keys.json`, written next to a run's capture, lists those keys per SSRC (see `srtp_key_entries`),
so SRTP and SRTCP can be authenticated and decrypted offline: libsrtp wants the master key followed by
the master salt (the `key_salt` field, hex), e.g. `rtp_decoder -a -e 128 -k <base64 of key_salt>`;
Wireshark has no SRTP decryption of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pinhole import dtls, srtp

__all__ = ["KeyLog", "SrtpDirection", "derive_srtp", "parse"]

_LINE = re.compile(r"^CLIENT_RANDOM ([0-9A-Fa-f]{64}) ([0-9A-Fa-f]{96})$")


@dataclass
class KeyLog:
    """client random -> master secret; `problems`: lines that were neither a CLIENT_RANDOM line nor a comment."""

    secrets: dict[bytes, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def master_secret(self, client_random: bytes) -> bytes | None:
        return self.secrets.get(client_random)

    def __bool__(self) -> bool:
        return bool(self.secrets)


def parse(*texts: str) -> KeyLog:
    """Every CLIENT_RANDOM line of the given key logs (TLS 1.3 labels and comments are skipped)."""
    log = KeyLog()
    for text in texts:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None:
                if not line.startswith(("CLIENT_", "SERVER_", "EXPORTER_SECRET")):
                    log.problems.append(f"line {number}: not an NSS key log line: {line[:40]!r}")
                continue
            log.secrets[bytes.fromhex(match.group(1))] = bytes.fromhex(match.group(2))
    return log


@dataclass(frozen=True)
class SrtpDirection:
    """The SRTP master key and salt one side of an association protects its media with."""

    profile: str
    key: bytes
    salt: bytes

    def session(self) -> srtp.SrtpSession:
        """A libsrtp session that authenticates (and decrypts) what this side sent."""
        return srtp.SrtpSession(srtp.SrtpKeys(self.profile, self.key, self.salt, self.key, self.salt))

    def __repr__(self) -> str:  # never put keys into logs
        return f"SrtpDirection(profile={self.profile!r}, <keys hidden>)"


def derive_srtp(
    suite: dtls.CipherSuite, master_secret: bytes, client_random: bytes, server_random: bytes, profile: str
) -> tuple[SrtpDirection, SrtpDirection]:
    """(client's, server's) SRTP keys: the exporter output split as RFC 5764 §4.2 lays it out."""
    material = dtls.export_keying_material(
        suite, master_secret, client_random, server_random, dtls.EXPORTER_LABEL, srtp.keying_material_length(profile)
    )
    client = srtp.keys_from_keying_material(material, profile, is_client=True)
    return (
        SrtpDirection(profile, client.local_key, client.local_salt),
        SrtpDirection(profile, client.remote_key, client.remote_salt),
    )
