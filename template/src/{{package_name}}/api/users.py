"""Users: only the columns a response needs are fetched; the password hash never leaves."""

import hashlib
import secrets

import anyio
from fastapi import APIRouter, HTTPException, status

from ..db import queries
from ..db.queries import DbDep
from ..errors import documented
from ..pagination import OffsetDep, Page
from ..schemas import RowId, UserCreate, UserPublic

router = APIRouter(prefix="/users", tags=["users"], responses=documented(503))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


@router.get("")
async def list_users(db: DbDep, params: OffsetDep) -> Page[UserPublic]:
    return Page[UserPublic](
        total=await queries.count_users(db),
        page=params.page,
        page_size=params.page_size,
        items=await queries.user_page(db, offset=params.offset, limit=params.page_size),
    )


@router.get("/{user_id:int}", responses=documented(404))
async def get_user(user_id: RowId, db: DbDep) -> UserPublic:
    user = await queries.get_user(db, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return user


@router.post("", status_code=status.HTTP_201_CREATED, responses=documented(400, 409, 413))
async def create_user(body: UserCreate, db: DbDep) -> UserPublic:
    if await queries.email_or_username_taken(db, email=body.email, username=body.username):
        raise HTTPException(status.HTTP_409_CONFLICT, "email or username is already taken")
    # scrypt is deliberately slow: keep it off the event loop.
    password_hash = await anyio.to_thread.run_sync(hash_password, body.password)
    user = await queries.create_user(
        db, email=body.email, username=body.username, name=body.name, password_hash=password_hash
    )
    if user is None:  # taken between the check and the insert
        raise HTTPException(status.HTTP_409_CONFLICT, "email or username is already taken")
    return user
