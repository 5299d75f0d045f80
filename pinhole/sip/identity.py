"""SIP Identity (RFC 8224) carrying a PASSporT (RFC 8225): the authentication and verification services.

RFC 5763 §5 and §8 rest on the signalling: a proxy that rewrites a=fingerprint in both directions sits in
the middle of the media, and DTLS cannot tell. RFC 8224 makes the caller's side sign the INVITE; the
PASSporT's `mky` claim carries the offer's fingerprints (RFC 8224 §12.1), so a rewritten offer no longer
verifies. Pure: times are arguments, nothing is fetched.

- The PASSporT is a JWS in compact serialization (`header.claims.signature`, base64url), ES256 only:
  ECDSA P-256 with SHA-256, the signature as the raw 64-byte r||s (RFC 7518 §3.4). Header
  {"alg","typ":"passport","x5u"}, claims {"orig","dest","iat","mky"}, each in RFC 8225 §9's canonical
  JSON: keys in lexicographic order, no whitespace. The compact form (`..signature`, RFC 8225 §7) is
  verified too, its header and claims rebuilt from the request.
- The credential: `info` (and `x5u`, which must equal it) is a `data:` URI (RFC 2397) of type
  application/pem-certificate-chain, base64, carrying the signer's chain. RFC 8224 §7.2 wants a URI that
  dereferences to the signer's certificate; the lab has no certificate repository and a verifier should
  not fetch during a call, so the chain travels in the request. That makes the credential available, not
  trusted: the chain is still validated to the verifier's own trust anchors. Any other scheme is 436
  here. The price is size: the certificate is in the request twice (x5u is inside the signed header), so
  a signed INVITE exceeds a 1500-byte path MTU and, over UDP, is IP-fragmented (RFC 3261 §18.1.1 would
  move it to a congestion-controlled transport).
- The signer's certificate covers the identity it signs for by a subjectAltName URI equal to the AoR
  (RFC 8224 §7.1 accepts any credential that covers it; RFC 8226 TNAuthList is for telephone numbers).
- orig and dest are the `uri` forms of From and To (RFC 8224 §8, AoRs here: no telephone numbers).

Verification follows RFC 8224 §6.2 step by step; a failure is an IdentityError with the response to send:
428 Use Identity Header (none, and policy requires one), 436 Bad Identity Info (no info, or one that cannot
be dereferenced, or an x5u that differs), 437 Unsupported Credential (a chain no trust anchor vouches for
now, a key that is not P-256, a certificate that does not cover orig), 403 Stale Date (Date or iat more
than 60 s from now, or Date outside the certificate's validity), 438 Invalid Identity Header (anything
malformed, an alg other than ES256, a signature that does not verify, orig/dest other than From/To, mky
other than the SDP's fingerprints). RFC 8224 §6.2.2 gives the reason phrases (436 and 437 were "Bad
Identity-Info" and "Unsupported Certificate" in RFC 4474).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import json
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509 import verification

from pinhole import sdp
from pinhole.sip.message import Request, SipParseError, SipUri, parse_uri

__all__ = [
    "ALG",
    "FRESHNESS",
    "Assertion",
    "IdentityError",
    "IdentityField",
    "authenticate",
    "body_fingerprints",
    "canonical_json",
    "canonical_uri",
    "credential",
    "http_date",
    "info_uri",
    "load_certificates",
    "load_signing_key",
    "mky",
    "parse_identity",
    "peek",
    "sign",
    "signer_problem",
    "verify",
]

ALG = "ES256"  # RFC 8225 §8: the one algorithm every implementation supports; the only one accepted here
TYP = "passport"  # RFC 8225 §4.1 "typ"
FRESHNESS = 60  # seconds either side of now for Date and iat (RFC 8224 §6.2 step 4 RECOMMENDED)
CHAIN_MEDIA_TYPE = "application/pem-certificate-chain"  # RFC 8555 §9.1: the leaf first, then its issuers
COORDINATE = 32  # bytes of r and of s for P-256 (RFC 7518 §3.4)

REASONS = {
    403: "Stale Date",
    428: "Use Identity Header",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
}
"""RFC 8224 §6.2.2 (and §6.2 step 4 for 403): the response each failure of verification gets."""


class IdentityError(Exception):
    """Verification failed: `status` and `reason` are the response to send (RFC 8224 §6.2.2), `detail` why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {REASONS[status]}: {detail}")
        self.status, self.reason, self.detail = status, REASONS[status], detail


