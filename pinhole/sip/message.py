"""SIP messages (RFC 3261 §7, §18.3, §19, §20, §25): a pure codec for one UDP datagram.

Bytes in, :class:`Request` / :class:`Response` out, and back with ``encode()``. Header values are
kept as the text that arrived (a proxy forwards what it does not understand unchanged, RFC 4475
§3.1.1.1); the structured views (:class:`Via`, :class:`NameAddr`, :class:`CSeq`, :class:`SipUri`)
are parsed on demand. :func:`parse_message` checks what every element relies on (framing,
start line, the mandatory headers of §8.1.1) and raises :class:`SipParseError` naming what is
wrong and where, so a receiver can answer 400 with that reason (§21.4.1).

The RFC 4475 torture messages in ``tests/data/sip`` show which liberties are taken: LWS and
folding anywhere the grammar has LWS, compact forms, leading zeros; and which are refused:
SP runs in the request line, ``<>`` around the Request-URI, whitespace inside ``<addr-spec>``,
unquoted non-token display names, scalars out of range.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "SIP_VERSION",
    "MAGIC_COOKIE",
    "SipParseError",
    "Headers",
    "SipUri",
    "AbsoluteUri",
    "Uri",
    "NameAddr",
    "Via",
    "CSeq",
    "Request",
    "Response",
    "Message",
    "parse_message",
    "parse_uri",
    "check_sip_uri",
    "check_display_name",
    "parse_name_addr",
    "parse_via",
    "parse_cseq",
    "split_header_values",
    "make_response",
    "make_ack",
    "make_cancel",
    "reason_phrase",
    "new_branch",
    "new_tag",
    "new_call_id",
]

T = TypeVar("T")

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"
"""RFC 3261 §8.1.1.7: a branch starting with this was made by an RFC 3261 element (unique per transaction)."""

MAX_CSEQ = 2**32 - 1
"""RFC 3261 §8.1.1.5 / RFC 4475 §3.1.2.4: the sequence number must fit an unsigned 32-bit integer."""

TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
"""RFC 3261 §25.1 token."""

COMPACT_FORMS = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
    "b": "Referred-By",
    "x": "Session-Expires",
    "y": "Identity",
    "n": "Identity-Info",
}
"""RFC 3261 §7.3.3 compact forms (and those registered later: RFC 3265, 3515, 3892, 4028, 4474)."""

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
        "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
        "Identity-Info", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires",
        "Organization", "P-Asserted-Identity", "Priority", "Proxy-Authenticate",
        "Proxy-Authorization", "Proxy-Require", "RAck", "Record-Route", "Refer-To", "Referred-By",
        "Reply-To", "Require", "Retry-After", "Route", "RSeq", "Server", "Session-Expires",
        "Subject", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning",
        "WWW-Authenticate",
    )
}  # fmt: skip

COMMA_SEPARATED = frozenset({"Via", "Route", "Record-Route", "Contact"})
"""Headers whose comma-separated values are split into one entry each (RFC 3261 §7.3.1)."""

SINGLE_VALUED = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length")
"""Headers that must not repeat (RFC 4475 §3.3.8, §3.3.9)."""

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip
"""RFC 3261 §21: the recommended Reason-Phrase for each status code."""


class SipParseError(ValueError):
    """A SIP message, header or URI is malformed; the message says what and where."""


def _number(text: str, what: str, maximum: int) -> int:
    """ASCII digits, at most `maximum`: a number a header may carry. Checked before int(), which refuses
    thousands of digits with a ValueError of its own (and would spend time on them)."""
    digits = text.lstrip("0") or "0"
    if not text.isdigit() or not text.isascii() or len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise SipParseError(f"{what}: {text[:20]!r}{'...' if len(text) > 20 else ''} is not a number up to {maximum}")
    return int(digits)


def reason_phrase(status_code: int) -> str:
    """RFC 3261 §21 phrase for a code, falling back on its class (§8.1.3.2: unknown codes act as x00)."""
    return REASON_PHRASES.get(status_code) or REASON_PHRASES.get(status_code // 100 * 100, "")


def _is_token(text: str) -> bool:
    return bool(text) and TOKEN_CHARS.issuperset(text)


# -- lexical helpers ---------------------------------------------------------------------------------


def _split_outside_quotes(text: str, separator: str, *, angle: bool = False) -> list[str]:
    """Split on ``separator`` outside quoted strings (with quoted-pairs) and, if asked, outside <>."""
    if '"' not in text and not (angle and "<" in text):  # nothing to step over: the common case, in C
        return text.split(separator)
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quotes:
            current.append(ch)
            if ch == "\\" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
            current.append(ch)
        elif angle and ch == "<":
            depth += 1
            current.append(ch)
        elif angle and ch == ">" and depth:
            depth -= 1
            current.append(ch)
        elif ch == separator and not depth:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1), respecting quoted strings and <>."""
    return [part.strip() for part in _split_outside_quotes(value, ",", angle=True)]


