"""JWT issue and verification with a pinned algorithm and checked iss/aud/exp.

Three key set-ups (see ``load_token_keys``):
- HS256 with ``JWT_SECRET`` (or a development secret kept in ``DATA_DIR``);
- RS256 with ``JWT_PRIVATE_KEY`` (we issue; the public key is derived if not given);
- RS256 with ``JWT_PUBLIC_KEY`` alone: tokens come from an external identity
  provider, so this server verifies but never issues (local login is off).
"""

from __future__ import annotations

import binascii
import logging
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import HMACAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from app.config import Settings
from app.errors import InvalidToken, TokenExpired

log = logging.getLogger(__name__)

TokenType = Literal["access", "refresh"]
DEV_SECRET_FILE = "jwt-secret"


@dataclass(frozen=True, slots=True)
class TokenKeys:
    algorithm: Literal["HS256", "RS256"]
    signing_key: str | RSAPrivateKey | None  # None: verify-only (external provider)
    verifying_key: str | RSAPublicKey

    @property
    def can_issue(self) -> bool:
        return self.signing_key is not None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: uuid.UUID
    expires_at: datetime


def _pem(value: str) -> bytes:
    """PEM text as given, or read from the file the value names."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return Path(value).expanduser().read_bytes()


def load_token_keys(settings: Settings) -> TokenKeys:
    if settings.jwt_private_key is not None:
        private = serialization.load_pem_private_key(
            _pem(settings.jwt_private_key.get_secret_value()), password=None
        )
        if not isinstance(private, RSAPrivateKey):
            raise ValueError("JWT_PRIVATE_KEY must be an RSA private key")
        return TokenKeys("RS256", private, private.public_key())
    if settings.jwt_public_key is not None:
        public = serialization.load_pem_public_key(_pem(settings.jwt_public_key))
        if not isinstance(public, RSAPublicKey):
            raise ValueError("JWT_PUBLIC_KEY must be an RSA public key")
        return TokenKeys("RS256", None, public)
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value()
        return TokenKeys("HS256", secret, secret)
    # Settings refuse this case in production; in development keep one random
    # secret in DATA_DIR so tokens survive a restart.
    return TokenKeys("HS256", *([_development_secret(settings.data_dir)] * 2))


def _development_secret(data_dir: Path) -> str:
    path = data_dir / DEV_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    log.warning("generated a development JWT secret in %s", path)
    return secret


_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")


class _JWS(jwt.PyJWS):
    """PyJWT's JWS, with its two per-token costs that need not be.

    Every connection verifies its token, and a crowd arriving at once brings tokens
    never seen before (``AuthService`` keeps those it verified): PyJWT 2.15 spends
    70 to 110 µs on each on the bench machine, most of it in two checks made in the
    slowest way (40 to 50 µs with them made as here).
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        # PyJWT's rules exactly (tests/test_tokens.py compares the two on every
        # shape of segment): at most two '=', only where they complete a quad; only
        # the base64url alphabet (GHSA-hxm8-2xgr-2p9m), which PyJWT checks with a
        # generator over every character, half a decode's time; the canonical
        # encoding only.
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if (
            padding > 2
            or (padding and len(segment) % 4)
            or len(stripped) % 4 == 1
            or _BASE64URL.fullmatch(stripped) is None
        ):
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64url_decode(stripped)
        except (TypeError, binascii.Error) as err:
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != stripped:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


class _KeptKeyHMAC(HMACAlgorithm):
    """HMAC that checks its key once, not for every token.

    PyJWT makes sure an HMAC secret is no asymmetric key, certificate or JWK by
    parsing it as JSON and as DER on every sign and verify (about 40% of a decode);
    the answer depends on the key alone.
    """

    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._kept: tuple[str | bytes, bytes] | None = None

    def prepare_key(self, key: str | bytes) -> bytes:
        kept = self._kept
        if kept is not None and kept[0] == key:
            return kept[1]
        prepared = super().prepare_key(key)  # a key it refuses is refused every time
        self._kept = (key, prepared)
        return prepared


def _pyjwt(algorithm: str) -> jwt.PyJWT:
    """A PyJWT that signs and verifies with ``algorithm`` alone, through ``_JWS``."""
    pyjwt = jwt.PyJWT()
    jws = _JWS(algorithms=[], options={"verify_signature": True})
    if algorithm == "HS256":
        jws.register_algorithm("HS256", _KeptKeyHMAC(HMACAlgorithm.SHA256))
    else:
        jws.register_algorithm("RS256", RSAAlgorithm(RSAAlgorithm.SHA256))
    # PyJWT takes no JWS of the caller's choosing; its own is this attribute.
    pyjwt._jws = jws
    return pyjwt


class TokenCodec:
    def __init__(
        self,
        keys: TokenKeys,
        *,
        issuer: str,
        audience: str,
        access_ttl: timedelta,
        refresh_ttl: timedelta,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._jwt = _pyjwt(keys.algorithm)

    def issue(
        self,
        subject: uuid.UUID,
        token_type: TokenType,
        *,
        family_id: uuid.UUID | None = None,
        now: datetime | None = None,
    ) -> IssuedToken:
        if self.keys.signing_key is None:
            raise RuntimeError("tokens come from an external identity provider")
        now = now or datetime.now(UTC)
        expires_at = now + (self.access_ttl if token_type == "access" else self.refresh_ttl)
        jti = uuid.uuid4()
        claims: dict[str, Any] = {
            "sub": str(subject),
            "iss": self.issuer,
            "aud": self.audience,
            # Fractional NumericDate (RFC 7519 allows it): a revocation at time t
            # must refuse tokens issued earlier within the same second.
            "iat": round(now.timestamp(), 3),
            "exp": int(expires_at.timestamp()),
            "jti": str(jti),
            "typ": token_type,
        }
        if family_id is not None:
            claims["fam"] = str(family_id)
        token = self._jwt.encode(claims, self.keys.signing_key, algorithm=self.keys.algorithm)
        return IssuedToken(token=token, jti=jti, expires_at=expires_at)

    def decode(self, token: str, token_type: TokenType) -> dict[str, Any]:
        """Verified claims, or ``InvalidToken``/``TokenExpired``."""
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                self.keys.verifying_key,
                algorithms=[self.keys.algorithm],  # pinned: `none` and HS/RS confusion refused
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is invalid: {exc}") from exc
        # Our own tokens say what they are for; an external provider's access
        # tokens carry no `typ`, but a refresh token is never an access token.
        typ = claims.get("typ")
        if typ != token_type and not (
            typ is None and token_type == "access" and not self.keys.can_issue
        ):
            raise InvalidToken(
                f"expected {'an access' if token_type == 'access' else 'a refresh'} token"
            )
        return claims


def token_codec(settings: Settings) -> TokenCodec:
    return TokenCodec(
        load_token_keys(settings),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl=timedelta(seconds=settings.access_token_ttl_seconds),
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
    )
