"""JWTs: minted from API keys (HS256 with the server secret) and, when configured,
accepted from an outside identity provider (RS256/ES256 with its public key).

The verifying key is chosen by the algorithm family, never by the token: an
HMAC token is checked only against the HMAC secret, an RS/ES token only against
the configured public key, so "HS256 signed with the RSA public key" and
``alg: none`` are refused by construction as well as by the pinned list.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet

from ..settings import Settings

VERIFIED_CACHE = 10_000
"""Tokens remembered as verified (oldest dropped first)."""


class TokenError(Exception):
    """The token is not acceptable; the message says why (safe to show)."""


@dataclass(frozen=True)
class Claims:
    subject: str
    scopes: frozenset[str]
    key_id: str | None
    external: bool


class TokenService:
    def __init__(self, settings: Settings, hmac_secret: bytes) -> None:
        self.algorithms = list(settings.jwt_algorithms)
        self.hmac_algs = [a for a in self.algorithms if a.startswith("HS")]
        self.asym_algs = [a for a in self.algorithms if not a.startswith("HS")]
        self.secret = hmac_secret
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.ttl = int(settings.jwt_ttl)
        self.leeway = settings.jwt_leeway
        self.public_keys: dict[str | None, Any] = {}
        self._verified: dict[str, tuple[Claims, float, float]] = {}
        if settings.jwt_public_key is not None:
            self.public_keys[None] = settings.jwt_public_key.read_bytes()
        if settings.jwt_jwks is not None:
            jwks = PyJWKSet.from_dict(json.loads(settings.jwt_jwks.read_text()))
            for k in jwks.keys:
                self.public_keys[k.key_id] = k.key

    def mint(self, key_id: str, scopes: list[str]) -> tuple[str, int]:
        if not self.hmac_algs:
            raise TokenError("this server does not issue tokens (no HS algorithm configured)")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": f"key:{key_id}",
            "kid": key_id,
            "scope": " ".join(sorted(scopes)),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "iss": self.issuer,
            "jti": secrets.token_urlsafe(12),
        }
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm=self.hmac_algs[0]), self.ttl

    def verify(self, token: str) -> Claims:
        """Check a token.  A token that verified before is not re-verified (its
        signature cannot change) until its own expiry; revocation of its key is
        checked in Redis on every request regardless."""
        hit = self._verified.get(token)
        now = time.time()
        if hit is not None:
            claims, not_before, expires = hit
            if not_before - self.leeway <= now < expires + self.leeway:
                return claims
            del self._verified[token]
        claims, not_before, expires = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (claims, not_before, expires)
        return claims

    def _verify(self, token: str) -> tuple[Claims, float, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenError(f"algorithm {alg!r} is not accepted")
        key: Any
        if alg in self.hmac_algs:
            key, algs = self.secret, self.hmac_algs
        else:
            key = self.public_keys.get(header.get("kid")) or self.public_keys.get(None)
            if key is None:
                raise TokenError("no public key for this token")
            if isinstance(key, PyJWK):
                key = key.key
            algs = self.asym_algs
        options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algs,
                audience=self.audience,
                leeway=self.leeway,
                options=options,  # type: ignore[arg-type]
                issuer=self.issuer if alg in self.hmac_algs else None,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise TokenError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong issuer") from None
        except jwt.PyJWTError as e:
            raise TokenError(f"invalid token: {type(e).__name__}") from None
        raw = claims.get("scope", claims.get("scp", ""))
        scopes = raw.split() if isinstance(raw, str) else [str(s) for s in raw]
        external = alg not in self.hmac_algs
        kid = None if external else claims.get("kid")
        out = Claims(str(claims["sub"]), frozenset(scopes), kid, external)
        return out, float(claims.get("nbf", 0)), float(claims["exp"])
