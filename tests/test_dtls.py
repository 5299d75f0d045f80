"""DTLS-SRTP endpoint (RFC 6347, RFC 5764, RFC 5763 §5) and the DTLS record codec.

Two DtlsEndpoints talk in memory with a fake clock: no sockets, time only moves when the test says so.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from pinhole.dtls import (
    DTLS_1_0,
    DTLS_1_2,
    AlertDescription,
    Certificate,
    ContentType,
    DtlsEndpoint,
    DtlsError,
    DtlsRecord,
    HandshakeHeader,
    HandshakeType,
    RetransmitTimer,
    Role,
    describe,
    handshake_messages,
    parse_records,
    selected_srtp_profile,
    use_srtp_profiles,
)
from pinhole.srtp import SrtpKeys

SHORT = RetransmitTimer(initial=0.05, maximum=0.4, max_transmissions=6)


@pytest.fixture(scope="module")
def bob_cert() -> Certificate:
    return Certificate.generate("bob")


@pytest.fixture(scope="module")
def alice_cert() -> Certificate:
    return Certificate.generate("alice")


@pytest.fixture(scope="module")
def mallory_cert() -> Certificate:
    return Certificate.generate("mallory")


def fp(cert: Certificate) -> list[tuple[str, bytes]]:
    return [("sha-256", cert.digest())]


@dataclass
class Sent:
    at: float
    sender: str
    index: int  # per sender
    datagram: bytes
    dropped: bool

    @property
    def info(self) -> dict[str, str]:
        return describe(self.datagram)


Drop = Callable[[str, int, bytes], bool]


@dataclass
class Link:
    """A lossy in-memory link between a client ("bob", DTLS active) and a server ("alice")."""

    client: DtlsEndpoint
    server: DtlsEndpoint
    drop: Drop = lambda sender, index, datagram: False
    now: float = 0.0
    log: list[Sent] = field(default_factory=list)
    queue: deque[tuple[str, bytes]] = field(default_factory=deque)

    def endpoint(self, name: str) -> DtlsEndpoint:
        return self.client if name == "client" else self.server

    def send(self, sender: str, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            index = sum(1 for s in self.log if s.sender == sender)
            dropped = self.drop(sender, index, datagram)
            self.log.append(Sent(self.now, sender, index, datagram, dropped))
            if not dropped:
                self.queue.append((sender, datagram))

    def run(self, max_steps: int = 500) -> Link:
        self.server.start(self.now)
        self.send("client", self.client.start(self.now))
        for _ in range(max_steps):
            if self.queue:
                sender, datagram = self.queue.popleft()
                receiver = "server" if sender == "client" else "client"
                self.send(receiver, self.endpoint(receiver).receive(datagram, self.now))
                continue
            deadlines = [
                (ep.next_deadline, name)
                for name, ep in (("client", self.client), ("server", self.server))
                if ep.next_deadline is not None
            ]
            if not deadlines:
                return self
            self.now, name = min(deadlines)
            self.send(name, self.endpoint(name).on_deadline(self.now))
        raise AssertionError("link did not settle")

    def sent(self, sender: str) -> list[Sent]:
        return [s for s in self.log if s.sender == sender]


def drop_first(sender: str, handshake_type: str) -> Drop:
    """Drop the first datagram from `sender` whose handshake types include `handshake_type`."""
    done: list[bool] = []

    def predicate(who: str, index: int, datagram: bytes) -> bool:
        kinds = describe(datagram).get("dtls.handshake_types", "").split(",") + describe(datagram).get(
            "dtls.content_types", ""
        ).split(",")
        if not done and who == sender and handshake_type in kinds:
            done.append(True)
            return True
        return False

    return predicate


def pair(bob_cert: Certificate, alice_cert: Certificate, **kwargs: object) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    client_kwargs = {k[7:]: v for k, v in kwargs.items() if k.startswith("client_")}
    server_kwargs = {k[7:]: v for k, v in kwargs.items() if k.startswith("server_")}
    client_kwargs.setdefault("peer_fingerprints", fp(alice_cert))
    server_kwargs.setdefault("peer_fingerprints", fp(bob_cert))
    return (
        DtlsEndpoint(Role.CLIENT, bob_cert, **client_kwargs),  # type: ignore[arg-type]
        DtlsEndpoint(Role.SERVER, alice_cert, **server_kwargs),  # type: ignore[arg-type]
    )


def assert_keys_agree(client: DtlsEndpoint, server: DtlsEndpoint) -> None:
    client_keys, server_keys = client.srtp_keys(), server.srtp_keys()
    assert client_keys.local_key == server_keys.remote_key
    assert client_keys.local_salt == server_keys.remote_salt
    assert client_keys.remote_key == server_keys.local_key
    assert client_keys.remote_salt == server_keys.local_salt
    assert client_keys.local_key != client_keys.remote_key
    assert client.exporter_digest() == server.exporter_digest()


# -- certificates -----------------------------------------------------------------------------------


def test_certificate_fingerprint_is_upper_case_hex_of_der(bob_cert: Certificate) -> None:
    value = bob_cert.fingerprint()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", value)
    assert value.replace(":", "").lower() == hashlib.sha256(bob_cert.der).hexdigest()
    assert bob_cert.fingerprint("SHA-1").replace(":", "").lower() == hashlib.sha1(bob_cert.der).hexdigest()
    assert bob_cert.digest() == hashlib.sha256(bob_cert.der).digest()


def test_certificate_pem_round_trip_and_fresh_keys(bob_cert: Certificate) -> None:
    loaded = Certificate.from_pem(bob_cert.certificate_pem, bob_cert.key_pem)
    assert loaded.der == bob_cert.der
    assert Certificate.generate().fingerprint() != Certificate.generate().fingerprint()


def test_unsupported_fingerprint_hash_is_refused(bob_cert: Certificate) -> None:
    with pytest.raises(DtlsError, match=r"^unsupported fingerprint hash function 'md5' \(supported: sha-1, "):
        bob_cert.fingerprint("md5")


def test_bad_configuration_is_refused(bob_cert: Certificate) -> None:
    with pytest.raises(DtlsError, match=r"^unknown SRTP protection profile 'SRTP_NULL_SHA1_80'"):
        DtlsEndpoint(Role.CLIENT, bob_cert, srtp_profiles=["SRTP_NULL_SHA1_80"])
    with pytest.raises(DtlsError, match=r"^mtu 200 is below 256 bytes$"):
        DtlsEndpoint(Role.CLIENT, bob_cert, mtu=200)
    with pytest.raises(DtlsError, match=r"^RetransmitTimer.maximum 0.5 is below initial 1.0$"):
        RetransmitTimer(maximum=0.5)
    with pytest.raises(DtlsError, match=r"^RetransmitTimer.max_transmissions must be >= 1, got 0$"):
        RetransmitTimer(max_transmissions=0)


# -- handshake ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "profile, key_len, salt_len",
    [
        ("SRTP_AEAD_AES_128_GCM", 16, 12),
        ("SRTP_AES128_CM_SHA1_80", 16, 14),
        ("SRTP_AES128_CM_SHA1_32", 16, 14),
    ],
)
def test_handshake_agrees_on_profile_and_keys(
    bob_cert: Certificate, alice_cert: Certificate, profile: str, key_len: int, salt_len: int
) -> None:
    client, server = pair(bob_cert, alice_cert, client_srtp_profiles=[profile], server_srtp_profiles=[profile])
    link = Link(client, server, now=10.0).run()
    assert client.state == server.state == "connected"
    assert client.selected_profile == server.selected_profile == profile
    keys = client.srtp_keys()
    assert isinstance(keys, SrtpKeys) and keys.profile == profile
    assert (len(keys.local_key), len(keys.local_salt)) == (key_len, salt_len)
    assert_keys_agree(client, server)
    assert client.fingerprint_verified and server.fingerprint_verified
    assert client.peer_certificate_der == alice_cert.der
    assert server.peer_certificate_der == bob_cert.der
    assert client.handshake_started_at == server.handshake_started_at == 10.0
    assert client.handshake_completed_at == server.handshake_completed_at == 10.0
    # flights 1+5 from the client, 4+6 from the server (no HelloVerifyRequest), nothing resent
    assert (client.transmissions, server.transmissions) == (2, 2)
    assert client.retransmissions == server.retransmissions == client.suppressed == 0
    assert client.next_deadline is None and server.next_deadline is None
    summaries = [s.info["summary"] for s in link.log]
    assert summaries == [
        "DTLS ClientHello",
        "DTLS ServerHello, Certificate, ServerKeyExchange, CertificateRequest, ServerHelloDone",
        "DTLS Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished",
        "DTLS ChangeCipherSpec, Finished",
    ]


def test_a_released_association_keeps_what_it_was_and_takes_no_more_datagrams(
    bob_cert: Certificate, alice_cert: Certificate
) -> None:
    """An ended call's association frees OpenSSL's state (an agent keeps 1,000 ended calls) and still answers
    for its state, keys and client random; a datagram or a timer reaching it does nothing."""
    client, server = pair(bob_cert, alice_cert)
    Link(client, server).run()
    random, keys = client.client_random, client.srtp_keys()
    hello = Link(*pair(bob_cert, alice_cert)).client.start(0.0)[0]
    client.release()
    assert (client.state, client.client_random, client.srtp_keys()) == ("connected", random, keys)
    assert client.receive(hello, 1.0) == [] and client.on_deadline(99.0) == []


def test_server_prefers_first_offered_profile(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, server = pair(bob_cert, alice_cert)  # defaults: GCM first, then AES-CM-80
    link = Link(client, server).run()
    assert client.selected_profile == "SRTP_AEAD_AES_128_GCM"
    assert link.log[0].info["dtls.use_srtp"] == "SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_SHA1_80"
    assert link.log[1].info["dtls.use_srtp"] == "SRTP_AEAD_AES_128_GCM"


def test_no_common_profile_fails(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, server = pair(
        bob_cert,
        alice_cert,
        client_srtp_profiles=["SRTP_AES128_CM_SHA1_80"],
        server_srtp_profiles=["SRTP_AEAD_AES_128_GCM"],
    )
    Link(client, server).run()
    assert server.state == client.state == "failed"
    assert server.failure_reason == (
        "no SRTP protection profile negotiated (offered SRTP_AEAD_AES_128_GCM, got none) (RFC 5764 §4.1.2)"
    )
    assert client.failure_reason == "DTLS handshake failed: tls alert handshake failure"
    with pytest.raises(DtlsError, match=r"^srtp_keys\(\) needs state connected, not failed$"):
        server.srtp_keys()


def test_client_fingerprint_mismatch_sends_bad_certificate(
    bob_cert: Certificate, alice_cert: Certificate, mallory_cert: Certificate
) -> None:
    client, server = pair(bob_cert, alice_cert, client_peer_fingerprints=fp(mallory_cert))
    link = Link(client, server).run()
    assert client.state == "failed"
    assert client.failure_reason == (
        f"peer certificate sha-256 {alice_cert.fingerprint()} matches no a=fingerprint (RFC 5763 §5)"
    )
    assert not client.fingerprint_verified
    assert client.peer_certificate_der == alice_cert.der
    alert = link.sent("client")[-1].info
    assert alert["summary"] == "DTLS Alert(fatal, bad_certificate)"
    assert alert["dtls.alert"] == "fatal:bad_certificate"
    assert server.state == "failed"
    assert server.failure_reason == "DTLS handshake failed: tls alert bad certificate"
    assert client.next_deadline is None and server.next_deadline is None


def test_server_fingerprint_mismatch_sends_bad_certificate(
    bob_cert: Certificate, alice_cert: Certificate, mallory_cert: Certificate
) -> None:
    client, server = pair(bob_cert, alice_cert, server_peer_fingerprints=fp(mallory_cert))
    link = Link(client, server).run()
    assert server.state == "failed"
    assert server.failure_reason == (
        f"peer certificate sha-256 {bob_cert.fingerprint()} matches no a=fingerprint (RFC 5763 §5)"
    )
    assert link.sent("server")[-1].info["summary"] == "DTLS Alert(fatal, bad_certificate)"
    assert client.state == "failed"
    assert client.failure_reason == "DTLS handshake failed: tls alert bad certificate"


def test_any_one_matching_fingerprint_is_enough(
    bob_cert: Certificate, alice_cert: Certificate, mallory_cert: Certificate
) -> None:
    fingerprints = [
        ("sha-1", mallory_cert.digest("sha-1")),
        ("SHA-384", alice_cert.digest("sha-384")),
    ]
    client, server = pair(bob_cert, alice_cert, client_peer_fingerprints=fingerprints)
    Link(client, server).run()
    assert client.state == "connected" and client.fingerprint_verified


def test_unusable_hash_functions_are_a_mismatch(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, server = pair(bob_cert, alice_cert, client_peer_fingerprints=[("md5", bytes(16))])
    Link(client, server).run()
    assert client.failure_reason == (
        f"peer certificate sha-256 {alice_cert.fingerprint()} matches no a=fingerprint (RFC 5763 §5); "
        "no supported hash function among the fingerprints (md5)"
    )


def test_tentative_acceptance_then_matching_fingerprints(bob_cert: Certificate, alice_cert: Certificate) -> None:
    # RFC 5763 §5: the offerer (server here) may get the ClientHello before the answer.
    client, server = pair(bob_cert, alice_cert, server_peer_fingerprints=None)
    Link(client, server).run()
    assert server.state == "connected" and not server.fingerprint_verified
    assert server.peer_certificate_der == bob_cert.der
    assert server.set_peer_fingerprints(fp(bob_cert), now=1.0) == []
    assert server.fingerprint_verified and server.state == "connected"


def test_tentative_acceptance_then_mismatch_fails_both_sides(
    bob_cert: Certificate, alice_cert: Certificate, mallory_cert: Certificate
) -> None:
    client, server = pair(bob_cert, alice_cert, server_peer_fingerprints=None)
    Link(client, server).run()
    out = server.set_peer_fingerprints(fp(mallory_cert), now=1.0)
    assert server.state == "failed"
    assert server.failure_reason == (
        f"peer certificate sha-256 {bob_cert.fingerprint()} matches no a=fingerprint (RFC 5763 §5)"
    )
    # plaintext in epoch 0 (for a peer that lost our ChangeCipherSpec) and encrypted in epoch 1
    assert len(out) == 1
    assert describe(out[0])["summary"] == "DTLS Alert(fatal, bad_certificate), Alert (encrypted)"
    assert client.receive(out[0], now=1.0) == []
    assert client.state == "failed"
    assert client.failure_reason == "DTLS failed: tls alert bad certificate"  # decrypted epoch-1 alert
    with pytest.raises(DtlsError, match=r"^srtp_keys\(\) needs state connected, not failed$"):
        server.srtp_keys()


def test_fingerprints_set_during_handshake_are_checked_at_certificate(
    bob_cert: Certificate, alice_cert: Certificate, mallory_cert: Certificate
) -> None:
    for fingerprints, state in ((fp(bob_cert), "connected"), (fp(mallory_cert), "failed")):
        client, server = pair(bob_cert, alice_cert, server_peer_fingerprints=None)
        server.start(0.0)
        flight4 = [d for d in server.receive(client.start(0.0)[0], 0.0)]
        assert server.set_peer_fingerprints(fingerprints, 0.0) == []  # no certificate yet
        flight5 = [d for datagram in flight4 for d in client.receive(datagram, 0.0)]
        for datagram in flight5:
            for reply in server.receive(datagram, 0.0):
                client.receive(reply, 0.0)
        assert server.state == state
        assert server.fingerprint_verified == (state == "connected")


# -- retransmission -----------------------------------------------------------------------------------


def test_retransmission_schedule_doubles_up_to_maximum_then_gives_up(
    bob_cert: Certificate, alice_cert: Certificate
) -> None:
    client, server = pair(bob_cert, alice_cert, client_timer=SHORT)
    link = Link(client, server, drop=lambda sender, index, datagram: True).run()
    times = [s.at for s in link.sent("client")]
    assert times == pytest.approx([0.0, 0.05, 0.15, 0.35, 0.75, 1.15])  # 0.05 doubling, capped at 0.4
    assert link.now == pytest.approx(1.55)
    assert client.state == "failed"
    assert client.failure_reason == "handshake timed out after 6 transmissions"
    assert (client.transmissions, client.retransmissions) == (6, 5)
    assert client.next_deadline is None and client.on_deadline(100.0) == []
    # RFC 6347 §4.2.4: same message_seq, new record sequence number every time
    assert [s.info["dtls.record_sequence"] for s in link.sent("client")] == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert {s.info["dtls.message_seq"] for s in link.sent("client")} == {"0"}


def test_default_timer_follows_rfc6347(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, server = pair(bob_cert, alice_cert, client_timer=RetransmitTimer(max_transmissions=9))
    link = Link(client, server, drop=lambda sender, index, datagram: True).run()
    assert [s.at for s in link.sent("client")] == [0, 1, 3, 7, 15, 31, 63, 123, 183]
    assert client.failure_reason == "handshake timed out after 9 transmissions"


def test_deadline_is_not_early(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, _ = pair(bob_cert, alice_cert, client_timer=SHORT)
    client.start(5.0)
    assert client.next_deadline == pytest.approx(5.05)
    assert client.on_deadline(5.04) == []
    assert len(client.on_deadline(5.05)) == 1
    assert client.next_deadline == pytest.approx(5.15)


def test_lost_client_hello_is_retransmitted_with_new_record_sequence(
    bob_cert: Certificate, alice_cert: Certificate
) -> None:
    client, server = pair(bob_cert, alice_cert, client_timer=SHORT, server_timer=SHORT)
    link = Link(client, server, drop=drop_first("client", "client_hello")).run()
    assert client.state == server.state == "connected"
    first, second = link.sent("client")[:2]
    assert first.dropped and not second.dropped
    assert second.at == pytest.approx(0.05)
    assert first.info["summary"] == second.info["summary"] == "DTLS ClientHello"
    assert (first.info["dtls.record_sequence"], second.info["dtls.record_sequence"]) == ("0", "1")
    assert first.info["dtls.message_seq"] == second.info["dtls.message_seq"] == "0"
    assert first.datagram[13:] == second.datagram[13:]  # same handshake bytes
    assert client.retransmissions == 1 and server.retransmissions == 0
    assert client.handshake_started_at == 0.0
    assert server.handshake_started_at == pytest.approx(0.05)
    assert client.handshake_completed_at == pytest.approx(0.05)
    assert_keys_agree(client, server)


@pytest.mark.parametrize(
    "sender, marker, resender",
    [
        ("server", "server_hello", "server"),  # flight 4: server timer (and client's CH resend)
        ("client", "client_key_exchange", "client"),  # flight 5: client timer
        ("server", "change_cipher_spec", "server"),  # flight 6: resent when flight 5 comes again
    ],
)
def test_lost_flights_4_5_6_recover(
    bob_cert: Certificate, alice_cert: Certificate, sender: str, marker: str, resender: str
) -> None:
    client, server = pair(bob_cert, alice_cert, client_timer=SHORT, server_timer=SHORT)
    link = Link(client, server, drop=drop_first(sender, marker)).run()
    assert client.state == server.state == "connected"
    assert_keys_agree(client, server)
    assert link.endpoint(resender).retransmissions >= 1
    seqs = [int(s.info["dtls.record_sequence"]) for s in link.sent(sender)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # epoch-0 numbers only grow


def test_lost_final_flight_is_resent_on_peer_retransmission(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, server = pair(bob_cert, alice_cert, client_timer=SHORT, server_timer=SHORT)
    link = Link(client, server, drop=drop_first("server", "change_cipher_spec")).run()
    flight6 = [s for s in link.sent("server") if s.info["summary"] == "DTLS ChangeCipherSpec, Finished"]
    assert [s.dropped for s in flight6] == [True, False]
    assert flight6[1].at == pytest.approx(0.05)  # when the client's timer resent flight 5
    assert server.retransmissions == 1 and client.retransmissions == 1
    # the ChangeCipherSpec is renumbered, the encrypted Finished goes out unchanged
    first, again = (parse_records(s.datagram) for s in flight6)
    assert again[0].sequence_number > first[0].sequence_number
    assert again[1] == first[1]


def small_mtu_pair(bob_cert: Certificate, alice_cert: Certificate) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    return pair(bob_cert, alice_cert, client_timer=SHORT, server_timer=SHORT, client_mtu=256, server_mtu=256)


def test_small_mtu_spreads_flights_over_datagrams(bob_cert: Certificate, alice_cert: Certificate) -> None:
    link = Link(*small_mtu_pair(bob_cert, alice_cert)).run()
    assert max(len(s.datagram) for s in link.log) <= 256
    assert [len(link.sent("client")), len(link.sent("server"))] == [4, 4]  # flights 1+5, 4+6
    assert link.client.state == link.server.state == "connected"


@pytest.mark.parametrize("sender, index", [(s, i) for s in ("client", "server") for i in range(4)])
def test_any_single_lost_datagram_is_recovered(
    bob_cert: Certificate, alice_cert: Certificate, sender: str, index: int
) -> None:
    """Flights 4 and 5 span three datagrams at this MTU; losing any one of them (or a whole short
    flight) must only cost a retransmission."""
    client, server = small_mtu_pair(bob_cert, alice_cert)
    Link(client, server, drop=lambda who, i, datagram: (who, i) == (sender, index)).run()
    assert client.state == server.state == "connected"
    assert client.retransmissions + server.retransmissions >= 1
    assert_keys_agree(client, server)


def test_openssl_own_retransmissions_are_suppressed(bob_cert: Certificate, alice_cert: Certificate) -> None:
    """OpenSSL's internal 1 s timer runs on the wall clock and cannot be faked: this test waits for it
    (about 1 s) so that OpenSSL retransmits on its own, then checks that nothing extra goes out."""
    client, server = pair(bob_cert, alice_cert)
    flight1 = client.start(0.0)
    server.start(0.0)
    flight4 = [d for datagram in flight1 for d in server.receive(datagram, 0.0)]
    waits = [ep._connection.DTLSv1_get_timeout() for ep in (client, server)]
    time.sleep(max(w for w in waits if w is not None) + 0.05)
    flight5 = [d for datagram in flight4 for d in client.receive(datagram, 0.1)]
    assert [describe(d)["summary"] for d in flight5] == [
        "DTLS Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished"
    ]
    assert client.suppressed == 1  # OpenSSL's copy of the ClientHello
    flight6 = [d for datagram in flight5 for d in server.receive(datagram, 0.2)]
    assert [describe(d)["summary"] for d in flight6] == ["DTLS ChangeCipherSpec, Finished"]
    assert server.suppressed == 5  # OpenSSL's copy of flight 4
    for datagram in flight6:
        client.receive(datagram, 0.3)
    assert client.state == server.state == "connected"
    assert client.retransmissions == server.retransmissions == 0
    assert_keys_agree(client, server)


# -- garbage, close -----------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"\x00\x01\x00\x00",  # STUN-ish
    b"\x80\x00\x00\x01" + bytes(20),  # RTP
    b"\x16\xfe\xfd\x00",  # truncated record header
    b"\x16\xfe\xfd" + bytes(8) + b"\x00\x20" + bytes(4),  # truncated fragment
    b"\x16\x03\x03" + bytes(8) + b"\x00\x00",  # TLS, not DTLS
    b"\x16\xfe\xfd" + bytes(8) + b"\x00\x01\x00",  # handshake header truncated
]


def test_garbage_is_counted_and_ignored(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, server = pair(bob_cert, alice_cert)
    server.start(0.0)
    flight1 = client.start(0.0)
    for datagram in GARBAGE:
        assert server.receive(datagram, 0.0) == []
        assert client.receive(datagram, 0.0) == []
    assert server.malformed == client.malformed == len(GARBAGE)
    assert (server.state, client.state) == ("handshaking", "handshaking")
    link = Link(client, server)
    link.queue.append(("client", flight1[0]))
    link.run()
    assert client.state == server.state == "connected"


def test_close_sends_close_notify(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, server = pair(bob_cert, alice_cert)
    Link(client, server).run()
    out = client.close(now=2.0)
    assert client.state == "closed"
    assert [describe(d)["summary"] for d in out] == ["DTLS Alert (encrypted)"]
    assert server.receive(out[0], now=2.0) == []
    assert server.state == "closed"
    assert client.close(now=3.0) == [] and client.receive(out[0], 3.0) == []


def test_close_during_handshake_is_plaintext(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, _ = pair(bob_cert, alice_cert)
    client.start(0.0)
    out = client.close(0.1)
    assert describe(out[0])["summary"] == "DTLS Alert(warning, close_notify)"
    assert client.state == "closed" and client.next_deadline is None


def test_client_ignores_datagrams_before_start(bob_cert: Certificate, alice_cert: Certificate) -> None:
    client, _ = pair(bob_cert, alice_cert)
    assert client.receive(b"\x16\xfe\xfd", 0.0) == []
    assert client.state == "new" and client.malformed == 0


# -- record codec -------------------------------------------------------------------------------------

# ServerHelloDone, message_seq 4, in an epoch-0 record with sequence number 1 (RFC 6347 §4.1, §4.2.2)
SERVER_HELLO_DONE = bytes.fromhex("16fefd0000000000000001000c0e0000000004000000000000")
CHANGE_CIPHER_SPEC = bytes.fromhex("14fefd0000000000000002000101")
FATAL_BAD_CERTIFICATE = bytes.fromhex("15fefd00000000000000030002022a")

# A minimal ClientHello body: version, random, empty session_id and cookie, one suite, null
# compression, extensions = use_srtp (14) with profiles 0x0007, 0x0001 and an empty MKI.
CLIENT_HELLO_BODY = bytes.fromhex("fefd" + "00" * 32 + "00000002c02b0100000b000e000700040007000100")
SERVER_HELLO_BODY = bytes.fromhex("fefd" + "11" * 32 + "00c02b000009000e00050002000700")


def test_record_encode_golden() -> None:
    record = DtlsRecord(ContentType.handshake, DTLS_1_2, 0, 1, bytes.fromhex("0e0000000004000000000000"))
    assert record.encode() == SERVER_HELLO_DONE


def test_parse_records_splits_a_datagram() -> None:
    records = parse_records(SERVER_HELLO_DONE + CHANGE_CIPHER_SPEC + FATAL_BAD_CERTIFICATE)
    assert [(r.content_type, r.epoch, r.sequence_number) for r in records] == [
        (ContentType.handshake, 0, 1),
        (ContentType.change_cipher_spec, 0, 2),
        (ContentType.alert, 0, 3),
    ]
    assert b"".join(r.encode() for r in records) == SERVER_HELLO_DONE + CHANGE_CIPHER_SPEC + FATAL_BAD_CERTIFICATE
    assert records[2].fragment == bytes([2, AlertDescription.bad_certificate])


@pytest.mark.parametrize(
    "datagram, message",
    [
        (b"", "datagram is empty"),
        (b"\x16\xfe\xfd\x00", "record 0 at offset 0: header truncated (4 of 13 bytes)"),
        (SERVER_HELLO_DONE[:20], "record 0 at offset 0: fragment truncated (7 of 12 bytes)"),
        (
            SERVER_HELLO_DONE + b"\x14\xfe",
            "record 1 at offset 25: header truncated (2 of 13 bytes)",
        ),
        (b"\x63" + SERVER_HELLO_DONE[1:], "record 0 at offset 0: unknown content type 99"),
        (
            b"\x16\x03\x03" + SERVER_HELLO_DONE[3:],
            "record 0 at offset 0: version 0x0303 is not DTLS",
        ),
    ],
)
def test_parse_records_errors(datagram: bytes, message: str) -> None:
    with pytest.raises(DtlsError, match=f"^{re.escape(message)}$"):
        parse_records(datagram)


def test_handshake_messages_golden() -> None:
    (record,) = parse_records(SERVER_HELLO_DONE)
    assert handshake_messages(record) == [HandshakeHeader(HandshakeType.server_hello_done, 0, 4, 0, 0)]
    fragment = bytes.fromhex("0b0000100001000004000004") + b"cert"
    (header,) = handshake_messages(DtlsRecord(ContentType.handshake, DTLS_1_0, 0, 7, fragment))
    assert header == HandshakeHeader(HandshakeType.certificate, 16, 1, 4, 4, b"cert")


@pytest.mark.parametrize(
    "record, message",
    [
        (
            DtlsRecord(ContentType.alert, DTLS_1_2, 0, 0, b"\x02\x2a"),
            "record content type 21 is not handshake",
        ),
        (
            DtlsRecord(ContentType.handshake, DTLS_1_2, 1, 0, bytes(40)),
            "record epoch 1 is encrypted; only epoch 0 can be read",
        ),
        (
            DtlsRecord(ContentType.handshake, DTLS_1_2, 0, 0, b"\x01\x00\x00"),
            "handshake message 0 at offset 0: header truncated (3 of 12 bytes)",
        ),
        (
            DtlsRecord(ContentType.handshake, DTLS_1_2, 0, 0, bytes.fromhex("0b000004000000000200000a")),
            "handshake message 0 at offset 0: fragment 2+10 exceeds message length 4",
        ),
        (
            DtlsRecord(ContentType.handshake, DTLS_1_2, 0, 0, bytes.fromhex("0b0000040000000000000004ab")),
            "handshake message 0 at offset 0: body truncated (1 of 4 bytes)",
        ),
    ],
)
def test_handshake_messages_errors(record: DtlsRecord, message: str) -> None:
    with pytest.raises(DtlsError, match=f"^{re.escape(message)}$"):
        handshake_messages(record)


def test_use_srtp_profiles_golden() -> None:
    assert use_srtp_profiles(CLIENT_HELLO_BODY) == [0x0007, 0x0001]
    assert use_srtp_profiles(CLIENT_HELLO_BODY[:-13]) == []  # no extensions at all
    assert selected_srtp_profile(SERVER_HELLO_BODY) == 0x0007
    with pytest.raises(DtlsError, match=r"^ClientHello: random truncated at offset 2 \(3 of 32 bytes\)$"):
        use_srtp_profiles(CLIENT_HELLO_BODY[:5])


def test_use_srtp_profiles_of_a_real_client_hello(bob_cert: Certificate) -> None:
    client = DtlsEndpoint(Role.CLIENT, bob_cert, srtp_profiles=["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"])
    (datagram,) = client.start(0.0)
    (record,) = parse_records(datagram)
    (hello,) = handshake_messages(record)
    assert hello.msg_type == HandshakeType.client_hello
    assert use_srtp_profiles(hello.body) == [0x0001, 0x0007]


def test_describe_golden() -> None:
    assert describe(SERVER_HELLO_DONE + CHANGE_CIPHER_SPEC) == {
        "kind": "dtls",
        "dtls.content_types": "handshake,change_cipher_spec",
        "dtls.epochs": "0",
        "dtls.record_sequence": "1",
        "dtls.handshake_types": "server_hello_done",
        "dtls.message_seq": "4",
        "summary": "DTLS ServerHelloDone, ChangeCipherSpec",
    }
    assert describe(FATAL_BAD_CERTIFICATE)["summary"] == "DTLS Alert(fatal, bad_certificate)"
    encrypted = DtlsRecord(ContentType.handshake, DTLS_1_2, 1, 0, bytes(40)).encode()
    info = describe(CHANGE_CIPHER_SPEC + encrypted)
    assert (info["summary"], info["dtls.handshake_types"], info["dtls.epochs"]) == (
        "DTLS ChangeCipherSpec, Finished",
        "encrypted",
        "0,1",
    )


@pytest.mark.parametrize("datagram", GARBAGE)
def test_describe_never_raises(datagram: bytes) -> None:
    info = describe(datagram)
    assert info["kind"] == "dtls" and info["summary"] == "DTLS (malformed)" and info["error"]


# -- deviations on purpose (pinhole.deviations) -----------------------------------------------------


def test_byte_identical_hello_resend_repeats_the_first_record_numbers(bob_cert: Certificate, alice_cert: Certificate):
    client, server = pair(bob_cert, alice_cert, client_deviations=frozenset({"byte-identical-hello-resend"}))
    link = Link(client, server, drop_first("client", "client_hello")).run()
    hellos = [s for s in link.sent("client") if "client_hello" in s.info.get("dtls.handshake_types", "")]
    assert hellos[0].datagram == hellos[1].datagram, "the retransmission is the first one, byte for byte"
    assert client.state == server.state == "connected"  # the server never saw record 0: it accepts it


def test_resend_flight_now_sends_the_pending_flight_again(bob_cert: Certificate, alice_cert: Certificate):
    client, _ = pair(bob_cert, alice_cert)
    first = client.start(0.0)
    again = client.resend_flight_now(0.01)
    assert describe(again[0])["dtls.handshake_types"] == "client_hello"
    assert describe(again[0])["dtls.record_sequence"] != describe(first[0])["dtls.record_sequence"]
    assert client.next_deadline == 1.0, "the timer is left as it was"


def test_skip_fingerprint_check_goes_on_with_any_certificate(
    bob_cert: Certificate, alice_cert: Certificate, mallory_cert: Certificate
):
    client, server = pair(
        bob_cert, alice_cert, server_peer_fingerprints=fp(mallory_cert),
        server_deviations=frozenset({"skip-fingerprint-check"}),
    )  # fmt: skip
    Link(client, server).run()
    assert server.state == "connected" and server.fingerprint_verified  # what the deviation says of itself


def test_no_certificate_request_sends_none_and_goes_on_unverified(bob_cert: Certificate, alice_cert: Certificate):
    client, server = pair(bob_cert, alice_cert, server_deviations=frozenset({"no-certificate-request"}))
    link = Link(client, server).run()
    server_types = ",".join(s.info.get("dtls.handshake_types", "") for s in link.sent("server"))
    assert "certificate_request" not in server_types and "server_hello" in server_types
    assert server.state == client.state == "connected" and server.peer_certificate_der is None
    assert server.fingerprint_verified and client.fingerprint_verified
