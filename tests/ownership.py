"""Which rendered files and dependencies belong to which answer: the one table to extend.

A rule says: this file / dependency exists only when `question == value`. For every other answer
the rendered project must not contain it. File patterns without a "/" match a file name anywhere
in the project; with a "/" they match the path relative to the project root (fnmatch syntax).
A dependency matches a requirement of that name, or an extra of that name (`cashews[redis]`),
in [project] dependencies, optional dependencies or dependency groups of pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Owned:
    question: str
    value: str
    files: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()


RULES: tuple[Owned, ...] = (
    Owned(
        "cache_backend",
        "redis",
        files=("cache_redis.py",),
        dependencies=("redis", "opentelemetry-instrumentation-redis"),
    ),
    Owned(
        "database",
        "postgresql",
        files=("deploy/kubernetes/*", "deploy/compose/*", "compose.scale.yaml"),
        dependencies=("asyncpg",),
    ),
    Owned("database", "sqlite", dependencies=("aiosqlite",)),
)
