"""RFC 8224 Identity with RFC 8225 PASSporTs: signing, and every refusal of RFC 8224 §6.2 with its response.

Credentials come from a lab CA made per test (pinhole.labca); requests are real INVITEs with a DTLS-SRTP
offer, so `mky` covers a real a=fingerprint.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import random
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pinhole import labca, sdp
from pinhole.dtls import Certificate
from pinhole.sip.identity import (
    IdentityError,
    authenticate,
    canonical_json,
    info_uri,
    load_certificates,
    load_signing_key,
    mky,
    parse_identity,
    peek,
    sign,
    signer_problem,
    verify,
)
from pinhole.sip.message import Headers, Request, parse_message

ALICE, BOB = "sip:alice@a.example", "sip:bob@b.example"
NOW = float(int(time.time()))  # every function takes the time as an argument; the lab CA issues around now
DATE = email.utils.formatdate(NOW, usegmt=True)  # RFC 1123, as the Date header has it (RFC 3261 §20.17)


class Lab:
    """A lab CA and Alice's signing credentials from it."""

    def __init__(self, aor: str = ALICE, **issue: object) -> None:
        # valid around NOW, the tests' clock, however long after collection (when NOW is read) the tests run
        issued = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
        self.authority = labca.Authority("identity test CA", days=1, now=issued)
        issue.setdefault("not_before", issued - labca.CLOCK_SKEW)
        issue.setdefault("not_after", issued + datetime.timedelta(days=1))
        tls = labca.issue_identity(self.authority, aor, **issue)  # type: ignore[arg-type]
        self.key = load_signing_key(tls.key) if issue.get("key") is None else issue["key"]
        self.chain = load_certificates(tls.cert)
        self.anchors = load_certificates(tls.ca)


@pytest.fixture(scope="module")
def lab() -> Lab:
    return Lab()


def offer(*fingerprints: sdp.Fingerprint) -> bytes:
    fingerprints = fingerprints or (sdp.certificate_fingerprint(Certificate.generate("alice").der),)
    return sdp.serialize(
        sdp.build_offer(
            address="192.0.2.10",
            port=40000,
            fingerprints=list(fingerprints),
            session_id=1,
            session_version=1,
            username="alice",
            setup=sdp.Setup.ACTPASS,
            rtcp_mux=True,
            rtcp=None,
        )
    ).encode()


def invite(body: bytes | None = None, **replace: str) -> Request:
    headers = {
        "Via": "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1;rport",
        "Max-Forwards": "70",
        "From": f'"Alice" <{ALICE}>;tag=a1',
        "To": f"<{BOB}>",
        "Call-ID": "call-1@192.0.2.10",
        "CSeq": "1 INVITE",
        "Content-Type": "application/sdp",
        **replace,
    }
    return Request("INVITE", BOB, Headers(headers.items()), offer() if body is None else body)


def signed(lab: Lab, request: Request | None = None, now: float = NOW) -> Request:
    request = request if request is not None else invite()
    authenticate(request, lab.key, lab.chain, now)
    return request


def refusal(request: Request, anchors: list, now: float = NOW, **options: object) -> IdentityError:  # type: ignore[type-arg]
    with pytest.raises(IdentityError) as raised:
        verify(request, anchors, now, **options)  # type: ignore[arg-type]
    return raised.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(lab: Lab, header: dict, claims: dict, key: ec.EllipticCurvePrivateKey | None = None) -> str:  # type: ignore[type-arg]
    """An Identity value signed (ES256) over whatever header and claims a test wants."""
    key = key or lab.key
    signing_input = f"{b64(canonical_json(header))}.{b64(canonical_json(claims))}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    info = info_uri(lab.chain)
    return f"{signing_input}.{b64(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))};info=<{info}>;alg=ES256"


def parts(request: Request) -> tuple[dict, dict, str]:  # type: ignore[type-arg]
    token = parse_identity(request.headers.get("Identity") or "").passport
    head, body, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(head + "==")),
        json.loads(base64.urlsafe_b64decode(body + "==")),
        signature,
    )


def with_identity(request: Request, value: str) -> Request:
    request.headers.set("Identity", value)
    return request


# -- the PASSporT itself --------------------------------------------------------------------------------


