"""The generated project's Dockerfile and compose file (their shape), CI workflow and pre-commit
hooks.

The Dockerfile and compose.yaml are run for real by tests/test_containers.py (podman); here they
are checked for the stages, services, health checks and start order the answers call for. `docker
compose config` also validates compose.yaml where that client is installed (it is not here).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import project_env, run, run_ok
from template_config import combinations, default_combination

COMBINATIONS = combinations()
IDS = [combo.id for combo in COMBINATIONS]
SECRET = "compose-test-secret-0123456789abcdef0123456789"
# The migration command the CLI runs for orm=prisma (db/migrate.py): the Node CLI of npm ci.
PRISMA_MIGRATE = ["node", "node_modules/.bin/prisma", "migrate", "deploy"]
GENERATE = "aprisma generate --schema prisma/schema.prisma"


@pytest.fixture(params=COMBINATIONS, ids=IDS)
def project(request, render):
    return render(request.param)


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    image: str
    env: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            stages.append(Stage(name=name.strip(), image=image.strip()))
        elif keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                stages[-1].env[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def instructions(stage: Stage, keyword: str) -> list[str]:
    return [rest for kw, rest in stage.instructions if kw == keyword]


def test_dockerfile_shape(project) -> None:
    stages = parse_dockerfile(project.project_dir / "Dockerfile")
    prisma = project.combo.orm == "prisma"
    # The last stage is what `docker build` and compose's `app` build without a target.
    assert [stage.name for stage in stages] == [
        "build",
        *(["migrate"] if prisma else []),
        "runtime",
    ]
    build, runtime = stages[0], stages[-1]
    python = project.answers["python_version"]
    assert build.image == runtime.image == f"python:{python}-slim"
    runs = instructions(build, "RUN")
    # Downloads come from a cache mount shared by every build on the machine.
    uv_cache = "--mount=type=cache,target=/root/.cache/uv"
    assert runs[-1] == f"{uv_cache} uv sync --frozen --no-dev --no-editable"
    assert "uv.lock" in " ".join(instructions(build, "COPY"))
    if prisma:
        # The client is generated from the schema before the project is installed, with the
        # command README.md documents (in the environment the build already synced).
        assert runs[-2] == f"uv run --no-sync {GENERATE}"
        assert f"uv run {GENERATE}" in (project.project_dir / "README.md").read_text()
        assert "prisma ./prisma" in instructions(build, "COPY")
        migrate = stages[1]
        assert migrate.image == "node:20-slim"
        assert "--mount=type=cache,target=/root/.npm npm ci" in instructions(migrate, "RUN")
        assert _exec_form(instructions(migrate, "CMD")[0]) == PRISMA_MIGRATE
        # Non-root, the uid that owns /app/var in the runtime image (the SQLite file's volume).
        assert instructions(migrate, "USER") == ["10001:10001"]
        if project.combo.database == "sqlite":
            assert any(
                "chown 10001:10001 /app/var" in rest for rest in instructions(migrate, "RUN")
            )
    else:
        assert not any("aprisma" in rest for rest in runs)
    # The runtime image gets the built virtualenv and nothing of the sources.
    assert instructions(runtime, "COPY") == ["--from=build /app/.venv /app/.venv"]
    assert instructions(runtime, "USER") == ["app"]
    assert runtime.env["APP_ENVIRONMENT"] == "production"
    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    assert "/health/live" in healthcheck
    assert "curl" not in healthcheck
    assert json.loads(instructions(runtime, "CMD")[0])[:2] == [project.slug, "serve"]


def _exec_form(rest: str) -> list[str]:
    """`CMD [...]` or `HEALTHCHECK --options CMD [...]`: the JSON array."""
    return list(json.loads(rest[rest.index("[") :]))


# --------------------------------------------------------------------------- compose.yaml


def _docker_compose() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run(
            [*command, "version"], capture_output=True, text=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return command
    return None


def test_compose_services_follow_the_answers(project) -> None:
    compose = yaml.safe_load((project.project_dir / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    postgres = project.combo.database == "postgresql"
    redis = project.combo.cache_backend == "redis"
    expected = {"migrate", "app"}
    expected |= {"db"} if postgres else set()
    expected |= {"redis", "worker"} if redis else set()  # with Redis, jobs run in a worker
    assert set(services) == expected

    app, migrate = services["app"], services["migrate"]
    assert app["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert migrate["restart"] == "no"
    database_url = app["environment"]["DATABASE_URL"]
    if project.combo.orm == "prisma":
        # The Dockerfile's Node.js stage, whose CMD is the migration; it needs the database only.
        assert migrate["build"] == {"context": ".", "target": "migrate"}
        assert "command" not in migrate
        if postgres:
            assert migrate["environment"] == {"DATABASE_URL": database_url}
            assert "volumes" not in migrate
        else:  # Prisma's URL of the same file, in the same volume
            assert migrate["environment"] == {
                "DATABASE_URL": f"file:/app/var/{project.answers['package_name']}.db"
            }
            assert migrate["volumes"] == ["app-data:/app/var"]
    else:
        assert migrate["command"] == [project.slug, "db", "upgrade"]
    for name in ("app",) if project.combo.orm == "prisma" else ("app", "migrate"):
        assert services[name]["build"] == "."
        environment = services[name]["environment"]
        assert environment["APP_ENVIRONMENT"] == "production"
        assert environment["APP_SECRET_KEY"].startswith("${APP_SECRET_KEY:?")
        assert services[name]["volumes"] == ["app-data:/app/var"]
    if postgres:
        assert database_url.startswith("postgresql://")
        assert "@db:5432/" in database_url
        assert migrate["depends_on"]["db"] == {"condition": "service_healthy"}
        assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
        assert "db-data:/var/lib/postgresql/data" in services["db"]["volumes"]
        # No default password: compose refuses to start without one, naming the variable.
        required = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD"
        assert services["db"]["environment"]["POSTGRES_PASSWORD"].startswith(required)
        assert f":{required}" in database_url
        assert "POSTGRES_PASSWORD:-" not in (project.project_dir / "compose.yaml").read_text()
    else:
        assert database_url == f"sqlite:////app/var/{project.answers['package_name']}.db"
    if redis:
        assert app["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert app["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
        # The app's image, environment and volume (the imports wait there), its own command.
        worker = services["worker"]
        assert (worker["image"], worker["volumes"]) == (app["image"], app["volumes"])
        assert worker["environment"]["REDIS_URL"] == app["environment"]["REDIS_URL"]
        assert worker["environment"]["DATABASE_URL"] == database_url
        assert worker["command"][:2] == [project.slug, "worker"]
        assert worker["depends_on"]["migrate"] == app["depends_on"]["migrate"]
        assert worker["depends_on"]["redis"] == {"condition": "service_healthy"}
        heartbeat = worker["command"][worker["command"].index("--heartbeat-file") + 1]
        assert heartbeat in " ".join(worker["healthcheck"]["test"])
        assert "ports" not in worker
    else:
        assert "REDIS_URL" not in app["environment"]
    # Longer than serve's default --graceful-timeout of 20 s.
    assert app["stop_grace_period"] == "30s"
    # The host port is the user's choice (tests pick a free one): 8000 unless PUBLISHED_PORT says.
    assert app["ports"] == ["${PUBLISHED_PORT:-8000}:8000"]
    assert set(compose["volumes"]) == {"app-data"} | ({"db-data"} if postgres else set())

    command = _docker_compose()
    if command is not None:  # the client validates against the Compose specification
        env = {**os.environ, "APP_SECRET_KEY": SECRET, "POSTGRES_PASSWORD": "compose-test-pw"}
        run_ok([*command, "config", "--quiet"], project.project_dir, env, timeout=120)
        if postgres:
            del env["POSTGRES_PASSWORD"]
            refused = run([*command, "config", "--quiet"], project.project_dir, env, timeout=120)
            assert refused.returncode != 0
            assert "set POSTGRES_PASSWORD" in refused.stdout, refused.stdout


# --------------------------------------------------------------------------- CI workflow


def test_ci_workflow_runs_the_documented_checks_with_the_right_services(project) -> None:
    workflow = yaml.safe_load(
        (project.project_dir / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    )
    (job,) = workflow["jobs"].values()
    postgres = project.combo.database == "postgresql"
    redis = project.combo.cache_backend == "redis"

    services = job.get("services", {})
    assert set(services) == ({"postgres"} if postgres else set()) | ({"redis"} if redis else set())
    for service in services.values():
        assert "--health-cmd" in service["options"]
    env = job["env"]
    assert env["CI"] == "true"
    assert ("TEST_DATABASE_URL" in env) is postgres
    assert ("TEST_REDIS_URL" in env) is redis
    if postgres:
        assert env["TEST_DATABASE_URL"].startswith("postgresql://postgres:postgres@127.0.0.1:5432/")

    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs == [
        *(["npm ci"] if project.combo.orm == "prisma" else []),
        "uv sync --locked",
        "uv run ruff check .",
        "uv run ruff format --check .",
        "uv run mypy",
        "uv run pytest",
    ]
    # The same commands README.md tells developers to run.
    readme = (project.project_dir / "README.md").read_text(encoding="utf-8")
    for command in runs[runs.index("uv sync --locked") + 1 :]:
        assert command in readme, command
    setup = [step for step in job["steps"] if "setup-uv" in step.get("uses", "")]
    assert setup[0]["with"]["python-version"] == project.answers["python_version"]


# --------------------------------------------------------------------------- pre-commit


def test_pre_commit_hooks_are_local_and_pass_on_a_fresh_project(synced) -> None:
    project = synced(default_combination())
    directory = project.project_dir
    config = yaml.safe_load((directory / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert {repo["repo"] for repo in config["repos"]} == {"local"}
    assert set(hooks) == {"ruff-check", "ruff-format", "mypy"}
    assert all(hook["entry"].startswith("uv run ") for hook in hooks.values())

    env = project_env(project.combo)
    if not (directory / ".git").exists():
        run_ok(["git", "init", "-q"], directory, env)
    run_ok(["git", "add", "--all"], directory, env)
    run_ok(["uv", "run", "pre-commit", "run", "--all-files"], directory, env, timeout=600)
    # Nothing was rewritten by the hooks.
    assert run(["git", "diff", "--quiet"], directory, env).returncode == 0
