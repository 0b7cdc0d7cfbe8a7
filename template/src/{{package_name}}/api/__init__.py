from fastapi import APIRouter

from . import auth, dashboard, files, items, jobs, projects, rates, users

api_router = APIRouter(prefix="/api/v1")
for module in (auth, users, projects, items, jobs, dashboard, files, rates):
    api_router.include_router(module.router)