def test_canonical_json_is_rfc_8225_appendix_a():
    """RFC 8225 §9's form: sorted keys, no whitespace; the RFC's header and claims, byte for byte."""
    header = {"typ": "passport", "x5u": "https://cert.example.org/passport.cer", "alg": "ES256"}
    claims = {"orig": {"tn": "12155551212"}, "iat": 1471375418, "dest": {"uri": ["sip:alice@example.com"]}}
    assert canonical_json(header) == b'{"alg":"ES256","typ":"passport","x5u":"https://cert.example.org/passport.cer"}'
    assert b64(canonical_json(header)) == (
        "eyJhbGciOiJFUzI1NiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1wbGUub3JnL3Bhc3Nwb3J0LmNlciJ9"
    )
    assert b64(canonical_json(claims)) == (
        "eyJkZXN0Ijp7InVyaSI6WyJzaXA6YWxpY2VAZXhhbXBsZS5jb20iXX0sImlhdCI6MTQ3MTM3NTQxOCwib3JpZyI6eyJ0biI6IjEyMTU1NTUxMjEyIn19"
    )


def test_mky_is_sorted_by_alg_then_dig_with_upper_case_hex():
    fingerprints = [
        sdp.Fingerprint("sha-256", bytes([0xAB] * 32)),
        sdp.Fingerprint("sha-1", bytes([0x01] * 20)),
        sdp.Fingerprint("sha-256", bytes([0x0A] * 32)),
    ]
    assert mky(fingerprints) == [
        {"alg": "sha-1", "dig": ":".join(["01"] * 20)},
        {"alg": "sha-256", "dig": ":".join(["0A"] * 32)},
        {"alg": "sha-256", "dig": ":".join(["AB"] * 32)},
    ]
    assert canonical_json(mky(fingerprints[1:2])) == b'[{"alg":"sha-1","dig":"' + b":".join([b"01"] * 20) + b'"}]'


def test_sign_and_verify_round_trip(lab: Lab):
    fingerprint = sdp.certificate_fingerprint(Certificate.generate("alice").der)
    request = invite(offer(fingerprint))
    made = authenticate(request, lab.key, lab.chain, NOW)
    # RFC 8224 §5: the authentication service adds the Date the iat is taken from
    assert request.headers.get("Date") == DATE
    assert made.iat == int(NOW) and made.orig == ALICE and made.dest == (BOB,)
    assert made.mky == (str(fingerprint),)
    header, claims, signature = parts(request)
    assert header == {"alg": "ES256", "typ": "passport", "x5u": info_uri(lab.chain)}
    assert claims == {
        "orig": {"uri": ALICE},
        "dest": {"uri": [BOB]},
        "iat": int(NOW),
        "mky": [{"alg": "sha-256", "dig": str(fingerprint).split(" ")[1]}],
    }
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64  # r||s (RFC 7518 §3.4)
    value = request.headers.get("Identity") or ""
    assert value.endswith(f";info=<{info_uri(lab.chain)}>;alg=ES256")
    assert info_uri(lab.chain).startswith("data:application/pem-certificate-chain;base64,LS0tLS1CRUdJTi")
    # it survives the wire: encoded and parsed again, then verified 30 s later
    arrived = parse_message(request.encode())
    assert isinstance(arrived, Request)
    checked = verify(arrived, lab.anchors, NOW + 30)
    assert checked is not None
    assert (checked.orig, checked.dest, checked.iat, checked.mky) == (made.orig, made.dest, made.iat, made.mky)
    assert checked.signer == ALICE and not checked.compact
    assert peek(value) == made


def test_a_request_without_sdp_is_signed_without_mky(lab: Lab):
    request = signed(lab, invite(b"", **{"Content-Type": "text/plain"}))
    assert "mky" not in parts(request)[1]
    assert verify(request, lab.anchors, NOW) is not None


def test_the_compact_form_is_rebuilt_from_the_request(lab: Lab):
    """RFC 8225 §7: `..signature`, header and claims rebuilt from info, From, To, Date and the SDP."""
    request = signed(lab)
    value = request.headers.get("Identity") or ""
    _, _, signature = parse_identity(value).passport.split(".")
    with_identity(request, f"..{signature}" + value[value.index(";") :])
    checked = verify(request, lab.anchors, NOW)
    assert checked is not None and checked.compact and checked.orig == ALICE
    request.body = offer()  # another fingerprint: the rebuilt claims differ from those signed
    assert refusal(request, lab.anchors).status == 438


def test_one_good_identity_of_several_is_enough(lab: Lab):
    request = signed(lab)
    good = request.headers.get("Identity") or ""
    request.headers.insert_first("Identity", "e30.e30.AAAA;info=<https://example.com/x.pem>")
    assert verify(request, lab.anchors, NOW) is not None
    request.headers.remove_all("Identity")
    request.headers.add("Identity", "e30.e30.AAAA;info=<https://example.com/x.pem>")
    assert refusal(request, lab.anchors).status == 438
    request.headers.add("Identity", good)
    assert verify(request, lab.anchors, NOW) is not None


