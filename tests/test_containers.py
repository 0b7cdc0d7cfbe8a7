"""Every combination's image built, run and stopped by a real container engine (podman), and its
compose.yaml brought up and torn down with podman-compose.

No image registry is reachable here: scripts/container-images builds local stand-ins for the
base images the Dockerfile and compose.yaml name (Debian's own Python, Node.js, PostgreSQL and
Redis packages), once per machine. The generated Dockerfile is built unchanged. The image tests
run on the host's network against the shared PostgreSQL and Redis (a database and a key prefix
of their own); the compose tests bring up the stack's own `db` and `redis` services.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import (
    NATIVE_PACKAGE,
    PREBUILDS_VARIABLE,
    Rendered,
    has_prebuild,
    in_ci,
    project_env,
    run,
    run_ok,
)
from template_config import REPO_ROOT, Combination, combinations

COMBINATIONS = combinations()
IDS = [combo.id for combo in COMBINATIONS]
SECRET = "container-test-secret-0123456789abcdef0123456789"
STAND_INS = REPO_ROOT / "scripts" / "container-images"
# What the generated README documents, with --network=host (the build reaches the package
# registries through the host) and --pull=never (nothing to pull from).
BUILD = ["podman", "build", "--network=host", "--pull=never", "--format", "docker"]
# Image builds at once (2 cores here; a build waits on downloads for part of its time).
BUILDERS = 2
# compose.yaml's stop_grace_period: the longest a stop may take before the engine kills.
GRACE_SECONDS = 30


def _podman_compose() -> str:
    found = shutil.which("podman-compose")
    assert found, "podman-compose is in the dev group: run `uv sync`"
    return found


@pytest.fixture(scope="session")
def podman() -> None:
    """podman with the stand-in base images; missing podman fails under CI, skips otherwise."""
    if shutil.which("podman") is None:
        message = (
            "podman is not installed (Debian: apt-get install podman runc debootstrap; "
            ".ci/run installs and configures it)"
        )
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@dataclass
class Images:
    project: Rendered
    app: str
    migrate: str | None  # orm=prisma: the Dockerfile's Node.js `migrate` stage
    size_mb: float
    build_seconds: float


def _base_images(project: Rendered) -> set[str]:
    dockerfile = (project.project_dir / "Dockerfile").read_text(encoding="utf-8")
    names = set(re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE))
    compose = yaml.safe_load((project.project_dir / "compose.yaml").read_text(encoding="utf-8"))
    return names | {s["image"] for s in compose["services"].values() if "build" not in s}


class Builder:
    """Builds the selected combinations' images ahead of their tests, BUILDERS at a time.

    Every combination renders the same project_slug, so each build gets a tag of its own (the
    compose test tags it with compose.yaml's name just before `up`). Builds of the Prisma
    `migrate` stage take turns: the combinations share that stage, and the second one then comes
    from the layer cache instead of running `npm ci` (and for SQLite a native compile) again.
    """

    def __init__(
        self,
        render: Callable[[Combination], Rendered],
        npm_ci: Callable[[Path, dict[str, str]], None],
        npm_prebuilds: Path,
    ) -> None:
        self.render = render
        self.npm_ci = npm_ci
        self.npm_prebuilds = npm_prebuilds
        self.pool = ThreadPoolExecutor(max_workers=BUILDERS)
        self.jobs: dict[Combination, Future[Images]] = {}
        self.migrate_stage = threading.Lock()
        self.run_id = secrets.token_hex(3)

    def start(self, combos: list[Combination]) -> None:
        todo = [combo for combo in combos if combo not in self.jobs]
        if not todo:
            return
        projects = [self.render(combo) for combo in todo]
        needed = sorted(set().union(*(_base_images(project) for project in projects)))
        run_ok([str(STAND_INS), *needed], REPO_ROOT, timeout=1800)
        for combo, project in zip(todo, projects, strict=True):
            self.jobs[combo] = self.pool.submit(self._build, project)

    def _build(self, project: Rendered) -> Images:
        directory = project.project_dir
        assert (directory / "uv.lock").is_file(), "the copy task locks the dependencies"
        tag = f"localhost/cfp-test/{project.combo.id}"
        app = f"{tag}:{self.run_id}"
        started = time.perf_counter()
        # `:cache` stays after the session (the run's tag is removed): it keeps the layers, so the
        # next run on this machine builds only what changed (removing the last tag of an image
        # removes its layers, the build cache with them).
        run_ok([*BUILD, "-t", app, "-t", f"{tag}:cache", "."], directory, timeout=1800)
        migrate = None
        if project.combo.orm == "prisma":
            migrate = f"{tag}-migrate:{self.run_id}"
            native = []
            if NATIVE_PACKAGE in (directory / "package.json").read_text(encoding="utf-8"):
                # No prebuilt better-sqlite3 is reachable here, so npm compiles it (95 s of CPU):
                # the stage takes the session's one build instead, as users' builds download one
                # (the variable stays in the migrate image's environment; nothing there reads it).
                if not has_prebuild(self.npm_prebuilds):  # an install here makes it
                    self.npm_ci(directory, project_env(project.combo))
                native = [
                    *("--volume", f"{self.npm_prebuilds}:/prebuilds"),
                    *("--env", f"{PREBUILDS_VARIABLE}=/prebuilds"),
                ]
            with self.migrate_stage:
                tags = ["-t", migrate, "-t", f"{tag}-migrate:cache"]
                build = [*BUILD, "--target", "migrate", *native, *tags, "."]
                run_ok(build, directory, timeout=1800)
        built_in = time.perf_counter() - started
        size = int(run_ok(["podman", "image", "inspect", "--format", "{{.Size}}", app], directory))
        return Images(project, app, migrate, size / 1e6, built_in)

    def images(self, combo: Combination) -> Images:
        return self.jobs[combo].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for job in self.jobs.values():
            if job.done() and not job.cancelled() and job.exception() is None:
                built = job.result()
                tags = [built.app, *([built.migrate] if built.migrate else [])]
                run(["podman", "rmi", *tags], REPO_ROOT)  # untags: `:cache` keeps the layers


@pytest.fixture(scope="session")
def builder(render, podman, npm_ci, npm_prebuilds) -> Iterator[Builder]:
    builder = Builder(render, npm_ci, npm_prebuilds)
    try:
        yield builder
    finally:
        builder.close()


@pytest.fixture(scope="module", params=COMBINATIONS, ids=IDS)
def images(request, builder: Builder) -> Images:
    """The combination's images, shared by both tests. The first call starts the builds of every
    combination the session selected, in test order."""
    selected = [
        item.callspec.params["images"]
        for item in request.session.items
        if hasattr(item, "callspec") and "images" in item.callspec.params
    ]
    builder.start(list(dict.fromkeys(selected)))
    return builder.images(request.param)


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int | None, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except (OSError, urllib.error.URLError):
        return None, b""


def _call(
    port: int, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict]:
    request = urllib.request.Request(  # noqa: S310 - a local URL
        f"http://127.0.0.1:{port}{path}", data=body or None, headers=headers, method=method
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


def _import_three_items(port: int) -> dict:
    """Sign up and in, create a project, import three NDJSON items into it: the job once it
    ended (60 s at most)."""
    as_json = {"Content-Type": "application/json"}
    account = {"email": "importer@example.com", "username": "importer", "name": "Importer"}
    password = secrets.token_urlsafe(16)
    signed_up = json.dumps({**account, "password": password}).encode()
    assert _call(port, "POST", "/api/v1/users", signed_up, as_json)[0] == 201
    form = urllib.parse.urlencode({"username": "importer", "password": password}).encode()
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    status, tokens = _call(port, "POST", "/api/v1/auth/token", form, form_type)
    assert status == 200, tokens
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    project = json.dumps({"name": "imported"}).encode()
    status, created = _call(port, "POST", "/api/v1/projects", project, {**bearer, **as_json})
    assert status == 201, created
    items = b"".join(
        json.dumps({"name": f"item {n}", "price_cents": n + 1}).encode() + b"\n" for n in range(3)
    )
    path = f"/api/v1/projects/{created['id']}/items/import"
    ndjson = {**bearer, "Content-Type": "application/x-ndjson"}
    status, job = _call(port, "POST", path, items, ndjson)
    assert status == 202, job
    deadline = time.monotonic() + 60
    while job["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        status, job = _call(port, "GET", f"/api/v1/jobs/{job['id']}", b"", bearer)
        assert status == 200, job
    return job


def _wait_ready(port: int, container: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while _get(port, "/health/ready")[0] != 200:
        state = run(["podman", "inspect", "--format", "{{.State.Status}}", container], Path("/"))
        logs = run(["podman", "logs", container], Path("/")).stdout
        assert "exited" not in state.stdout, f"{container} exited\n{logs}"
        assert time.monotonic() < deadline, f"no 200 from /health/ready in {timeout:.0f} s\n{logs}"
        time.sleep(0.5)


def _psql(sql: str) -> None:
    command = ["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql]
    run_ok(command, Path("/"))


def _upload_across_sigterm(port: int, stop: list[str]) -> bytes:
    """A PUT in flight when SIGTERM arrives: half its body before, half after. The answer."""
    body = b"x" * 100_000
    with socket.create_connection(("127.0.0.1", port), timeout=GRACE_SECONDS) as upload:
        upload.sendall(
            b"PUT /api/v1/files/in-flight.bin HTTP/1.1\r\nHost: test\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:50_000]
        )
        time.sleep(0.5)
        run_ok(stop, Path("/"))
        time.sleep(0.5)
        upload.sendall(body[50_000:])
        answer = b""
        while chunk := upload.recv(65536):
            answer += chunk
    return answer


# --------------------------------------------------------------------------- the image


def test_image_migrates_serves_and_stops_gracefully(
    images: Images, servers, request: pytest.FixtureRequest
) -> None:
    project = images.project
    combo = project.combo
    servers.require(combo)
    package = project.answers["package_name"]
    token = secrets.token_hex(4)
    name = f"cfp-image-{token}"
    port = _free_port()
    env = {"APP_SECRET_KEY": SECRET, "PORT": str(port)}
    volume = f"cfp-var-{token}"
    run_ok(["podman", "volume", "create", volume], Path("/"))
    request.addfinalizer(lambda: run(["podman", "volume", "rm", "--force", volume], Path("/")))
    if combo.database == "postgresql":
        database = f"containers_{token}"
        _psql(f'CREATE DATABASE "{database}"')
        request.addfinalizer(lambda: _psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        env["DATABASE_URL"] = migrate_url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    else:
        env["DATABASE_URL"] = f"sqlite:////app/var/{package}.db"
        migrate_url = f"file:/app/var/{package}.db"  # Prisma's form of the same file
    if combo.cache_backend == "redis":
        prefix = f"containers-{token}:"
        # Rate limit counters of its own too: the default prefix is shared with every service on
        # this Redis, whose sign-ins from 127.0.0.1 would count against this test's.
        env.update(
            REDIS_URL="redis://127.0.0.1:6379/0",
            CACHE_KEY_PREFIX=prefix,
            RATE_LIMIT_KEY_PREFIX=f"containers-{token}-limits",
        )

        def forget_keys() -> None:
            pattern = f"containers-{token}*"  # the cache's keys and the counters'
            keys = run(["redis-cli", "--scan", "--pattern", pattern], Path("/")).stdout.split()
            if keys:
                run(["redis-cli", "DEL", *keys], Path("/"))

        request.addfinalizer(forget_keys)
    flags = [f"--env={key}={value}" for key, value in env.items()]
    common = ["--network=host", f"--volume={volume}:/app/var"]

    # The migrations, in a container: the CLI's `db upgrade`, or Prisma Migrate's Node stage.
    if images.migrate is not None:
        output = run_ok(
            ["podman", "run", "--rm", *common, f"--env=DATABASE_URL={migrate_url}", images.migrate],
            Path("/"),
            timeout=300,
        )
        assert "successfully applied" in output, output
    else:
        output = run_ok(
            ["podman", "run", "--rm", *common, *flags, images.app, project.slug, "db", "upgrade"],
            Path("/"),
            timeout=300,
        )
        assert "database at head" in output, output

    run_ok(["podman", "run", "--detach", "--name", name, *common, *flags, images.app], Path("/"))
    request.addfinalizer(lambda: run(["podman", "rm", "--force", name], Path("/")))
    _wait_ready(port, name)
    status, body = _get(port, "/health/ready")
    assert status == 200, body
    # The migrated schema is the one the image's service queries.
    assert _get(port, "/api/v1/users")[0] == 200
    # Non-root: the server runs as the image's unprivileged user.
    assert run_ok(["podman", "exec", name, "id", "-u"], Path("/")).strip() == "10001"
    # Every process of the container, as the host sees them.
    assert set(run_ok(["podman", "top", name, "huser"], Path("/")).split()[1:]) == {"10001"}
    # The load-test tool is for development: not in the image, and its CLI does not offer it.
    bench = run(["podman", "exec", name, "python", "-c", f"import {package}_bench"], Path("/"))
    assert "ModuleNotFoundError" in bench.stdout, bench.stdout
    bench = run(["podman", "exec", name, project.slug, "bench", "GET", "/"], Path("/"))
    assert bench.returncode == 2, bench.stdout
    assert "No such command 'bench'" in bench.stdout, bench.stdout
    # The image's HEALTHCHECK (kept: built in docker format), run by the engine.
    health = run(["podman", "healthcheck", "run", name], Path("/"))
    assert health.returncode == 0, health.stdout
    logs = run_ok(["podman", "logs", name], Path("/"))
    assert all(line.startswith("{") for line in logs.splitlines() if line.strip()), logs

    # SIGTERM with a request in flight: it is finished, then the container exits 0 in time.
    stopped_at = time.monotonic()
    answer = _upload_across_sigterm(port, ["podman", "kill", "--signal", "TERM", name])
    assert answer.startswith(b"HTTP/1.1 201"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"name": "in-flight.bin", "size": 100_000}
    exit_code = run_ok(["podman", "wait", name], Path("/"), timeout=GRACE_SECONDS + 30).strip()
    took = time.monotonic() - stopped_at
    assert exit_code == "0", run(["podman", "logs", name], Path("/")).stdout
    assert took < GRACE_SECONDS, f"stopping took {took:.1f} s"
    request.node.user_properties += [
        ("image MB", round(images.size_mb)),
        ("built in s", round(images.build_seconds)),
        ("stopped in s", round(took, 1)),
    ]
    print(f"{combo.id}: image {images.app} {images.size_mb:.0f} MB, stopped in {took:.1f} s")


# --------------------------------------------------------------------------- compose.yaml


def _container(project_name: str, service: str) -> str:
    return f"{project_name}_{service}_1"  # podman-compose's naming


def _wait_condition(project_name: str, service: str, condition: str, cwd: Path) -> None:
    container = _container(project_name, service)
    if condition == "service_healthy":
        # podman 4.3 runs health checks from systemd timers, which this machine does not have:
        # the test runs the service's declared check itself until it passes.
        deadline = time.monotonic() + 120
        while run(["podman", "healthcheck", "run", container], cwd).returncode != 0:
            logs = run(["podman", "logs", container], cwd).stdout
            assert time.monotonic() < deadline, f"{service} never became healthy\n{logs}"
            time.sleep(1)
    elif condition == "service_completed_successfully":
        code = run_ok(["podman", "wait", container], cwd, timeout=300).strip()
        logs = run(["podman", "logs", container], cwd).stdout
        assert code == "0", f"{service} exited {code}\n{logs}"
    else:
        raise AssertionError(f"unexpected condition {condition} for {service}")


def _resources(project_name: str) -> dict[str, list[str]]:
    label = f"label=io.podman.compose.project={project_name}"
    listing = {
        "containers": ["podman", "ps", "--all", "--filter", label, "--format", "{{.Names}}"],
        "volumes": ["podman", "volume", "ls", "--filter", label, "--format", "{{.Name}}"],
        "networks": ["podman", "network", "ls", "--format", "{{.Name}}"],
        "pods": ["podman", "pod", "ls", "--format", "{{.Name}}"],
    }
    found = {kind: run_ok(cmd, Path("/")).split() for kind, cmd in listing.items()}
    found["networks"] = [n for n in found["networks"] if n.startswith(f"{project_name}_")]
    found["pods"] = [p for p in found["pods"] if p == f"pod_{project_name}"]
    return found


def test_compose_stack_comes_up_answers_and_goes_away(images: Images) -> None:
    project = images.project
    directory = project.project_dir
    compose = yaml.safe_load((directory / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    project_name = f"cfp{secrets.token_hex(4)}"
    port = _free_port()
    env = {
        **os.environ,
        "APP_SECRET_KEY": SECRET,
        "PUBLISHED_PORT": str(port),
        "BUILDAH_FORMAT": "docker",
    }
    if project.combo.database == "postgresql":
        env["POSTGRES_PASSWORD"] = secrets.token_urlsafe(16)
    base = [_podman_compose(), "--project-name", project_name]
    # `up` runs the images the image test ran: compose.yaml's names for them, so nothing is built.
    named = {services["app"]["image"]: images.app}
    if images.migrate is not None:
        named[services["migrate"]["image"]] = images.migrate
    for name, built in named.items():
        run_ok(["podman", "tag", built, name], directory)
    # podman-compose 1.6 on podman 4.3 ignores service_healthy and, detached, does not wait for
    # service_completed_successfully: start each service after what its depends_on declares,
    # waiting for each declared condition, so the order tested is the file's.
    started: set[str] = set()
    conditions_met: set[str] = set()

    def up(service: str) -> None:
        for dependency, spec in services[service].get("depends_on", {}).items():
            up(dependency)
            if dependency not in conditions_met:
                _wait_condition(project_name, dependency, spec["condition"], directory)
                conditions_met.add(dependency)
        if service not in started:
            command = [*base, "up", "--detach", "--no-deps", "--no-build", service]
            run_ok(command, directory, env, timeout=600)
            started.add(service)

    try:
        up("app")
        if "worker" in services:  # Redis: the jobs' own process
            up("worker")
        assert started == set(services)
        app = _container(project_name, "app")
        _wait_ready(port, app)
        # Through the published port, against the migrated schema.
        assert _get(port, "/api/v1/projects")[0] == 200
        status, body = _get(port, "/health/ready")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok", body
        # The one-shot migration ran once and is not restarted.
        migrate = _container(project_name, "migrate")
        assert run_ok(["podman", "wait", migrate], directory).strip() == "0"
        # An import: the app stores the body on the shared volume and queues the job; the worker
        # (or, without Redis, the app itself) runs it.
        job = _import_three_items(port)
        assert (job["status"], job["processed"], job["failed_rows"]) == ("succeeded", 3, 0), job
        if "worker" in services:
            # The worker's liveness check, as the engine runs it: its heartbeat is fresh.
            worker = _container(project_name, "worker")
            _wait_condition(project_name, "worker", "service_healthy", directory)
            assert "import job" in run_ok(["podman", "logs", worker], directory)
    finally:
        run_ok([*base, "down", "--volumes"], directory, env, timeout=300)
        run(["podman", "rmi", *named], directory)  # the names only: the images stay tagged
    assert _resources(project_name) == {"containers": [], "volumes": [], "networks": [], "pods": []}
