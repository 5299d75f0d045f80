"""SDP (RFC 4566) for DTLS-SRTP offers and answers (RFC 5763 §5, RFC 4145, RFC 8122, RFC 5761).

Two layers. :func:`parse` / :func:`serialize` are a strict, lossless codec of the RFC 4566 line
grammar (fixed line order, one ``<type>=<value>`` per line): errors name the line number.
:func:`read_offer` / :func:`read_answer` apply the RFC 5763 §5 rules to the first audio stream and
return a :class:`DtlsSrtpMedia`; what is tolerated but wrong is listed in its ``warnings``.

Line numbers for the semantic checks are recomputed from the structure (:func:`line_numbers`).
Because :func:`parse` only accepts the RFC order, those are the line numbers of the parsed text.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "DTLS_SRTP_PROTOS",
    "DtlsSrtpMedia",
    "Facts",
    "Fingerprint",
    "MediaDescription",
    "SdpError",
    "SessionDescription",
    "Setup",
    "Timing",
    "build_answer",
    "build_offer",
    "certificate_fingerprint",
    "facts",
    "line_numbers",
    "parse",
    "read_answer",
    "read_offer",
    "select_fingerprints",
    "serialize",
]


class SdpError(ValueError):
    """An SDP is malformed or breaks an offer/answer rule; the message names the line and the rule."""


def _at(line: int | None, text: str) -> str:
    return f"line {line}: {text}" if line is not None else text


# -- fingerprints (RFC 8122) --------------------------------------------------------------------------

_HASHES = {"sha-1": hashlib.sha1, "sha-256": hashlib.sha256, "sha-384": hashlib.sha384, "sha-512": hashlib.sha512}
_DIGEST_LENGTHS = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64, "md5": 16, "md2": 16}
_STRENGTH = {"sha-1": 1, "sha-256": 2, "sha-384": 3, "sha-512": 4}
_FORBIDDEN_HASHES = ("md2", "md5")
SUPPORTED_HASHES = tuple(sorted(_HASHES, key=lambda h: -_STRENGTH[h]))
"""Strongest first: sha-512, sha-384, sha-256, sha-1."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+\Z")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*\Z")


@dataclass(frozen=True)
class Fingerprint:
    """``a=fingerprint`` (RFC 8122 §5): a hash function token (lower-case) and the digest bytes."""

    hash_function: str
    value: bytes

    @classmethod
    def parse(cls, attr_value: str) -> Fingerprint:
        """Parse ``<hash-func> SP <HEX>:<HEX>...``; hash token case-insensitive, hex in either case."""
        if not attr_value:
            raise SdpError("empty fingerprint: expected '<hash-func> SP <hex bytes>' (RFC 8122 §5)")
        if attr_value[0].isspace():
            raise SdpError("fingerprint starts with whitespace: expected '<hash-func> SP <hex bytes>' (RFC 8122 §5)")
        hash_function, sep, hex_text = attr_value.partition(" ")
        if not sep:
            raise SdpError("no space after the hash function: expected '<hash-func> SP <hex bytes>' (RFC 8122 §5)")
        if not _TOKEN.match(hash_function):
            raise SdpError(f"hash function {hash_function!r} is not a token (RFC 8122 §5)")
        if not _HEX_PAIRS.match(hex_text):
            raise SdpError(f"{hex_text!r} is not colon-separated pairs of hex digits (RFC 8122 §5)")
        name = hash_function.lower()
        value = bytes.fromhex(hex_text.replace(":", ""))
        expected = _DIGEST_LENGTHS.get(name)
        if expected is not None and len(value) != expected:
            raise SdpError(f"{name} fingerprint has {len(value)} bytes, expected {expected} (RFC 8122 §5)")
        return cls(name, value)

    def __str__(self) -> str:
        """Lower-case hash name, UPPER-case hex (RFC 8122 §5: UHEX)."""
        return f"{self.hash_function} " + ":".join(f"{b:02X}" for b in self.value)

    @property
    def supported(self) -> bool:
        return self.hash_function in _HASHES

    def matches(self, der: bytes) -> bool:
        """True if ``der`` hashes to this fingerprint; always False for an unsupported hash."""
        if not self.supported:
            return False
        return hmac.compare_digest(_HASHES[self.hash_function](der).digest(), self.value)


def certificate_fingerprint(der: bytes, hash_function: str = "sha-256") -> Fingerprint:
    """The fingerprint of a DER certificate (RFC 8122 §5). sha-1 works; md2/md5 are refused."""
    name = hash_function.lower()
    if name in _FORBIDDEN_HASHES:
        raise SdpError(f"{name} must not be used for certificate fingerprints (RFC 8122 §5)")
    if name not in _HASHES:
        raise SdpError(f"unsupported hash function {hash_function!r} (supported: {', '.join(SUPPORTED_HASHES)})")
    return Fingerprint(name, _HASHES[name](der).digest())


def select_fingerprints(fingerprints: Iterable[Fingerprint]) -> list[Fingerprint]:
    """The fingerprints that use the strongest hash we support (RFC 8122 §5).

    The peer's certificate must match one of these; fingerprints with weaker hashes are not
    consulted. Empty if no fingerprint uses a supported hash.
    """
    usable = [fp for fp in fingerprints if fp.supported]
    if not usable:
        return []
    best = max(_STRENGTH[fp.hash_function] for fp in usable)
    return [fp for fp in usable if _STRENGTH[fp.hash_function] == best]


class Setup(str, Enum):
    """``a=setup`` (RFC 4145 §4): who opens the connection, i.e. who is the DTLS client."""

    ACTIVE = "active"
    PASSIVE = "passive"
    ACTPASS = "actpass"
    HOLDCONN = "holdconn"