# -- each refusal and its response (RFC 8224 §6.2) ----------------------------------------------------------


def test_a_missing_identity_is_428_only_when_required(lab: Lab):
    assert verify(invite(), lab.anchors, NOW) is None
    error = refusal(invite(), lab.anchors, require=True)
    assert (error.status, error.reason) == (428, "Use Identity Header")


def test_a_rewritten_fingerprint_is_438(lab: Lab):
    """The man in the middle of RFC 5763 §8: the offer's a=fingerprint replaced, the Identity kept."""
    request = signed(lab)
    request.body = offer()
    error = refusal(request, lab.anchors)
    assert (error.status, error.reason) == (438, "Invalid Identity Header")
    assert error.detail.startswith("mky (sha-256 ") and "is not the SDP's a=fingerprint" in error.detail


def test_a_tampered_mky_claim_breaks_the_signature(lab: Lab):
    request = signed(lab)
    value = request.headers.get("Identity") or ""
    head, body, signature = parse_identity(value).passport.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["mky"][0]["dig"] = claims["mky"][0]["dig"].replace("A", "B", 1).replace("0", "1", 1)
    tampered = f"{head}.{b64(canonical_json(claims))}.{signature}"
    error = refusal(with_identity(request, tampered + value[value.index(";") :]), lab.anchors)
    assert (error.status, error.detail) == (438, "the signature does not verify with the certificate's key")


def test_a_tampered_from_or_to_is_438(lab: Lab):
    request = signed(lab)
    request.headers.set("From", "<sip:eve@a.example>;tag=e1")
    error = refusal(request, lab.anchors)
    assert (error.status, error.detail) == (
        438,
        "orig sip:alice@a.example is not the From sip:eve@a.example (RFC 8224 §6.2 step 5)",
    )
    request = signed(lab)
    request.headers.set("To", "<sip:carol@b.example>")
    error = refusal(request, lab.anchors)
    assert (error.status, error.detail) == (438, "dest ['sip:bob@b.example'] does not hold the To sip:carol@b.example")


def test_display_names_parameters_and_host_case_do_not_count(lab: Lab):
    """RFC 8224 §8: orig and dest are the AoRs."""
    request = signed(
        lab, invite(From='"A. Liddell" <sip:alice@A.EXAMPLE;transport=udp>;tag=x', To="Bob <sip:bob@b.example>")
    )
    assert parts(request)[1]["orig"] == {"uri": ALICE}
    assert verify(request, lab.anchors, NOW) is not None


def test_a_certificate_from_another_ca_is_437(lab: Lab):
    error = refusal(signed(lab), Lab().anchors)
    assert (error.status, error.reason) == (437, "Unsupported Credential")
    assert "no trust anchor vouches for the certificate" in error.detail
    assert refusal(signed(lab), []).detail == "this verifier has no trust anchor"


def test_an_expired_certificate_is_437():
    past = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc) - datetime.timedelta(days=2)
    old = Lab(not_before=past, not_after=past + datetime.timedelta(hours=1))
    error = refusal(signed(old), old.anchors)
    assert error.status == 437 and "cert is not valid at validation time" in error.detail


def test_a_key_that_is_not_p256_is_437():
    p384 = ec.generate_private_key(ec.SECP384R1())
    lab = Lab(key=p384)
    with pytest.raises(ValueError, match="P-256"):
        authenticate(invite(), p384, lab.chain, NOW)  # the signer refuses too
    request = invite(Date=DATE)
    claims = {"orig": {"uri": ALICE}, "dest": {"uri": [BOB]}, "iat": int(NOW)}
    claims["mky"] = mky(sdp.facts(request.body).parsed_fingerprints())
    header = {"alg": "ES256", "typ": "passport", "x5u": info_uri(lab.chain)}
    error = refusal(with_identity(request, forged(lab, header, claims, p384)), lab.anchors)
    assert error.status == 437 and error.detail.endswith("is an EC secp384r1 key, not P-256: it cannot verify ES256")


def test_a_certificate_that_does_not_cover_orig_is_437():
    eve = Lab("sip:eve@a.example")
    error = refusal(signed(eve), eve.anchors)
    assert (error.status, error.detail) == (
        437,
        "the certificate covers sip:eve@a.example, not orig sip:alice@a.example (RFC 8224 §7.1)",
    )


