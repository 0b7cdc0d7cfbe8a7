"""What the cache holds for projects and what a write to one invalidates: shared by the routes
(api/projects.py), the import jobs (jobs.py) and the seed command (cli.py), below all three."""

from .cache import Cache

# The cached project pages and their totals, one namespace dropped by any write.
LIST_NAMESPACE = "projects-list"


def project_key(cache: Cache, project_id: int) -> str:
    return cache.key("projects", project_id)


async def invalidate_project(cache: Cache, project_id: int) -> None:
    await cache.delete(project_key(cache, project_id))
    await cache.invalidate_namespace(LIST_NAMESPACE)