def _param_key(params: dict[str, str | None], name: str) -> str | None:
    lowered = name.lower()
    for key in params:
        if key.lower() == lowered:
            return key
    return None


def _param_get(params: dict[str, str | None], name: str) -> str | None:
    key = _param_key(params, name)
    return params[key] if key is not None else None


def _param_set(params: dict[str, str | None], name: str, value: str | None) -> None:
    """Set a parameter; names compare case-insensitively (RFC 3261 §19.1.4, §20.42), order is kept."""
    key = _param_key(params, name)
    params[key if key is not None else name] = value


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params.items())


def _parse_generic_params(text: str, what: str) -> dict[str, str | None]:
    """``*( SEMI generic-param )`` after a URI or sent-by; LWS around ``;`` and ``=`` allowed (§25.1)."""
    params: dict[str, str | None] = {}
    if not text.strip():
        return params
    items = _split_outside_quotes(text, ";")
    if items[0].strip():
        raise SipParseError(f"{what}: unexpected text {items[0].strip()!r} before parameters")
    for item in items[1:]:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:
            raise SipParseError(f"{what}: empty parameter")
        if not _is_token(name):
            raise SipParseError(f"{what}: invalid parameter name {name!r}")
        if eq:
            value = value.strip()
            if not value:
                raise SipParseError(f"{what}: parameter {name} has '=' but no value")
            if value.startswith('"'):
                _quoted_string(value, 0, f"{what}: parameter {name}")
            elif any(ch.isspace() for ch in value):
                raise SipParseError(f"{what}: whitespace inside the value of parameter {name}")
            params[name] = value
        else:
            params[name] = None
    return params


def _quoted_string(text: str, start: int, what: str) -> tuple[str, int]:
    """Decode the quoted-string at ``text[start]`` (§25.1); returns (content, index after it)."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            ch = text[i + 1]
            i += 1
        elif ch == '"':
            return "".join(out), i + 1
        if ch in "\r\n":  # neither qdtext nor quoted-pair: a proxy forwarding it would write a line end
            raise SipParseError(f"{what}: CR or LF inside a quoted string")
        out.append(ch)
        i += 1
    raise SipParseError(f"{what}: unterminated quoted string")


_QUOTED_CONTENT = re.compile(r"(?:[\t !#-\[\]-~\x80-\U0010ffff]|\\[\x00-\t\x0b\x0c\x0e-\x7f])*")
"""§25.1: what may stand between the DQUOTEs of a quoted-string, qdtext and quoted-pairs (but no folding CRLF)."""

_PAIRED_ONLY = re.compile(r'[\x00-\x08\x0b\x0c\x0e-\x1f"\\\x7f]')
"""Characters a quoted-string carries only as a quoted-pair (§25.1); CR and LF it cannot carry at all."""


def _quote(text: str) -> str:
    """The quoted-string (§25.1) that :func:`_quoted_string` reads back as ``text``."""
    if "\r" in text or "\n" in text:
        raise SipParseError(f"{text!r} cannot be quoted: no quoted-pair carries CR or LF (§25.1)")
    return '"' + _PAIRED_ONLY.sub(lambda match: "\\" + match.group(), text) + '"'


def check_display_name(text: str, what: str) -> None:
    """Refuse a display name that cannot be written between DQUOTEs as it is (§25.1 quoted-string).

    It must be qdtext and quoted-pairs only: a bare DQUOTE would close the string early, a final
    backslash escape the closing DQUOTE, and a CR or LF end the header line, so that what follows
    is read as a header of its own.
    """
    if "\r" in text or "\n" in text:
        raise SipParseError(f"{what}: {text!r} contains CR or LF, which would end the header line")
    match = _QUOTED_CONTENT.match(text)
    end = match.end() if match else 0
    if end == len(text):
        return
    ch = text[end]
    if ch == '"':
        raise SipParseError(f'{what}: {text!r} has a DQUOTE at index {end}; write it as \\"')
    if ch == "\\" and end + 1 == len(text):
        raise SipParseError(f"{what}: {text!r} ends in a backslash, which would escape the closing DQUOTE")
    raise SipParseError(f"{what}: {text!r} has {text[end : end + 2]!r} at index {end}, not allowed in a quoted string")


_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::([0-9]+))?")


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """``host [":" port]`` (§25.1); IPv6 references lose their brackets."""
    match = _HOSTPORT.fullmatch(text)
    if not match:
        raise SipParseError(f"{what}: invalid host {text!r}")
    host, port_text = match.group(1), match.group(2)
    port = None
    if port_text is not None:
        if len(port_text.lstrip("0")) > 5 or not 0 < int(port_text) <= 65535:  # int() of 5 digits at most
            raise SipParseError(f"{what}: port {port_text[:20]} out of range 1-65535")
        port = int(port_text)
    if host.startswith("["):
        host = host[1:-1]
    return host, port


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- URIs (RFC 3261 §19.1) ---------------------------------------------------------------------------

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")


@dataclass
class SipUri:
    """A sip: or sips: URI (§19.1.1). ``user`` stays %-escaped as received (§19.1.2)."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    password: str | None = None

    def param(self, name: str) -> str | None:
        return _param_get(self.params, name)

    def has_param(self, name: str) -> bool:
        return _param_key(self.params, name) is not None

    @property
    def lr(self) -> bool:
        """§19.1.1 loose-routing marker: a Route with it is routed to, not copied into the Request-URI."""
        return self.has_param("lr")

    @property
    def hostport(self) -> tuple[str, int]:
        """Where to send (§19.1.4 default port 5060; no DNS, no maddr: pinhole uses addresses)."""
        return self.host, self.port if self.port is not None else 5060

    def __str__(self) -> str:
        text = f"{self.scheme}:"
        if self.user is not None:
            text += self.user
            if self.password is not None:
                text += f":{self.password}"
            text += "@"
        text += _format_host(self.host)
        if self.port is not None:
            text += f":{self.port}"
        text += _format_params(self.params)
        if self.headers:
            text += "?" + "&".join(f"{name}={value}" for name, value in self.headers.items())
        return text