def test_stale_date_or_iat_is_403(lab: Lab):
    error = refusal(signed(lab), lab.anchors, NOW + 61)
    assert (error.status, error.reason) == (403, "Stale Date")
    assert error.detail == f"Date '{DATE}' is -61 s from now (freshness 60 s)"
    request = invite(Date=DATE)  # a fresh Date, an iat two minutes older
    claims = {"orig": {"uri": ALICE}, "dest": {"uri": [BOB]}, "iat": int(NOW) - 120}
    claims["mky"] = mky(sdp.facts(request.body).parsed_fingerprints())
    header = {"alg": "ES256", "typ": "passport", "x5u": info_uri(lab.chain)}
    error = refusal(with_identity(request, forged(lab, header, claims)), lab.anchors)
    assert (error.status, error.detail) == (403, f"iat {int(NOW) - 120} is -120 s from now (freshness 60 s)")
    request = signed(lab)
    request.headers.remove_all("Date")
    assert refusal(request, lab.anchors).detail == "no Date header (RFC 8224 §4: a request with Identity carries one)"
    request.headers.add("Date", "yesterday")
    assert refusal(request, lab.anchors).status == 403
    with pytest.raises(IdentityError, match="403 Stale Date"):  # the authentication service refuses one too
        authenticate(invite(Date=email.utils.formatdate(NOW + 3600, usegmt=True)), lab.key, lab.chain, NOW)


def test_an_info_that_cannot_be_dereferenced_is_436(lab: Lab):
    request = signed(lab)
    value = request.headers.get("Identity") or ""
    token, claims = value[: value.index(";")], parts(request)[1]
    cases = {
        f"{token};alg=ES256": "no info parameter: nothing names the signer's credential (RFC 8224 §4.1)",
        f"{token};info=<https://cert.a.example/alice.pem>": "the PASSporT's x5u is not the info parameter's URI",
        f"{token};info=https://cert.a.example/alice.pem": "is not <absoluteURI> (RFC 8224 §4.1)",
    }
    for bad, detail in cases.items():
        error = refusal(with_identity(request, bad), lab.anchors)
        assert (error.status, error.reason) == (436, "Bad Identity Info") and detail in error.detail, bad
    # an x5u that names what cannot be fetched, signed as it is
    for x5u, detail in [
        ("https://cert.a.example/alice.pem", "only data: URIs (RFC 2397) dereference here, with no fetch"),
        ("data:text/plain;base64,AAAA", "a data: URI of 'text/plain', not application/pem-certificate-chain"),
        ("data:application/pem-certificate-chain;base64,!!", "holds no PEM certificate chain"),
        ("data:application/pem-certificate-chain;base64,QUFBQQ==", "holds no PEM certificate chain"),
        ("data:application/pem-certificate-chain", "without the ',' before its data"),
    ]:
        forged_value = forged(lab, {"alg": "ES256", "typ": "passport", "x5u": x5u}, claims)
        forged_value = forged_value[: forged_value.index(";")] + f";info=<{x5u}>"
        error = refusal(with_identity(request, forged_value), lab.anchors)
        assert error.status == 436 and detail in error.detail, x5u


