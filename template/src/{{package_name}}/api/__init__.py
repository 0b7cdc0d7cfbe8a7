from fastapi import APIRouter

from ..errors import documented
from . import auth, dashboard, files, items, jobs, projects, rates, users

# Every route is rate limited (ratelimit.py, in front of this router): 429 is documented here.
api_router = APIRouter(prefix="/api/v1", responses=documented(429))
for module in (auth, users, projects, items, jobs, dashboard, files, rates):
    api_router.include_router(module.router)