@dataclass
class AbsoluteUri:
    """Any other scheme (tel:, isbn:, http: ...): kept opaque (RFC 4475 §3.3.2, §3.3.4)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a URI; sip/sips structurally (§19.1.1), anything else kept opaque."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise SipParseError(f"URI {text!r}: no valid scheme")
    if scheme.lower() not in ("sip", "sips"):
        if not rest or any(ch.isspace() for ch in rest):
            raise SipParseError(f"URI {text!r}: empty or contains whitespace")
        return AbsoluteUri(scheme, rest)
    if any(ch.isspace() for ch in rest):
        raise SipParseError(f"URI {text!r}: contains whitespace")
    # '@' is not allowed unescaped in hostport, parameters or headers, so the last one ends userinfo.
    userinfo, at, hostpart = rest.rpartition("@")
    user: str | None = None
    password: str | None = None
    if at:
        if not userinfo:
            raise SipParseError(f"URI {text!r}: empty user part")
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    hostpart, question, headers_text = hostpart.partition("?")
    hostport, _, params_text = hostpart.partition(";")
    host, port = _parse_hostport(hostport, f"URI {text!r}")
    params: dict[str, str | None] = {}
    if params_text or hostpart.endswith(";"):
        for item in params_text.split(";"):
            name, eq, value = item.partition("=")
            if not name:
                raise SipParseError(f"URI {text!r}: empty parameter")
            params[name] = value if eq else None
    headers: dict[str, str] = {}
    if question:
        for item in headers_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise SipParseError(f"URI {text!r}: header {item!r} is not name=value")
            headers[name] = value
    return SipUri(scheme.lower(), user, host, port, params, headers, password)


_SIP_URI_TEXT = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/:@\[\]]|%[0-9A-Fa-f]{2})*")
"""§25.1: the characters of a SIP-URI: unreserved, reserved, escaped, and the brackets of an IPv6 reference."""


def check_sip_uri(text: str, what: str) -> SipUri:
    """A sip:/sips: URI this end may write as it is in a Request-URI, To or From (§19.1.1, §25.1).

    :func:`parse_uri` reads liberally what arrives; what is sent keeps to the URI's characters too,
    or it could close the ``<>`` around it, open a quoted string or end the line. Those places
    allow no URI headers (§19.1.1, table 1).
    """
    match = _SIP_URI_TEXT.match(text)
    end = match.end() if match else 0
    if end < len(text):
        raise SipParseError(f"{what}: {text!r} has {text[end]!r} at index {end}, which a SIP URI cannot carry")
    try:
        uri = parse_uri(text)
    except SipParseError as error:
        raise SipParseError(f"{what}: {error}") from None
    if not isinstance(uri, SipUri):
        raise SipParseError(f"{what}: expected a sip: or sips: URI, got {text!r}")
    if uri.headers:
        raise SipParseError(f"{what}: {text!r} has URI headers, not allowed here (§19.1.1)")
    return uri


# -- name-addr / addr-spec (RFC 3261 §20.10, §20.20, §20.39) ------------------------------------------


@dataclass
class NameAddr:
    """``[display-name] <URI> *(;param)`` as in From, To, Contact, Route, Record-Route."""

    display_name: str | None
    uri: Uri
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        """§19.3: the tag that, with Call-ID and the other tag, identifies a dialog."""
        return _param_get(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _param_get(self.params, name)

    def with_tag(self, tag: str) -> NameAddr:
        params = dict(self.params)
        _param_set(params, "tag", tag)
        return NameAddr(self.display_name, self.uri, params)

    def __str__(self) -> str:
        display = f"{_quote(self.display_name)} " if self.display_name is not None else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _check_display_name(text: str, what: str) -> None:
    """§25.1: a display name is a quoted string or ``*(token LWS)``; RFC 4475 §3.1.1.6 allows no LWS before '<'."""
    for word in text.split():
        if not _is_token(word):
            raise SipParseError(
                f"{what}: display name {text!r} must be a quoted string (contains non-token characters)"
            )


def parse_name_addr(text: str, what: str = "name-addr") -> NameAddr:
    """Parse ``name-addr / addr-spec`` followed by header parameters.

    In addr-spec form (no ``<>``) the first ``;`` ends the URI: what follows are header
    parameters, not URI parameters (§20.10, RFC 4475 §3.3.12). Such a URI must not carry
    ``,``, ``?`` or ``;`` of its own.
    """
    s = text.strip()
    if not s:
        raise SipParseError(f"{what}: empty value")
    display: str | None = None
    if s.startswith('"'):
        display, end = _quoted_string(s, 0, what)
        rest = s[end:].lstrip()
        if not rest.startswith("<"):
            raise SipParseError(f"{what}: quoted display name not followed by <URI>")
        s = rest
    lt = s.find("<")
    if lt >= 0:
        if display is None and s[:lt].strip():
            display = " ".join(s[:lt].split())
            _check_display_name(display, what)
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(f"{what}: '<' without matching '>'")
        uri_text = s[lt + 1 : gt]
        if uri_text != uri_text.strip() or not uri_text:
            raise SipParseError(f"{what}: whitespace inside <{uri_text}>")
        params_text = s[gt + 1 :]
    else:
        uri_text, semi, params_text = s.partition(";")
        params_text = semi + params_text
        uri_text = uri_text.strip()
        if "?" in uri_text or "," in uri_text:
            raise SipParseError(f"{what}: addr-spec {uri_text!r} with '?' or ',' must be enclosed in <>")
        if any(ch.isspace() for ch in uri_text):
            raise SipParseError(f"{what}: display name without <URI> in {s!r}")
    try:
        uri = parse_uri(uri_text)
    except SipParseError as error:
        raise SipParseError(f"{what}: {error}") from None
    params = _parse_generic_params(params_text, what)
    return NameAddr(display, uri, params)


# -- Via (RFC 3261 §20.42, RFC 3581) -----------------------------------------------------------------

_SENT_PROTOCOL = re.compile(r"\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)(.*)", re.DOTALL)


@dataclass
class Via:
    """One Via value: ``SIP/2.0/transport sent-by *(;via-params)``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        """§8.1.1.7 transaction id (RFC 3261 branches start with z9hG4bK)."""
        return _param_get(self.params, "branch")

    @property
    def received(self) -> str | None:
        """§18.2.1: source IP the previous hop saw, when it differed from sent-by."""
        return _param_get(self.params, "received")

    @property
    def rport(self) -> int | bool | None:
        """RFC 3581 §3: None when absent, True when present and empty (asked), else the source port."""
        key = _param_key(self.params, "rport")
        if key is None:
            return None
        value = self.params[key]
        return _number(value, "Via: rport", 65535) if value else True

    @property
    def sent_by(self) -> tuple[str, int]:
        """§18.2.2 default port 5060 when sent-by has none."""
        return self.host, self.port if self.port is not None else 5060

    def param(self, name: str) -> str | None:
        return _param_get(self.params, name)

    def set_param(self, name: str, value: str | None) -> None:
        _param_set(self.params, name, value)

    def copy(self) -> Via:
        return Via(self.transport, self.host, self.port, dict(self.params))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{SIP_VERSION}/{self.transport} {_format_host(self.host)}{port}{_format_params(self.params)}"


