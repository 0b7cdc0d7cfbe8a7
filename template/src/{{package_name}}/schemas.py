"""Response and request models: one family per entity. Internal columns (password_hash) have no
field here, so no endpoint can return them."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    field_validator,
)

# Ids are INTEGER columns (32-bit on PostgreSQL). One bound on every database, so a request
# the API accepts on SQLite is accepted on PostgreSQL too, and larger numbers are a 422 naming
# the bound instead of an overflow inside the driver.
MAX_ID = 2**31 - 1
RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
# PostgreSQL text cannot hold NUL; refusing it everywhere keeps the databases interchangeable.
# (Lone surrogates never get this far: Pydantic refuses them as invalid unicode.)
PlainText = Annotated[str, Field(pattern=r"^[^\x00]*$")]


def assume_utc(value: datetime) -> datetime:
    """SQLite (and Prisma's TIMESTAMP columns) hand back naive datetimes that are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(assume_utc)]


# The fields of an exported item, in order (GET /api/v1/items/export): the query of each ORM
# selects these columns (db/queries.py), so an export's fields are changed here alone.
ITEM_EXPORT_FIELDS = ("id", "project_id", "name", "price_cents", "quantity", "created_at")


class ErrorMessage(BaseModel):
    """The body of every error but 422 (whose ``detail`` is a list of ValidationError)."""

    detail: str


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
    name: PlainText = Field(min_length=1, max_length=100)
    password: str = Field(min_length=8, max_length=256)


class TokenPair(BaseModel):
    """OAuth2's token response (RFC 6749 section 5.1), which /docs' Authorize button reads."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - a scheme name
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_token: str


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=200)


class OwnerPublic(_FromRow):
    id: int
    name: str


class ProjectPublic(_FromRow):
    id: int
    name: str
    description: str
    private: bool
    item_count: int
    created_at: UtcDatetime
    owner: OwnerPublic


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: PlainText = Field(min_length=1, max_length=200)
    description: PlainText = Field(default="", max_length=10_000)
    # Visible to its owner only. The owner is the caller: the body names none. Strict: true or
    # false, not 0 or "yes".
    private: StrictBool = False


def _offer_no_null(schema: dict[str, Any]) -> None:
    """JSON schema of an optional field that may be left out but never sent as null: only the
    non-null branch, and no ``"default": null``."""
    schema.pop("default", None)
    schema.update(next(branch for branch in schema.pop("anyOf") if branch.get("type") != "null"))


class ProjectUpdate(BaseModel):
    """Only the fields sent are changed. A field may be left out, never set to null (the
    columns are NOT NULL), so the schema offers no null."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[PlainText, Field(min_length=1, max_length=200)] | None = Field(
        default=None, json_schema_extra=_offer_no_null
    )
    description: Annotated[PlainText, Field(max_length=10_000)] | None = Field(
        default=None, json_schema_extra=_offer_no_null
    )
    private: StrictBool | None = Field(default=None, json_schema_extra=_offer_no_null)

    @field_validator("name", "description", "private", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only for fields that were sent: the None defaults are not validated.
        if value is None:
            raise ValueError("may be left out but not null")
        return value


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


class ItemCreate(BaseModel):
    """An item, as a line of an import (api/jobs.py) gives it."""

    model_config = ConfigDict(extra="forbid")

    name: PlainText = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0, le=MAX_ID)
    quantity: int = Field(default=0, ge=0, le=MAX_ID)


class JobError(BaseModel):
    """A row that was skipped (its line of the input, 1 for the first), or the job's own
    failure (no line)."""

    line: int | None
    message: str


class JobPublic(BaseModel):
    id: int
    status: Literal["queued", "running", "succeeded", "failed"]
    # Rows imported, and rows skipped for their errors.
    processed: int
    failed_rows: int
    errors: list[JobError] = Field(description="The first few errors")
    attempts: int
    created_at: UtcDatetime
    finished_at: UtcDatetime | None


class StoredFile(BaseModel):
    name: str
    size: int


class Rates(BaseModel):
    base: str
    rates: dict[str, float]
