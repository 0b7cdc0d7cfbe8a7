"""Values by key in one process, bounded: the memory backend's whole cache (cache.py), the Redis
backend's local tier (cache_redis.py) and the response cache (response_cache.py). Its own module
so that all of them import it and none imports another back."""

import time
from collections import OrderedDict
from collections.abc import Sized
from typing import Generic, TypeVar

V = TypeVar("V", bound=Sized)


class LruStore(Generic[V]):
    """Values by key in one process, least recently used out first, bounded by entries and
    bytes (keys and values: a value's ``len`` is its size), with a TTL per entry."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self.pop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def set(self, key: str, value: V, ttl_seconds: float) -> None:
        self.pop(key)
        size = len(key) + len(value)
        if size > self.max_bytes:
            return
        self._entries[key] = (time.monotonic() + ttl_seconds, value)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            old_key, (_, old_value) = self._entries.popitem(last=False)
            self.bytes -= len(old_key) + len(old_value)

    def pop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(key) + len(entry[1])

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries
