"""Sign-in's cryptography, all of it from kept libraries: passwords hashed with Argon2id (pwdlib),
access tokens as short-lived JWTs (PyJWT, one pinned algorithm, every claim required and
checked), refresh tokens as random strings of which the database keeps only a SHA-256 digest.

Password hashes written before sign-in existed (``scrypt$...``, hashlib's scrypt) still verify
and are replaced by Argon2id at the next sign-in (api/auth.py)."""

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from pwdlib import PasswordHash
from pwdlib.exceptions import HashVerificationError, UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher

from .settings import AuthSettings, Settings

# The one algorithm a token may name: a token saying "none", "RS256" or anything else is refused
# before its signature is looked at.
ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti", "iss", "aud")
# Clocks of the replicas that sign and check a token may differ by this much (exp, nbf, iat).
CLOCK_SKEW_SECONDS = 10
# Ours are ~300 bytes; anything far longer is refused unread.
MAX_TOKEN_CHARS = 2048
TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 - a path, not a secret
# Access tokens PyJWT verified, remembered until they expire (user_id_of_token), at most this many.
VERIFIED_TOKENS_KEPT = 4096


class LegacyScryptHasher:
    """Verifies the ``scrypt$N$r$p$salt$digest`` hashes of earlier versions (hashlib's scrypt),
    so those users can sign in once more and be rehashed with Argon2id. It never makes new ones."""

    PREFIX = "scrypt$"

    @classmethod
    def identify(cls, hash: str | bytes) -> bool:
        text = hash.decode(errors="replace") if isinstance(hash, bytes) else hash
        return text.startswith(cls.PREFIX)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        raise NotImplementedError("scrypt hashes are only verified; new hashes are Argon2id")

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        text = hash.decode(errors="replace") if isinstance(hash, bytes) else hash
        try:
            _, n, r, p, salt, digest = text.split("$")
            cost, block, parallel = int(n), int(r), int(p)
            expected, salt_bytes = bytes.fromhex(digest), bytes.fromhex(salt)
        except ValueError:
            return False
        if not (cost <= 2**17 and block <= 16 and parallel <= 4):  # bounded work per attempt
            return False
        secret = password.encode() if isinstance(password, str) else password
        actual = hashlib.scrypt(
            secret, salt=salt_bytes, n=cost, r=block, p=parallel, maxmem=2**28, dklen=len(expected)
        )
        return hmac.compare_digest(actual, expected)

    def check_needs_rehash(self, hash: str | bytes) -> bool:
        return True


@lru_cache(maxsize=4)
def _password_hash(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHash:
    argon2 = Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
    return PasswordHash((argon2, LegacyScryptHasher()))


def password_hash(settings: AuthSettings) -> PasswordHash:
    """Argon2id with the configured cost first (new hashes), then the legacy scrypt verifier."""
    return _password_hash(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
    )


def hash_password(settings: AuthSettings, password: str) -> str:
    """Deliberately slow (tens of milliseconds): call it in a worker thread."""
    return password_hash(settings).hash(password)


@lru_cache(maxsize=4)
def _decoy_hash(time_cost: int, memory_kib: int, parallelism: int) -> str:
    return _password_hash(time_cost, memory_kib, parallelism).hash(secrets.token_hex(16))


def verify_password(
    settings: AuthSettings, password: str, stored: str | None
) -> tuple[bool, str | None]:
    """Whether ``password`` matches ``stored``, and the hash to store instead when it is an older
    format or cost. ``stored`` None (no such user) or unusable (seeded without a password) costs
    one Argon2 verification too, so the answer's timing does not tell which usernames exist."""
    hasher = password_hash(settings)
    if stored is None or not any(h.identify(stored) for h in hasher.hashers):
        decoy = _decoy_hash(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        )
        hasher.verify(password, decoy)
        return False, None
    try:
        return hasher.verify_and_update(password, stored)
    except (UnknownHashError, HashVerificationError):  # a damaged hash: no password matches it
        return False, None


# --- access tokens


def _signing_key(settings: Settings) -> str:
    return settings.app.secret_key.get_secret_value()


def create_access_token(settings: Settings, user_id: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(seconds=settings.auth.access_token_seconds),
        "jti": uuid.uuid4().hex,
        "iss": settings.auth.issuer,
        "aud": settings.auth.audience,
    }
    return jwt.encode(claims, _signing_key(settings), algorithm=ALGORITHM)


# A signed-in client sends the same token with every request, and PyJWT's decode (base64, JSON,
# the HMAC, every claim) was 16% of the CPU of a signed-in cached hit. A token that verified once
# is the same bytes next time: its user id is kept, with its exp, under the token and what it
# was checked against (signing key, issuer, audience). Only successes are kept; expiry is still
# checked on every use, with the same leeway.
_verified_tokens: dict[tuple[str, str, str, str], tuple[int, float]] = {}


def user_id_of_token(settings: Settings, token: str) -> int | None:
    """The user id an access token names; None for anything that is not a valid, current token
    of this service (bad signature or algorithm, expired, not yet valid, another issuer or
    audience, a claim missing, too long)."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    checked_as = (token, _signing_key(settings), settings.auth.issuer, settings.auth.audience)
    kept = _verified_tokens.get(checked_as)
    if kept is not None:
        user_id, expires_at = kept
        if time.time() <= expires_at + CLOCK_SKEW_SECONDS:
            return user_id
        del _verified_tokens[checked_as]
        return None
    try:
        claims = jwt.decode(
            token,
            _signing_key(settings),
            algorithms=[ALGORITHM],
            audience=settings.auth.audience,
            issuer=settings.auth.issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": list(REQUIRED_CLAIMS)},
        )
        user_id = int(claims["sub"])
        expires_at = float(claims["exp"])
    except (jwt.InvalidTokenError, ValueError, TypeError):
        return None
    if user_id <= 0:
        return None
    if len(_verified_tokens) >= VERIFIED_TOKENS_KEPT:
        del _verified_tokens[next(iter(_verified_tokens))]  # the oldest
    _verified_tokens[checked_as] = (user_id, expires_at)
    return user_id


# The request's verified token and its user id, kept in the request's state: the rate limit
# (ratelimit.py) and the route verify a token once between them.
_VERIFIED = "verified_token"


def bearer_user_id(
    scope: MutableMapping[str, Any], settings: Settings, authorization: str
) -> int | None:
    """The user id of an ``Authorization`` header's valid bearer token, verified once per
    request; None for any other credentials (another scheme, no token, a token that does not
    verify)."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return verified_user_id(scope, settings, token)


def verified_user_id(scope: MutableMapping[str, Any], settings: Settings, token: str) -> int | None:
    """``user_id_of_token``, once per request and token."""
    state = scope.setdefault("state", {})
    verified = state.get(_VERIFIED)
    if verified is not None and verified[0] == token:
        user_id: int | None = verified[1]
        return user_id
    user_id = user_id_of_token(settings, token)
    state[_VERIFIED] = (token, user_id)
    return user_id


# --- refresh tokens


def new_refresh_token() -> str:
    """256 random bits: opaque to the client, and only its digest is stored."""
    return secrets.token_urlsafe(32)


def refresh_token_digest(token: str) -> str:
    # A fast hash is right here: the token is random, not a password a dictionary could guess.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_family() -> str:
    return uuid.uuid4().hex


# --- the caller

bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def current_user_id(request: Request, token: Annotated[str | None, Depends(bearer)]) -> int:
    """The signed-in caller's id, from ``Authorization: Bearer <access token>``; 401 without."""
    if token is None:
        raise unauthorized("not signed in: send Authorization: Bearer <access token>")
    settings: Settings = request.state.resources.settings
    user_id = verified_user_id(request.scope, settings, token)
    if user_id is None:
        raise unauthorized("the access token is invalid or expired")
    return user_id


CurrentUserId = Annotated[int, Depends(current_user_id)]


def caller_of(request: Request) -> int | None:
    """The caller's id on routes that anonymous callers may use too: None without an
    Authorization header, 401 for one that is not a valid bearer token (never silently
    anonymous). A plain function, not a dependency: cached reads call it on every hit."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("send Authorization: Bearer <access token>, or no Authorization")
    settings: Settings = request.state.resources.settings
    user_id = verified_user_id(request.scope, settings, token.strip())
    if user_id is None:
        raise unauthorized("the access token is invalid or expired")
    return user_id


async def optional_caller_id(request: Request) -> int | None:
    return caller_of(request)


OptionalCallerId = Annotated[int | None, Depends(optional_caller_id)]
