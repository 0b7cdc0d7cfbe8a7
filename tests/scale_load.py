"""The scale-out test's load (tests/test_scale.py), run with the generated project's interpreter
(it has httpx and asyncpg): CLIENTS concurrent clients through the balancer until DURATION
passes or STOP_FILE appears, while sampling PostgreSQL's server connections for the test's
database. Prints its figures as one JSON object.

Usage: scale_load.py BASE_URL ADMIN_URL DATABASE CLIENTS DURATION STOP_FILE
"""

import asyncio
import json
import os
import random
import sys
import time

import asyncpg
import httpx

base, admin_url, database, clients, duration, stop_file = sys.argv[1:7]
clients, duration = int(clients), float(duration)
paths = ["/health/ready", "/api/v1/projects/cursor?limit=20"]
paths += [f"/api/v1/projects?page={page}&page_size=20" for page in range(4, 12)]
paths += [f"/api/v1/projects/{pid}" for pid in range(1, 40)]


async def main():
    statuses, failures, latencies, connections, transport_errors = {}, [], [], [], []
    deadline = time.monotonic() + duration

    def running():
        return time.monotonic() < deadline and not os.path.exists(stop_file)

    async def client(number, http):
        rng = random.Random(number)
        while running():
            path = rng.choice(paths)
            started = time.perf_counter()
            try:
                response = await http.get(path)
            except httpx.HTTPError as exc:
                failures.append(f"{path}: {type(exc).__name__}: {exc}")
                transport_errors.append(path)
                continue
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code != 200:
                failures.append(f"{path}: {response.status_code} {response.text[:200]}")

    async def sample():
        conn = await asyncpg.connect(admin_url)
        try:
            while running():
                connections.append(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
                    )
                )
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30, trust_env=False) as http:
        await asyncio.gather(sample(), *(client(n, http) for n in range(clients)))
    elapsed = time.monotonic() - started
    latencies.sort()
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "requests": sum(statuses.values()) + len(transport_errors),
                "statuses": statuses,
                "failures": failures[:20],
                "failed": len(failures),
                "rps": sum(statuses.values()) / elapsed,
                "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
                "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
                "max_server_connections": max(connections, default=-1),
                "samples": len(connections),
            }
        )
    )


asyncio.run(main())
