"""Request bodies streamed to a file under a size limit, chunk by chunk, never held whole in
memory: what the upload route (api/files.py) and the import route (api/jobs.py) share."""

import secrets
from collections.abc import AsyncIterable, Callable

import anyio
from fastapi import HTTPException, Request, status

# A streamed body, for OpenAPI: the routes read it themselves, so FastAPI cannot describe it.
BINARY_SCHEMA: dict[str, object] = {"type": "string", "format": "binary", "minLength": 1}


def too_large(what: str, limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, f"{what} exceeds the limit of {limit} bytes"
    )


def refuse_declared_size(request: Request, allowed: int, *, what: str, limit: int) -> None:
    """413 before a byte is read when ``Content-Length`` already says more than ``allowed``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > allowed:
        raise too_large(what, limit)


async def store_body(
    chunks: AsyncIterable[bytes],
    target: anyio.Path,
    *,
    what: str,
    limit: int,
    accept: Callable[[int], None] = lambda size: None,
) -> int:
    """Write ``chunks`` to ``target`` and return its size. Over ``limit`` bytes: 413. ``accept``
    sees the size once the body ended and raises to refuse it. Refused or cut short, nothing is
    kept: the bytes go to a file beside the target, renamed only at the end, so readers never
    see a partial file (named apart: the target's name may be as long as the file system
    allows)."""
    partial = target.with_name(f".{secrets.token_hex(8)}.part")
    size = 0
    try:
        async with await anyio.open_file(partial, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large(what, limit)
                await out.write(chunk)
        accept(size)
        await partial.replace(target)
    finally:
        await partial.unlink(missing_ok=True)
    return size