@dataclass(frozen=True)
class Assertion:
    """What one Identity header asserts (RFC 8225 §5), and the header field value it came in."""

    orig: str
    dest: tuple[str, ...]
    iat: int
    mky: tuple[str, ...]  # each as a=fingerprint writes it: "sha-256 AB:CD:..."
    field: str
    signer: str = ""  # the credential's subject, once verified
    compact: bool = False  # the RFC 8225 §7 compact form (header and claims rebuilt from the request)


@dataclass(frozen=True)
class IdentityField:
    """An Identity header field value taken apart (RFC 8224 §4.1 ABNF)."""

    passport: str
    info: str | None
    alg: str | None
    ppt: str | None


# -- encodings (RFC 7515 §2, RFC 8225 §9) ---------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """RFC 8225 §9: keys in lexicographic order, no whitespace or line breaks, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _unb64url(text: str, what: str) -> bytes:
    """base64url without padding (RFC 7515 §2), strictly: another alphabet or a padding is malformed."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise IdentityError(438, f"the PASSporT's {what} is not base64url (RFC 7515 §2)")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a member name repeats (RFC 7515 §4)")
    return dict(pairs)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64url(text, what), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise IdentityError(438, f"the PASSporT's {what} is not JSON ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise IdentityError(438, f"the PASSporT's {what} is not a JSON object")
    return value


def _short(text: str, length: int = 48) -> str:
    return repr(text if len(text) <= length else text[:length] + "...")


# -- claims (RFC 8225 §5, RFC 8224 §8, §12.1) -------------------------------------------------------------


def canonical_uri(text: str) -> str:
    """RFC 8224 §8, the `uri` form: the AoR of a SIP URI (scheme, user, host lower-cased, port if any), with
    no display name, parameters or headers; another scheme as it is."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        return f"{uri.scheme.lower()}:{uri.opaque}"
    user = f"{uri.user}@" if uri.user is not None else ""
    port = f":{uri.port}" if uri.port is not None else ""
    return f"{uri.scheme}:{user}{uri.host.lower()}{port}"


def body_fingerprints(body: bytes) -> list[sdp.Fingerprint]:
    """Every a=fingerprint of an SDP body, session and media level, each once: what `mky` covers (RFC 8224
    §12.1). None without a body; SdpError for a body that is not SDP."""
    if not body:
        return []
    described = sdp.parse(body)
    values = described.attributes_named("fingerprint")
    values += [value for media in described.media for value in media.attributes_named("fingerprint")]
    found: list[sdp.Fingerprint] = []
    for value in values:
        fingerprint = sdp.Fingerprint.parse(value or "")
        if fingerprint not in found:
            found.append(fingerprint)
    return found


def mky(fingerprints: Iterable[sdp.Fingerprint]) -> list[dict[str, str]]:
    """RFC 8225 §5.2.2: one {"alg", "dig"} per fingerprint, the hash name lower-case and the digest as
    a=fingerprint writes it (upper-case hex pairs), in lexicographic order of alg, then dig."""
    pairs = sorted({tuple(str(f).split(" ", 1)) for f in fingerprints})
    return [{"alg": alg, "dig": dig} for alg, dig in pairs]


def _claims(orig: str, dest: Sequence[str], iat: int, fingerprints: Iterable[sdp.Fingerprint]) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "orig": {"uri": canonical_uri(orig)},
        "dest": {"uri": [canonical_uri(d) for d in dest]},
        "iat": iat,
    }
    keys = mky(fingerprints)
    if keys:  # RFC 8224 §12.1: present exactly when the SDP carries fingerprints
        claims["mky"] = keys
    return claims


def _request_claims(request: Request, iat: int) -> dict[str, Any]:
    """The claims a request's From, To and body call for (RFC 8224 §5, rebuilt again by a verifier)."""
    try:
        orig, dest = str(request.from_.uri), str(request.to.uri)
        fingerprints = body_fingerprints(request.body)
    except (SipParseError, sdp.SdpError) as error:
        raise IdentityError(438, f"the request's From, To or SDP cannot be read: {error}") from None
    return _claims(orig, [dest], iat, fingerprints)


