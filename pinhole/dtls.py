"""DTLS 1.2 with the use_srtp extension (RFC 6347, RFC 5764), sans-IO, on pyOpenSSL memory BIOs.

Two layers:

* a pure record codec (`parse_records`, `DtlsRecord`, `handshake_messages`, `use_srtp_profiles`,
  `describe`): bytes in, objects out, no OpenSSL;
* `DtlsEndpoint`, one DTLS-SRTP association driven by datagrams and `now` floats. OpenSSL does the
  handshake; this module owns the retransmission timer and the epoch-0 record numbering, because
  pyOpenSSL does not expose `DTLS_set_timer_cb` and OpenSSL's own timer is fixed at 1 s (wall clock).

How the timer works (RFC 6347 §4.2.4):

* Every flight OpenSSL writes is kept. Our own timer (`RetransmitTimer`: 1 s, doubling, 60 s cap by
  default) resends that copy; `DTLSv1_handle_timeout` is never called.
* OpenSSL still retransmits on its own when we call into it after *its* 1 s timer ran out. Those
  copies are recognised (their handshake messages carry a message_seq we already sent, or they repeat
  our ChangeCipherSpec/Finished) and suppressed (`suppressed` counts records).
* RFC 6347 §4.2.4 also says an endpoint retransmits its last flight when it receives the peer's
  retransmitted flight. Measured with OpenSSL 4.0 through pyOpenSSL: OpenSSL does *not* do this during
  the handshake (a repeated ClientHello or a repeated server flight 4 gets no answer), and after the
  handshake it only answers a repeated Finished that carries a *new* epoch-1 sequence number, which a
  stored copy does not. So this module does it itself, and always suppresses OpenSSL's copies: a
  datagram whose epoch-0 handshake fragments all belong to messages already received, and which
  carries the end of the last one, makes us resend our stored flight and restart the timer (while
  handshaking, and afterwards when our last flight was the final one, i.e. the server's
  ChangeCipherSpec+Finished). Without that, a lost final flight would never be recovered.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from pinhole.srtp import PROFILES, SrtpKeys, keying_material_length, keys_from_keying_material
from pinhole.timers import DTLS_INITIAL, DTLS_MAX_TRANSMISSIONS, DTLS_MAXIMUM

# --------------------------------------------------------------------------------------------------
# Record codec (RFC 6347 §4.1, §4.2.2), pure
# --------------------------------------------------------------------------------------------------

RECORD_HEADER_LENGTH = 13
HANDSHAKE_HEADER_LENGTH = 12
DTLS_1_0 = 0xFEFF
DTLS_1_2 = 0xFEFD

#: RFC 5705 exporter label for DTLS-SRTP (RFC 5764 §4.2).
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"


class DtlsError(ValueError):
    """Bad DTLS input (the message names what is wrong and where) or a misuse of DtlsEndpoint."""


class ContentType(IntEnum):
    change_cipher_spec = 20
    alert = 21
    handshake = 22
    application_data = 23


class HandshakeType(IntEnum):
    hello_request = 0
    client_hello = 1
    server_hello = 2
    hello_verify_request = 3
    new_session_ticket = 4
    certificate = 11
    server_key_exchange = 12
    certificate_request = 13
    server_hello_done = 14
    certificate_verify = 15
    client_key_exchange = 16
    finished = 20


class AlertLevel(IntEnum):
    warning = 1
    fatal = 2


class AlertDescription(IntEnum):
    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    user_canceled = 90
    no_renegotiation = 100
    unsupported_extension = 110


#: use_srtp SRTPProtectionProfile values (RFC 5764 §4.1.2, RFC 7714 §14.2), OpenSSL's names.
SRTP_PROTECTION_PROFILES: dict[int, str] = {
    0x0001: "SRTP_AES128_CM_SHA1_80",
    0x0002: "SRTP_AES128_CM_SHA1_32",
    0x0005: "SRTP_NULL_SHA1_80",
    0x0006: "SRTP_NULL_SHA1_32",
    0x0007: "SRTP_AEAD_AES_128_GCM",
    0x0008: "SRTP_AEAD_AES_256_GCM",
}

#: The use_srtp extension type (RFC 5764 §9).
EXTENSION_USE_SRTP = 14


@dataclass(frozen=True)
class DtlsRecord:
    """One DTLSPlaintext/DTLSCiphertext record (RFC 6347 §4.1)."""

    content_type: int
    version: int
    epoch: int
    sequence_number: int
    fragment: bytes

    def encode(self) -> bytes:
        return (
            struct.pack("!BHH", self.content_type, self.version, self.epoch)
            + self.sequence_number.to_bytes(6, "big")
            + struct.pack("!H", len(self.fragment))
            + self.fragment
        )


@dataclass(frozen=True)
class HandshakeHeader:
    """A DTLS handshake message header (RFC 6347 §4.2.2); `body` is this fragment's bytes."""

    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    fragment_length: int
    body: bytes = b""


def parse_records(datagram: bytes) -> list[DtlsRecord]:
    """Split a datagram into DTLS records (RFC 6347 §4.1: several records may share a datagram)."""
    if not datagram:
        raise DtlsError("datagram is empty")
    records: list[DtlsRecord] = []
    offset = 0
    while offset < len(datagram):
        where = f"record {len(records)} at offset {offset}"
        header = datagram[offset : offset + RECORD_HEADER_LENGTH]
        if len(header) < RECORD_HEADER_LENGTH:
            raise DtlsError(f"{where}: header truncated ({len(header)} of {RECORD_HEADER_LENGTH} bytes)")
        content_type, version, epoch = struct.unpack("!BHH", header[:5])
        if content_type not in ContentType._value2member_map_:
            raise DtlsError(f"{where}: unknown content type {content_type}")
        if version >> 8 != 0xFE:
            raise DtlsError(f"{where}: version 0x{version:04x} is not DTLS")
        (length,) = struct.unpack("!H", header[11:13])
        start = offset + RECORD_HEADER_LENGTH
        fragment = datagram[start : start + length]
        if len(fragment) < length:
            raise DtlsError(f"{where}: fragment truncated ({len(fragment)} of {length} bytes)")
        records.append(
            DtlsRecord(
                ContentType(content_type),
                version,
                epoch,
                int.from_bytes(header[5:11], "big"),
                fragment,
            )
        )
        offset = start + length
    return records


