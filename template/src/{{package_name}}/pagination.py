"""Offset pages with bounds from settings (deep ones seeking from remembered positions), and
keyset pages with an opaque, signed cursor."""

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic_core import to_json

from .cache import Cache
from .errors import invalid
from .schemas import MAX_ID
from .settings import Settings

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    total: int
    page: int
    page_size: int
    items: list[T]


class CursorPage(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


# The fast read path's envelopes: the bytes Page[T] / CursorPage[T] serialize to, around items
# that are already JSON (db/json_rows.py). tests/test_fast_reads.py compares the two.


def page_json(*, total: int, params: "OffsetParams", items: bytes) -> bytes:
    head = b'{"total":%d,"page":%d,"page_size":%d,"items":' % (
        total,
        params.page,
        params.page_size,
    )
    return head + items + b"}"


def cursor_page_json(items: bytes, cursor: str | None) -> bytes:
    return b'{"items":' + items + b',"next_cursor":' + to_json(cursor) + b"}"


def _too_large(name: str, value: int, limit: int) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "less_than_equal",
                "loc": ("query", name),
                "msg": f"Input should be less than or equal to {limit}",
                "input": value,
                "ctx": {"le": limit},
            }
        ]
    )


# The page size's upper bound is a setting, unknown when routes are declared: the parameter's
# schema carries this marker, and document_max_page_size swaps it for the configured maximum.
_MAX_PAGE_SIZE_MARKER = "x-max-page-size"
_SIZE: dict[str, Any] = {"json_schema_extra": {_MAX_PAGE_SIZE_MARKER: True}}


def document_max_page_size(openapi: dict[str, Any], maximum: int) -> None:
    """Write ``maximum`` into the OpenAPI schema of every page size parameter, in place."""
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if schema.pop(_MAX_PAGE_SIZE_MARKER, False):
                    for variant in schema.get("anyOf", [schema]):
                        if variant.get("type") == "integer":
                            variant["maximum"] = maximum


def _settings(request: Request) -> Settings:
    # The app's own (main.create_app): read here rather than through deps.SettingsDep, so that
    # paging depends on settings alone, not on the pooled resources.
    settings: Settings = request.app.state.settings
    return settings


# Items per page, on every page route; ``limit`` is its other name (cursor pages called it
# that): accepted on every page, documented as page_size only.
PageSizeQuery = Annotated[int | None, Query(ge=1, description="Items per page", **_SIZE)]
LimitQuery = Annotated[int | None, Query(ge=1, include_in_schema=False)]


def page_size_of(settings: Settings, page_size: int | None, limit: int | None) -> int:
    """Items per page, from page_size or limit (the same value when both are given).

    Called by each page's dependency rather than being one: a nested dependency is one more
    resolution by FastAPI on every request."""
    if page_size is not None and limit is not None and page_size != limit:
        raise invalid(
            ("query", "limit"), "Value error, limit is another name for page_size: give one of them"
        )
    name, size = ("limit", limit) if page_size is None else ("page_size", page_size)
    if size is None:
        return settings.app.default_page_size
    # The upper bound comes from settings, so it is checked here rather than in Query(le=...).
    if size > settings.app.max_page_size:
        raise _too_large(name, size, settings.app.max_page_size)
    return size


class OffsetParams(BaseModel):
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


async def offset_params(
    request: Request,
    # No table holds more rows than there are ids: a larger page is empty, and its offset could
    # overflow the database's integer.
    page: Annotated[int, Query(ge=1, le=MAX_ID, description="1-based page number")] = 1,
    page_size: PageSizeQuery = None,
    limit: LimitQuery = None,
) -> OffsetParams:
    size = page_size_of(_settings(request), page_size, limit)
    return OffsetParams(page=page, page_size=size)


# A deep offset page starts from the nearest remembered position at or before its offset, a
# multiple of this many rows: the database skips fewer than this many rows, not all of them.
ANCHOR_SPACING = 1000


