"""The bare route ``bench`` measures beside yours, in the same run: a plain FastAPI app with no
middleware, whose one route returns 50 small constant objects. Your route's req/s over its req/s
says what your route costs above FastAPI itself, on this machine, today."""

from fastapi import FastAPI
from pydantic import BaseModel

BARE_PATH = "/bare"


class Owner(BaseModel):
    id: int
    name: str


FIFTY_OWNERS = [Owner(id=n, name=f"User {n}") for n in range(1, 51)]


def create_bare_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}  # what servers.wait_ready asks for

    @app.get(BARE_PATH)
    async def fifty_owners() -> list[Owner]:
        return FIFTY_OWNERS

    return app
