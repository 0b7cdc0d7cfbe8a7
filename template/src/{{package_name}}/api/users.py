"""Users: only the columns a response needs are fetched; the password hash never leaves."""

import anyio
from fastapi import APIRouter, HTTPException, status

from ..db import queries
from ..deps import DbDep, SettingsDep
from ..errors import documented
from ..pagination import OffsetDep, Page
from ..schemas import RowId, UserCreate, UserPublic
from ..security import CurrentUserId, hash_password, unauthorized

router = APIRouter(prefix="/users", tags=["users"], responses=documented(503))


@router.get("")
async def list_users(db: DbDep, params: OffsetDep) -> Page[UserPublic]:
    return Page[UserPublic](
        total=await queries.count_users(db),
        page=params.page,
        page_size=params.page_size,
        items=await queries.user_page(db, offset=params.offset, limit=params.page_size),
    )


@router.get("/me", responses=documented(401))
async def get_me(user_id: CurrentUserId, db: DbDep) -> UserPublic:
    """The signed-in caller."""
    user = await queries.get_user(db, user_id)
    if user is None:  # deleted since the token was issued
        raise unauthorized("the access token's user no longer exists")
    return user


@router.get("/{user_id:int}", responses=documented(404))
async def get_user(user_id: RowId, db: DbDep) -> UserPublic:
    user = await queries.get_user(db, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return user


@router.post("", status_code=status.HTTP_201_CREATED, responses=documented(400, 409, 413))
async def create_user(body: UserCreate, db: DbDep, settings: SettingsDep) -> UserPublic:
    if await queries.email_or_username_taken(db, email=body.email, username=body.username):
        raise HTTPException(status.HTTP_409_CONFLICT, "email or username is already taken")
    # Argon2 is deliberately slow: keep it off the event loop.
    password_hash = await anyio.to_thread.run_sync(hash_password, settings.auth, body.password)
    user = await queries.create_user(
        db, email=body.email, username=body.username, name=body.name, password_hash=password_hash
    )
    if user is None:  # taken between the check and the insert
        raise HTTPException(status.HTTP_409_CONFLICT, "email or username is already taken")
    return user