def parse_via(text: str) -> Via:
    """Parse one Via value; LWS is allowed around '/' ':' ';' '=' (RFC 4475 §3.1.1.1)."""
    match = _SENT_PROTOCOL.match(text)
    if not match:
        raise SipParseError(f"Via: expected 'SIP/2.0/transport sent-by', got {text.strip()!r}")
    name, version, transport, rest = match.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise SipParseError(f"Via: unsupported sent-protocol {name}/{version}")
    if not _is_token(transport):
        raise SipParseError(f"Via: transport {transport!r} is not a token")
    if rest and not rest[0].isspace():
        raise SipParseError(f"Via: no LWS between transport and sent-by in {text.strip()!r}")
    sent_by, semi, params_text = rest.partition(";")
    # LWS around ':' goes (RFC 4475 §3.1.1.1); re.sub(r"\s*:\s*") would rescan a run of LWS from each of its SPs
    sent_by = ":".join(part.strip() for part in sent_by.split(":"))
    if not sent_by:
        raise SipParseError("Via: missing sent-by")
    host, port = _parse_hostport(sent_by, "Via")
    params = _parse_generic_params(semi + params_text, "Via")
    for key, value in params.items():
        if key.lower() == "rport" and value is not None and not value.isdigit():
            raise SipParseError(f"Via: rport {value!r} is not a port number")
        if key.lower() == "branch" and value is None:
            raise SipParseError("Via: branch parameter without a value")
        if key.lower() == "rport" and value is not None:
            _number(value, "Via: rport", 65535)  # RFC 3581 §4: a port, read when the response is routed
    return Via(transport.upper(), host, port, params)