# -- data model (RFC 4566 §5) -------------------------------------------------------------------------


def _first(attributes: Sequence[tuple[str, str | None]], name: str) -> str | None:
    for n, v in attributes:
        if n == name:
            return v
    return None


@dataclass
class Timing:
    """``t=<start> <stop>`` and its ``r=`` lines (RFC 4566 §5.9, §5.10)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


@dataclass
class MediaDescription:
    """One ``m=`` section (RFC 4566 §5.14) with its i=, c=, b=, k= and a= lines."""

    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    number_of_ports: int | None = None
    title: str | None = None
    key: str | None = None

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name[:value]``; None if absent or a flag (see :meth:`has_attribute`)."""
        return _first(self.attributes, name)

    def attributes_named(self, name: str) -> list[str | None]:
        return [v for n, v in self.attributes if n == name]

    def has_attribute(self, name: str) -> bool:
        return any(n == name for n, _ in self.attributes)


@dataclass
class SessionDescription:
    """A whole SDP (RFC 4566 §5). ``o=`` is split into its six fields."""

    session_id: int
    session_version: int
    origin_address: str
    origin_username: str = "-"
    origin_nettype: str = "IN"
    origin_addrtype: str = "IP4"
    version: int = 0
    session_name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: str | None = None
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    timing: list[Timing] = field(default_factory=lambda: [Timing()])
    time_zones: str | None = None
    key: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        return _first(self.attributes, name)

    def attributes_named(self, name: str) -> list[str | None]:
        return [v for n, v in self.attributes if n == name]

    def has_attribute(self, name: str) -> bool:
        return any(n == name for n, _ in self.attributes)


# -- rendering and line numbers -----------------------------------------------------------------------


def _attr_text(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _render(sd: SessionDescription) -> list[tuple[tuple[object, ...], str]]:
    """(key, line) pairs in RFC 4566 order; keys identify the element for :func:`line_numbers`."""
    out: list[tuple[tuple[object, ...], str]] = [
        (("v",), f"v={sd.version}"),
        (
            ("o",),
            (
                f"o={sd.origin_username} {sd.session_id} {sd.session_version} "
                f"{sd.origin_nettype} {sd.origin_addrtype} {sd.origin_address}"
            ),
        ),
        (("s",), f"s={sd.session_name}"),
    ]
    if sd.information is not None:
        out.append((("i",), f"i={sd.information}"))
    if sd.uri is not None:
        out.append((("u",), f"u={sd.uri}"))
    out += [(("e", k), f"e={e}") for k, e in enumerate(sd.emails)]
    out += [(("p", k), f"p={p}") for k, p in enumerate(sd.phones)]
    if sd.connection is not None:
        out.append((("c",), f"c={sd.connection}"))
    out += [(("b", k), f"b={t}:{v}") for k, (t, v) in enumerate(sd.bandwidths)]
    for k, timing in enumerate(sd.timing):
        out.append((("t", k), f"t={timing.start} {timing.stop}"))
        out += [(("r", k, j), f"r={r}") for j, r in enumerate(timing.repeats)]
    if sd.time_zones is not None:
        out.append((("z",), f"z={sd.time_zones}"))
    if sd.key is not None:
        out.append((("k",), f"k={sd.key}"))
    out += [(("a", k), _attr_text(n, v)) for k, (n, v) in enumerate(sd.attributes)]
    for mi, m in enumerate(sd.media):
        port = f"{m.port}/{m.number_of_ports}" if m.number_of_ports is not None else str(m.port)
        out.append((("m", mi), f"m={m.media} {port} {m.proto} {' '.join(m.formats)}"))
        if m.title is not None:
            out.append((("m", mi, "i"), f"i={m.title}"))
        if m.connection is not None:
            out.append((("m", mi, "c"), f"c={m.connection}"))
        out += [(("m", mi, "b", k), f"b={t}:{v}") for k, (t, v) in enumerate(m.bandwidths)]
        if m.key is not None:
            out.append((("m", mi, "k"), f"k={m.key}"))
        out += [(("m", mi, "a", k), _attr_text(n, v)) for k, (n, v) in enumerate(m.attributes)]
    return out


def serialize(sd: SessionDescription) -> str:
    """The SDP text, CRLF line ends (RFC 4566 §5), in the fixed RFC order."""
    return "".join(line + "\r\n" for _, line in _render(sd))


def line_numbers(sd: SessionDescription) -> dict[tuple[object, ...], int]:
    """1-based line of each element of ``sd`` in :func:`serialize` order (= the parsed text's)."""
    return {key: n for n, (key, _) in enumerate(_render(sd), start=1)}


# -- parser (RFC 4566 §5) -----------------------------------------------------------------------------

_SESSION_ORDER = "vosiuepcbtrzka"
_SESSION_RANK = {t: i for i, t in enumerate(_SESSION_ORDER)}
_SESSION_RANK["r"] = _SESSION_RANK["t"]  # t= and r= interleave: (t r*)+
_MEDIA_ORDER = "micbka"
_MEDIA_RANK = {t: i for i, t in enumerate(_MEDIA_ORDER)}
_REPEATABLE = set("epbtra")
_ORDER_TEXT = "RFC 4566 §5 order: v o s i u e p c b t r z k a, then m i c b k a per media"


def _fields(value: str, count: int | None, line: int, what: str) -> list[str]:
    parts = value.split(" ")
    if any(not p for p in parts):
        raise SdpError(_at(line, f"{what}: fields must be separated by single spaces (RFC 4566 §5)"))
    if count is not None and len(parts) != count:
        raise SdpError(_at(line, f"{what}: expected {count} fields, got {len(parts)} (RFC 4566 §5)"))
    return parts


def _number(text: str, line: int, what: str, maximum: int | None = None) -> int:
    if not text.isascii() or not text.isdigit():
        raise SdpError(_at(line, f"{what}: {text!r} is not a number (RFC 4566 §5)"))
    try:
        value = int(text)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits(), 4300 by default)
        raise SdpError(_at(line, f"{what}: a number of {len(text)} digits is too long")) from None
    if maximum is not None and value > maximum:
        raise SdpError(_at(line, f"{what}: {value} is larger than {maximum}"))
    return value