def test_malformed_passports_are_438(lab: Lab):
    request = signed(lab)
    value = request.headers.get("Identity") or ""
    token, params = value[: value.index(";")], value[value.index(";") :]
    head, body, signature = token.split(".")
    repeated = b64(b'{"alg":1,"alg":2}')
    cases = {
        f"{head}.{body}{params}": "is not a PASSporT in JWS compact serialization",
        f"{head}.{body}.{signature}.x{params}": "is not a PASSporT in JWS compact serialization",
        f"{head}.{body}+.{signature}{params}": "is not a PASSporT in JWS compact serialization",
        f"{head}.{body}.{signature[:-4]}{params}": "an ES256 signature is 64 bytes (r||s, RFC 7518 §3.4), not 61",
        f"{head}.{body[:-2]}.{signature}{params}": "the PASSporT's claims is not",
        f"{b64(b'[1]')}.{body}.{signature}{params}": "the PASSporT's header is not a JSON object",
        f"{repeated}.{body}.{signature}{params}": "a member name repeats",
        f"{head}.{body}.{signature}{params};alg=RS256": "parameter alg repeats",
        f"{head}.{body}.{signature};info=<{info_uri(lab.chain)}>;alg=none": "alg=none: only ES256 is accepted",
        f"{token}{params};ppt=shaken": "ppt=shaken: no PASSporT extension is supported here",
        f"{token}{params};;": "malformed parameters",
    }
    for bad, detail in cases.items():
        error = refusal(with_identity(request, bad), lab.anchors)
        assert (error.status, error.reason) == (438, "Invalid Identity Header") and detail in error.detail, bad


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES384", "es256"])
def test_a_passport_alg_other_than_es256_is_refused(lab: Lab, alg: str):
    request = signed(lab)
    header, claims, _ = parts(request)
    value = forged(lab, {**header, "alg": alg}, claims)
    error = refusal(with_identity(request, value.removesuffix(";alg=ES256")), lab.anchors)
    assert (error.status, error.detail) == (438, f"alg {alg!r}: only ES256 is accepted (RFC 8225 §8)")


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"orig": {"tn": "12155551212"}}, "orig {'tn': '12155551212'} is not {\"uri\": AoR}"),
        ({"dest": {"uri": []}}, "dest {'uri': []} is not {\"uri\": [AoR, ...]}"),
        ({"iat": True}, "iat True is not a NumericDate"),
        ({"iat": 1e9}, "iat 1000000000.0 is not a NumericDate"),
        ({"mky": {"alg": "sha-256"}}, 'mky is not a list of {"alg", "dig"}'),
    ],
)
def test_claims_of_the_wrong_shape_are_438(lab: Lab, claims: dict, detail: str):  # type: ignore[type-arg]
    request = signed(lab)
    header, good, _ = parts(request)
    error = refusal(with_identity(request, forged(lab, header, {**good, **claims})), lab.anchors)
    assert error.status == 438 and detail in error.detail


def test_typ_other_than_passport_is_438(lab: Lab):
    request = signed(lab)
    header, claims, _ = parts(request)
    error = refusal(with_identity(request, forged(lab, {**header, "typ": "JWT"}, claims)), lab.anchors)
    assert (error.status, error.detail) == (438, "typ 'JWT', not 'passport' (RFC 8225 §4.1)")


def test_bad_input_raises_nothing_but_identity_error(lab: Lab):
    """A bounded fuzz with a fixed seed: Identity values, Dates and bodies cut, flipped and spliced."""
    rng = random.Random(8224)
    good = signed(lab)
    value = good.headers.get("Identity") or ""
    alphabet = 'AZaz09-_.;=<>,:"\\ \x00\xff{}[]'
    outcomes: dict[int, int] = {}
    for _ in range(400):
        text = list(value)
        for _ in range(rng.choice([0, 1, 2, 3, 4])):  # none: the Date or the body alone is bad
            where = rng.randrange(len(text))
            action = rng.randrange(3)
            if action == 0:
                text[where] = rng.choice(alphabet)
            elif action == 1:
                del text[where : where + rng.randint(1, 40)]
            else:
                text.insert(where, rng.choice(alphabet) * rng.randint(1, 3))
        request = invite(good.body, Date=rng.choice([good.headers.get("Date") or "", "", "x", "Thu, 99 Foo 1 0:0:0"]))
        request.headers.add("Identity", "".join(text))
        if rng.random() < 0.2:
            request.body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
        try:
            result = verify(request, lab.anchors, NOW, require=True)
            outcomes[0] = outcomes.get(0, 0) + (result is not None)
        except IdentityError as error:
            outcomes[error.status] = outcomes.get(error.status, 0) + 1
    assert sum(outcomes.values()) == 400 and set(outcomes) - {0} <= {403, 436, 437, 438}
    assert outcomes.get(438, 0) > 100 and outcomes.get(403, 0) > 10 and outcomes.get(0, 0) > 5


# -- configuration ----------------------------------------------------------------------------------------


def test_signer_credentials_are_checked(lab: Lab):
    assert signer_problem(lab.key, lab.chain, ALICE) == ""
    assert signer_problem(lab.key, lab.chain, "sip:eve@a.example") == (
        "the first certificate covers sip:alice@a.example, not sip:eve@a.example (RFC 8224 §7.1)"
    )
    assert signer_problem(Lab().key, lab.chain, ALICE) == "the first certificate is not the signing key's"
    p384 = labca._key_pem(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="an EC secp384r1 key, not P-256: ES256 signs with P-256"):
        load_signing_key(p384)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        load_signing_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_certificates(b"not PEM")
    assert sign(orig=ALICE, dest=[BOB], iat=1, fingerprints=[], key=lab.key, chain=lab.chain).count(";") == 3


def test_http_date_is_rfc_3261_gmt():
    request = signed(Lab(), now=time.time())
    assert request.headers.get("Date", "").endswith(" GMT")
