"""Sign-in: the OAuth2 password flow (an access token and a refresh token), rotation of the
refresh token, and sign-out. Passwords are checked in a worker thread: Argon2 is slow on purpose.

Sign-in counts attempts per account before it hashes anything (ratelimit.py): an account under
attack is locked for a while, and the attack costs no Argon2 work."""

import hashlib
from datetime import timedelta
from typing import Annotated

import anyio
from fastapi import APIRouter, Form, HTTPException, Response, status

from ..db import accounts
from ..deps import DbDep, Resources, ResourcesDep
from ..errors import documented
from ..ratelimit import Refusal
from ..schemas import RefreshRequest, TokenPair
from ..security import (
    CurrentUserId,
    create_access_token,
    new_refresh_token,
    new_token_family,
    refresh_token_digest,
    unauthorized,
    verify_password,
)

router = APIRouter(prefix="/auth", tags=["auth"], responses=documented(503))

# Form fields of OAuth2's password grant; other fields it sends (grant_type, scope) are ignored.
Login = Annotated[
    str, Form(min_length=1, max_length=255, pattern=r"^[^\x00]*$", description="Username or email")
]
Password = Annotated[str, Form(min_length=1, max_length=256)]


def _refresh_lifetime(resources: Resources) -> timedelta:
    return timedelta(days=resources.settings.auth.refresh_token_days)


def _pair(resources: Resources, response: Response, user_id: int, refresh_token: str) -> TokenPair:
    # Tokens must never be stored by a cache on the way (RFC 6749, section 5.1).
    response.headers["Cache-Control"] = "no-store"
    settings = resources.settings
    return TokenPair(
        access_token=create_access_token(settings, user_id),
        expires_in=settings.auth.access_token_seconds,
        refresh_token=refresh_token,
    )


def _unknown_login(login: str) -> str:
    # A login that names nobody is locked out the same way: the answers do not tell them apart.
    # Digested: any text a client sent (lone surrogates too) makes a short, storable key.
    digest = hashlib.sha256(login.casefold().encode(errors="surrogatepass")).hexdigest()
    return f"login:{digest[:32]}"


def _locked_out(refusal: Refusal) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many failed sign-ins for this account: retry after {refusal.retry_after} s",
        headers={"Retry-After": str(refusal.retry_after)},
    )


@router.post("/token", responses=documented(400, 401, 413, 429))
async def sign_in(
    username: Login, password: Password, db: DbDep, resources: ResourcesDep, response: Response
) -> TokenPair:
    """Sign in with a username or email and a password. After RATE_LIMIT_LOCKOUT_FAILURES
    failed attempts for one account within RATE_LIMIT_LOCKOUT_SECONDS (10 in 15 minutes), every
    attempt is refused with 429 until the window has passed, the right password too."""
    found = await accounts.credentials(db, username)
    account = _unknown_login(username) if found is None else f"user:{found[0]}"
    refusal = await resources.rate_limits.sign_in_attempt(account)
    if refusal is not None:
        raise _locked_out(refusal)
    stored = None if found is None else found[1]
    valid, rehashed = await anyio.to_thread.run_sync(
        verify_password, resources.settings.auth, password, stored
    )
    if found is None or not valid:
        raise unauthorized("incorrect username or password")
    user_id = found[0]
    await resources.rate_limits.signed_in(account)
    if rehashed is not None:  # an older format or cost: store Argon2id with today's cost
        await accounts.replace_password_hash(db, user_id, found[1], rehashed)
    token = new_refresh_token()
    await accounts.add_refresh_token(
        db,
        user_id=user_id,
        digest=refresh_token_digest(token),
        family_id=new_token_family(),
        lifetime=_refresh_lifetime(resources),
    )
    return _pair(resources, response, user_id, token)


@router.post("/refresh", responses=documented(400, 401, 413))
async def refresh(
    body: RefreshRequest, db: DbDep, resources: ResourcesDep, response: Response
) -> TokenPair:
    """A new pair for a refresh token, which is retired. A retired token presented again (a
    stolen copy, or a replay) retires every token descended from the same sign-in."""
    token = new_refresh_token()
    user_id = await accounts.rotate_refresh_token(
        db,
        digest=refresh_token_digest(body.refresh_token),
        next_digest=refresh_token_digest(token),
        lifetime=_refresh_lifetime(resources),
    )
    if user_id is None:
        raise unauthorized("the refresh token is invalid, expired or already used")
    return _pair(resources, response, user_id, token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=documented(401))
async def sign_out(user_id: CurrentUserId, db: DbDep) -> None:
    """Retire every refresh token of the caller. Access tokens already issued stay valid until
    they expire (AUTH_ACCESS_TOKEN_SECONDS)."""
    await accounts.retire_refresh_tokens(db, user_id)