class PageStart(NamedTuple):
    """Where an offset page's rows start: skip ``offset`` of the rows whose id is above
    ``after_id`` (0: all of them)."""

    after_id: int
    offset: int


async def page_start(
    cache: Cache,
    namespace: str,
    parts: tuple[object, ...],
    offset: int,
    id_at: Callable[[int], Awaitable[int | None]],
) -> PageStart:
    """``OFFSET offset`` of a list ordered by id, as a seek from a remembered position.

    OFFSET reads every row it skips: a page 9,000 rows deep read ~9,050 index entries (~1.2 ms
    of the database's time on each request, a quarter of page 1's throughput). So the id at
    every ``ANCHOR_SPACING``-th position is remembered in the cache under ``namespace`` and
    ``parts`` (the viewer's: each sees other rows), and the page is the rows after that id,
    skipping the rest of the offset: the same rows, as ``id_at(position)`` (the id of the row
    at that 0-based position, None past the end) and OFFSET see them. Every write that can
    change the list invalidates ``namespace`` (as for the cached pages and their total), so a
    remembered position is never older than the total on the same page. A position past the end
    is remembered as such, and the page is then read with a plain OFFSET."""
    anchor = offset // ANCHOR_SPACING
    if anchor == 0:
        return PageStart(0, offset)
    position = anchor * ANCHOR_SPACING

    async def load() -> bytes:
        found = await id_at(position - 1)
        return b"" if found is None else str(found).encode()

    key = await cache.namespace_key(namespace, "anchor", ANCHOR_SPACING, *parts, anchor)
    last_id = await cache.get_or_set(key, load)
    if not last_id:
        return PageStart(0, offset)
    return PageStart(int(last_id), offset - position)


class CursorCodec:
    """Cursors are ``base64url(json) + "." + hmac``: opaque to clients, tamper-evident to us."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sign(self, payload: bytes) -> str:
        digest = hmac.digest(self._secret, payload, "sha256")[:16]  # one call, no HMAC object
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def encode(self, position: dict[str, Any]) -> str:
        payload = to_json(position)  # compact, as json.dumps(separators=(",", ":")) wrote it
        body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        return f"{body}.{self._sign(payload)}"

    def decode(self, cursor: str) -> dict[str, Any]:
        """The position a cursor points at; ValueError for anything we did not issue."""
        body, _, signature = cursor.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("cursor is not valid") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise ValueError("cursor is not valid")
        position = json.loads(payload)
        if not isinstance(position, dict):
            raise ValueError("cursor is not valid")
        return position


class KeysetParams(BaseModel):
    limit: int
    after_id: int | None


async def keyset_params(
    request: Request,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
    page_size: PageSizeQuery = None,
    limit: LimitQuery = None,
) -> KeysetParams:
    settings = _settings(request)
    size = page_size_of(settings, page_size, limit)
    after_id = None
    if cursor is not None:
        codec = CursorCodec(settings.app.secret_key.get_secret_value().encode())
        try:
            after_id = codec.decode(cursor).get("id")
        except ValueError:
            after_id = None
        # Signed is not sane: anyone with the development key can sign any number, and one past
        # the id column's range is an overflow inside the driver (a 500), not an empty page.
        if (
            not isinstance(after_id, int)
            or isinstance(after_id, bool)
            or not 1 <= after_id <= MAX_ID
        ):
            raise invalid(
                ("query", "cursor"),
                "Value error, cursor is not valid: use next_cursor from a response",
            )
    return KeysetParams(limit=size, after_id=after_id)


def next_cursor(settings: Settings, last_id: int) -> str:
    secret = settings.app.secret_key.get_secret_value().encode()
    return CursorCodec(secret).encode({"id": last_id})


OffsetDep = Annotated[OffsetParams, Depends(offset_params)]
KeysetDep = Annotated[KeysetParams, Depends(keyset_params)]