def handshake_messages(record: DtlsRecord) -> list[HandshakeHeader]:
    """The handshake message fragments in a plaintext (epoch 0) handshake record (RFC 6347 §4.2.2)."""
    if record.content_type != ContentType.handshake:
        raise DtlsError(f"record content type {record.content_type} is not handshake")
    if record.epoch != 0:
        raise DtlsError(f"record epoch {record.epoch} is encrypted; only epoch 0 can be read")
    data = record.fragment
    messages: list[HandshakeHeader] = []
    offset = 0
    while offset < len(data):
        where = f"handshake message {len(messages)} at offset {offset}"
        header = data[offset : offset + HANDSHAKE_HEADER_LENGTH]
        if len(header) < HANDSHAKE_HEADER_LENGTH:
            raise DtlsError(f"{where}: header truncated ({len(header)} of {HANDSHAKE_HEADER_LENGTH} bytes)")
        msg_type = header[0]
        length = int.from_bytes(header[1:4], "big")
        (message_seq,) = struct.unpack("!H", header[4:6])
        fragment_offset = int.from_bytes(header[6:9], "big")
        fragment_length = int.from_bytes(header[9:12], "big")
        if fragment_offset + fragment_length > length:
            raise DtlsError(f"{where}: fragment {fragment_offset}+{fragment_length} exceeds message length {length}")
        start = offset + HANDSHAKE_HEADER_LENGTH
        body = data[start : start + fragment_length]
        if len(body) < fragment_length:
            raise DtlsError(f"{where}: body truncated ({len(body)} of {fragment_length} bytes)")
        known = msg_type in HandshakeType._value2member_map_
        messages.append(
            HandshakeHeader(
                HandshakeType(msg_type) if known else msg_type,
                length,
                message_seq,
                fragment_offset,
                fragment_length,
                body,
            )
        )
        offset = start + fragment_length
    return messages


def client_hello_random(datagram: bytes) -> bytes | None:
    """The 32-byte random of a ClientHello in `datagram` (RFC 5246 §7.4.1.2: after the 2-byte
    client_version), or None if the datagram carries no readable first fragment of one. A new
    handshake has a new random; a retransmitted ClientHello repeats it."""
    try:
        for record in parse_records(datagram):
            if record.content_type != ContentType.handshake or record.epoch != 0:
                continue
            for message in handshake_messages(record):
                if message.msg_type == HandshakeType.client_hello and message.fragment_offset == 0:
                    if len(message.body) >= 34:
                        return message.body[2:34]
    except DtlsError:
        return None
    return None


class _Reader:
    """Bounds-checked reads for hello message bodies."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.offset, self.what = data, 0, what

    def take(self, n: int, field_name: str) -> bytes:
        chunk = self.data[self.offset : self.offset + n]
        if len(chunk) < n:
            raise DtlsError(f"{self.what}: {field_name} truncated at offset {self.offset} ({len(chunk)} of {n} bytes)")
        self.offset += n
        return chunk

    def vector(self, length_bytes: int, field_name: str) -> bytes:
        n = int.from_bytes(self.take(length_bytes, f"{field_name} length"), "big")
        return self.take(n, field_name)

    def at_end(self) -> bool:
        return self.offset >= len(self.data)


def _use_srtp_from_extensions(reader: _Reader) -> list[int] | None:
    if reader.at_end():
        return None
    extensions = _Reader(reader.vector(2, "extensions"), reader.what)
    while not extensions.at_end():
        (ext_type,) = struct.unpack("!H", extensions.take(2, "extension type"))
        ext_data = extensions.vector(2, f"extension {ext_type}")
        if ext_type == EXTENSION_USE_SRTP:
            use_srtp = _Reader(ext_data, f"{reader.what} use_srtp")
            profiles = use_srtp.vector(2, "SRTPProtectionProfiles")
            if len(profiles) % 2:
                raise DtlsError(f"{reader.what}: SRTPProtectionProfiles length {len(profiles)} is odd")
            use_srtp.vector(1, "srtp_mki")
            return [p for (p,) in struct.iter_unpack("!H", profiles)]
    return None


def use_srtp_profiles(client_hello_body: bytes) -> list[int]:
    """SRTPProtectionProfile values a ClientHello offers in use_srtp (RFC 5764 §4.1.1); [] if none."""
    return list(parse_client_hello(client_hello_body).srtp_profiles)


def selected_srtp_profile(server_hello_body: bytes) -> int | None:
    """The single SRTPProtectionProfile a ServerHello selects (RFC 5764 §4.1.1), or None."""
    profiles = parse_server_hello(server_hello_body).srtp_profiles
    return profiles[0] if profiles else None


@dataclass(frozen=True)
class ClientHello:
    """What a ClientHello body says (RFC 6347 §4.2.1, RFC 5764 §4.1.1)."""

    random: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    srtp_profiles: tuple[int, ...]  # use_srtp, in the client's order of preference


@dataclass(frozen=True)
class ServerHello:
    """What a ServerHello body says: its random, the chosen cipher suite and SRTP profile."""

    random: bytes
    cipher_suite: int
    srtp_profiles: tuple[int, ...]  # RFC 5764 §4.1.1: exactly one, one the client offered


def parse_client_hello(body: bytes) -> ClientHello:
    reader = _Reader(body, "ClientHello")
    reader.take(2, "client_version")
    random = reader.take(32, "random")
    reader.vector(1, "session_id")
    cookie = reader.vector(1, "cookie")
    suites = reader.vector(2, "cipher_suites")
    reader.vector(1, "compression_methods")
    profiles = _use_srtp_from_extensions(reader) or []
    return ClientHello(random, cookie, tuple(s for (s,) in struct.iter_unpack("!H", suites[: len(suites) // 2 * 2])),
                       tuple(profiles))  # fmt: skip


def parse_server_hello(body: bytes) -> ServerHello:
    reader = _Reader(body, "ServerHello")
    reader.take(2, "server_version")
    random = reader.take(32, "random")
    reader.vector(1, "session_id")
    (suite,) = struct.unpack("!H", reader.take(2, "cipher_suite"))
    reader.take(1, "compression_method")
    return ServerHello(random, suite, tuple(_use_srtp_from_extensions(reader) or []))


# --------------------------------------------------------------------------------------------------
# Record protection (RFC 5246 §6.3, RFC 5288 AES-GCM) and the exporter (RFC 5705), pure
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CipherSuite:
    """An AEAD suite pinhole offers and can protect or read records of offline (RFC 5288, RFC 5289)."""

    code: int
    name: str  # OpenSSL's name
    key_length: int
    prf_hash: str


CIPHER_SUITES: dict[int, CipherSuite] = {
    s.code: s
    for s in (
        CipherSuite(0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256", 16, "sha256"),
        CipherSuite(0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384", 32, "sha384"),
        CipherSuite(0xC02F, "ECDHE-RSA-AES128-GCM-SHA256", 16, "sha256"),
        CipherSuite(0xC030, "ECDHE-RSA-AES256-GCM-SHA384", 32, "sha384"),
    )
}
_GCM_FIXED_IV_LENGTH = 4  # RFC 5288 §3: salt from the key block; 8-byte explicit nonce per record.
_GCM_TAG_LENGTH = 16


def prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.2 PRF: P_hash of RFC 5246 §5."""
    out, a = b"", label + seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + label + seed, hash_name).digest()
    return out[:length]


