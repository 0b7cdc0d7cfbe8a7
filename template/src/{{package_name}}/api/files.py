"""Files: uploads streamed to disk chunk by chunk under a size limit; downloads in chunks.

An upload is the raw request body, or the ``file`` field of a multipart form (``curl -F``,
Swagger UI's file field), parsed as it streams by python-multipart: only the file's bytes are
stored, and neither form is ever held whole in memory.
"""

from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import FileResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..deps import SettingsDep
from ..errors import documented, invalid
from ..schemas import StoredFile
from .body_storage import BINARY_SCHEMA, refuse_declared_size, store_body

router = APIRouter(prefix="/files", tags=["files"])

# A plain file name: no directories, no leading dot, so it can never escape the upload directory.
FileName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")]

FILE_FIELD = "file"
# What a multipart form wraps around the file (boundary lines, part headers): the body limit of
# uploads (main.py) is the file's limit plus this; the file itself is held to the limit.
MULTIPART_OVERHEAD_BYTES = 16 * 1024

# The body, for OpenAPI: either form.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": BINARY_SCHEMA},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {FILE_FIELD: BINARY_SCHEMA},
                    "required": [FILE_FIELD],
                    "additionalProperties": False,
                }
            },
        },
    }
}


@router.put(
    "/{name}",
    status_code=status.HTTP_201_CREATED,
    responses=documented(413),
    openapi_extra=_UPLOAD_BODY,
)
async def upload_file(name: FileName, request: Request, settings: SettingsDep) -> StoredFile:
    """The file as the raw request body (`curl -T report.pdf URL`), or as the `file` field of a
    multipart form (`curl -F file=@report.pdf URL`). Over the limit: 413; empty: 422; either
    way nothing is kept."""
    limit = settings.app.max_upload_bytes
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    allowed = limit + MULTIPART_OVERHEAD_BYTES if multipart else limit
    refuse_declared_size(request, allowed, what="upload", limit=limit)
    directory = anyio.Path(settings.app.upload_dir)
    await directory.mkdir(parents=True, exist_ok=True)
    body = _form_file(request, content_type) if multipart else request.stream()
    size = await store_body(
        body, directory / name, what="upload", limit=limit, accept=_refuse_empty
    )
    return StoredFile(name=name, size=size)


def _refuse_empty(size: int) -> None:
    if size == 0:
        # No body and an empty one look the same over HTTP (Content-Length: 0).
        raise invalid(("body",), "the upload is empty: send the file's bytes")


async def _form_file(request: Request, content_type: str) -> AsyncIterator[bytes]:
    """The bytes of the form's ``file`` field, as the body arrives; 422 for a form that is
    malformed, cut short, without that field or with any other."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise invalid(("header", "content-type"), "multipart/form-data needs a boundary")
    form = _FileField()
    parser = MultipartParser(boundary, form.callbacks())
    async for chunk in request.stream():
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise invalid(("body",), f"malformed multipart body: {exc}") from None
        if form.chunks:
            yield b"".join(form.chunks)
            form.chunks.clear()
    if not form.ended:
        raise invalid(("body",), "multipart body ends before its closing boundary")
    if not form.found:
        raise invalid(("body", FILE_FIELD), "Field required")


class _FileField:
    """python-multipart's callbacks: the ``file`` part's bytes go to ``chunks``; a part of any
    other name, or a second ``file``, is a 422."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.found = False
        self.ended = False
        self._in_file = False
        self._field = b""
        self._value = b""
        self._disposition = b""

    def callbacks(self) -> Any:
        return {
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field = self._value = b""

    def _on_headers_finished(self) -> None:
        name = parse_options_header(self._disposition)[1].get(b"name", b"").decode("latin-1")
        self._disposition = b""
        if name != FILE_FIELD:
            raise invalid(("body", name), f"unexpected field: send only `{FILE_FIELD}`")
        if self.found:
            raise invalid(("body", FILE_FIELD), "more than one file: send one per upload")
        self.found = self._in_file = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.chunks.append(data[start:end])

    def _on_part_end(self) -> None:
        self._in_file = False

    def _on_end(self) -> None:
        self.ended = True


@router.get("/{name}", response_class=FileResponse, responses=documented(206, 404, 416))
async def download_file(name: FileName, settings: SettingsDep) -> FileResponse:
    path = FilePath(settings.app.upload_dir) / name
    if not await anyio.Path(path).is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"file {name} not found")
    # FileResponse streams the file in chunks and answers Range requests.
    return FileResponse(path, media_type="application/octet-stream", filename=name)