# -- CSeq (RFC 3261 §20.16) --------------------------------------------------------------------------


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    parts = text.split()
    if len(parts) != 2:
        raise SipParseError(f"CSeq: expected 'number method', got {text.strip()!r}")
    number_text, method = parts
    if not number_text.isdigit() or not number_text.isascii():
        raise SipParseError(f"CSeq: sequence number {number_text!r} is not a number")
    if len(number_text.lstrip("0")) > len(str(MAX_CSEQ)) or int(number_text) > MAX_CSEQ:
        raise SipParseError(f"CSeq: sequence number {number_text[:40]} exceeds 2**32-1")
    number = int(number_text)
    if not _is_token(method):
        raise SipParseError(f"CSeq: method {method!r} is not a token")
    return CSeq(number, method)


def _parse_max_forwards(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or not value.isascii():
        raise SipParseError(f"Max-Forwards is not a number: {value!r}")
    if len(value.lstrip("0")) > 3 or int(value) > 255:
        raise SipParseError(f"Max-Forwards {value[:20]} exceeds 255")
    return int(value)


# -- Headers -----------------------------------------------------------------------------------------


class Headers:
    """Ordered multimap of header fields with case-insensitive names (§7.3.1).

    Names are stored in their canonical spelling (compact forms expanded: ``v`` → ``Via``);
    an unknown header keeps the spelling it arrived with. Each comma-separated value of Via,
    Route, Record-Route and Contact is its own entry, which is equivalent on the wire.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def canonical(name: str) -> str:
        lowered = name.strip().lower()
        if lowered in COMPACT_FORMS:
            return COMPACT_FORMS[lowered]
        return _CANONICAL.get(lowered, name.strip())

    @classmethod
    def _folded(cls, name: str) -> str:
        """The name to compare stored names with, lowered once per lookup rather than once per header."""
        return cls.canonical(name).lower()

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name``, or ``default``."""
        folded = self._folded(name)
        for key, value in self._items:
            if key.lower() == folded:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        folded = self._folded(name)
        return [value for key, value in self._items if key.lower() == folded]

    def count(self, name: str) -> int:
        return len(self.get_all(name))

    def add(self, name: str, value: str) -> None:
        """Append a value at the end."""
        self._items.append((self.canonical(name), value))

    def insert_first(self, name: str, value: str) -> None:
        """Insert before the first value of ``name``: a proxy's Via / Record-Route (§16.6).

        When there is none yet, the value goes right after the Via headers (or at the top).
        """
        name = self.canonical(name)
        index = self._index(name, 0)
        if index is None:
            vias = [i for i, (key, _) in enumerate(self._items) if key == "Via"]
            index = vias[-1] + 1 if vias and name != "Via" else 0
        self._items.insert(index, (name, value))

    def remove_first(self, name: str) -> str:
        """Remove and return the first value of ``name`` (KeyError when absent)."""
        name = self.canonical(name)
        index = self._index(name, 0)
        if index is None:
            raise KeyError(name)
        return self._items.pop(index)[1]

    def remove_all(self, name: str) -> int:
        folded = self._folded(name)
        before = len(self._items)
        self._items = [(key, value) for key, value in self._items if key.lower() != folded]
        return before - len(self._items)

    def replace(self, name: str, value: str, index: int = 0) -> None:
        """Replace the ``index``-th value of ``name`` in place (IndexError when there is none)."""
        name = self.canonical(name)
        position = self._index(name, index)
        if position is None:
            raise IndexError(f"no value {index} of header {name}")
        self._items[position] = (self._items[position][0], value)

    def set(self, name: str, value: str) -> None:
        """Make ``value`` the only value of ``name``, where the first one was (else at the end)."""
        name = self.canonical(name)
        position = self._index(name, 0)
        self.remove_all(name)
        if position is None:
            self._items.append((name, value))
        else:
            self._items.insert(position, (name, value))

    def _index(self, name: str, occurrence: int) -> int | None:
        folded = self._folded(name)
        seen = 0
        for position, (key, _) in enumerate(self._items):
            if key.lower() == folded:
                if seen == occurrence:
                    return position
                seen += 1
        return None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        copy = Headers()
        copy._items = list(self._items)
        return copy

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# -- messages ----------------------------------------------------------------------------------------


class _MessageViews:
    """Parsed views over the headers both requests and responses carry."""

    headers: Headers
    body: bytes

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing mandatory header {name}")
        return value

    @property
    def call_id(self) -> str:
        return self._required("Call-ID").strip()

    @property
    def cseq(self) -> CSeq:
        return parse_cseq(self._required("CSeq"))

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self._required("From"), "From")

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self._required("To"), "To")

    @property
    def vias(self) -> list[Via]:
        return [parse_via(value) for value in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        return parse_via(self._required("Via"))

    @property
    def contacts(self) -> list[NameAddr]:
        return [parse_name_addr(v, "Contact") for v in self.headers.get_all("Contact") if v.strip() != "*"]

    @property
    def routes(self) -> list[NameAddr]:
        return [parse_name_addr(value, "Route") for value in self.headers.get_all("Route")]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [parse_name_addr(value, "Record-Route") for value in self.headers.get_all("Record-Route")]

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def _encode(self, start_line: str) -> bytes:
        """Start line, headers (Content-Length set to the body, §20.14), empty line, body."""
        lines = [start_line]
        length_written = False
        for name, value in self.headers:
            if name == "Content-Length":
                if length_written:
                    continue
                value, length_written = str(len(self.body)), True
            lines.append(f"{name}: {value}")
        if not length_written:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class Request(_MessageViews):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return None if value is None else _parse_max_forwards(value)

    @property
    def request_uri(self) -> Uri:
        return parse_uri(self.uri)

    def encode(self) -> bytes:
        return self._encode(f"{self.method} {self.uri} {SIP_VERSION}")

    def copy(self) -> Request:
        return Request(self.method, self.uri, self.headers.copy(), self.body)

    def __str__(self) -> str:
        return f"{self.method} {self.uri}"


@dataclass
class Response(_MessageViews):
    status_code: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def encode(self) -> bytes:
        return self._encode(f"{SIP_VERSION} {self.status_code} {self.reason}")

    def copy(self) -> Response:
        return Response(self.status_code, self.reason, self.headers.copy(), self.body)

    @property
    def is_provisional(self) -> bool:
        return 100 <= self.status_code < 200

    @property
    def is_final(self) -> bool:
        return self.status_code >= 200

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}"


