"""RFC 8224 on the user agents, on loopback: Alice signs, Bob verifies, and the rewritten offer of RFC 5763 §8
is refused with 438 before any DTLS. No lab, no root.

The two agents talk SIP straight to each other as in test_session_modification.py; the man in the middle
is a relay between them that rewrites the INVITE's a=fingerprint and leaves its Identity as it was.
"""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pinhole import labca
from pinhole.address import Address
from pinhole.rpc.v1 import useragent_pb2
from pinhole.sip.identity import load_certificates, load_signing_key
from services.useragent.__main__ import config_from_proto
from services.useragent.agent import IdentityPolicy, UserAgent
from tests.test_control_plane_input import refusal, with_user_agent
from tests.test_session_modification import agents, established, kinds, until

ALICE = "sip:alice@a.example"
AUTHORITY = labca.Authority("identity test CA", days=1)
ALICE_TLS = labca.issue_identity(AUTHORITY, ALICE)


def signer(tls: labca.TlsFiles = ALICE_TLS) -> IdentityPolicy:
    return IdentityPolicy(key=load_signing_key(tls.key), chain=tuple(load_certificates(tls.cert)))


def verifier(ca_pem: bytes = AUTHORITY.ca_pem, require: bool = True) -> IdentityPolicy:
    return IdentityPolicy(trust_anchors=tuple(load_certificates(ca_pem)), require=require)


class FingerprintRewriter(asyncio.DatagramProtocol):
    """RFC 5763 §8's proxy at its simplest: relays between Alice and Bob and, in Alice's INVITEs, puts another
    fingerprint (of the same length) in a=fingerprint; the Identity goes through as it was."""

    def __init__(self, bob: Address) -> None:
        self.bob, self.alice, self.rewritten = bob, None, 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        if addr == self.bob:
            self.transport.sendto(data, self.alice)
            return
        self.alice = addr
        if data.startswith(b"INVITE "):
            data, count = re.subn(rb"(a=fingerprint:sha-256 )[0-9A-F:]+", rb"\g<1>" + b":".join([b"EE"] * 32), data)
            self.rewritten += count
        self.transport.sendto(data, self.bob)


async def via_rewriter(alice: UserAgent, bob: UserAgent) -> FingerprintRewriter:
    assert bob.endpoint is not None
    loop = asyncio.get_running_loop()
    _, relay = await loop.create_datagram_endpoint(
        lambda: FingerprintRewriter(bob.endpoint.local_address), local_addr=("127.0.0.1", 0)
    )
    assert relay.transport is not None
    alice.config.outbound_proxy = relay.transport.get_extra_info("sockname")
    return relay


def test_a_signed_invite_is_verified_and_the_call_goes_on():
    async def scenario():
        async with agents({"identity": signer()}, {"identity": verifier()}) as (alice, bob):
            call_id = await established(alice, bob)
            [signed] = kinds(alice.events, "identity.signed")
            [verified] = kinds(bob.events, "identity.verified")
            fingerprint = alice.calls[call_id].certificate.fingerprint("sha-256")  # type: ignore[union-attr]
            assert signed["mky"] == verified["mky"] == f"sha-256 {fingerprint}"
            assert (verified["orig"], verified["dest"], verified["signer"]) == (ALICE, "sip:bob@b.example", ALICE)
            assert verified["iat"] == signed["iat"] and verified["form"] == "full"
            assert bob.counters["identity_verified"] == 1 and not kinds(bob.events, "identity.rejected")
            # a re-INVITE is signed and verified too (RFC 5763 §6.6: its new fingerprint is what mky carries)
            modification = await alice.reinvite(call_id, new_certificate=True)
            assert modification.status_code == 200 and modification.new_association
            new = kinds(bob.events, "identity.verified")[1]
            assert new["mky"] != verified["mky"] and kinds(alice.events, "identity.signed")[1]["method"] == "INVITE"

    asyncio.run(scenario())


