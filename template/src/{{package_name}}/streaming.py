"""Streaming responses that always release what their generator holds."""

from collections.abc import AsyncGenerator, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send


class ClosingStreamingResponse(StreamingResponse):
    """Closes its generator when the stream ends for any reason, client disconnect included.

    Starlette leaves an abandoned generator to the garbage collector; a generator holding a
    database connection must give it back now, not whenever the GC runs.
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, status_code, headers, media_type)
        self._generator = content

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._generator.aclose()
