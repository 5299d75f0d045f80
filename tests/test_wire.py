"""pinhole.wire and pinhole.keylog: a saved capture decoded into links, datagrams, a call and its keys."""

from __future__ import annotations

import base64
from pathlib import Path

import pylibsrtp
import pytest

from pinhole import dtls, keylog, pcapng, sdp, srtp, wire

RUN = Path(__file__).parent / "data" / "runs" / "rfc5763-7.3" / "capture.pcapng"


@pytest.fixture(scope="module")
def decoded() -> wire.Wire:
    return wire.decode(pcapng.read_pcapng(RUN))


def test_links_know_both_ends(decoded):
    lan = decoded.links[0]
    assert (lan.name, lan.node, lan.peer) == ("natgw:lan0", "natgw", "alice")
    assert {link.name for link in decoded.links} >= {"natgw:wan0", "bob:eth0", "proxy-a:eth0", "proxy-b:eth0"}
    assert decoded.covers("alice") and decoded.covers("bob") and not decoded.covers("carol")
    assert decoded.info.get("flow") == "rfc5763-7.3" and decoded.info.node_of("203.0.113.40") == "bob"


def test_a_datagram_is_followed_across_the_nat_and_its_inside_address_is_its_own(decoded):
    call = decoded.call()
    invite = next(d for d in call.sip if d.sip.method == "INVITE")  # Alice's, the first
    assert invite.links == ["natgw:lan0", "natgw:wan0", "proxy-a:eth0"]
    assert invite.first.src[0] == "10.10.1.10" and invite.sightings[1].src[0] == "203.0.113.1"
    assert invite.sent_by("alice") is invite.first and invite.delivered_to("proxy-a") is invite.last
    assert decoded.own(invite.sightings[1].src) == invite.first.src
    assert decoded.node(invite.sightings[1].src) == "alice"


def test_the_call_has_its_media_and_one_association_with_both_certificates_and_keys(decoded):
    call = decoded.call()
    (association,) = call.associations
    assert decoded.node(association.client) == "bob" and decoded.node(association.server) == "alice"
    assert len(association.client_hellos) >= 2, "the first one died at the NAT"
    assert not association.client_hellos[0].delivered_to("alice")
    for side in (association.client, association.server):
        der = association.certificate(side)
        assert der and sdp.certificate_fingerprint(der).hash_function == "sha-256"
        assert association.finished(side)[1] == "finished"
    assert association.profile == "SRTP_AEAD_AES_128_GCM" and association.suite.code == 0xC02B
    assert len(association.srtp_from(association.client)) == len(association.srtp_from(association.server)) == 50
    assert not call.strangers


def test_srtp_key_entries_decrypt_the_streams_offline(decoded):
    call = decoded.call()
    entries = wire.srtp_key_entries(decoded, call)
    assert {(e["sender"], e["receiver"], e["kind"]) for e in entries} == {
        ("alice", "bob", "rtp"),
        ("bob", "alice", "rtp"),
    }
    for entry in entries:
        key = base64.b64decode(entry["key_salt"])
        assert key.hex() == entry["master_key"] + entry["master_salt"]
        session = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=srtp.PROFILES[entry["profile"]][0]
            )
        )
        packet = next(d for d in call.associations[0].srtp if decoded.node(d.own_src) == entry["sender"])
        assert len(session.unprotect(packet.payload)) == len(packet.payload) - 16  # the AEAD tag


def test_without_the_key_log_nothing_decrypts_but_everything_else_reads(decoded):
    capture = pcapng.read_pcapng(RUN)
    capture.secrets = []
    association = wire.decode(capture).call().associations[0]
    assert association.master_secret is None and association.srtp_keys is None
    assert association.finished(association.client)[1] == "encrypted"
    assert association.certificate(association.client), "in DTLS 1.2 the Certificate crosses in the clear"


def test_key_log_lines_and_problems():
    text = (
        "# comment\nCLIENT_RANDOM " + "ab" * 32 + " " + "cd" * 48 + "\nCLIENT_HANDSHAKE_TRAFFIC_SECRET x y\nnonsense\n"
    )
    log = keylog.parse(text)
    assert log.master_secret(bytes.fromhex("ab" * 32)) == bytes.fromhex("cd" * 48)
    assert log.problems == ["line 4: not an NSS key log line: 'nonsense'"]


def test_the_exporter_from_the_key_log_is_what_openssl_exported():
    """Two endpoints in memory: the master secret their key log gives, with the randoms on the wire, exports
    the same keying material OpenSSL handed the endpoints (RFC 5705, RFC 5764 §4.2)."""
    lines: list[str] = []
    client = dtls.DtlsEndpoint(dtls.Role.CLIENT, dtls.Certificate.generate("c"), on_key_log=lines.append)
    server = dtls.DtlsEndpoint(dtls.Role.SERVER, dtls.Certificate.generate("s"), on_key_log=lines.append)
    flights, to_server, hello_body = client.start(0.0), True, b""
    while flights:
        for datagram in flights:
            for record in dtls.parse_records(datagram):
                if record.epoch == 0 and record.content_type == dtls.ContentType.handshake:
                    for m in dtls.handshake_messages(record):
                        if m.msg_type == dtls.HandshakeType.server_hello:
                            hello_body = m.body
        receiver = server if to_server else client
        flights = [out for datagram in flights for out in receiver.receive(datagram, 0.0)]
        to_server = not to_server
    assert client.state == server.state == "connected"
    log = keylog.parse("\n".join(lines))
    hello = dtls.parse_server_hello(hello_body)
    client_random = client.client_random
    suite = dtls.CIPHER_SUITES[hello.cipher_suite]
    derived = keylog.derive_srtp(
        suite, log.master_secret(client_random), client_random, hello.random, client.selected_profile
    )
    keys = client.srtp_keys()
    assert (derived[0].key, derived[0].salt, derived[1].key, derived[1].salt) == (
        keys.local_key,
        keys.local_salt,
        keys.remote_key,
        keys.remote_salt,
    )


def test_the_ladder_from_the_wire_shows_each_link_crossed_and_the_drop(decoded):
    from pinhole.controller import ladder

    entries = wire.describe_call(decoded, decoded.call())
    drawing = ladder.render({"wire": entries, "events": []}).splitlines()
    assert drawing[0].split() == ["time(s)", "Alice", "NAT", "STUN", "srv", "Proxy", "A", "Proxy", "B", "Bob"]
    invite = next(line for line in drawing if "INVITE + SDP" in line)
    assert "+" in invite, "Alice's INVITE was captured crossing the NAT"
    dropped = next(line for line in drawing if "ClientHello" in line)
    assert "|X---" in dropped and "(re)" not in dropped, "the first ClientHello died at the NAT"
    resent = next(line for line in drawing if "ClientHello (re)" in line)
    assert resent.index("<") < resent.index("+"), "the retransmission reached Alice, through the NAT"
    assert sum("SRTP x50" in line for line in drawing) == 2
    hello = next(e for e in entries if "ClientHello" in e["summary"])
    assert hello["dropped"] and hello["reached"] == "natgw" and len(hello["links"]) == 2
