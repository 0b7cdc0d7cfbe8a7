"""uvicorn's httptools HTTP/1.1 protocol with a bound on the size of a request's headers.

httptools (the fast parser) has no such bound: a client could send headers of any size and the
server kept every byte of them (64 MB headers were answered 200; four at once took the process
from 291 to 558 MB). uvicorn's h11 protocol has a bound (``h11_max_incomplete_event_size``) but
answers a generic 400 and parses in pure Python; an ASGI middleware is too late, the server has
already buffered the headers when the app sees them. So the bytes are counted here, before the
parser gets them, and a request over ``APP_MAX_HEADER_BYTES`` is answered 431 and its
connection closed.
"""

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import get_settings

_END_OF_HEADERS = b"\r\n\r\n"


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_header_bytes = get_settings().app.max_header_bytes
        self._header_bytes = 0
        self._in_headers = True

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            end = data.find(_END_OF_HEADERS)
            self._header_bytes += len(data) if end == -1 else end + len(_END_OF_HEADERS)
            if self._header_bytes > self._max_header_bytes:
                self._refuse()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next bytes on this keep-alive connection start the next request's headers.
        self._in_headers = True
        self._header_bytes = 0

    def _refuse(self) -> None:
        transport: asyncio.Transport = self.transport
        if transport.is_closing():
            return
        body = json.dumps(
            {"detail": f"request headers exceed {self._max_header_bytes} bytes"}
        ).encode()
        transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n".encode()
            + b"connection: close\r\n\r\n"
            + body
        )
        transport.close()
