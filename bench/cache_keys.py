"""Removes the keys one bench run wrote to Redis (scripts/bench renders a Redis service)."""

from bench_service.settings import Settings
from redis.asyncio import Redis


async def delete_bench_keys(settings: Settings, prefix: str) -> int:
    """Delete every key under the run's prefix (``bench-<run id>:``); returns how many."""
    client = Redis.from_url(settings.redis.url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()
