"""Files: uploads streamed to disk chunk by chunk under a size limit; downloads in chunks."""

import os
import secrets
from pathlib import Path as FilePath
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import FileResponse

from ..errors import documented
from ..lifespan import SettingsDep
from ..schemas import StoredFile

router = APIRouter(prefix="/files", tags=["files"])

# A plain file name: no directories, no leading dot, so it can never escape the upload directory.
FileName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")]


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, f"upload exceeds the limit of {limit} bytes"
    )


@router.put("/{name}", status_code=status.HTTP_201_CREATED, responses=documented(413))
async def upload_file(name: FileName, request: Request, settings: SettingsDep) -> StoredFile:
    """Send the raw bytes as the request body. Over the limit: 413, and nothing is kept."""
    limit = settings.app.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    directory = FilePath(settings.app.upload_dir)
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename at the end: readers never see a partial file.
    # A name of its own: the target's name may already be as long as the file system allows.
    partial = directory / f".upload-{secrets.token_hex(8)}.part"
    size = 0
    try:
        async with await anyio.open_file(partial, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                await out.write(chunk)
        await anyio.to_thread.run_sync(os.replace, partial, directory / name)
    finally:
        await anyio.Path(partial).unlink(missing_ok=True)
    return StoredFile(name=name, size=size)


@router.get("/{name}", response_class=FileResponse, responses=documented(206, 404, 416))
async def download_file(name: FileName, settings: SettingsDep) -> FileResponse:
    path = FilePath(settings.app.upload_dir) / name
    if not await anyio.Path(path).is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"file {name} not found")
    # FileResponse streams the file in chunks and answers Range requests.
    return FileResponse(path, media_type="application/octet-stream", filename=name)