Message = Request | Response


# -- parsing -----------------------------------------------------------------------------------------


def _split_head_body(data: bytes) -> tuple[bytes, bytes]:
    """§7.5 / §18.3: the header section ends at the first empty line."""
    candidates = [(i, n) for i, n in ((data.find(b"\r\n\r\n"), 4), (data.find(b"\n\n"), 2)) if i >= 0]
    if not candidates:
        if data.endswith(b"\n"):
            return data.rstrip(b"\r\n"), b""  # liberal: the datagram ends after the last header line
        raise SipParseError("no empty line (CRLF CRLF) after the header section")
    index, length = min(candidates)
    return data[:index], data[index + length :]


def _header_lines(head: str, *, lenient: bool = False) -> tuple[str, list[tuple[int, str, str]]]:
    """Unfold (§7.3.1: a line starting with SP/HT continues the previous one) and split name: value.

    The pieces of a folded value are joined once at the end: appending each continuation to the
    value so far would copy it per line, quadratic in a header folded over thousands of lines.
    """
    physical = re.split(r"\r?\n", head)
    start_line = physical[0]
    fields: list[tuple[int, str, list[str]]] = []
    for number, line in enumerate(physical[1:], start=2):
        if "\r" in line:  # a bare CR: a peer that ends lines at CR would read a header we never saw (§25.1)
            if lenient:
                continue
            raise SipParseError(f"line {number}: a CR not followed by LF")
        if line[:1] in (" ", "\t"):
            if not fields:
                if lenient:
                    continue
                raise SipParseError(f"line {number}: continuation line without a header")
            fields[-1][2].append(line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            if lenient:
                continue
            raise SipParseError(f"line {number}: header without colon")
        name = name.rstrip(" \t")
        if not _is_token(name):
            if lenient:
                continue
            raise SipParseError(f"line {number}: invalid header name {name!r}")
        fields.append((number, Headers.canonical(name), [value.strip()]))
    return start_line, [(number, name, " ".join(piece for piece in pieces if piece)) for number, name, pieces in fields]


def _check_version(text: str, where: str) -> None:
    """§7.1: SIP-Version is case-insensitive; only 2.0 is spoken (§21.5.6: otherwise 505)."""
    match = re.fullmatch(r"SIP/([0-9]+)\.([0-9]+)", text, re.IGNORECASE)
    if not match:
        raise SipParseError(f"{where}: malformed SIP version {text!r}")
    if (match.group(1).lstrip("0"), match.group(2).lstrip("0") or "0") != ("2", "0"):
        raise SipParseError(f"{where}: SIP version {text} not supported")


def _parse_request_line(line: str) -> tuple[str, str]:
    """§7.1 ``Method SP Request-URI SP SIP-Version``: single SPs, no LWS (RFC 4475 §3.1.2.8-10)."""
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(
            f"request line: expected 'Method SP Request-URI SP SIP-Version', "
            f"got {len(parts)} SP-separated fields in {line!r}"
        )
    method, uri, version = parts
    if not _is_token(method):
        raise SipParseError(f"request line: method {method!r} is not a token")
    _check_version(version, "request line")
    try:
        parsed = parse_uri(uri)
    except SipParseError as error:
        raise SipParseError(f"request line: {error}") from None
    if isinstance(parsed, SipUri) and parsed.headers:
        raise SipParseError(f"request line: Request-URI {uri!r} must not contain headers (§19.1.1)")
    return method, uri


def _parse_status_line(line: str) -> tuple[int, str]:
    """§7.2 ``SIP-Version SP Status-Code SP Reason-Phrase``; an empty phrase is fine (RFC 4475 §3.1.1.13)."""
    parts = line.split(" ", 2)
    _check_version(parts[0], "status line")
    if len(parts) < 2 or not parts[1]:
        raise SipParseError("status line: missing status code")
    code_text = parts[1]
    if not code_text.isdigit() or not code_text.isascii():
        raise SipParseError(f"status line: status code {code_text!r} is not a number")
    if len(code_text) != 3 or not 100 <= int(code_text) <= 699:
        raise SipParseError(f"status line: status code {code_text} out of range 100-699")
    return int(code_text), parts[2] if len(parts) == 3 else ""


def parse_message(data: bytes) -> Request | Response:
    """Parse one SIP message carried in one UDP datagram (§18.3).

    Octets after Content-Length are ignored (RFC 4475 §3.1.1.8); a Content-Length beyond the
    datagram is an error; without Content-Length the body is the rest of the datagram. Leading
    CRLFs are skipped (§7.5). Raises :class:`SipParseError`.
    """
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty datagram")
    head_bytes, rest = _split_head_body(data)
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SipParseError(f"header section is not UTF-8 (byte {error.start})") from None
    start_line, fields = _header_lines(head)

    is_response = start_line[:4].upper() == "SIP/"
    if is_response:
        status_code, reason = _parse_status_line(start_line)
    else:
        method, uri = _parse_request_line(start_line)

    headers = Headers()
    # Each header's (line, value) pairs, kept aside so that every check below reads its own values
    # once: fetching the i-th value from the headers would rescan them, quadratic in their number.
    found: dict[str, list[tuple[int, str]]] = {}
    for number, name, value in fields:
        values = split_header_values(value) if name in COMMA_SEPARATED else [value]
        for item in values:
            if not item and name in COMMA_SEPARATED:
                raise SipParseError(f"line {number}: {name}: empty value in comma-separated list")
            headers.add(name, item)
            found.setdefault(name, []).append((number, item))

    # Framing first (§18.3): UDP carries exactly one message, Content-Length may shorten it.
    lengths = found.get("Content-Length", [])
    if len(lengths) > 1:
        raise SipParseError(f"Content-Length appears {len(lengths)} times, expected once")
    if lengths:
        text = lengths[0][1].strip()
        if not text.isdigit() or not text.isascii():
            raise SipParseError(f"Content-Length {text!r} is not a non-negative integer")
        digits = text.lstrip("0") or "0"  # int() refuses 4,300+ digits, leading zeros too
        if len(digits) > len(str(len(rest))) or int(digits) > len(rest):
            raise SipParseError(f"Content-Length {text[:20]} exceeds body length {len(rest)}")
        length = int(digits)
        if length > len(rest):
            raise SipParseError(f"Content-Length {length} exceeds body length {len(rest)}")
        body = rest[:length]
    else:
        body = rest

    mandatory = ["Call-ID", "CSeq", "From", "To", "Via"] + ([] if is_response else ["Max-Forwards"])
    for name in mandatory:
        count = len(found.get(name, ()))
        if count == 0:
            raise SipParseError(f"missing mandatory header {name}")
        if count > 1 and name in SINGLE_VALUED:
            raise SipParseError(f"{name} appears {count} times, expected once")

    def check(name: str, parse: Callable[[str], T]) -> list[T]:
        """Parse every value of a header; a failure names the line it came from."""
        parsed: list[T] = []
        for number, value in found.get(name, ()):
            try:
                parsed.append(parse(value))
            except SipParseError as error:
                raise SipParseError(f"line {number}: {error}") from None
        return parsed

    call_number, call_id = found["Call-ID"][0]
    if not call_id or any(ch.isspace() for ch in call_id):
        raise SipParseError(f"line {call_number}: Call-ID {call_id!r} is empty or contains whitespace")
    (cseq,) = check("CSeq", parse_cseq)
    check("From", lambda v: parse_name_addr(v, "From"))
    check("To", lambda v: parse_name_addr(v, "To"))
    check("Via", parse_via)
    check("Route", lambda v: parse_name_addr(v, "Route"))
    check("Record-Route", lambda v: parse_name_addr(v, "Record-Route"))
    check("Contact", lambda v: None if v == "*" else parse_name_addr(v, "Contact"))

    if is_response:
        return Response(status_code, reason, headers, body)
    check("Max-Forwards", _parse_max_forwards)
    if cseq.method != method:
        raise SipParseError(f"CSeq method {cseq.method} does not match request method {method}")
    return Request(method, uri, headers, body)


def salvage_request(data: bytes) -> Request | None:
    """Best-effort view of a request that failed :func:`parse_message`, to answer it with 400 (§21.4.1).

    Keeps the header lines that can be read. None when it is not a request, is an ACK (never
    answered, §17.1.1.3) or has no usable top Via (nowhere to send a response, §18.2.2).
    """
    data = data.lstrip(b"\r\n")
    try:
        head_bytes, body = _split_head_body(data)
    except SipParseError:
        head_bytes, body = data, b""
    start_line, fields = _header_lines(head_bytes.decode("utf-8", errors="replace"), lenient=True)
    parts = start_line.split()
    if len(parts) < 2 or start_line[:4].upper() == "SIP/" or not _is_token(parts[0]) or parts[0] == "ACK":
        return None
    headers = Headers()
    for _, name, value in fields:
        for item in split_header_values(value) if name in COMMA_SEPARATED else [value]:
            headers.add(name, item)
    try:
        parse_via(headers.get("Via") or "")
    except SipParseError:
        return None
    return Request(parts[0], parts[1], headers, body)


# -- building messages -------------------------------------------------------------------------------


def make_response(
    request: Request, status_code: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """A response to ``request`` per §8.2.6.2.

    Copies Via (all, in order), From, To, Call-ID and CSeq; adds ``to_tag`` to To when it has
    none (100 Trying never needs one). For 101-299 to INVITE it also copies Record-Route (§12.1.1),
    since those responses create a dialog (early or confirmed).
    """
    headers = Headers()
    for value in request.headers.get_all("Via"):
        headers.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        copied = request.headers.get(name)
        if copied is not None:
            headers.add(name, copied)
    to = request.headers.get("To")
    if to_tag is not None and to is not None and parse_name_addr(to, "To").tag is None:
        headers.set("To", f"{to};tag={to_tag}")
    if request.method == "INVITE" and 101 <= status_code < 300:
        for value in request.headers.get_all("Record-Route"):
            headers.add("Record-Route", value)
    return Response(status_code, reason if reason is not None else reason_phrase(status_code), headers)


def make_ack(request: Request, response: Response) -> Request:
    """ACK for a non-2xx final response, built by the INVITE client transaction (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, To of the response (with its
    tag), the INVITE's top Via only (so it matches the server transaction), and its Route.
    """
    headers = Headers()
    headers.add("Via", request.headers.get_all("Via")[0])
    for value in request.headers.get_all("Route"):
        headers.add("Route", value)
    headers.add("Max-Forwards", "70")
    headers.add("From", request._required("From"))
    headers.add("To", response._required("To"))
    headers.add("Call-ID", request._required("Call-ID"))
    headers.add("CSeq", f"{request.cseq.number} ACK")
    return Request("ACK", request.uri, headers)


def make_cancel(request: Request) -> Request:
    """CANCEL for a pending request (§9.1).

    Request-URI, Call-ID, To, From and CSeq number as in the request; a single Via equal to
    the request's top Via (same branch, so the peer matches it to the INVITE); same Route.
    """
    headers = Headers()
    headers.add("Via", request.headers.get_all("Via")[0])
    for value in request.headers.get_all("Route"):
        headers.add("Route", value)
    headers.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        headers.add(name, request._required(name))
    headers.add("CSeq", f"{request.cseq.number} CANCEL")
    return Request("CANCEL", request.uri, headers)


def new_branch() -> str:
    """§8.1.1.7: unique per transaction, starting with the magic cookie."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """§19.3: at least 32 bits of randomness."""
    return secrets.token_hex(6)


def new_call_id(host: str) -> str:
    """§8.1.1.4: globally unique; ``random@host``."""
    return f"{secrets.token_hex(12)}@{host}"