def _int(text: str) -> int | None:
    """The value of a string of ASCII digits, else None. ``str.isdigit`` also takes "²", which int() refuses,
    and int() refuses more than 4300 digits (sys.get_int_max_str_digits): both raised ValueError."""
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _parse_bandwidth(value: str, line: int) -> tuple[str, int]:
    bwtype, sep, amount = value.partition(":")
    if not sep or not bwtype:
        raise SdpError(_at(line, f"b={value}: expected <bwtype>:<bandwidth> (RFC 4566 §5.8)"))
    return bwtype, _number(amount, line, f"b={value}")


def _parse_attribute(value: str, line: int) -> tuple[str, str | None]:
    name, sep, attr_value = value.partition(":")
    if not name or not _TOKEN.match(name):
        raise SdpError(_at(line, f"a={value}: attribute name {name!r} is not a token (RFC 4566 §5.13)"))
    return name, (attr_value if sep else None)


def _split_lines(text: str | bytes) -> list[str]:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError(f"SDP is not valid UTF-8 at byte {exc.start} (RFC 4566 §5)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _lex(n: int, raw: str) -> tuple[int, str, str]:
    """(line, type, value) of one ``<type>=<value>`` line (RFC 4566 §5)."""
    if raw == "":
        raise SdpError(_at(n, "empty line (RFC 4566 §5: every line is <type>=<value>)"))
    if "\r" in raw or "\x00" in raw:
        raise SdpError(_at(n, "stray CR or NUL inside the line (RFC 4566 §5)"))
    if len(raw) < 2 or raw[1] != "=" or not ("a" <= raw[0] <= "z"):
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise SdpError(_at(n, f"expected <type>=<value> with no space around '=' (RFC 4566 §5), got {shown!r}"))
    typ = raw[0]
    if typ not in _SESSION_RANK and typ not in _MEDIA_RANK:
        raise SdpError(_at(n, f"unknown type {typ}= (RFC 4566 §5)"))
    return n, typ, raw[2:]


def parse(text: str | bytes) -> SessionDescription:
    """Parse an SDP strictly: ``<type>=<value>`` lines in the fixed RFC 4566 §5 order, CRLF or LF."""
    lines = _split_lines(text)
    if not lines:
        raise SdpError("empty SDP: expected v=0 (RFC 4566 §5)")
    values: list[str] = []
    for index, expected in enumerate("vos"):
        if index >= len(lines):
            raise SdpError(f"SDP ends before the required {expected}= line (RFC 4566 §5)")
        n, typ, value = _lex(index + 1, lines[index])
        if typ != expected:
            raise SdpError(_at(n, f"expected {expected}= but got {typ}= ({_ORDER_TEXT})"))
        if typ == "v" and value != "0":
            raise SdpError(_at(n, f"v={value}: only version 0 is defined (RFC 4566 §5.1)"))
        if typ == "o":
            o = _fields(value, 6, n, "o=")
            session_id = _number(o[1], n, "o= sess-id")
            session_version = _number(o[2], n, "o= sess-version")
        if typ == "s" and not value:
            raise SdpError(_at(n, "s= must not be empty; use s=- (RFC 4566 §5.3)"))
        values.append(value)
    sd = SessionDescription(
        session_id=session_id,
        session_version=session_version,
        origin_address=o[5],
        origin_username=o[0],
        origin_nettype=o[3],
        origin_addrtype=o[4],
        session_name=values[2],
        timing=[],
    )

    rank = _SESSION_RANK["s"]
    media: MediaDescription | None = None
    for n, typ, value in (_lex(n, raw) for n, raw in enumerate(lines[3:], start=4)):
        if typ == "m":
            if not sd.timing:
                raise SdpError(_at(n, "m= before any t= (RFC 4566 §5: one or more t= lines are required)"))
            media = _parse_media_line(value, n)
            sd.media.append(media)
            rank = _MEDIA_RANK["m"]
            continue
        if media is None:
            if typ not in _SESSION_RANK or typ in "vos":
                raise SdpError(_at(n, f"{typ}= is not allowed here ({_ORDER_TEXT})"))
            new_rank = _SESSION_RANK[typ]
            if new_rank < rank or (new_rank == rank and typ not in _REPEATABLE):
                raise SdpError(_at(n, f"{typ}= is out of order or repeated ({_ORDER_TEXT})"))
            if new_rank >= _SESSION_RANK["t"] and typ != "t" and not sd.timing:
                raise SdpError(_at(n, f"{typ}= before the required t= ({_ORDER_TEXT})"))
            rank = new_rank
            _parse_session_line(sd, typ, value, n)
        else:
            if typ not in _MEDIA_RANK:
                raise SdpError(_at(n, f"{typ}= is not allowed in a media description ({_ORDER_TEXT})"))
            new_rank = _MEDIA_RANK[typ]
            if new_rank < rank or (new_rank == rank and typ not in _REPEATABLE):
                raise SdpError(_at(n, f"{typ}= is out of order or repeated in a media description ({_ORDER_TEXT})"))
            rank = new_rank
            _parse_media_field(media, typ, value, n)
    if not sd.timing:
        raise SdpError("no t= line (RFC 4566 §5: one or more time descriptions are required)")
    return sd


def _parse_session_line(sd: SessionDescription, typ: str, value: str, n: int) -> None:
    if typ == "i":
        sd.information = value
    elif typ == "u":
        sd.uri = value
    elif typ == "e":
        sd.emails.append(value)
    elif typ == "p":
        sd.phones.append(value)
    elif typ == "c":
        _fields(value, 3, n, "c=")
        sd.connection = value
    elif typ == "b":
        sd.bandwidths.append(_parse_bandwidth(value, n))
    elif typ == "t":
        start, stop = _fields(value, 2, n, "t=")
        sd.timing.append(Timing(_number(start, n, "t= start"), _number(stop, n, "t= stop")))
    elif typ == "r":
        sd.timing[-1].repeats.append(value)
    elif typ == "z":
        sd.time_zones = value
    elif typ == "k":
        sd.key = value
    elif typ == "a":
        sd.attributes.append(_parse_attribute(value, n))


def _parse_media_line(value: str, n: int) -> MediaDescription:
    parts = _fields(value, None, n, "m=")
    if len(parts) < 4:
        raise SdpError(_at(n, f"m={value}: expected <media> <port> <proto> <fmt> ... (RFC 4566 §5.14)"))
    media, port_text, proto, *formats = parts
    port_text, slash, count_text = port_text.partition("/")
    port = _number(port_text, n, "m= port", 65535)
    count = _number(count_text, n, "m= number of ports") if slash else None
    return MediaDescription(media=media, port=port, proto=proto, formats=formats, number_of_ports=count)


def _parse_media_field(media: MediaDescription, typ: str, value: str, n: int) -> None:
    if typ == "i":
        media.title = value
    elif typ == "c":
        _fields(value, 3, n, "c=")
        media.connection = value
    elif typ == "b":
        media.bandwidths.append(_parse_bandwidth(value, n))
    elif typ == "k":
        media.key = value
    elif typ == "a":
        media.attributes.append(_parse_attribute(value, n))


# -- DTLS-SRTP offer/answer (RFC 5763 §5) -------------------------------------------------------------

DTLS_SRTP_PROTOS = ("UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF")
"""RFC 5764 §8: the SDP proto tokens of DTLS-SRTP over UDP."""

_STATIC_PAYLOAD_TYPES = {
    0: "PCMU/8000",
    3: "GSM/8000",
    4: "G723/8000",
    5: "DVI4/8000",
    6: "DVI4/16000",
    7: "LPC/8000",
    8: "PCMA/8000",
    9: "G722/8000",
    10: "L16/44100/2",
    11: "L16/44100",
    12: "QCELP/8000",
    13: "CN/8000",
    15: "G728/8000",
    16: "DVI4/11025",
    17: "DVI4/22050",
    18: "G729/8000",
}
"""RFC 3551 §6 table 4: the static audio payload types."""
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


@dataclass
class DtlsSrtpMedia:
    """What RFC 5763 needs from the first audio stream of an offer or answer.

    ``rtcp_port`` equals ``port`` when rtcp-mux is in use, else a=rtcp (RFC 3605) or port + 1.
    ``capneg`` is True when UDP/TLS/RTP/SAVP(F) was reached through RFC 5939 (a=tcap/a=pcfg in
    an offer, a=acfg in an answer). ``fingerprints`` keeps only those with a supported hash.
    ``rtcp_address`` is the address of an a=rtcp line that names one ("" = the c= address);
    ``rtcp_fallback_port`` is the a=rtcp port of an SDP that also has a=rtcp-mux: where RTCP goes
    if the answer declines multiplexing (RFC 5761 §5.1.1; §5.1.3 requires that line of ICE
    offers). :meth:`rtcp_target` picks the right one.
    """

    address: str
    port: int
    rtcp_port: int
    proto: str
    setup: Setup
    fingerprints: list[Fingerprint]
    rtcp_mux: bool
    capneg: bool
    warnings: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    rtcp_address: str = ""
    rtcp_fallback_port: int | None = None

    def rtcp_target(self, rtcp_mux: bool) -> tuple[str, int]:
        """Where to send RTCP to this side: its RTP address and port when the offer/answer settled on
        rtcp-mux; otherwise the a=rtcp port and address (RFC 3605), else port + 1 on the c= address
        (RFC 5761 §5.1.1: "the port pair, or a signalled port if the a=rtcp: attribute is also
        included"); an SDP that offered rtcp-mux but was answered without it falls back to its a=rtcp."""
        if rtcp_mux:
            return self.address, self.port
        if self.rtcp_mux:  # we declined the rtcp-mux it offered
            port = self.rtcp_fallback_port if self.rtcp_fallback_port is not None else self.port + 1
        else:
            port = self.rtcp_port
        return self.rtcp_address or self.address, port


@dataclass
class _Capneg:
    config: int
    transport: int


def _first_audio(sd: SessionDescription) -> int:
    for index, m in enumerate(sd.media):
        if m.media == "audio":
            return index
    raise SdpError("no m=audio media description (RFC 5763 §5)")


def _lookup(
    sd: SessionDescription, mi: int, name: str, lines: dict[tuple[object, ...], int]
) -> list[tuple[int, str | None]]:
    """(line, value) of ``a=name`` at media level, or at session level when the media has none."""
    m = sd.media[mi]
    found = [(lines[("m", mi, "a", k)], v) for k, (n, v) in enumerate(m.attributes) if n == name]
    if found:
        return found
    return [(lines[("a", k)], v) for k, (n, v) in enumerate(sd.attributes) if n == name]


def _dtls_proto_via_capneg(
    sd: SessionDescription, mi: int, lines: dict[tuple[object, ...], int]
) -> tuple[str, _Capneg] | None:
    """RFC 5939 §3.4/§3.5: the most preferred a=pcfg whose t= names a UDP/TLS/RTP/SAVP(F) a=tcap."""
    transports: dict[int, str] = {}
    tcaps = [(lines[("a", k)], v) for k, (n, v) in enumerate(sd.attributes) if n == "tcap"]
    tcaps += [(lines[("m", mi, "a", k)], v) for k, (n, v) in enumerate(sd.media[mi].attributes) if n == "tcap"]
    for line, value in tcaps:
        parts = (value or "").split(" ")
        first = _int(parts[0])
        if len(parts) < 2 or first is None or not all(parts[1:]):
            raise SdpError(_at(line, f"a=tcap:{value}: expected '<number> <proto> ...' (RFC 5939 §3.4.2)"))
        for offset, proto in enumerate(parts[1:]):
            transports[first + offset] = proto
    configs: list[tuple[int, int, str]] = []
    for k, (name, value) in enumerate(sd.media[mi].attributes):
        if name != "pcfg":
            continue
        line = lines[("m", mi, "a", k)]
        parts = (value or "").split(" ")
        config = _int(parts[0])
        if config is None:
            raise SdpError(_at(line, f"a=pcfg:{value}: expected '<config-number> <pot-cfg-list>' (RFC 5939 §3.5.1)"))
        for part in parts[1:]:
            if part.startswith("t="):
                configs.append((config, line, part[2:]))
    for config, line, alternatives in sorted(configs):
        for alternative in alternatives.split("|"):
            number = _int(alternative)
            if number is None:
                raise SdpError(_at(line, f"a=pcfg t={alternatives}: {alternative!r} is not a number (RFC 5939 §3.5.1)"))
            if number not in transports:
                raise SdpError(
                    _at(line, f"a=pcfg:{config} t={alternatives} refers to no a=tcap {number} (RFC 5939 §3.5.1)")
                )
            if transports[number] in DTLS_SRTP_PROTOS:
                return transports[number], _Capneg(config, number)
    return None


def _read(
    sd: SessionDescription, *, answer: bool, offer: DtlsSrtpMedia | None = None
) -> tuple[DtlsSrtpMedia, _Capneg | None]:
    lines = line_numbers(sd)
    warnings: list[str] = []
    mi = _first_audio(sd)
    m = sd.media[mi]
    m_line = lines[("m", mi)]
    if m.port == 0:
        if answer:
            raise SdpError(_at(m_line, "m=audio port 0: the answerer rejected the stream (RFC 3264 §6)"))
        raise SdpError(_at(m_line, "m=audio port 0: the offered stream is disabled (RFC 3264 §5.1)"))

    capneg: _Capneg | None = None
    if m.proto in DTLS_SRTP_PROTOS:
        proto = m.proto
        uses_capneg = answer and m.has_attribute("acfg")
    elif answer:
        raise SdpError(
            _at(
                m_line,
                f"m=audio proto {m.proto} in an answer: expected UDP/TLS/RTP/SAVP or UDP/TLS/RTP/SAVPF (RFC 5763 §5)",
            )
        )
    else:
        found = _dtls_proto_via_capneg(sd, mi, lines)
        if found is None:
            raise SdpError(
                _at(
                    m_line,
                    f"m=audio proto {m.proto} is not UDP/TLS/RTP/SAVP or UDP/TLS/RTP/SAVPF and no "
                    "a=tcap/a=pcfg offers one (RFC 5763 §5, §6.11)",
                )
            )
        proto, capneg = found
        uses_capneg = True

    setup = _read_setup(sd, mi, lines, answer=answer, offer=offer, warnings=warnings)

    if m.has_attribute("connection") or sd.has_attribute("connection"):
        warnings.append("a=connection present: forbidden by RFC 5763 §5")

    fingerprints = _read_fingerprints(sd, mi, lines, warnings)
    address = _read_connection(sd, mi, lines)

    mux_lines = [line for line, _ in _lookup_media(sd, mi, "rtcp-mux", lines)]
    rtcp_mux = bool(mux_lines)
    if answer and rtcp_mux and offer is not None and not offer.rtcp_mux:
        raise SdpError(_at(mux_lines[0], "a=rtcp-mux in an answer to an offer without it (RFC 5761 §5.1.1)"))
    rtcp_attribute: int | None = None
    rtcp_address = ""
    for line, value in _lookup_media(sd, mi, "rtcp", lines)[:1]:
        rtcp_attribute, rtcp_address = read_rtcp_attribute(line, value)
    rtcp_port = m.port if rtcp_mux else (m.port + 1 if rtcp_attribute is None else rtcp_attribute)

    media = DtlsSrtpMedia(
        address=address,
        port=m.port,
        rtcp_port=rtcp_port,
        proto=proto,
        setup=setup,
        fingerprints=fingerprints,
        rtcp_mux=rtcp_mux,
        capneg=uses_capneg,
        warnings=warnings,
        formats=list(m.formats),
        rtcp_address=rtcp_address,
        rtcp_fallback_port=rtcp_attribute if rtcp_mux else None,
    )
    return media, capneg


def read_rtcp_attribute(line: int, value: str | None) -> tuple[int, str]:
    """``a=rtcp:<port> [<nettype> <addrtype> <connection-address>]`` (RFC 3605 §2.1): (port, address or "")."""
    parts = (value or "").split(" ")
    port = _int(parts[0])
    if port is None or port > 65535 or len(parts) not in (1, 4):
        raise SdpError(_at(line, f"a=rtcp:{value}: expected '<port> [<nettype> <addrtype> <address>]' (RFC 3605 §2.1)"))
    address = ""
    if len(parts) == 4:
        nettype, addrtype, address = parts[1:]
        if nettype != "IN" or addrtype not in ("IP4", "IP6") or not address:
            raise SdpError(_at(line, f"a=rtcp:{value}: expected 'IN IP4|IP6 <address>' after the port (RFC 3605 §2.1)"))
    return port, address.split("/")[0]


def _rtcp_attribute(rtcp: tuple[str, int], address: str) -> tuple[str, str]:
    """a=rtcp for ``rtcp`` (RFC 3605 §2.1); the address only when it is not the c= address."""
    rtcp_address, rtcp_port = rtcp
    if rtcp_address == address:
        return ("rtcp", str(rtcp_port))
    return ("rtcp", f"{rtcp_port} IN {_addrtype(rtcp_address)} {rtcp_address}")


def _lookup_media(
    sd: SessionDescription, mi: int, name: str, lines: dict[tuple[object, ...], int]
) -> list[tuple[int, str | None]]:
    return [(lines[("m", mi, "a", k)], v) for k, (n, v) in enumerate(sd.media[mi].attributes) if n == name]


def _read_setup(
    sd: SessionDescription,
    mi: int,
    lines: dict[tuple[object, ...], int],
    *,
    answer: bool,
    offer: DtlsSrtpMedia | None,
    warnings: list[str],
) -> Setup:
    found = _lookup(sd, mi, "setup", lines)
    if not found:
        raise SdpError("no a=setup at media or session level (RFC 5763 §5, RFC 4145 §4)")
    line, value = found[0]
    try:
        setup = Setup(value)
    except ValueError:
        shown = "a=setup" if value is None else f"a=setup:{value}"
        raise SdpError(_at(line, f"{shown} is not one of active, passive, actpass, holdconn (RFC 4145 §4)")) from None
    if not answer:
        if setup == Setup.HOLDCONN:
            raise SdpError(_at(line, "a=setup:holdconn is not allowed in an offer (RFC 5763 §5)"))
        if setup != Setup.ACTPASS:
            warnings.append(f"a=setup:{setup.value} in an offer: RFC 5763 §5 requires actpass (relaxed by RFC 8842)")
        return setup
    if setup in (Setup.ACTPASS, Setup.HOLDCONN):
        raise SdpError(_at(line, f"a=setup:{setup.value} is not allowed in an answer (RFC 5763 §5)"))
    if offer is not None and offer.setup in (Setup.ACTIVE, Setup.PASSIVE) and setup == offer.setup:
        expected = Setup.PASSIVE if setup == Setup.ACTIVE else Setup.ACTIVE
        raise SdpError(
            _at(
                line,
                f"a=setup:{setup.value} answers an offer of a=setup:{offer.setup.value}: "
                f"expected {expected.value} (RFC 4145 §4.1)",
            )
        )
    return setup


def _read_fingerprints(
    sd: SessionDescription, mi: int, lines: dict[tuple[object, ...], int], warnings: list[str]
) -> list[Fingerprint]:
    found = _lookup(sd, mi, "fingerprint", lines)
    if not found:
        raise SdpError("no a=fingerprint at media or session level (RFC 5763 §5)")
    usable: list[Fingerprint] = []
    for line, value in found:
        if value is None:
            raise SdpError(_at(line, "a=fingerprint has no value (RFC 8122 §5)"))
        try:
            fp = Fingerprint.parse(value)
        except SdpError as exc:
            raise SdpError(_at(line, f"a=fingerprint:{value}: {exc}")) from None
        if fp.hash_function in _FORBIDDEN_HASHES:
            raise SdpError(_at(line, f"a=fingerprint hash {fp.hash_function} must not be used (RFC 8122 §5)"))
        if not fp.supported:
            warnings.append(f"a=fingerprint hash {fp.hash_function} is not supported: ignored (RFC 8122 §5)")
            continue
        if fp.hash_function == "sha-1":
            warnings.append("a=fingerprint uses sha-1: accepted, but weak; many stacks reject it (RFC 8122 §5)")
        usable.append(fp)
    if not usable:
        raise SdpError(f"no a=fingerprint with a supported hash function ({', '.join(SUPPORTED_HASHES)}) (RFC 8122 §5)")
    return usable


def _read_connection(sd: SessionDescription, mi: int, lines: dict[tuple[object, ...], int]) -> str:
    m = sd.media[mi]
    if m.connection is not None:
        value, line = m.connection, lines[("m", mi, "c")]
    elif sd.connection is not None:
        value, line = sd.connection, lines[("c",)]
    else:
        raise SdpError(_at(lines[("m", mi)], "no c= at media or session level (RFC 4566 §5.7)"))
    parts = value.split(" ")
    if len(parts) != 3:
        raise SdpError(_at(line, f"c={value}: expected <nettype> <addrtype> <connection-address> (RFC 4566 §5.7)"))
    nettype, addrtype, address = parts
    if nettype != "IN":
        raise SdpError(_at(line, f"c={value}: network type {nettype} is not IN (RFC 4566 §5.7)"))
    if addrtype not in ("IP4", "IP6"):
        raise SdpError(_at(line, f"c={value}: address type {addrtype} is not IP4 or IP6 (RFC 4566 §5.7)"))
    return address.split("/")[0]


def read_offer(sd: SessionDescription) -> DtlsSrtpMedia:
    """Apply RFC 5763 §5 to an offer's first audio stream; raise :class:`SdpError` if unusable."""
    media, _ = _read(sd, answer=False)
    return media


def read_answer(sd: SessionDescription, offer: DtlsSrtpMedia | None = None) -> DtlsSrtpMedia:
    """Apply RFC 5763 §5 to an answer (setup active or passive only); with ``offer``, also the
    RFC 4145 §4.1 role pairing and RFC 5761 §5.1.1 (no rtcp-mux unless offered)."""
    media, _ = _read(sd, answer=True, offer=offer)
    return media


@dataclass(frozen=True)
class Facts:
    """What an SDP says about its first audio stream, read tolerantly: for judging an offer or answer
    seen on the wire, where a wrong value is evidence to report, not an error to raise.

    Every DTLS-SRTP attribute is looked up as RFC 4566 §5.13 has it: at media level, else at session
    level (``a=setup``, ``a=fingerprint``, ``a=connection``, ``a=rtcp-mux``); ``where`` says which.
    ``error`` is set when the SDP does not parse (then the rest is empty).
    """

    error: str = ""
    address: str = ""
    port: int = 0
    proto: str = ""
    capneg: bool = False  # UDP/TLS/RTP/SAVP(F) offered through RFC 5939 a=tcap/a=pcfg (or a=acfg)
    setup: str = ""  # "" when absent
    setup_where: str = ""  # "media" or "session"
    fingerprints: tuple[str, ...] = ()  # each as written: "sha-256 AB:CD..."
    fingerprint_where: str = ""
    connection: tuple[str, ...] = ()  # a=connection values (forbidden by RFC 5763 §5), at either level
    rtcp_mux: bool = False
    rtcp: str = ""  # a=rtcp (RFC 3605)

    @property
    def media(self) -> str:
        return f"{self.address}:{self.port}" if self.address else ""

    def parsed_fingerprints(self) -> list[Fingerprint]:
        """The fingerprints that parse (RFC 8122 §5), any hash function."""
        out = []
        for text in self.fingerprints:
            try:
                out.append(Fingerprint.parse(text))
            except SdpError:
                continue
        return out


def facts(body: bytes | str) -> Facts:
    """Read an SDP's first audio stream tolerantly (see :class:`Facts`)."""
    try:
        sd = parse(body)
        mi = _first_audio(sd)
    except SdpError as error:
        return Facts(error=str(error))
    m = sd.media[mi]

    def lookup(name: str) -> tuple[list[str | None], str]:
        found = m.attributes_named(name)
        if found:
            return found, "media"
        found = sd.attributes_named(name)
        return found, "session" if found else ""

    setups, setup_where = lookup("setup")
    fingerprints, fingerprint_where = lookup("fingerprint")
    mux, _ = lookup("rtcp-mux")
    rtcp, _ = lookup("rtcp")
    connection = [f"{v or ''} (media level)" for v in m.attributes_named("connection")]
    connection += [f"{v or ''} (session level)" for v in sd.attributes_named("connection")]
    address_line = m.connection or sd.connection or ""
    parts = address_line.split(" ")
    capneg = False
    if m.proto not in DTLS_SRTP_PROTOS:
        try:
            capneg = _dtls_proto_via_capneg(sd, mi, line_numbers(sd)) is not None
        except SdpError:
            capneg = False
    elif m.has_attribute("acfg"):
        capneg = True
    return Facts(
        address=parts[2].split("/")[0] if len(parts) == 3 else "",
        port=m.port,
        proto=m.proto,
        capneg=capneg,
        setup=(setups[0] or "") if setups else "",
        setup_where=setup_where,
        fingerprints=tuple(v or "" for v in fingerprints),
        fingerprint_where=fingerprint_where,
        connection=tuple(connection),
        rtcp_mux=bool(mux),
        rtcp=(rtcp[0] or "") if rtcp else "",
    )


# -- building offers and answers ----------------------------------------------------------------------


def _addrtype(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # a host name, as in the RFC 5763 examples


def _rtpmaps(payload_types: Iterable[int]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for pt in payload_types:
        encoding = _STATIC_PAYLOAD_TYPES.get(pt)
        if encoding is None:
            raise SdpError(f"payload type {pt} has no static audio mapping (RFC 3551 §6)")
        out.append(("rtpmap", f"{pt} {encoding}"))
    return out


def _media_attributes(
    setup: Setup,
    fingerprints: Sequence[Fingerprint],
    rtcp: list[tuple[str, str | None]],
    payload_types: Iterable[int],
    ptime: int | None,
    direction: str,
) -> list[tuple[str, str | None]]:
    """The a= lines of our audio m= line, offer or answer alike: a=setup and a=fingerprint (RFC 5763 §5),
    then the `rtcp` lines (a=rtcp-mux, a=rtcp, a=acfg), the rtpmaps, a=ptime and the direction."""
    attributes: list[tuple[str, str | None]] = [("setup", setup.value)]
    attributes += [("fingerprint", str(fp)) for fp in fingerprints]
    attributes += rtcp
    attributes += _rtpmaps(payload_types)
    if ptime is not None:
        attributes.append(("ptime", str(ptime)))
    attributes.append((direction, None))
    return attributes


def _session(address: str, session_id: int, session_version: int | None, username: str) -> SessionDescription:
    addrtype = _addrtype(address)
    return SessionDescription(
        session_id=session_id,
        session_version=session_id if session_version is None else session_version,
        origin_address=address,
        origin_username=username,
        origin_addrtype=addrtype,
        session_name="-",
        connection=f"IN {addrtype} {address}",
    )


def build_offer(
    *,
    address: str,
    port: int,
    fingerprints: Sequence[Fingerprint],
    session_id: int,
    username: str = "-",
    setup: Setup = Setup.ACTPASS,
    rtcp_mux: bool = True,
    rtcp: tuple[str, int] | None = None,
    payload_types: Sequence[int] = (0,),
    ptime: int | None = 20,
    session_version: int | None = None,
) -> SessionDescription:
    """A DTLS-SRTP audio offer (RFC 5763 §5): UDP/TLS/RTP/SAVP in m=, a=setup, one a=fingerprint
    per certificate fingerprint, a=rtcp-mux (RFC 5761), no a=connection.

    ``rtcp``: the address:port RTCP is received on without multiplexing, as a=rtcp (RFC 3605); with
    ``rtcp_mux`` it is the fallback for an answer that declines rtcp-mux (RFC 5761 §5.1.1)."""
    if not fingerprints:
        raise SdpError("an offer needs at least one fingerprint (RFC 5763 §5)")
    if not payload_types:
        raise SdpError("an offer needs at least one payload type (RFC 4566 §5.14)")
    sd = _session(address, session_id, session_version, username)
    lines: list[tuple[str, str | None]] = [("rtcp-mux", None)] if rtcp_mux else []
    if rtcp is not None:
        lines.append(_rtcp_attribute(rtcp, address))
    attributes = _media_attributes(Setup(setup), fingerprints, lines, payload_types, ptime, "sendrecv")
    sd.media.append(
        MediaDescription(
            media="audio",
            port=port,
            proto=DTLS_SRTP_PROTOS[0],
            formats=[str(pt) for pt in payload_types],
            attributes=attributes,
        )
    )
    return sd


def build_answer(
    offer: SessionDescription,
    *,
    address: str,
    port: int,
    fingerprints: Sequence[Fingerprint],
    session_id: int,
    username: str = "-",
    setup: Setup = Setup.ACTIVE,
    rtcp_mux: bool = True,
    rtcp: tuple[str, int] | None = None,
    payload_types: Sequence[int] = (0,),
    ptime: int | None = 20,
    session_version: int | None = None,
) -> SessionDescription:
    """The answer to ``offer`` (RFC 5763 §5, RFC 3264 §6).

    ``rtcp``: where we receive RTCP when the answer does not multiplex (a=rtcp, RFC 3605); left out
    when rtcp-mux is offered and ``rtcp_mux`` accepts it.

    setup must be active (RECOMMENDED: the handshake runs while the answer travels) or passive;
    rtcp-mux only if offered (RFC 5761 §5.1.1); payload types = the offer's, in its order, that
    are in ``payload_types``; t= copied from the offer (RFC 3264 §6); a=acfg when the offer used
    capability negotiation (RFC 5939 §3.6.2). The offer is validated with :func:`read_offer`.
    """
    setup = Setup(setup)
    if setup not in (Setup.ACTIVE, Setup.PASSIVE):
        raise SdpError(f"a=setup:{setup.value} is not allowed in an answer (RFC 5763 §5)")
    if not fingerprints:
        raise SdpError("an answer needs at least one fingerprint (RFC 5763 §5)")
    offered, capneg = _read(offer, answer=False)
    if offered.setup == setup:
        expected = Setup.PASSIVE if setup == Setup.ACTIVE else Setup.ACTIVE
        raise SdpError(
            f"a=setup:{setup.value} answers an offer of a=setup:{offered.setup.value}: "
            f"expected {expected.value} (RFC 4145 §4.1)"
        )
    wanted = {str(pt) for pt in payload_types}
    formats = [f for f in offered.formats if f in wanted]
    if not formats:
        raise SdpError(
            f"no common payload type: offer has {' '.join(offered.formats)}, we support "
            f"{' '.join(str(pt) for pt in payload_types)} (RFC 3264 §6.1)"
        )
    mi = _first_audio(offer)
    direction = "sendrecv"
    for name in _DIRECTIONS:
        if offer.media[mi].has_attribute(name) or (
            not any(offer.media[mi].has_attribute(d) for d in _DIRECTIONS) and offer.has_attribute(name)
        ):
            direction = _ANSWER_DIRECTION[name]
            break

    sd = _session(address, session_id, session_version, username)
    sd.timing = [Timing(t.start, t.stop, list(t.repeats)) for t in offer.timing]
    lines: list[tuple[str, str | None]] = []
    if rtcp_mux and offered.rtcp_mux:
        lines.append(("rtcp-mux", None))
    elif rtcp is not None:
        lines.append(_rtcp_attribute(rtcp, address))
    if capneg is not None:
        lines.append(("acfg", f"{capneg.config} t={capneg.transport}"))
    attributes = _media_attributes(setup, fingerprints, lines, (int(f) for f in formats), ptime, direction)
    for index, offered_media in enumerate(offer.media):
        if index == mi:
            sd.media.append(
                MediaDescription(media="audio", port=port, proto=offered.proto, formats=formats, attributes=attributes)
            )
        else:  # RFC 3264 §6: one m= per offered m=; the ones we do not take are rejected with port 0
            sd.media.append(
                MediaDescription(
                    media=offered_media.media,
                    port=0,
                    proto=offered_media.proto,
                    formats=list(offered_media.formats),
                )
            )
    return sd