@dataclass(frozen=True)
class WriteKeys:
    """One side's epoch-1 record protection: its AES-GCM write key and implicit IV salt."""

    key: bytes
    salt: bytes

    def __repr__(self) -> str:  # never put keys into logs
        return "WriteKeys(<hidden>)"


def write_keys(
    suite: CipherSuite, master_secret: bytes, client_random: bytes, server_random: bytes
) -> tuple[WriteKeys, WriteKeys]:
    """(client's, server's) write keys from the key block (RFC 5246 §6.3; no MAC keys for AEAD)."""
    n = suite.key_length
    block = prf(suite.prf_hash, master_secret, b"key expansion", server_random + client_random,
                2 * n + 2 * _GCM_FIXED_IV_LENGTH)  # fmt: skip
    salts = block[2 * n :]
    return (
        WriteKeys(block[:n], salts[:_GCM_FIXED_IV_LENGTH]),
        WriteKeys(block[n : 2 * n], salts[_GCM_FIXED_IV_LENGTH:]),
    )


def _additional_data(epoch: int, sequence: int, content_type: int, length: int) -> bytes:
    return struct.pack("!H", epoch) + sequence.to_bytes(6, "big") + struct.pack("!BHH", content_type, DTLS_1_2, length)


def protect_record(keys: WriteKeys, content_type: int, epoch: int, sequence: int, plaintext: bytes) -> DtlsRecord:
    """An AES-GCM record (RFC 5288 §3: the explicit nonce is the epoch and sequence number)."""
    explicit = struct.pack("!H", epoch) + sequence.to_bytes(6, "big")
    ciphertext = AESGCM(keys.key).encrypt(keys.salt + explicit, plaintext,
                                          _additional_data(epoch, sequence, content_type, len(plaintext)))  # fmt: skip
    return DtlsRecord(content_type, DTLS_1_2, epoch, sequence, explicit + ciphertext)


def unprotect_record(keys: WriteKeys, record: DtlsRecord) -> bytes:
    """The plaintext of an AES-GCM record; DtlsError if it does not authenticate with `keys`."""
    fragment = record.fragment
    if len(fragment) < 8 + _GCM_TAG_LENGTH:
        raise DtlsError(f"encrypted record of {len(fragment)} bytes is too short for AES-GCM")
    length = len(fragment) - 8 - _GCM_TAG_LENGTH
    try:
        return AESGCM(keys.key).decrypt(
            keys.salt + fragment[:8],
            fragment[8:],
            _additional_data(record.epoch, record.sequence_number, record.content_type, length),
        )
    except InvalidTag:
        raise DtlsError(
            f"epoch {record.epoch} record {record.sequence_number} does not authenticate with these keys"
        ) from None


def export_keying_material(
    suite: CipherSuite, master_secret: bytes, client_random: bytes, server_random: bytes, label: bytes, length: int
) -> bytes:
    """RFC 5705 §4 without a context (what DTLS-SRTP asks for, RFC 5764 §4.2)."""
    return prf(suite.prf_hash, master_secret, label, client_random + server_random, length)


def _camel(name: str) -> str:
    special = {"change_cipher_spec": "ChangeCipherSpec", "application_data": "ApplicationData"}
    if name in special:
        return special[name]
    return "".join(part.capitalize() for part in name.split("_"))


def _handshake_name(msg_type: int) -> str:
    if isinstance(msg_type, HandshakeType):
        return msg_type.name
    return f"handshake_type_{msg_type}"


def _profile_names(values: Sequence[int]) -> str:
    return ",".join(SRTP_PROTECTION_PROFILES.get(v, f"0x{v:04x}") for v in values)


