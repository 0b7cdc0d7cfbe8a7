"""What the lifespan switches on for its resources: pool metrics and tracing, per the settings."""

from collections.abc import Callable

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import Settings
from .metrics import observe_pool, process_stopped
from .tracing import instrument_resources


def observe_resources(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient
) -> Callable[[], None]:
    """Start observing; returns what to call at shutdown."""
    undo: list[Callable[[], None]] = []
    if settings.app.metrics_enabled:
        observe_pool(engine, settings.database.pool_size)
        undo.append(process_stopped)
    if settings.app.otel_enabled:
        undo.append(instrument_resources(settings, engine, http))

    def stop() -> None:
        for step in reversed(undo):
            step()

    return stop