# -- the credential (RFC 8224 §7, RFC 2397) -------------------------------------------------------------


def info_uri(chain: Sequence[x509.Certificate]) -> str:
    """The data: URI (RFC 2397) carrying a chain as application/pem-certificate-chain: see the module docstring."""
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
    return f"data:{CHAIN_MEDIA_TYPE};base64,{base64.b64encode(pem).decode('ascii')}"


def credential(info: str) -> list[x509.Certificate]:
    """The chain an info URI carries, leaf first; 436 for a URI that cannot be dereferenced here."""
    scheme, colon, rest = info.partition(":")
    if not colon or scheme.lower() != "data":
        raise IdentityError(436, f"info {_short(info)}: only data: URIs (RFC 2397) dereference here, with no fetch")
    meta, comma, data = rest.partition(",")
    if not comma:
        raise IdentityError(436, "info: a data: URI without the ',' before its data (RFC 2397)")
    params = [p.strip().lower() for p in meta.split(";")]
    if params[0] != CHAIN_MEDIA_TYPE:
        raise IdentityError(436, f"info: a data: URI of {params[0] or 'text/plain'!r}, not {CHAIN_MEDIA_TYPE}")
    try:
        pem = base64.b64decode(data, validate=True) if "base64" in params[1:] else urllib.parse.unquote_to_bytes(data)
        return x509.load_pem_x509_certificates(pem)
    except (binascii.Error, ValueError) as error:
        raise IdentityError(436, f"info: the data: URI holds no PEM certificate chain ({error})") from None


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.UniformResourceIdentifier)


def _covers(cert: x509.Certificate, aor: str) -> bool:
    """Whether a certificate names the AoR as a subjectAltName URI (compared in RFC 8224 §8's uri form)."""
    for name in _san_uris(cert):
        try:
            if canonical_uri(name) == aor:
                return True
        except SipParseError:
            continue
    return False


def _is_p256(key: object) -> bool:
    return isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(
        key.curve, ec.SECP256R1
    )


