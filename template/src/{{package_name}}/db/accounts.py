"""Sign-in's data: credentials and refresh tokens. SQLAlchemy Core on ``models`` (both ORMs map
the same tables there, on the ``Db``'s engine), so the security-sensitive statements exist once:
a refresh token is rotated by one conditional UPDATE, which aprisma cannot express (its
``update`` with a non-unique ``where`` updates every match)."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, or_, select, update

from .models import RefreshToken, User
from .queries import Db

# Prisma's DateTime columns are TIMESTAMP WITHOUT TIME ZONE (UTC by convention); SQLAlchemy's here
# are WITH: hand each the kind of datetime it stores.
_AWARE = bool(getattr(RefreshToken.__table__.c.expires_at.type, "timezone", False))


def _now() -> datetime:
    now = datetime.now(UTC)
    return now if _AWARE else now.replace(tzinfo=None)


async def credentials(db: Db, login: str) -> tuple[int, str] | None:
    """The id and password hash of the user whose username, or email in any case, is ``login``."""
    query = select(User.id, User.password_hash).where(
        or_(User.username == login, func.lower(User.email) == login.lower())
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query.limit(1))).first()
    return None if row is None else (row[0], row[1])


async def replace_password_hash(db: Db, user_id: int, old: str, new: str) -> None:
    """Store ``new`` unless the hash changed meanwhile (a password change wins over a rehash)."""
    async with db.engine.begin() as conn:
        await conn.execute(
            update(User)
            .where(User.id == user_id, User.password_hash == old)
            .values(password_hash=new)
        )


async def add_refresh_token(
    db: Db, *, user_id: int, digest: str, family_id: str, lifetime: timedelta
) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(RefreshToken).values(
                user_id=user_id,
                token_hash=digest,
                family_id=family_id,
                expires_at=_now() + lifetime,
            )
        )


async def rotate_refresh_token(
    db: Db, *, digest: str, next_digest: str, lifetime: timedelta
) -> int | None:
    """Retire the live, unexpired token ``digest`` and store ``next_digest`` in its family; the
    user id. None when there is no such token; when ``digest`` was already retired (presented
    twice: stolen, or a replay), its whole family is retired too."""
    now = _now()
    async with db.engine.begin() as conn:
        # One conditional UPDATE: of two concurrent rotations of one token, exactly one wins.
        live = (
            await conn.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.token_hash == digest,
                    RefreshToken.retired_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(retired_at=now)
                .returning(RefreshToken.user_id, RefreshToken.family_id)
            )
        ).first()
        if live is not None:
            await conn.execute(
                insert(RefreshToken).values(
                    user_id=live.user_id,
                    token_hash=next_digest,
                    family_id=live.family_id,
                    expires_at=now + lifetime,
                )
            )
            return int(live.user_id)
        retired = (
            await conn.execute(
                select(RefreshToken.family_id).where(
                    RefreshToken.token_hash == digest, RefreshToken.retired_at.is_not(None)
                )
            )
        ).first()
        if retired is not None:
            await conn.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.family_id == retired.family_id, RefreshToken.retired_at.is_(None)
                )
                .values(retired_at=now)
            )
    return None


async def retire_refresh_tokens(db: Db, user_id: int) -> int:
    """Retire every live refresh token of the user (sign-out everywhere); how many."""
    async with db.engine.begin() as conn:
        result = await conn.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.retired_at.is_(None))
            .values(retired_at=_now())
        )
    return int(result.rowcount)
