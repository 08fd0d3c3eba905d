"""The token codec's faster PyJWT parts refuse and accept exactly what PyJWT does.

(What the server does with good and bad tokens end to end: tests/test_http_errors.py,
tests/test_socket_connect.py.)
"""

from __future__ import annotations

import base64
import random
import uuid
from datetime import timedelta

import jwt
import pytest
from jwt.algorithms import HMACAlgorithm

from app.auth.tokens import _JWS, TokenCodec, TokenKeys, _KeptKeyHMAC
from app.errors import InvalidToken
from tests.helpers import rsa_pems

JUNK = [b"!", b"+", b"/", b" ", b"\n", b".", b"=", b"\xff", b"\x00", b"~"]


def segments(rng: random.Random) -> list[bytes]:
    """Base64url segments of every shape: canonical, padded (rightly and wrongly),
    with characters outside the alphabet anywhere, with unused bits set, too short."""
    found = []
    for size in range(0, 34):
        raw = rng.randbytes(size)
        canonical = base64.urlsafe_b64encode(raw).rstrip(b"=")
        found.append(canonical)
        for pads in range(1, 4):
            found.append(canonical + b"=" * pads)
        for junk in JUNK:
            at = rng.randint(0, len(canonical))
            found.append(canonical[:at] + junk + canonical[at:])
        if canonical:
            # The last character with other unused bits: decodes, but not canonically.
            last = canonical[-1:]
            other = b"B" if last != b"B" else b"C"
            found.append(canonical[:-1] + other)
            found.append(canonical[:-1])  # one character short
    found += [b"", b"=", b"==", b"===", b"A", b"A=", b"AA==", b"AA=", b"AAA=", b"=AAA"]
    return found


def outcome(decode: object, segment: bytes) -> tuple[str, object]:
    try:
        return "decoded", decode(segment, "payload")  # type: ignore[operator]
    except jwt.DecodeError as exc:
        return "refused", str(exc)


def test_segments_are_decoded_and_refused_exactly_as_pyjwt_does() -> None:
    rng = random.Random(12)
    tried = segments(rng)
    outcomes = [outcome(_JWS._decode_base64url_segment, segment) for segment in tried]
    assert outcomes == [outcome(jwt.PyJWS._decode_base64url_segment, s) for s in tried]
    # Both kinds were tried.
    assert {kind for kind, _ in outcomes} == {"decoded", "refused"}


def test_an_hmac_key_is_checked_once_and_a_refused_one_every_time() -> None:
    hmac = _KeptKeyHMAC(HMACAlgorithm.SHA256)
    assert hmac.prepare_key("first secret") == b"first secret"
    assert hmac.prepare_key("first secret") == b"first secret"
    # Another key is its own: nothing kept for the first answers for it.
    assert hmac.prepare_key(b"second secret") == b"second secret"
    _, public_pem = rsa_pems("hmac")
    for _ in range(2):
        with pytest.raises(jwt.InvalidKeyError):
            hmac.prepare_key(public_pem)
    assert hmac.prepare_key(b"second secret") == b"second secret"


def codec(secret: str) -> TokenCodec:
    return TokenCodec(
        TokenKeys("HS256", secret, secret),
        issuer="roomserver",
        audience="roomserver",
        access_ttl=timedelta(minutes=15),
        refresh_ttl=timedelta(days=1),
    )


def test_the_codec_verifies_its_own_tokens_and_refuses_another_keys_or_algorithm() -> None:
    ours, theirs = codec("s" * 64), codec("t" * 64)
    subject = uuid.uuid4()
    token = ours.issue(subject, "access").token
    assert ours.decode(token, "access")["sub"] == str(subject)
    with pytest.raises(InvalidToken):
        theirs.decode(token, "access")
    # The same claims signed with the same secret under HS512: refused, not checked.
    claims = jwt.decode(token, options={"verify_signature": False})
    other_alg = jwt.encode(claims, "s" * 64, algorithm="HS512")
    with pytest.raises(InvalidToken, match="not allowed"):
        ours.decode(other_alg, "access")
    # A signature with a character outside the alphabet (GHSA-hxm8-2xgr-2p9m).
    with pytest.raises(InvalidToken, match="padding"):
        ours.decode(token + "!!!!", "access")


def test_the_codec_goes_through_both_and_checks_its_key_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two seams into PyJWT (its ``_jws`` attribute, its segment method) are used:
    were either renamed upstream, the codec would quietly verify the slow way."""
    segments_decoded, keys_checked = [], []
    decode_segment = _JWS._decode_base64url_segment
    check_key = HMACAlgorithm.prepare_key

    def counted_segment(segment: bytes, name: str) -> bytes:
        segments_decoded.append(name)
        return decode_segment(segment, name)

    def counted_key(self: HMACAlgorithm, key: str | bytes) -> bytes:
        keys_checked.append(key)
        return check_key(self, key)

    monkeypatch.setattr(_JWS, "_decode_base64url_segment", staticmethod(counted_segment))
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counted_key)
    ours = codec("s" * 64)
    token = ours.issue(uuid.uuid4(), "access").token
    for _ in range(3):
        ours.decode(token, "access")
    assert segments_decoded == ["header", "payload", "crypto"] * 3
    assert len(keys_checked) == 1  # when it signed; kept since
