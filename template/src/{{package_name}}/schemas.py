"""Response and request models: one family per entity. Internal columns (password_hash) have no
field here, so no endpoint can return them."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserPublic(_FromRow):
    id: int
    name: str
    email: str


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    username: str = Field(min_length=3, max_length=50, pattern=r"^[a-zA-Z0-9_.-]+$")
    name: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=8, max_length=256)


class OwnerPublic(_FromRow):
    id: int
    name: str


class ProjectPublic(_FromRow):
    id: int
    name: str
    description: str
    item_count: int
    created_at: datetime
    owner: OwnerPublic


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    owner_id: int = Field(ge=1)


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)


class ProjectSummary(_FromRow):
    id: int
    name: str
    item_count: int


class DashboardStats(BaseModel):
    project_count: int
    item_count: int


class Dashboard(BaseModel):
    user: UserPublic
    recent_projects: list[ProjectSummary]
    stats: DashboardStats


class TaskAccepted(BaseModel):
    status: str = "accepted"
    detail: str


class StoredFile(BaseModel):
    name: str
    size: int


class Rates(BaseModel):
    base: str
    rates: dict[str, float]
