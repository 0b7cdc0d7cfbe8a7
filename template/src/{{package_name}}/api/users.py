"""Users: only the columns a response needs are fetched; the password hash never leaves."""

import hashlib
import secrets
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Path, status
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from ..db.models import User
from ..lifespan import SessionDep
from ..pagination import OffsetDep, Page
from ..schemas import UserCreate, UserPublic

router = APIRouter(prefix="/users", tags=["users"])

PUBLIC_COLUMNS = (User.id, User.name, User.email)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


@router.get("")
async def list_users(session: SessionDep, params: OffsetDep) -> Page[UserPublic]:
    total = await session.scalar(select(func.count()).select_from(User))
    rows = await session.execute(
        select(*PUBLIC_COLUMNS).order_by(User.id).offset(params.offset).limit(params.page_size)
    )
    return Page[UserPublic](
        total=total or 0,
        page=params.page,
        page_size=params.page_size,
        items=[UserPublic.model_validate(row) for row in rows],
    )


@router.get("/{user_id}")
async def get_user(user_id: Annotated[int, Path(ge=1)], session: SessionDep) -> UserPublic:
    row = (await session.execute(select(*PUBLIC_COLUMNS).where(User.id == user_id))).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return UserPublic.model_validate(row)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, session: SessionDep) -> UserPublic:
    taken = await session.scalar(
        select(func.count())
        .select_from(User)
        .where(or_(User.email == body.email, User.username == body.username))
    )
    if taken:
        raise HTTPException(status.HTTP_409_CONFLICT, "email or username is already taken")
    # scrypt is deliberately slow: keep it off the event loop.
    password_hash = await anyio.to_thread.run_sync(hash_password, body.password)
    user = User(
        email=body.email,
        username=body.username,
        name=body.name,
        role="member",
        password_hash=password_hash,
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "email or username is already taken"
        ) from None
    return UserPublic.model_validate(user)