def _kind(key: object) -> str:
    """How a refusal names a key: its curve, or its type."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"an EC {key.curve.name} key"
    return f"a {type(key).__name__.removeprefix('_')}"


def _at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _validate(chain: list[x509.Certificate], anchors: Sequence[x509.Certificate], now: float) -> x509.Certificate:
    """The leaf, once a trust anchor vouches for the chain now (RFC 8224 §6.2 step 3; RFC 5280 through
    cryptography's verifier) and its key can make ES256 signatures; 437 otherwise."""
    leaf = chain[0]
    if not anchors:
        raise IdentityError(437, "this verifier has no trust anchor")
    try:
        builder = verification.PolicyBuilder().store(verification.Store(list(anchors))).time(_at(now))
        builder.build_client_verifier().verify(leaf, chain[1:])
    except (verification.VerificationError, ValueError) as error:
        subject = leaf.subject.rfc4514_string()
        raise IdentityError(437, f"no trust anchor vouches for the certificate {subject}: {error}") from None
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise IdentityError(437, f"the certificate's key cannot be read: {error}") from None
    if not _is_p256(key):
        raise IdentityError(437, f"the certificate's key is {_kind(key)}, not P-256: it cannot verify {ALG}")
    return leaf


# -- the Identity header field (RFC 8224 §4.1) ---------------------------------------------------------

_PASSPORT = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+")
_PARAM = re.compile(
    r";[ \t]*([!%'*+\-.0-9A-Z_`a-z~]+)[ \t]*(?:=[ \t]*(<[^<>]*>|\"(?:[^\"\\]|\\.)*\"|[^;\s<>\"]+))?[ \t]*"
)


def parse_identity(value: str) -> IdentityField:
    """`signed-identity-digest SEMI ident-info *(SEMI ident-info-params)`; info without its <> kept as is."""
    digest, semi, tail = value.strip().partition(";")
    digest = digest.strip()
    if not _PASSPORT.fullmatch(digest):
        raise IdentityError(438, f"{_short(digest)} is not a PASSporT in JWS compact serialization (RFC 8225 §7)")
    params: dict[str, str | None] = {}
    rest = semi + tail
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            raise IdentityError(438, f"malformed parameters {_short(rest[position:])} (RFC 8224 §4.1)")
        name = match.group(1).lower()
        if name in params:
            raise IdentityError(438, f"parameter {name} repeats (RFC 8224 §4.1)")
        params[name] = match.group(2)
        position = match.end()
    info = params.get("info")
    if info is not None and not (info.startswith("<") and info.endswith(">")):
        raise IdentityError(436, f"info {_short(info)} is not <absoluteURI> (RFC 8224 §4.1)")
    return IdentityField(digest, info[1:-1] if info else None, params.get("alg"), params.get("ppt"))


# -- dates (RFC 3261 §20.17) ---------------------------------------------------------------------------


def http_date(seconds: float) -> str:
    """A Date header field value: rfc1123-date in GMT (RFC 3261 §20.17)."""
    return email.utils.format_datetime(_at(int(seconds)), usegmt=True)


def _date_seconds(value: str) -> int:
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": UTC with no claim about the local zone (RFC 5322 §3.3)
            when = when.replace(tzinfo=datetime.timezone.utc)
        return int(when.timestamp())
    except (ValueError, TypeError, IndexError, OverflowError):
        raise IdentityError(403, f"Date {_short(value)} is not an RFC 3261 §20.17 date") from None


# -- the authentication service (RFC 8224 §5) -----------------------------------------------------------


def _es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(COORDINATE, "big") + s.to_bytes(COORDINATE, "big")


def _encode(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]) -> str:
    if not _is_p256(key):
        raise ValueError(f"{ALG} signs with a P-256 key, not {_kind(key)}")
    info = info_uri(chain)
    header = {"alg": ALG, "typ": TYP, "x5u": info}
    signing_input = f"{_b64url(canonical_json(header))}.{_b64url(canonical_json(claims))}"
    token = f"{signing_input}.{_b64url(_es256(key, signing_input.encode('ascii')))}"
    return f"{token};info=<{info}>;alg={ALG}"


def sign(
    *,
    orig: str,
    dest: Sequence[str],
    iat: int,
    fingerprints: Iterable[sdp.Fingerprint],
    key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
) -> str:
    """The Identity header field value of a full-form PASSporT: `passport;info=<data:...>;alg=ES256`."""
    return _encode(_claims(orig, dest, iat, fingerprints), key, chain)


def authenticate(
    request: Request,
    key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
    now: float,
    *,
    freshness: int = FRESHNESS,
) -> Assertion:
    """Sign a request as RFC 8224 §5 has it: a Date if it has none (iat is the Date), then an Identity header
    over From, To and the SDP's fingerprints. A Date already there and not fresh is 403 Stale Date."""
    date = request.headers.get("Date")
    if date is None:
        date = http_date(now)
        request.headers.add("Date", date)
    iat = _date_seconds(date)
    if abs(now - iat) > freshness:
        raise IdentityError(403, f"the request's Date {date!r} is {iat - now:+.0f} s from now")
    claims = _request_claims(request, iat)
    value = _encode(claims, key, chain)
    request.headers.add("Identity", value)
    return _assertion(claims, value)


def _assertion(claims: dict[str, Any], value: str, signer: str = "", compact: bool = False) -> Assertion:
    return Assertion(
        orig=claims["orig"]["uri"],
        dest=tuple(claims["dest"]["uri"]),
        iat=claims["iat"],
        mky=tuple(f"{k['alg']} {k['dig']}" for k in claims.get("mky", ())),
        field=value,
        signer=signer,
        compact=compact,
    )


# -- the verification service (RFC 8224 §6.2) ---------------------------------------------------------


def verify(
    request: Request,
    trust_anchors: Sequence[x509.Certificate],
    now: float,
    *,
    require: bool = False,
    freshness: int = FRESHNESS,
) -> Assertion | None:
    """Verify a request's Identity; None when it has none and none is required. With several Identity
    header fields one that verifies is enough; otherwise the first one's failure is raised."""
    values = request.headers.get_all("Identity")
    if not values:
        if require:
            raise IdentityError(428, "the request carries no Identity header and this verifier requires one")
        return None
    failures = []
    for value in values:
        try:
            return _verify_one(value, request, trust_anchors, now, freshness)
        except IdentityError as error:
            failures.append(error)
    raise failures[0]


