"""Streaming responses that always release what their generator holds."""

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosingStreamingResponse(StreamingResponse):
    """Closes its generator when the stream ends for any reason, client disconnect included,
    then runs ``on_close`` (say, to give back a connection checked out for the stream).

    Starlette leaves an abandoned generator to the garbage collector; a generator holding a
    database connection must give it back now, not whenever the GC runs. ``first``: a chunk
    already taken from the generator, sent before the rest.
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        first: bytes = b"",
    ) -> None:
        super().__init__(
            _after(first, content) if first else content, status_code, headers, media_type
        )
        self._generator = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._generator.aclose()
                finally:
                    if self._on_close is not None:
                        await self._on_close()


async def _after(first: bytes, rest: AsyncGenerator[bytes]) -> AsyncGenerator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