def _alert_text(record: DtlsRecord) -> tuple[str, str]:
    """(attribute value, summary part) for an alert record; epoch > 0 alerts are encrypted."""
    if record.epoch != 0 or len(record.fragment) != 2:
        return "encrypted", "Alert (encrypted)"
    level, description = record.fragment
    level_name = AlertLevel(level).name if level in AlertLevel._value2member_map_ else str(level)
    description_name = (
        AlertDescription(description).name if description in AlertDescription._value2member_map_ else str(description)
    )
    return f"{level_name}:{description_name}", f"Alert({level_name}, {description_name})"


def describe(datagram: bytes) -> dict[str, str]:
    """Trace attributes for one DTLS datagram. Never raises; garbage gives an "error" key.

    Keys: kind, dtls.content_types, dtls.epochs, dtls.record_sequence (first record), and when present
    dtls.handshake_types (epoch-0 names, "encrypted" for epoch > 0), dtls.message_seq (first),
    dtls.use_srtp (profiles offered in a ClientHello / selected in a ServerHello), dtls.alert
    ("fatal:bad_certificate" or "encrypted"), and summary ("DTLS ClientHello").
    """
    try:
        records = parse_records(datagram)
        content_types: list[str] = []
        epochs: list[str] = []
        handshake_types: list[str] = []
        summary: list[str] = []
        extra: dict[str, str] = {}
        message_seq: int | None = None
        previous_ccs = False
        for record in records:
            content_type = ContentType(record.content_type)
            content_types.append(content_type.name)
            if str(record.epoch) not in epochs:
                epochs.append(str(record.epoch))
            if content_type == ContentType.handshake and record.epoch == 0:
                for message in handshake_messages(record):
                    name = _handshake_name(message.msg_type)
                    handshake_types.append(name)
                    partial = message.fragment_length < message.length
                    summary.append(_camel(name) + (" (fragment)" if partial else ""))
                    if message_seq is None:
                        message_seq = message.message_seq
                    if not partial and message.msg_type == HandshakeType.client_hello:
                        extra["dtls.use_srtp"] = _profile_names(use_srtp_profiles(message.body))
                    if not partial and message.msg_type == HandshakeType.server_hello:
                        selected = selected_srtp_profile(message.body)
                        if selected is not None:
                            extra["dtls.use_srtp"] = _profile_names([selected])
            elif content_type == ContentType.handshake:
                handshake_types.append("encrypted")
                # Right after ChangeCipherSpec the encrypted handshake message is Finished (RFC 5246 §7.4.9).
                summary.append("Finished" if previous_ccs else "EncryptedHandshakeMessage")
            elif content_type == ContentType.alert:
                value, text = _alert_text(record)
                extra.setdefault("dtls.alert", value)
                summary.append(text)
            else:
                summary.append(_camel(content_type.name))
            previous_ccs = content_type == ContentType.change_cipher_spec
        attributes = {
            "kind": "dtls",
            "dtls.content_types": ",".join(content_types),
            "dtls.epochs": ",".join(epochs),
            "dtls.record_sequence": str(records[0].sequence_number),
        }
        if handshake_types:
            attributes["dtls.handshake_types"] = ",".join(handshake_types)
        if message_seq is not None:
            attributes["dtls.message_seq"] = str(message_seq)
        attributes.update(extra)
        attributes["summary"] = "DTLS " + ", ".join(summary)
        return attributes
    except DtlsError as exc:
        return {"kind": "dtls", "error": str(exc), "summary": "DTLS (malformed)"}


# --------------------------------------------------------------------------------------------------
# Certificates and fingerprints (RFC 8122 §5)
# --------------------------------------------------------------------------------------------------

_HASH_FUNCTIONS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}


def certificate_digest(der: bytes, hash_function: str = "sha-256") -> bytes:
    """The hash of a DER certificate with an RFC 8122 hash function name (MD2/MD5 are refused)."""
    algorithm = _HASH_FUNCTIONS.get(hash_function.lower())
    if algorithm is None:
        raise DtlsError(
            f"unsupported fingerprint hash function {hash_function!r} (supported: {', '.join(_HASH_FUNCTIONS)})"
        )
    digest = hashes.Hash(algorithm())
    digest.update(der)
    return digest.finalize()


def format_fingerprint(digest: bytes) -> str:
    """Upper-case hex bytes joined by colons, as a=fingerprint sends them (RFC 8122 §5: UHEX)."""
    return ":".join(f"{b:02X}" for b in digest)


@dataclass(frozen=True)
class Certificate:
    """A certificate and its private key. Only the key matters: the SDP fingerprint authenticates it
    (RFC 5763 §5), so self-signed is the normal case."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, common_name: str = "pinhole") -> Certificate:
        """A fresh self-signed ECDSA P-256 certificate, valid from a day ago for 30 days."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, certificate_pem: bytes, key_pem: bytes) -> Certificate:
        """Load a stored certificate (RFC 5763 §8.4: a constant key lets peers notice changes)."""
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DtlsError("private key is not an elliptic-curve key")
        return cls(x509.load_pem_x509_certificate(certificate_pem), key)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def digest(self, hash_function: str = "sha-256") -> bytes:
        return certificate_digest(self.der, hash_function)

    def fingerprint(self, hash_function: str = "sha-256") -> str:
        """The a=fingerprint value, e.g. "AB:CD:..." (RFC 8122 §5)."""
        return format_fingerprint(self.digest(hash_function))


# --------------------------------------------------------------------------------------------------
# The endpoint
# --------------------------------------------------------------------------------------------------


