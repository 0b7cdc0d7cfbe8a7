"""The generated project's container, compose file, CI workflow and pre-commit hooks.

No Docker engine runs here, so the Dockerfile is exercised the way a build would run it: its
build-stage COPY and `uv` RUN lines in a scratch directory (the context filtered by
.dockerignore), then its CMD and HEALTHCHECK against what was built (with the sources gone, as in
the runtime image). For orm=prisma the `migrate` stage (Node.js: `npm ci`, then its CMD, compose's
one-shot migration) runs the same way against a scratch PostgreSQL database. compose.yaml is
checked with PyYAML for the services, health checks and start order the answers call for; `docker
compose config` also validates it where that client is installed (it is not on this machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from conftest import POSTGRES_DEFAULT_URL, project_env, run, run_ok
from template_config import Combination, combinations, default_combination

COMBINATIONS = combinations()
IDS = [combo.id for combo in COMBINATIONS]
SECRET = "compose-test-secret-0123456789abcdef0123456789"
# What the executed build runs: the default answers, and Prisma on PostgreSQL (its SQLite driver
# adapter compiles better-sqlite3 for minutes; the Dockerfile differs only in that stage's setup).
EXECUTED = [
    default_combination(),
    Combination({**default_combination().answers, "orm": "prisma", "database": "postgresql"}),
]
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
    assert runs[-1] == "uv sync --frozen --no-dev --no-editable"
    assert "uv.lock" in " ".join(instructions(build, "COPY"))
    if prisma:
        # The client is generated from the schema before the project is installed, with the
        # command README.md documents (in the environment the build already synced).
        assert runs[-2] == f"uv run --no-sync {GENERATE}"
        assert f"uv run {GENERATE}" in (project.project_dir / "README.md").read_text()
        assert "prisma ./prisma" in instructions(build, "COPY")
        migrate = stages[1]
        assert migrate.image == "node:20-slim"
        assert "npm ci" in instructions(migrate, "RUN")
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exec_form(rest: str) -> list[str]:
    """`CMD [...]` or `HEALTHCHECK --options CMD [...]`: the JSON array."""
    return list(json.loads(rest[rest.index("[") :]))


def _status(port: int, path: str) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, urllib.error.URLError):
        return None


def _answers(port: int) -> bool:
    return _status(port, "/health/live") == 200


def _dockerignored(context: Path) -> Callable[[Path], bool]:
    """Whether .dockerignore keeps a path out of the build context (its plain patterns)."""
    patterns = [
        line.strip().rstrip("/")
        for line in (context / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: Path) -> bool:
        relative = path.relative_to(context).as_posix()
        return any(
            fnmatch(relative, pattern) or fnmatch(relative, pattern.removeprefix("**/"))
            for pattern in patterns
        )

    return ignored


def _run_stage(
    stage: Stage, context: Path, workdir: Path, env: dict[str, str], runs: tuple[str, ...]
) -> None:
    """A stage's COPY from the context into `workdir` and its RUN lines starting with `runs`."""
    ignored = _dockerignored(context)

    def skip(directory: str, names: list[str]) -> set[str]:
        return {name for name in names if ignored(Path(directory) / name)}

    workdir.mkdir(parents=True)
    for keyword, rest in stage.instructions:
        if keyword == "COPY":
            *sources, destination = shlex.split(rest)
            target = workdir / destination
            for name in sources:
                if (context / name).is_dir():
                    shutil.copytree(context / name, target, ignore=skip)
                else:
                    shutil.copy2(
                        context / name, target / name if destination.endswith("/") else target
                    )
        elif keyword == "RUN" and rest.startswith(runs):
            run_ok(shlex.split(rest), workdir, env, timeout=600)


