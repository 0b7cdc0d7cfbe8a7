"""The template's own benchmark: each performance pattern of a generated service measured against
its naive twin (an N+1 route, a BaseHTTPMiddleware timing copy, a bare app), side by side in one
run. It imports the service that ``scripts/bench`` renders (``bench_service``, PostgreSQL +
Redis) and drives load with that service's own ``bench_service_bench`` load generators. Nothing
here ships in a generated service.
"""