class Role(str, Enum):
    """DTLS role; SDP a=setup:active is the client, passive the server (RFC 5763 §5, RFC 4145)."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True)
class RetransmitTimer:
    """Flight retransmission timer (RFC 6347 §4.2.4.1): `initial`, doubled per retransmission, capped
    at `maximum`; a flight sent `max_transmissions` times by the timer without an answer fails the
    handshake."""

    initial: float = DTLS_INITIAL
    maximum: float = DTLS_MAXIMUM
    max_transmissions: int = DTLS_MAX_TRANSMISSIONS

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise DtlsError(f"RetransmitTimer.initial must be > 0, got {self.initial}")
        if self.maximum < self.initial:
            raise DtlsError(f"RetransmitTimer.maximum {self.maximum} is below initial {self.initial}")
        if self.max_transmissions < 1:
            raise DtlsError(f"RetransmitTimer.max_transmissions must be >= 1, got {self.max_transmissions}")


State = Literal["new", "handshaking", "connected", "failed", "closed"]


def _ssl_error_text(exc: SSL.Error) -> str:
    parts: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            parts.extend(str(item[2]) if isinstance(item, tuple) and len(item) == 3 else str(item) for item in arg)
        else:
            parts.append(str(arg))
    return "; ".join(p for p in parts if p) or exc.__class__.__name__


class DtlsEndpoint:
    """One DTLS-SRTP association (RFC 5764) as a state machine: datagrams and `now` in, datagrams out.

    Record numbering and the replay window: every outgoing epoch-0 record gets its sequence number
    from our own counter, so a retransmitted flight carries new record sequence numbers with the same
    handshake message_seq, as RFC 6347 §4.2.4 requires, and no number is used twice. The receiver keeps
    a replay window per epoch (RFC 6347 §4.1.2.6, 64 records in OpenSSL): a record whose number it has
    already seen is dropped, and so is one more than 64 below the highest it has seen. That is why the
    counter must be ours and monotonic. Epoch-1 records are encrypted and their sequence number is in
    the AEAD nonce/additional data, so they are resent unchanged: the copy of a Finished that the peer
    already holds is then dropped by its replay window, which is harmless because the peer has it, and
    a Finished it never got is accepted.

    Peer authentication (RFC 5763 §5, RFC 8122 §5): both sides send certificates (the server sends a
    CertificateRequest and requires one); any certificate is accepted by OpenSSL's chain check, and
    the peer certificate must match one of `peer_fingerprints`. On a mismatch the endpoint fails at
    once and sends a fatal bad_certificate alert (OpenSSL would say unknown_ca). With no fingerprints
    yet (an offerer can get a ClientHello before the answer) the certificate is accepted tentatively
    and checked by `set_peer_fingerprints`.

    `handshake_started_at` is `start()`'s `now` for a client, and the `now` of the first DTLS datagram
    received for a server. A client ignores datagrams received before `start()`; a server starts on
    the first one.
    """

    def __init__(
        self,
        role: Role,
        certificate: Certificate,
        *,
        srtp_profiles: Sequence[str] = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"),
        timer: RetransmitTimer = RetransmitTimer(),
        mtu: int = 1200,
        peer_fingerprints: Sequence[tuple[str, bytes]] | None = None,
        on_key_log: Callable[[str], None] | None = None,
        deviations: frozenset[str] = frozenset(),
    ) -> None:
        self.role = Role(role)
        self.deviations = deviations  # pinhole.deviations this endpoint carries out: see below
        self.certificate = certificate
        if not srtp_profiles:
            raise DtlsError("srtp_profiles is empty")
        for profile in srtp_profiles:
            if profile not in PROFILES:
                raise DtlsError(f"unknown SRTP protection profile {profile!r} (known: {', '.join(PROFILES)})")
        if mtu < 256:
            raise DtlsError(f"mtu {mtu} is below 256 bytes")
        self.srtp_profiles = tuple(srtp_profiles)
        self.timer = timer
        self.mtu = mtu
        self._peer_fingerprints = self._check_fingerprints(peer_fingerprints)

        self.state: State = "new"
        self.failure_reason: str | None = None
        self.fingerprint_verified = False
        self.peer_certificate_der: bytes | None = None
        self.selected_profile: str | None = None
        self.handshake_started_at: float | None = None
        self.handshake_completed_at: float | None = None
        self.transmissions = 0  # flight sends, first ones and retransmissions
        self.retransmissions = 0  # flight resends (timer or peer retransmission)
        self.suppressed = 0  # records of OpenSSL's own retransmissions that were not sent
        self.malformed = 0  # received datagrams that were not DTLS

        self._keying_material: bytes | None = None
        self._rejection: str | None = None  # set by the verify callback on a mismatch
        self._next_epoch0_sequence = 0
        self._next_epoch1_sequence = 0
        self._sent_message_seqs: set[int] = set()
        self._sent_change_cipher_spec = False
        self._sent_finished = False
        self._received: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        self._flight: list[DtlsRecord] = []
        self._flight_datagrams: list[bytes] = []  # the flight as first sent (byte-identical-hello-resend)
        self._flight_is_final = False
        self._flight_resent_for_path = False  # resend_for_new_path() used for the current flight
        self._timer_sends = 0
        self._interval = timer.initial
        self._deadline: float | None = None

        context = SSL.Context(SSL.DTLS_METHOD)
        context.set_min_proto_version(DTLS_1_2)  # OpenSSL's DTLS1_2_VERSION
        context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        context.set_cipher_list(":".join(s.name for s in CIPHER_SUITES.values()).encode())
        context.use_certificate(certificate.certificate)
        context.use_privatekey(certificate.private_key)
        context.check_privatekey()
        context.set_tlsext_use_srtp(":".join(self.srtp_profiles).encode())
        if self.role is Role.SERVER and "no-certificate-request" in deviations:
            context.set_verify(SSL.VERIFY_NONE, lambda *_: True)  # no CertificateRequest, no client certificate
        else:
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        if on_key_log is not None:  # NSS key log lines (CLIENT_RANDOM ...): what decrypts the handshake offline
            context.set_keylog_callback(lambda _connection, line: on_key_log(line.decode("ascii", "replace")))
        self._connection: SSL.Connection | None = SSL.Connection(context, None)
        self._released_client_random: bytes | None = None
        self._tls.set_ciphertext_mtu(mtu)
        if self.role is Role.CLIENT:
            self._tls.set_connect_state()
        else:
            self._tls.set_accept_state()

    # -- public API ---------------------------------------------------------------------------------

    @property
    def next_deadline(self) -> float | None:
        """When `on_deadline` must be called next, or None if no timer runs."""
        return self._deadline if self.state == "handshaking" else None

    def start(self, now: float) -> list[bytes]:
        """Begin: a client sends its first flight (ClientHello); a server waits for one."""
        if self.state != "new":
            return []
        self.state = "handshaking"
        if self.role is Role.SERVER:
            return []
        self.handshake_started_at = now
        return self._drive(None, now)

    def receive(self, datagram: bytes, now: float) -> list[bytes]:
        """Feed one received datagram; returns the datagrams to send. Never raises on bad input."""
        if self.state in ("failed", "closed") or self._connection is None:  # over, or released
            return []
        if self.state == "new":
            if self.role is Role.CLIENT:
                return []
            self.start(now)
        try:
            records = parse_records(datagram)
            fragments = [
                message
                for record in records
                if record.content_type == ContentType.handshake and record.epoch == 0
                for message in handshake_messages(record)
            ]
        except DtlsError:
            self.malformed += 1
            return []
        if self.handshake_started_at is None:
            self.handshake_started_at = now
        peer_retransmitted = self._note_received(fragments)
        return self._drive(datagram, now, peer_retransmitted=peer_retransmitted)

    def on_deadline(self, now: float) -> list[bytes]:
        """Timer expiry: resend the last flight with a doubled timer, or give up (RFC 6347 §4.2.4.1)."""
        if self.state != "handshaking" or self._deadline is None or now < self._deadline or self._connection is None:
            return []
        if self._timer_sends >= self.timer.max_transmissions:
            self._fail(f"handshake timed out after {self._timer_sends} transmissions")
            return []
        self._interval = min(self._interval * 2, self.timer.maximum)
        self._timer_sends += 1
        self._deadline = now + self._interval
        return self._resend_flight()

    def resend_for_new_path(self, now: float) -> list[bytes]:
        """The peer was found at another transport address (a latching media session): resend the
        flight in progress now, to the new path, and restart the timer at the current interval.

        RFC 6347 §4.2.4 resends a flight on timer expiry or when the peer's retransmission shows
        ours was lost; this is the same inference from other evidence: every copy so far went to
        an address the peer cannot be reached at. Waiting for the timer would cost up to its whole
        (backed-off) interval for nothing. The interval is not reset to `initial` (the backoff is
        congestion control, RFC 6347 §4.2.4.1) and the send does not count against
        `max_transmissions` (like a resend on the peer's retransmission). At most once per flight,
        so whoever makes us re-latch (a spoofed STUN check) gets one extra flight per flight of ours,
        not one per packet it sends. Returns [] when no handshake flight is in progress."""
        if self.state != "handshaking" or not self._flight or self._flight_resent_for_path:
            return []
        self._flight_resent_for_path = True
        self._deadline = now + self._interval
        return self._resend_flight()

    def resend_for_peer_media(self, now: float) -> list[bytes]:
        """The peer already sends SRTP, protected with keys we do not have yet: its side of the handshake
        is done, so its last flight to us was lost. Resend ours now, which makes the peer resend its
        last flight (RFC 6347 §4.2.4: a node in FINISHED answers the peer's retransmitted flight), rather
        than at our backed-off timer, which under loss can be 32 s away while the call's media flows by
        undecrypted. Same bounds as resend_for_new_path, whose once-per-flight allowance it shares."""
        return self.resend_for_new_path(now)

    def set_peer_fingerprints(self, fingerprints: Sequence[tuple[str, bytes]], now: float) -> list[bytes]:
        """The peer's a=fingerprint values arrived (RFC 5763 §5). A certificate already accepted
        tentatively is checked now; on a mismatch this fails the association and returns the fatal
        bad_certificate alert."""
        self._peer_fingerprints = self._check_fingerprints(fingerprints)
        if self.peer_certificate_der is None or self.state in ("failed", "closed"):
            return []
        reason = (
            None
            if "skip-fingerprint-check" in self.deviations
            else self._fingerprint_mismatch(self.peer_certificate_der)
        )
        if reason is None:
            self.fingerprint_verified = True
            return []
        self.fingerprint_verified = False
        self._fail(reason)
        return self._send(self._alert_records(AlertLevel.fatal, AlertDescription.bad_certificate))

    def close(self, now: float) -> list[bytes]:
        """Send close_notify (RFC 5246 §7.2.1) and stop."""
        if self.state == "connected":
            self.state = "closed"
            self._deadline = None
            try:
                self._tls.shutdown()
            except SSL.Error:
                pass
            return self._send(self._read_output()[0])
        if self.state == "handshaking":
            self.state = "closed"
            self._deadline = None
            return self._send(self._alert_records(AlertLevel.warning, AlertDescription.close_notify))
        if self.state == "new":
            self.state = "closed"
        return []

    def srtp_keys(self) -> SrtpKeys:
        """SRTP master keys and salts for this side (RFC 5764 §4.2). Only when connected; check
        `fingerprint_verified` before trusting the peer (RFC 5763 §6.2)."""
        if self.state != "connected" or self._keying_material is None or self.selected_profile is None:
            raise DtlsError(f"srtp_keys() needs state connected, not {self.state}")
        return keys_from_keying_material(
            self._keying_material, self.selected_profile, is_client=self.role is Role.CLIENT
        )

    @property
    def client_random(self) -> bytes | None:
        """The ClientHello random of this association (ours as client, the peer's as server), once known."""
        if self._connection is None:
            return self._released_client_random
        try:
            return self._connection.client_random()
        except SSL.Error:
            return None

    def release(self) -> None:
        """Free OpenSSL's state once nothing drives this association any more (its media session is over):
        some 100 KB each, and an agent answers for its last 1,000 calls. What the association was (state,
        keys, client random, counters) stays for whoever asks."""
        if self._connection is not None:
            self._released_client_random = self.client_random
            self._connection = None

    @property
    def _tls(self) -> SSL.Connection:
        if self._connection is None:
            raise DtlsError(f"the association ({self.state}) was released: it takes no more datagrams")
        return self._connection

    def exporter_digest(self) -> str:
        """SHA-256 hex of the exported keying material: equal on both sides, safe to log."""
        if self._keying_material is None:
            raise DtlsError(f"exporter_digest() needs a completed handshake (state {self.state})")
        return hashlib.sha256(self._keying_material).hexdigest()

    # -- fingerprints --------------------------------------------------------------------------------

    @staticmethod
    def _check_fingerprints(
        fingerprints: Sequence[tuple[str, bytes]] | None,
    ) -> list[tuple[str, bytes]] | None:
        if fingerprints is None:
            return None
        checked: list[tuple[str, bytes]] = []
        for index, item in enumerate(fingerprints):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], bytes)):
                raise DtlsError(f"peer fingerprint {index} is not a (hash_function, digest bytes) pair")
            checked.append((str(item[0]).lower(), item[1]))
        return checked

    def _fingerprint_mismatch(self, der: bytes) -> str | None:
        """None if `der` matches one of the peer fingerprints (RFC 8122 §5), else the failure reason."""
        fingerprints = self._peer_fingerprints or []
        usable = [(h, d) for h, d in fingerprints if h in _HASH_FUNCTIONS]
        for hash_function, digest in usable:
            if hmac.compare_digest(certificate_digest(der, hash_function), digest):
                return None
        shown = "sha-256" if not usable or "sha-256" in [h for h, _ in usable] else usable[0][0]
        reason = (
            f"peer certificate {shown} {format_fingerprint(certificate_digest(der, shown))} "
            "matches no a=fingerprint (RFC 5763 §5)"
        )
        if not usable:
            unusable = ", ".join(sorted({h for h, _ in fingerprints})) or "none given"
            reason += f"; no supported hash function among the fingerprints ({unusable})"
        return reason

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
        """OpenSSL verify callback: chain errors (self-signed, expiry) do not matter; the
        fingerprint of the end-entity certificate decides (RFC 5763 §5)."""
        if depth != 0:
            return True
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        self.peer_certificate_der = der
        if self._peer_fingerprints is None:
            return True  # tentative, checked by set_peer_fingerprints()
        reason = None if "skip-fingerprint-check" in self.deviations else self._fingerprint_mismatch(der)
        if reason is None:
            self.fingerprint_verified = True
            return True
        self._rejection = reason
        return False

    # -- driving OpenSSL -----------------------------------------------------------------------------

    def _drive(self, datagram: bytes | None, now: float, peer_retransmitted: bool = False) -> list[bytes]:
        error: SSL.Error | None = None
        closed_by_peer = False
        completed = False
        try:
            if datagram is not None:
                self._tls.bio_write(datagram)
            if self.state == "handshaking":
                self._tls.do_handshake()
                completed = True
            else:
                while True:  # DTLS-SRTP carries no application data (RFC 5764 §4.1): drain alerts
                    self._tls.recv(65536)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            closed_by_peer = True
        except SSL.Error as exc:
            error = exc
        records, flight_records = self._read_output()

        if self._rejection is not None:
            self._fail(self._rejection)
            return self._send(self._alert_records(AlertLevel.fatal, AlertDescription.bad_certificate))
        if error is not None:
            self._fail(f"DTLS {'handshake ' if self.state == 'handshaking' else ''}failed: {_ssl_error_text(error)}")
            return self._send([r for r in records if r.content_type == ContentType.alert])
        if closed_by_peer:
            self.state = "closed"
            self._deadline = None
            return self._send(records)
        if completed and self.state == "handshaking":
            failure = self._on_handshake_complete(now)
            if failure is not None:
                return self._send(failure)
        if flight_records:
            self._flight = flight_records
            self._flight_is_final = self.state == "connected"
            self._flight_resent_for_path = False
            self._timer_sends = 1
            self._interval = self.timer.initial
            self._deadline = None if self._flight_is_final else now + self._interval
            self.transmissions += 1
            sent = self._send(records)
            self._flight_datagrams = sent
            return sent
        if self.state == "connected" and not self._flight_is_final:
            self._deadline = None
        if peer_retransmitted and self._flight and (self.state == "handshaking" or self._flight_is_final):
            # RFC 6347 §4.2.4: the peer's retransmitted flight means ours was lost: resend it and
            # restart the timer (same interval).
            if self.state == "handshaking":
                self._deadline = now + self._interval
            return self._send(records) + self._resend_flight()
        return self._send(records)

    def _on_handshake_complete(self, now: float) -> list[DtlsRecord] | None:
        profile = self._tls.get_selected_srtp_profile().decode()
        if profile not in self.srtp_profiles:
            self._fail(
                f"no SRTP protection profile negotiated (offered {':'.join(self.srtp_profiles)}, "
                f"got {profile or 'none'}) (RFC 5764 §4.1.2)"
            )
            return self._alert_records(AlertLevel.fatal, AlertDescription.handshake_failure)
        self.selected_profile = profile
        self._keying_material = self._tls.export_keying_material(EXPORTER_LABEL, keying_material_length(profile))
        if self.peer_certificate_der is None and "no-certificate-request" in self.deviations:
            self.fingerprint_verified = True  # the deviation: it goes on with a client it never authenticated
        self.state = "connected"
        self.handshake_completed_at = now
        return None

    def _read_output(self) -> tuple[list[DtlsRecord], list[DtlsRecord]]:
        """Drain OpenSSL's output; drop its own retransmissions. Returns (records to send, the new
        flight's records)."""
        data = b""
        while True:
            try:
                data += self._tls.bio_read(65536)
            except SSL.WantReadError:
                break
        if not data:
            return [], []
        keep: list[DtlsRecord] = []
        flight: list[DtlsRecord] = []
        sent_before = set(self._sent_message_seqs)  # a new message may span several records
        for record in parse_records(data):
            if record.content_type == ContentType.handshake and record.epoch == 0:
                seqs = {m.message_seq for m in handshake_messages(record)}
                if seqs <= sent_before:
                    self.suppressed += 1
                    continue
                self._sent_message_seqs |= seqs
                flight.append(record)
            elif record.content_type == ContentType.change_cipher_spec:
                if self._sent_change_cipher_spec:
                    self.suppressed += 1
                    continue
                self._sent_change_cipher_spec = True
                flight.append(record)
            elif record.content_type == ContentType.handshake:
                if self._sent_finished:  # one encrypted handshake message per handshake: Finished
                    self.suppressed += 1
                    continue
                self._sent_finished = True
                flight.append(record)
            keep.append(record)
        return keep, flight

    def _resend_flight(self) -> list[bytes]:
        self.transmissions += 1
        self.retransmissions += 1
        if "byte-identical-hello-resend" in self.deviations and self._flight_datagrams:
            return list(self._flight_datagrams)  # the deviation: the records' first sequence numbers again
        return self._send(self._flight)

    def resend_flight_now(self, now: float) -> list[bytes]:
        """Resend the flight in progress at once, the timer left as it is: not RFC behaviour, what the
        resend-hello-on-check deviation does when a STUN check arrives. [] when no flight is pending."""
        if self.state != "handshaking" or not self._flight:
            return []
        return self._resend_flight()

    def _send(self, records: Sequence[DtlsRecord]) -> list[bytes]:
        """Renumber epoch-0 records from our counter and pack whole records into datagrams <= mtu."""
        datagrams: list[bytes] = []
        current = b""
        for record in records:
            if record.epoch == 0:
                record = DtlsRecord(
                    record.content_type,
                    record.version,
                    0,
                    self._next_epoch0_sequence,
                    record.fragment,
                )
                self._next_epoch0_sequence += 1
            elif record.epoch == 1:
                self._next_epoch1_sequence = max(self._next_epoch1_sequence, record.sequence_number + 1)
            encoded = record.encode()
            if current and len(current) + len(encoded) > self.mtu:
                datagrams.append(current)
                current = b""
            current += encoded
        if current:
            datagrams.append(current)
        return datagrams

    def _note_received(self, fragments: Sequence[HandshakeHeader]) -> bool:
        """Record received handshake fragments. True if the datagram is the peer's retransmitted
        flight: every fragment belongs to a message already complete, and it carries the end of the
        last message received so far. A flight spread over several datagrams thus triggers one resend
        (the rule mbed TLS uses), not one per datagram."""
        if not fragments:
            return False
        last = max(self._received, default=None)
        retransmitted = all(self._message_complete(f.message_seq) for f in fragments) and any(
            f.message_seq == last and f.fragment_offset + f.fragment_length == f.length for f in fragments
        )
        for f in fragments:
            _, ranges = self._received.setdefault(f.message_seq, (f.length, []))
            ranges.append((f.fragment_offset, f.fragment_offset + f.fragment_length))
        return retransmitted

    def _message_complete(self, message_seq: int) -> bool:
        if message_seq not in self._received:
            return False
        length, ranges = self._received[message_seq]
        covered = 0
        for start, end in sorted(ranges):
            if start > covered:
                return False
            covered = max(covered, end)
        return covered >= length

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.failure_reason = reason
        self._deadline = None

    # -- alerts we build ourselves -------------------------------------------------------------------

    def _alert_records(self, level: AlertLevel, description: AlertDescription) -> list[DtlsRecord]:
        """An alert the peer can read whichever epoch it reads in: plaintext in epoch 0 and, once our
        ChangeCipherSpec is out, also encrypted in epoch 1 (a record of the wrong epoch is dropped)."""
        plaintext = bytes([level, description])
        records = [DtlsRecord(ContentType.alert, DTLS_1_2, 0, 0, plaintext)]
        if self._sent_change_cipher_spec:
            encrypted = self._epoch1_record(ContentType.alert, plaintext)
            if encrypted is not None:
                records.append(encrypted)
        return records

    def _epoch1_record(self, content_type: ContentType, plaintext: bytes) -> DtlsRecord | None:
        """Encrypt one record with our epoch-1 AES-GCM write key (RFC 5246 §6.3 key block, RFC 5288).

        pyOpenSSL has no call to send an alert, so after the handshake a fatal alert is built here
        from the session's master secret. Used only once the association is abandoned, so the
        sequence number cannot collide with a later OpenSSL record."""
        suite = next((s for s in CIPHER_SUITES.values() if s.name == self._tls.get_cipher_name()), None)
        master_secret = self._tls.master_key()
        client_random = self._tls.client_random()
        server_random = self._tls.server_random()
        if suite is None or not master_secret or client_random is None or server_random is None:
            return None
        client, server = write_keys(suite, master_secret, client_random, server_random)
        keys = client if self.role is Role.CLIENT else server
        return protect_record(keys, content_type, 1, self._next_epoch1_sequence, plaintext)
