"""Removes the keys one bench run wrote to Redis (none with the memory cache)."""

from bench_service.settings import Settings


async def delete_bench_keys(settings: Settings, prefix: str) -> int:
    """Delete every key under the run's prefix (``bench-<run id>:``); returns how many."""
    if "redis" not in Settings.model_fields:
        return 0  # the memory cache went with the servers' processes
    from redis.asyncio import Redis  # a dependency of the Redis variant only

    client = Redis.from_url(settings.redis.url)  # type: ignore[attr-defined]
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()
