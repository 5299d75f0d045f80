"""The wire: a run's capture decoded into datagrams followed across links, calls and DTLS associations.

Pure: a pcapng (`pinhole.pcapng.Capture`) and a key log in, objects out; no sockets, no clocks. The
verdict, the ladder and the outcome read the call from here, so an implementation pinhole did not
write is judged by exactly the same evidence as pinhole's own.

- **Links.** The capture names each link after the end it was taken on (`natgw:lan0`) and describes
  the link (`natgw:lan0 <-> alice:eth0`); with the frame's direction that says which node sent and
  which received each sighting of a datagram.
- **Datagrams.** One UDP datagram is seen once on every link it crosses. Sightings with the same
  payload chain into one `Datagram` when each picks up where the last left off (the node that
  received it forwards it), whether a NAT rewrote its addresses on the way or not; a byte-identical
  retransmission is a datagram of its own because it crosses its sender's link a second time. The
  first sighting is the closest to the sender (its source is the sender's own address), the last the
  closest to where it was going (or where it died).
- **Own addresses.** A datagram that crossed a NAT shows both sides of its translation; the inside
  address is the host's own one. `Wire.own` maps every address seen on the wire to it, so a
  socket behind the NAT is one endpoint whatever mapping it was seen through.
- **Calls.** SIP datagrams group by Call-ID; a call's media endpoints are the addresses its SDP
  bodies name, as the hosts own them; its media datagrams are the STUN, DTLS and RTP of those
  endpoints. DTLS between two endpoints splits into associations by ClientHello random.
- **Associations.** Handshake messages are reassembled from their fragments (the Certificate in
  particular: in DTLS 1.2 it crosses the wire in the clear), the key log gives the master secret,
  from which the Finished messages decrypt and each side's SRTP keys follow (`pinhole.keylog`).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pinhole import demux, dtls, keylog, pcapng, sdp, srtp, stun
from pinhole.address import Address, fmt
from pinhole.pcap import PcapError, Reassembler, decode_udp
from pinhole.sip.message import Request, Response, SipParseError, parse_message

__all__ = [
    "Association",
    "Call",
    "Datagram",
    "Link",
    "RunInfo",
    "Sighting",
    "Wire",
    "decode",
    "describe_call",
    "srtp_key_entries",
]

RUN_COMMENT = "pinhole-run "  # the section comment that carries RunInfo as JSON
MAX_TRANSIT = 5.0  # seconds a datagram may take from one link to the next (injected delays included)
SIP_PORTS = (5060,)


# --------------------------------------------------------------------------- links and sightings


@dataclass(frozen=True)
class Link:
    """A captured link: `name` is the end it was captured on (`node:ifname`), `peer` the node at the other end."""

    index: int
    name: str
    node: str
    peer: str


def _link(index: int, interface: pcapng.Interface) -> Link:
    node = interface.name.partition(":")[0]
    _, sep, other = interface.description.partition("<->")
    peer = other.strip().partition(":")[0] if sep else ""
    return Link(index, interface.name, node, peer)


@dataclass(frozen=True)
class Sighting:
    """One datagram seen on one link: when, which way, and its addresses there."""

    link: Link
    t: float
    inbound: bool  # as the captured end saw it: toward `link.node`
    src: Address
    dst: Address
    frame: int  # 0-based index in the capture (Wireshark's frame number is frame + 1)

    @property
    def sender(self) -> str:
        """The node that put it on this link."""
        return self.link.peer if self.inbound else self.link.node

    @property
    def receiver(self) -> str:
        """The node this link took it to."""
        return self.link.node if self.inbound else self.link.peer


# --------------------------------------------------------------------------- datagrams


@dataclass
class Datagram:
    """One UDP datagram as sent, with every sighting of it in time order."""

    index: int
    payload: bytes
    sightings: list[Sighting] = field(default_factory=list)
    own_src: Address = ("", 0)  # `src` and `dst` as their hosts own them (Wire.own), set by `decode`
    own_dst: Address = ("", 0)

    @property
    def first(self) -> Sighting:
        return self.sightings[0]

    @property
    def last(self) -> Sighting:
        return self.sightings[-1]

    @property
    def t(self) -> float:
        """When it was first seen: as close to its sending as the capture gets."""
        return self.first.t

    @property
    def src(self) -> Address:
        """Its source as the sender owns it (the first sighting's)."""
        return self.first.src

    @property
    def dst(self) -> Address:
        """Its destination as far as it got (the last sighting's)."""
        return self.last.dst

    @property
    def links(self) -> list[str]:
        return [s.link.name for s in self.sightings]

    def sent_by(self, node: str) -> Sighting | None:
        return next((s for s in self.sightings if s.sender == node), None)

    def delivered_to(self, node: str) -> Sighting | None:
        """The sighting on the last link before `node`, if the datagram got that far."""
        return next((s for s in self.sightings if s.receiver == node), None)

    @cached_property
    def kind(self) -> str:
        """sip, stun, dtls, rtp, rtcp or other (RFC 7983 first-byte demultiplexing; SIP is text)."""
        if self.payload[:1].isalpha() and (self.src[1] in SIP_PORTS or self.dst[1] in SIP_PORTS or self.sip):
            return "sip"
        return demux.classify(self.payload).value

    @cached_property
    def sip(self) -> Request | Response | None:
        try:
            return parse_message(self.payload)
        except (SipParseError, ValueError, UnicodeDecodeError):
            return None

    @cached_property
    def sip_error(self) -> str:
        try:
            parse_message(self.payload)
        except (SipParseError, ValueError, UnicodeDecodeError) as error:
            return str(error)
        return ""

    @cached_property
    def stun(self) -> stun.Message | None:
        try:
            return stun.decode(self.payload)
        except stun.StunError:
            return None

    @cached_property
    def records(self) -> list[dtls.DtlsRecord]:
        try:
            return dtls.parse_records(self.payload)
        except dtls.DtlsError:
            return []

    @cached_property
    def handshake(self) -> list[dtls.HandshakeHeader]:
        """Its epoch-0 handshake message fragments, in order."""
        out: list[dtls.HandshakeHeader] = []
        for record in self.records:
            if record.content_type == dtls.ContentType.handshake and record.epoch == 0:
                with contextlib.suppress(dtls.DtlsError):
                    out.extend(dtls.handshake_messages(record))
        return out

    @cached_property
    def handshake_types(self) -> list[str]:
        """Names of its handshake messages; "finished" stands for an encrypted one after ChangeCipherSpec."""
        names = []
        previous_ccs = False
        for record in self.records:
            if record.content_type == dtls.ContentType.handshake:
                if record.epoch == 0:
                    with contextlib.suppress(dtls.DtlsError):
                        names += [_type_name(m.msg_type) for m in dtls.handshake_messages(record)]
                else:
                    names.append("finished" if previous_ccs else "encrypted")
            previous_ccs = record.content_type == dtls.ContentType.change_cipher_spec
        return names

    def describe(self) -> dict[str, str]:
        """Flat attributes, as the services describe what they send (plus the SIP summary)."""
        if self.kind == "sip":
            message = self.sip
            if message is None:
                return {"kind": "sip", "summary": f"SIP (malformed: {self.sip_error})"}
            if isinstance(message, Request):
                summary = message.method
            else:
                summary = f"{message.status_code} {message.reason} ({_cseq_method(message)})"
            return {"kind": "sip", "summary": summary + (" + SDP" if message.body else "")}
        return demux.describe(self.payload)


def _type_name(msg_type: int) -> str:
    return msg_type.name if isinstance(msg_type, dtls.HandshakeType) else f"handshake_type_{msg_type}"


def _cseq_method(message: Request | Response) -> str:
    try:
        return message.cseq.method
    except (SipParseError, ValueError):
        return ""


def _chain(
    datagrams: list[Datagram], open_by_payload: dict[bytes, list[Datagram]], sighting: Sighting, payload: bytes
) -> None:
    """Add `sighting` to the datagram it continues, or start a new one (see the module docstring): of the
    datagrams with this payload not yet seen on this link, whose last sighting took it to the node that
    sent this one (a link whose far end is unknown matches any), seen a moment before with the same
    source or the same destination (a NAT rewrites only one of them), the one seen last."""
    best = None
    for candidate in open_by_payload.get(payload, []):
        last = candidate.last
        if (
            sighting.link.name not in candidate.links
            and (last.receiver == sighting.sender or "" in (last.receiver, sighting.sender))
            and 0 <= sighting.t - last.t <= MAX_TRANSIT
            and (sighting.src == last.src or sighting.dst == last.dst)
            and (best is None or last.t >= best.last.t)
        ):
            best = candidate
    if best is not None:
        best.sightings.append(sighting)
        return
    datagram = Datagram(len(datagrams), payload, [sighting])
    datagrams.append(datagram)
    open_by_payload.setdefault(payload, []).append(datagram)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunInfo:
    """What the controller wrote into the capture about its run: nodes, roles, expectations.

    `addresses`: IP -> node (the NAT's outside address included, as the NAT's); `nat`: the gateway
    node, its inside and outside links and whether it translates; `proxies`: the proxies a call
    between the caller's and the callee's domain passes in order; `timers`: the DTLS initial and
    maximum retransmission timers the lab's agents were given (RFC 6347 defaults otherwise)."""

    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_comments(cls, comments: Iterable[str]) -> RunInfo:
        for comment in comments:
            if comment.startswith(RUN_COMMENT):
                with contextlib.suppress(ValueError):
                    data = json.loads(comment[len(RUN_COMMENT) :])
                    if isinstance(data, dict):
                        return cls(data)
        return cls({})

    def comment(self) -> str:
        return RUN_COMMENT + json.dumps(self.data, sort_keys=True)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def addresses(self) -> dict[str, str]:
        return dict(self.data.get("addresses", {}))

    def node_of(self, address: Address | str | None) -> str:
        if address is None:
            return ""
        ip = address if isinstance(address, str) else address[0]
        return self.addresses.get(ip, "")


# --------------------------------------------------------------------------- DTLS associations


@dataclass
class Message:
    """A handshake message reassembled from its fragments, and the datagram that completed it."""

    msg_type: int
    message_seq: int
    body: bytes
    datagram: Datagram


@dataclass
class Association:
    """One DTLS handshake between two endpoints (own addresses), started by a ClientHello random."""

    client: Address
    server: Address
    client_random: bytes
    datagrams: list[Datagram] = field(default_factory=list)  # every DTLS datagram of it, both ways, in order
    srtp: list[Datagram] = field(default_factory=list)  # SRTP/SRTCP between the two while it was the newest
    master_secret: bytes | None = None

    def sent_by(self, side: Address) -> list[Datagram]:
        return [d for d in self.datagrams if d.own_src == side]

    @cached_property
    def client_hellos(self) -> list[Datagram]:
        """Every transmission of the client's first ClientHello (not the one a cookie exchange asks
        for, RFC 6347 §4.2.1), in order."""
        first_seq: int | None = None
        out = []
        for d in self.sent_by(self.client):
            seqs = [m.message_seq for m in d.handshake if m.msg_type == dtls.HandshakeType.client_hello]
            if seqs:
                first_seq = min(seqs) if first_seq is None else first_seq
                if first_seq in seqs:
                    out.append(d)
        return out

    def messages(self, side: Address) -> list[Message]:
        """The epoch-0 handshake messages `side` sent, each once, reassembled, in message_seq order."""
        fragments: dict[int, tuple[int, int, dict[int, bytes], Datagram | None]] = {}
        done: dict[int, Message] = {}
        for d in self.sent_by(side):
            for m in d.handshake:
                if m.message_seq in done:
                    continue
                msg_type, length, parts, _ = fragments.get(m.message_seq, (m.msg_type, m.length, {}, None))
                parts[m.fragment_offset] = m.body
                fragments[m.message_seq] = (msg_type, length, parts, d)
                body = _reassemble(parts, length)
                if body is not None:
                    done[m.message_seq] = Message(msg_type, m.message_seq, body, d)
        return [done[k] for k in sorted(done)]

    def message(self, side: Address, msg_type: dtls.HandshakeType) -> Message | None:
        return next((m for m in self.messages(side) if m.msg_type == msg_type), None)

    def _parsed(self, side: Address, msg_type: dtls.HandshakeType, parse: Callable[[bytes], Any]) -> Any:
        m = self.message(side, msg_type)
        try:
            return None if m is None else parse(m.body)
        except dtls.DtlsError:
            return None

    @cached_property
    def server_hello(self) -> dtls.ServerHello | None:
        return self._parsed(self.server, dtls.HandshakeType.server_hello, dtls.parse_server_hello)

    @cached_property
    def client_hello(self) -> dtls.ClientHello | None:
        return self._parsed(self.client, dtls.HandshakeType.client_hello, dtls.parse_client_hello)

    def certificate(self, side: Address) -> bytes | None:
        """The end-entity certificate (DER) `side` presented, from its Certificate message (RFC 5246 §7.4.2)."""
        m = self.message(side, dtls.HandshakeType.certificate)
        if m is None or len(m.body) < 6:
            return None
        first = int.from_bytes(m.body[3:6], "big")
        der = m.body[6 : 6 + first]
        return der if len(der) == first and first else None

    @cached_property
    def suite(self) -> dtls.CipherSuite | None:
        hello = self.server_hello
        return dtls.CIPHER_SUITES.get(hello.cipher_suite) if hello else None

    @cached_property
    def profile(self) -> str:
        hello = self.server_hello
        if hello is None or len(hello.srtp_profiles) != 1:
            return ""
        return dtls.SRTP_PROTECTION_PROFILES.get(hello.srtp_profiles[0], "")

    @cached_property
    def write_keys(self) -> tuple[dtls.WriteKeys, dtls.WriteKeys] | None:
        if self.master_secret is None or self.suite is None or self.server_hello is None:
            return None
        return dtls.write_keys(self.suite, self.master_secret, self.client_random, self.server_hello.random)

    @cached_property
    def srtp_keys(self) -> tuple[keylog.SrtpDirection, keylog.SrtpDirection] | None:
        """(client's, server's) SRTP keys, when the key log has this association and its profile is known."""
        if self.master_secret is None or self.suite is None or self.server_hello is None:
            return None
        if self.profile not in srtp.PROFILES:
            return None
        return keylog.derive_srtp(
            self.suite, self.master_secret, self.client_random, self.server_hello.random, self.profile
        )

    def finished(self, side: Address) -> tuple[Datagram, str] | None:
        """`side`'s first encrypted handshake record after its ChangeCipherSpec, and what it is: "finished"
        when it decrypts with the key log to a Finished (handshake type 20), "encrypted" when it cannot be
        decrypted here, "not finished: ..." otherwise."""
        for d in self.sent_by(side):
            previous_ccs = False
            for record in d.records:
                if record.content_type == dtls.ContentType.handshake and record.epoch > 0 and previous_ccs:
                    return d, self._what_finished(side, record)
                previous_ccs = record.content_type == dtls.ContentType.change_cipher_spec
        return None

    def _what_finished(self, side: Address, record: dtls.DtlsRecord) -> str:
        keys = self.write_keys
        if keys is None:
            return "encrypted"
        try:
            plain = dtls.unprotect_record(keys[0] if side == self.client else keys[1], record)
        except dtls.DtlsError as error:
            return f"not finished: {error}"
        return "finished" if plain[:1] == bytes([dtls.HandshakeType.finished]) else f"not finished: type {plain[0]}"

    def alerts(self, side: Address) -> list[tuple[Datagram, str]]:
        """Alerts `side` sent: "fatal:bad_certificate" for a plaintext one; an encrypted one decrypted when
        the key log allows, else "encrypted"."""
        out = []
        for d in self.sent_by(side):
            for record in d.records:
                if record.content_type != dtls.ContentType.alert:
                    continue
                text = "encrypted"
                plain = record.fragment if record.epoch == 0 else None
                if plain is None and self.write_keys is not None:
                    with contextlib.suppress(dtls.DtlsError):
                        plain = dtls.unprotect_record(self.write_keys[0 if side == self.client else 1], record)
                if plain is not None and len(plain) == 2:
                    level = dtls.AlertLevel(plain[0]).name if plain[0] in (1, 2) else str(plain[0])
                    known = plain[1] in dtls.AlertDescription._value2member_map_
                    text = f"{level}:{dtls.AlertDescription(plain[1]).name if known else plain[1]}"
                out.append((d, text))
        return out

    def srtp_from(self, side: Address) -> list[Datagram]:
        return [d for d in self.srtp if d.own_src == side]


def _reassemble(parts: dict[int, bytes], length: int) -> bytes | None:
    body = bytearray(length)
    covered = 0
    for offset in sorted(parts):
        if offset > covered:
            return None
        chunk = parts[offset]
        body[offset : offset + len(chunk)] = chunk
        covered = max(covered, offset + len(chunk))
    return bytes(body) if covered >= length else None


# --------------------------------------------------------------------------- calls


@dataclass
class Call:
    """One call on the wire: its SIP by Call-ID and the media of the endpoints its SDP names."""

    call_id: str
    sip: list[Datagram]
    endpoints: set[Address]  # own addresses of the media sockets the SDP bodies name (after translation)
    media: list[Datagram]  # STUN, DTLS, RTP/RTCP to or from an endpoint, in time order
    associations: list[Association]
    strangers: list[Datagram]  # media to an endpoint from an address that is no party of the call

    def messages(
        self,
        *,
        method: str | None = None,
        status: int | None = None,
        cseq_method: str | None = None,
        cseq: int | None = None,
    ) -> list[Datagram]:
        """The call's SIP datagrams that parse and match."""
        out = []
        for d in self.sip:
            m = d.sip
            if m is None:
                continue
            if method is not None and not (isinstance(m, Request) and m.method == method):
                continue
            if status is not None and not (isinstance(m, Response) and m.status_code == status):
                continue
            if cseq_method is not None and _cseq_method(m) != cseq_method:
                continue
            if cseq is not None and m.cseq.number != cseq:
                continue
            out.append(d)
        return out


# --------------------------------------------------------------------------- the whole capture


@dataclass
class Wire:
    """Everything the capture shows: links, datagrams in time order, own addresses, the key log."""

    links: list[Link]
    datagrams: list[Datagram]
    keys: keylog.KeyLog
    info: RunInfo
    statistics: list[pcapng.InterfaceStatistics]
    own_map: dict[Address, Address]
    undecodable: int = 0  # frames that were not IPv4/UDP or did not decode

    def own(self, address: Address) -> Address:
        """The address as its host owns it (the inside of a NAT translation seen on the wire)."""
        return self.own_map.get(address, address)

    def problems(self) -> list[str]:
        """Why the capture is not the whole wire: kernel drops recorded per link."""
        return [
            f"the capture on {self.links[s.interface].name} lost {s.dropped} frame(s) in the kernel"
            for s in self.statistics
            if s.dropped and s.interface < len(self.links)
        ]

    def call_ids(self) -> list[str]:
        """Call-IDs on the wire, the one with the most SIP datagrams first."""
        counts: dict[str, int] = defaultdict(int)
        for d in self.datagrams:
            if d.kind == "sip" and d.sip is not None:
                with contextlib.suppress(SipParseError, ValueError):
                    counts[d.sip.call_id] += 1
        return sorted(counts, key=lambda c: -counts[c])

    @cached_property
    def _index(self) -> tuple[dict[str, list[Datagram]], dict[Address, list[int]]]:
        """SIP datagrams by Call-ID and media datagrams (positions) by own address, built once: a load judges
        hundreds of calls on one capture, and a scan per call made that quadratic."""
        sip_by_call: dict[str, list[Datagram]] = defaultdict(list)
        media_at: dict[Address, list[int]] = defaultdict(list)
        for index, d in enumerate(self.datagrams):
            if d.kind == "sip" and d.sip is not None:
                with contextlib.suppress(SipParseError, ValueError):
                    sip_by_call[d.sip.call_id].append(d)
            elif d.kind in ("stun", "dtls", "rtp", "rtcp"):
                media_at[d.own_src].append(index)
                if d.own_dst != d.own_src:
                    media_at[d.own_dst].append(index)
        return dict(sip_by_call), dict(media_at)

    def call(self, call_id: str | None = None) -> Call | None:
        """The call with this Call-ID (default: the one with the most SIP), media and associations included."""
        call_id = call_id or next(iter(self.call_ids()), None)
        if call_id is None:
            return None
        sip_by_call, media_at = self._index
        sip_datagrams = sip_by_call.get(call_id, [])
        if not sip_datagrams:
            return None
        endpoints: set[Address] = set()
        for d in sip_datagrams:
            if d.sip is not None and d.sip.body:
                facts = sdp.facts(d.sip.body)
                if facts.address and facts.port:
                    endpoints.add(self.own((facts.address, facts.port)))
                    if not facts.rtcp_mux:
                        rtcp_port = facts.port + 1
                        with contextlib.suppress(ValueError):
                            rtcp_port = int(facts.rtcp.split(" ")[0]) if facts.rtcp else rtcp_port
                        endpoints.add(self.own((facts.address, rtcp_port)))
        media, strangers = [], []
        for index in sorted({i for address in endpoints for i in media_at.get(address, ())}):
            d = self.datagrams[index]
            media.append(d)
            if d.own_dst in endpoints and d.own_src not in endpoints and d.kind != "stun":
                strangers.append(d)  # STUN answers come back from servers the endpoint asked
        associations = _associations([d for d in media if d.own_src in endpoints or d.kind == "stun"], self.keys)
        return Call(call_id, sip_datagrams, endpoints, media, associations, strangers)

    def node(self, address: Address | None) -> str:
        return self.info.node_of(self.own(address) if address else None)

    def covers(self, node: str) -> bool:
        """Whether a link of `node` was captured (a cluster captures only where a pod can)."""
        return any(node in (link.node, link.peer) for link in self.links)


def srtp_key_entries(wire: Wire, call: Call) -> list[dict[str, Any]]:
    """The SRTP master key and salt of every SSRC of the call, as its association exported them (RFC 5764
    §4.2): what `srtp-keys.json` holds, so SRTP/SRTCP can be authenticated and decrypted offline.

    Each entry: ssrc, kind (rtp or rtcp), sender and receiver (node, own address), profile, master_key,
    master_salt (hex) and key_salt (base64 of key then salt: libsrtp's form, e.g. `rtp_decoder -k`)."""
    out = []
    for association in call.associations:
        keys = association.srtp_keys
        if keys is None:
            continue
        seen: set[tuple[int, str, Address]] = set()
        for d in association.srtp:
            if len(d.payload) < 12:
                continue
            ssrc = int.from_bytes(d.payload[8:12] if d.kind == "rtp" else d.payload[4:8], "big")
            if (ssrc, d.kind, d.own_src) in seen:
                continue
            seen.add((ssrc, d.kind, d.own_src))
            side = keys[0] if d.own_src == association.client else keys[1]
            out.append(
                {
                    "ssrc": f"0x{ssrc:08x}",
                    "kind": d.kind,
                    "sender": wire.node(d.own_src),
                    "src": fmt(d.own_src),
                    "receiver": wire.node(d.own_dst),
                    "dst": fmt(d.own_dst),
                    "profile": side.profile,
                    "dtls_role": "client" if d.own_src == association.client else "server",
                    "client_random": association.client_random.hex(),
                    "master_key": side.key.hex(),
                    "master_salt": side.salt.hex(),
                    "key_salt": base64.b64encode(side.key + side.salt).decode(),
                }
            )
    return out


def describe_call(wire: Wire, call: Call) -> list[dict[str, Any]]:
    """The call's datagrams as a ladder draws them and a person reads them, in time order.

    Each entry: when (t, the first sighting), what (kind, summary), who sent it to whom (`from`, `to`:
    nodes), how far it got (`reached`: the node its last sighting took it to; `dropped` when it never
    got to a captured link of `to`), whether it repeats one sent before (`retransmission`), and every
    link it crossed with the addresses seen there (`links`). SRTP and SRTCP are one entry per run of
    packets from one side (`packets`: how many)."""
    out: list[dict[str, Any]] = []
    seen_payloads: set[tuple[Address, bytes]] = set()
    seen_requests: set[bytes] = set()
    handshake_seen: dict[tuple[Address, bytes], set[int]] = defaultdict(set)  # message_seqs per side and association
    association_of = {d.index: a.client_random for a in call.associations for d in a.datagrams}
    media_runs: dict[tuple[Address, str], dict[str, Any]] = {}
    for d in sorted(call.sip + call.media, key=lambda d: d.t):
        to, sender = wire.node(d.own_dst), wire.node(d.own_src)
        entry: dict[str, Any] = {
            "t": d.t,
            "kind": d.kind,
            "from": sender or fmt(d.own_src),
            "to": to or fmt(d.own_dst),
            "reached": d.last.receiver,
            "dropped": bool(to) and wire.covers(to) and d.delivered_to(to) is None,
            "retransmission": False,
            "links": [f"{s.link.name} {'in' if s.inbound else 'out'} {fmt(s.src)} > {fmt(s.dst)}" for s in d.sightings],
            **d.describe(),
        }
        if d.kind in ("rtp", "rtcp"):
            key = (d.own_src, d.kind)
            if key in media_runs:
                media_runs[key]["packets"] += 1
                continue
            entry["packets"] = 1
            media_runs[key] = entry
        elif d.kind == "stun" and d.stun is not None and d.stun.message_class == stun.MessageClass.REQUEST:
            entry["retransmission"] = d.stun.transaction_id in seen_requests
            seen_requests.add(d.stun.transaction_id)
        elif d.kind == "dtls":
            seqs = {m.message_seq for m in d.handshake}
            sent = handshake_seen[(d.own_src, association_of.get(d.index, b""))]
            entry["retransmission"] = bool(seqs) and seqs <= sent
            sent |= seqs
        else:
            entry["retransmission"] = (d.own_src, d.payload) in seen_payloads
        seen_payloads.add((d.own_src, d.payload))
        out.append(entry)
    return out


def _associations(media: list[Datagram], keys: keylog.KeyLog) -> list[Association]:
    """Split the DTLS between each pair of endpoints into associations by ClientHello random; SRTP between
    a pair goes to the newest association of that pair started before it."""
    by_pair: dict[frozenset[Address], list[Association]] = defaultdict(list)
    ordered: list[Association] = []
    for d in media:
        pair = frozenset((d.own_src, d.own_dst))
        if d.kind == "dtls":
            random = dtls.client_hello_random(d.payload)
            current = by_pair[pair][-1] if by_pair[pair] else None
            if random is not None and (current is None or current.client_random != random):
                if not any(a.client_random == random for a in by_pair[pair]):
                    current = Association(d.own_src, d.own_dst, random, master_secret=keys.master_secret(random))
                    by_pair[pair].append(current)
                    ordered.append(current)
            if current is not None:
                current.datagrams.append(d)
        elif d.kind in ("rtp", "rtcp") and by_pair[pair]:
            by_pair[pair][-1].srtp.append(d)
    return ordered


def sip_in(packet: pcapng.Packet) -> tuple[Address, Request | Response] | None:
    """The SIP message one captured frame carries, with its sender; None for anything else. For following a
    call live (pinhole.capture.LinkCapture.wait_for) when no pinhole service takes part in it."""
    try:
        udp = decode_udp(packet.data)
        if udp is None or not udp.payload[:1].isalpha():  # SIP is text; the rest starts with a binary byte
            return None
        return udp.src, parse_message(udp.payload)
    except (PcapError, SipParseError, ValueError, UnicodeDecodeError):
        return None


def decode(capture: pcapng.Capture, key_log_text: str = "") -> Wire:
    """Decode a whole capture (see the module docstring); `key_log_text` adds to the key log it embeds."""
    links = [_link(i, interface) for i, interface in enumerate(capture.interfaces)]
    datagrams: list[Datagram] = []
    open_by_payload: dict[bytes, list[Datagram]] = {}
    undecodable = 0
    fragments: dict[int, Reassembler] = {}  # per link: a large INVITE (RFC 8224 Identity) crosses in pieces
    for frame, packet in sorted(enumerate(capture.packets), key=lambda item: (item[1].t, item[0])):
        try:
            udp = decode_udp(packet.data, fragments.setdefault(packet.interface, Reassembler()))
        except PcapError:
            undecodable += 1
            continue
        if udp is None or packet.interface >= len(links):
            continue
        inbound = packet.direction != pcapng.DIRECTION_OUTBOUND
        sighting = Sighting(links[packet.interface], packet.t, inbound, udp.src, udp.dst, frame)
        _chain(datagrams, open_by_payload, sighting, udp.payload)
    own_map: dict[Address, Address] = {}
    for d in datagrams:
        for s in d.sightings:
            if s.src != d.first.src:
                own_map.setdefault(s.src, d.first.src)
            if s.dst != d.last.dst:
                own_map.setdefault(s.dst, d.last.dst)
    wire = Wire(
        links,
        datagrams,
        keylog.parse(capture.key_log(), key_log_text),
        RunInfo.from_comments(capture.comments),
        list(capture.statistics),
        own_map,
        undecodable,
    )
    for d in datagrams:  # each datagram's ends as their hosts own them
        d.own_src, d.own_dst = wire.own(d.src), wire.own(d.dst)
    return wire