def test_the_rewritten_offer_of_rfc_5763_section_8_gets_438_and_no_dtls():
    async def scenario():
        async with agents({"identity": signer()}, {"identity": verifier()}) as (alice, bob):
            relay = await via_rewriter(alice, bob)
            call_id = await alice.place_call("sip:bob@b.example")
            await until(lambda: alice.calls[call_id].state == "failed")
            assert relay.rewritten == 1
            assert alice.calls[call_id].reason == "INVITE rejected: 438 Invalid Identity Header"
            [rejected] = kinds(bob.events, "identity.rejected")
            assert (rejected["status"], rejected["reason"]) == ("438", "Invalid Identity Header")
            assert rejected["detail"].startswith("mky (sha-256 ") and "EE:EE:EE" in rejected["detail"]
            call = bob.calls[call_id]
            assert call.state == "failed" and call.reason.startswith("Identity refused (RFC 8224 §6.2): 438")
            assert call.media is None and not kinds(bob.events, "dtls.start")  # no DTLS, no 200
            assert {e["sip.status_code"] for e in kinds(bob.events, "sip.send")} == {"438"}  # no 180, no 200
            relay.transport.close()  # type: ignore[union-attr]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("alice", "bob", "status", "reason"),
    [
        ({}, {"identity": verifier()}, 428, "Use Identity Header"),
        (
            {"identity": signer()},
            {"identity": verifier(labca.Authority("another CA").ca_pem)},
            437,
            "Unsupported Credential",
        ),
    ],
    ids=["unsigned-but-required", "another-ca"],
)
def test_bob_refuses_with_the_rfc_8224_status(alice: dict, bob: dict, status: int, reason: str):  # type: ignore[type-arg]
    async def scenario():
        async with agents(alice, bob) as (caller, callee):
            call_id = await caller.place_call("sip:bob@b.example")
            await until(lambda: caller.calls[call_id].state == "failed")
            assert caller.calls[call_id].reason == f"INVITE rejected: {status} {reason}"
            [rejected] = kinds(callee.events, "identity.rejected")
            assert rejected["status"] == str(status) and callee.calls[call_id].media is None

    asyncio.run(scenario())


def test_an_unsigned_invite_goes_through_when_identity_is_not_required():
    async def scenario():
        async with agents({}, {"identity": verifier(require=False)}) as (alice, bob):
            await established(alice, bob)
            assert not kinds(bob.events, "identity.verified") and not kinds(bob.events, "identity.rejected")

    asyncio.run(scenario())


# -- the control plane ----------------------------------------------------------------------------------


def configured(**identity: object) -> useragent_pb2.UserAgentConfig:
    return useragent_pb2.UserAgentConfig(aor=ALICE, identity=useragent_pb2.Identity(**identity))  # type: ignore[arg-type]


EVE = labca.issue_identity(AUTHORITY, "sip:eve@a.example")
P384_KEY = labca._key_pem(ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.parametrize(
    ("identity", "details"),
    [
        (
            {"signing_key_pem": b"junk", "certificate_chain_pem": ALICE_TLS.cert},
            "identity.signing_key_pem: not an unencrypted PEM private key",
        ),
        (
            {"signing_key_pem": P384_KEY, "certificate_chain_pem": ALICE_TLS.cert},
            "identity.signing_key_pem: an EC secp384r1 key, not P-256",
        ),
        (
            {"certificate_chain_pem": ALICE_TLS.cert},
            "identity.signing_key_pem: a certificate chain to sign with needs its key",
        ),
        ({"signing_key_pem": ALICE_TLS.key}, "identity.certificate_chain_pem: a signing key needs its certificate"),
        (
            {"signing_key_pem": ALICE_TLS.key, "certificate_chain_pem": b"junk"},
            "identity.certificate_chain_pem: no PEM certificate",
        ),
        (
            {"signing_key_pem": EVE.key, "certificate_chain_pem": ALICE_TLS.cert},
            "identity.certificate_chain_pem: the first certificate is not the signing key's",
        ),
        (
            {"signing_key_pem": EVE.key, "certificate_chain_pem": EVE.cert},
            "identity.certificate_chain_pem: the first certificate covers sip:eve@a.example, not sip:alice@a.example",
        ),
        ({"trust_anchors_pem": b"junk"}, "identity.trust_anchors_pem: no PEM certificate"),
        ({"require": True}, "identity.require: an Identity can be required only with trust_anchors_pem to verify it"),
    ],
)
def test_configure_refuses_identity_credentials_that_do_not_fit_naming_the_field(identity: dict, details: str):  # type: ignore[type-arg]
    code, message = refusal(lambda stub: stub.Configure(configured(**identity)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith(details)


def test_configure_takes_identity_credentials_and_does_not_echo_the_key():
    request = configured(
        signing_key_pem=ALICE_TLS.key,
        certificate_chain_pem=ALICE_TLS.cert,
        trust_anchors_pem=AUTHORITY.ca_pem,
        require=True,
    )
    reply = with_user_agent(lambda stub: stub.Configure(request))
    assert (
        reply.effective.identity.signing_key_pem == b""
        and reply.effective.identity.certificate_chain_pem == ALICE_TLS.cert
    )
    policy = config_from_proto(request).identity
    assert policy.key is not None and len(policy.chain) == 1 and len(policy.trust_anchors) == 1 and policy.require
    assert config_from_proto(useragent_pb2.UserAgentConfig(aor=ALICE)).identity == IdentityPolicy()