SQL = """
import asyncio, sys, asyncpg
async def main(url, statement):
    conn = await asyncpg.connect(url)
    await conn.execute(statement)
    await conn.close()
asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("combo", EXECUTED, ids=[combo.id for combo in EXECUTED])
def test_dockerfile_build_and_start_commands_work_outside_docker(
    combo: Combination, synced, servers, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    project = synced(combo)
    servers.require(combo)
    source = project.project_dir
    package = project.answers["package_name"]
    # `uv sync` (the synced fixture) leaves the lock file the build needs.
    assert (source / "uv.lock").is_file(), "the Dockerfile builds from uv.lock"
    stages = parse_dockerfile(source / "Dockerfile")
    build, runtime = stages[0], stages[-1]

    # Build stage: WORKDIR is the scratch directory; COPY from the project; run the uv steps.
    app_dir = tmp_path / "app"
    build_env = project_env(project.combo, **build.env)
    build_env.pop("VIRTUAL_ENV", None)
    _run_stage(build, source, app_dir, build_env, ("uv ",))
    venv = app_dir / ".venv"
    assert (venv / "bin" / project.slug).is_file()
    (site_packages,) = venv.glob("lib/python*/site-packages")
    if combo.orm == "prisma":
        # The build generated the client (.dockerignore keeps the local one out) and installed it.
        assert _dockerignored(source)(source / "src" / package / "db" / "prisma_client")
        assert (app_dir / "src" / package / "db" / "prisma_client" / "client.py").is_file()
        assert (site_packages / package / "db" / "prisma_client" / "client.py").is_file()

    # Runtime stage: only the virtualenv; the sources must not be needed any more.
    shutil.rmtree(app_dir / "src")
    runtime_dir = tmp_path / "runtime"
    (runtime_dir / "var").mkdir(parents=True)
    port = _free_port()
    env = {
        key: value
        for key, value in project_env(project.combo).items()
        if not key.startswith(("APP_", "DATABASE_", "CACHE_", "REDIS_", "UV_", "PROMETHEUS_"))
    }
    env.update(runtime.env)
    if combo.database == "postgresql":
        admin_url = project_env(combo).get("TEST_DATABASE_URL", POSTGRES_DEFAULT_URL)
        name = f"deploy_{secrets.token_hex(4)}"
        database_url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
        python = str(venv / "bin" / "python")
        run_ok([python, "-c", SQL, admin_url, f'CREATE DATABASE "{name}"'], tmp_path, env)
        request.addfinalizer(
            lambda: run(
                [python, "-c", SQL, admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
                tmp_path,
                env,
            )
        )
    else:
        database_url = f"sqlite:///{runtime_dir / 'var' / 'service.db'}"
    env.update(
        PATH=f"{venv / 'bin'}:{env['PATH']}",
        PORT=str(port),
        APP_SECRET_KEY=SECRET,
        DATABASE_URL=database_url,
    )
    # What compose's `migrate` service runs, then the image's CMD.
    if combo.orm == "prisma":
        # The runtime image has no Node.js: the `migrate` stage runs Prisma Migrate.
        migrate = stages[1]
        migrate_dir = tmp_path / "migrate"
        _run_stage(migrate, source, migrate_dir, project_env(combo, **migrate.env), ("npm ",))
        migrate_env = project_env(combo, **migrate.env, DATABASE_URL=database_url)
        migrate_env["HOME"] = str(tmp_path)  # the image's /tmp, not this machine's
        output = run_ok(_exec_form(instructions(migrate, "CMD")[0]), migrate_dir, migrate_env)
        assert "successfully applied" in output, output
        # The CLI's `db upgrade` (README.md) runs the same migrations: nothing left for it.
        cli_env = project_env(combo, DATABASE_URL=database_url)
        output = run_ok(["uv", "run", project.slug, "db", "upgrade"], source, cli_env)
        assert "database at head" in output, output
    else:
        run_ok([project.slug, "db", "upgrade"], runtime_dir, env, timeout=300)
    command = _exec_form(instructions(runtime, "CMD")[0])
    healthcheck = _exec_form(instructions(runtime, "HEALTHCHECK")[0])
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command,
            cwd=runtime_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.25)
        assert run(healthcheck, runtime_dir, env, timeout=30).returncode == 0
        # The migrated schema is the one the built service queries.
        assert _status(port, "/api/v1/users") == 200
        # Production logs are JSON lines.
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        assert lines, "the server logged nothing"
        assert all(line.startswith("{") for line in lines), lines
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log_path.read_text()
        # The probe reports a server that is gone.
        assert run(healthcheck, runtime_dir, env, timeout=30).returncode != 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)


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
    expected |= {"redis"} if redis else set()
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
    else:
        assert "REDIS_URL" not in app["environment"]
    # Longer than serve's default --graceful-timeout of 20 s.
    assert app["stop_grace_period"] == "30s"
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