def _verify_one(
    value: str, request: Request, anchors: Sequence[x509.Certificate], now: float, freshness: int
) -> Assertion:
    field = parse_identity(value)
    if field.ppt is not None:
        raise IdentityError(438, f"ppt={field.ppt}: no PASSporT extension is supported here (RFC 8224 §4.1)")
    if field.alg is not None and field.alg != ALG:
        raise IdentityError(438, f"alg={field.alg}: only {ALG} is accepted (RFC 8225 §8)")
    if field.info is None:
        raise IdentityError(436, "no info parameter: nothing names the signer's credential (RFC 8224 §4.1)")
    head, body, signature = field.passport.split(".")
    compact = not head and not body
    if compact:  # RFC 8225 §7: rebuilt from the request, iat from its Date (checked for freshness below)
        date = request.headers.get("Date")
        if date is None:
            raise IdentityError(403, "a compact PASSporT without a Date header to rebuild iat from")
        header: dict[str, Any] = {"alg": field.alg or ALG, "typ": TYP, "x5u": field.info}
        claims = _request_claims(request, _date_seconds(date))
        head, body = _b64url(canonical_json(header)), _b64url(canonical_json(claims))
    else:
        header, claims = _json_object(head, "header"), _json_object(body, "claims")
    # the PASSporT's own header (RFC 8225 §5.1)
    if header.get("alg") != ALG:
        raise IdentityError(438, f"alg {header.get('alg')!r}: only {ALG} is accepted (RFC 8225 §8)")
    if header.get("typ") != TYP:
        raise IdentityError(438, f"typ {header.get('typ')!r}, not {TYP!r} (RFC 8225 §4.1)")
    if "ppt" in header:
        raise IdentityError(438, f"ppt {header['ppt']!r}: no PASSporT extension is supported here (RFC 8225 §8.1)")
    orig, dest, iat, keys = _read_claims(claims)
    # step 3: the credential
    if header.get("x5u") != field.info:
        raise IdentityError(436, "the PASSporT's x5u is not the info parameter's URI (RFC 8224 §4.1)")
    leaf = _validate(credential(field.info), anchors, now)
    if not _covers(leaf, orig):
        names = ", ".join(_san_uris(leaf)) or "no URI"
        raise IdentityError(437, f"the certificate covers {names}, not orig {orig} (RFC 8224 §7.1)")
    # step 4: freshness
    date = request.headers.get("Date")
    if date is None:
        raise IdentityError(403, "no Date header (RFC 8224 §4: a request with Identity carries one)")
    sent = _date_seconds(date)
    if abs(now - sent) > freshness:
        raise IdentityError(403, f"Date {date!r} is {sent - now:+.0f} s from now (freshness {freshness} s)")
    if abs(now - iat) > freshness:
        raise IdentityError(403, f"iat {iat} is {iat - now:+.0f} s from now (freshness {freshness} s)")
    if not leaf.not_valid_before_utc <= _at(sent) <= leaf.not_valid_after_utc:
        raise IdentityError(403, f"Date {date!r} is outside the certificate's validity (RFC 8224 §6.2 step 4)")
    # step 5: the signature, then the claims against the request
    raw = _unb64url(signature, "signature")
    if len(raw) != 2 * COORDINATE:
        raise IdentityError(438, f"an {ALG} signature is 64 bytes (r||s, RFC 7518 §3.4), not {len(raw)}")
    der = encode_dss_signature(int.from_bytes(raw[:COORDINATE], "big"), int.from_bytes(raw[COORDINATE:], "big"))
    key: ec.EllipticCurvePublicKey = leaf.public_key()  # type: ignore[assignment] # P-256, checked in _validate
    try:
        key.verify(der, f"{head}.{body}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise IdentityError(438, "the signature does not verify with the certificate's key") from None
    expected = _request_claims(request, iat)
    if orig != expected["orig"]["uri"]:
        raise IdentityError(438, f"orig {orig} is not the From {expected['orig']['uri']} (RFC 8224 §6.2 step 5)")
    if expected["dest"]["uri"][0] not in dest:
        raise IdentityError(438, f"dest {list(dest)} does not hold the To {expected['dest']['uri'][0]}")
    wanted = {(k["alg"], k["dig"]) for k in expected.get("mky", ())}
    if set(keys) != wanted:
        signed = ", ".join(f"{a} {d}" for a, d in sorted(keys)) or "none"
        offered = ", ".join(f"{a} {d}" for a, d in sorted(wanted)) or "none"
        raise IdentityError(438, f"mky ({signed}) is not the SDP's a=fingerprint ({offered}) (RFC 8224 §12.1)")
    subject = ", ".join(_san_uris(leaf)) or leaf.subject.rfc4514_string()
    return _assertion(claims, value, subject, compact)


def _read_claims(claims: dict[str, Any]) -> tuple[str, tuple[str, ...], int, list[tuple[str, str]]]:
    """orig, dest, iat and mky as RFC 8225 §5 shapes them (438 for anything else); mky digests upper-cased."""
    orig, dest, iat = claims.get("orig"), claims.get("dest"), claims.get("iat")
    if not (isinstance(orig, dict) and isinstance(orig.get("uri"), str)):
        raise IdentityError(438, f'orig {orig!r} is not {{"uri": AoR}} (RFC 8225 §5.2.1, RFC 8224 §8)')
    uris = dest.get("uri") if isinstance(dest, dict) else None
    if not (isinstance(uris, list) and uris and all(isinstance(u, str) for u in uris)):
        raise IdentityError(438, f'dest {dest!r} is not {{"uri": [AoR, ...]}} (RFC 8225 §5.2.1)')
    if isinstance(iat, bool) or not isinstance(iat, int) or not 0 <= iat < 2**63:
        raise IdentityError(438, f"iat {iat!r} is not a NumericDate (RFC 8225 §5.1.1)")
    keys = claims.get("mky", [])
    if not isinstance(keys, list) or not all(
        isinstance(k, dict) and isinstance(k.get("alg"), str) and isinstance(k.get("dig"), str) for k in keys
    ):
        raise IdentityError(438, 'mky is not a list of {"alg", "dig"} (RFC 8225 §5.2.2)')
    return orig["uri"], tuple(uris), iat, [(k["alg"].lower(), k["dig"].upper()) for k in keys]


def peek(value: str) -> Assertion | None:
    """What a full-form Identity header claims, unverified (for evidence: the verdict's notes); None when
    it does not even decode."""
    try:
        field = parse_identity(value)
        head, body, _ = field.passport.split(".")
        orig, dest, iat, keys = _read_claims(_json_object(body, "claims"))
        _json_object(head, "header")
    except (IdentityError, ValueError):
        return None
    return Assertion(orig, dest, iat, tuple(f"{a} {d}" for a, d in keys), value)


# -- configuration: the signer's key and chain, the verifier's trust anchors ----------------------------


def load_signing_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A PEM private key that can sign ES256; ValueError says why not."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"not an unencrypted PEM private key ({error})") from None
    if not _is_p256(key):
        raise ValueError(f"{_kind(key)}, not P-256: {ALG} signs with P-256 (RFC 7518 §3.4)")
    return key  # type: ignore[return-value]


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """PEM certificates, in order; ValueError when there are none."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise ValueError(f"no PEM certificate ({error})") from None


def signer_problem(key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate], aor: str) -> str:
    """Why a key and chain cannot sign for `aor` ('' when they can): the leaf must be the key's and cover it."""
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        theirs = leaf.public_key().public_bytes(der, public)
    except (ValueError, UnsupportedAlgorithm) as error:
        return f"the first certificate's key cannot be read ({error})"
    if theirs != key.public_key().public_bytes(der, public):
        return "the first certificate is not the signing key's"
    if not _covers(leaf, canonical_uri(aor)):
        names = ", ".join(_san_uris(leaf)) or "no subjectAltName URI"
        return f"the first certificate covers {names}, not {aor} (RFC 8224 §7.1)"
    return ""
