"""Shared fixtures: rendering each combination once, running commands, checking servers."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from template_config import BASE_ANSWERS, REPO_ROOT, Combination, combinations

# Directories that tools create inside a rendered project; never part of what copier rendered.
TOOL_DIRS = {".venv", ".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}

COMBINATIONS = combinations()
POSTGRES_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_DEFAULT_URL = "redis://127.0.0.1:6379/0"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


# --------------------------------------------------------------------------- commands


def project_env(combo: Combination | None = None, **extra: str) -> dict[str, str]:
    """Environment for commands run inside a generated project.

    Everything is passed through (CI included) except what would point uv at this repository's
    own virtualenv. TEST_DATABASE_URL / TEST_REDIS_URL are passed only to combinations that use
    that kind of server, so a PostgreSQL URL never reaches a SQLite project.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONHOME", "PYTHONPATH"}
    }
    if combo is not None:
        env["UV_PYTHON"] = combo.answers.get("python_version", "3.11")
        if combo.database != "postgresql" or not env.get("TEST_DATABASE_URL", "").startswith(
            "postgres"
        ):
            env.pop("TEST_DATABASE_URL", None)
        if combo.cache_backend != "redis":
            env.pop("TEST_REDIS_URL", None)
    env.update(extra)
    return env


def run(
    cmd: Sequence[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture stdout and stderr together, never raise on a non-zero exit."""
    try:
        return subprocess.run(
            list(cmd),
            cwd=cwd,
            env=env if env is not None else project_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode() if isinstance(exc.output, bytes) else exc.output or ""
        pytest.fail(f"`{shlex.join(cmd)}` timed out after {timeout:.0f} s in {cwd}\n{output}")


def run_ok(
    cmd: Sequence[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> str:
    """Run a command and fail the test with its output unless it exits 0."""
    started = time.perf_counter()
    result = run(cmd, cwd, env, timeout)
    if result.returncode != 0:
        pytest.fail(
            f"`{shlex.join(cmd)}` exited {result.returncode} after "
            f"{time.perf_counter() - started:.1f} s in {cwd}\n{result.stdout}",
            pytrace=False,
        )
    return result.stdout


# --------------------------------------------------------------------------- servers


def _postgres_answers(host: str, port: int) -> bool:
    """Send PostgreSQL's SSLRequest; a PostgreSQL server answers with one byte, S or N."""
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.settimeout(2)
        sock.sendall(struct.pack("!ii", 8, 80877103))
        return sock.recv(1) in {b"S", b"N"}


def _redis_answers(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.settimeout(2)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = sock.recv(64)
        # +PONG, or -NOAUTH when a password is needed: either way a Redis server is there.
        return reply.startswith((b"+PONG", b"-NOAUTH"))


@dataclass
class Servers:
    """Checks, once per session, that the servers a combination's tests need are reachable."""

    _seen: dict[str, str | None] = field(default_factory=dict)

    def _check(self, name: str, url: str, probe: Callable[[str, int], bool], start: str) -> None:
        if name not in self._seen:
            parts = urlsplit(url)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (5432 if name == "PostgreSQL" else 6379)
            if parts.password:
                url = url.replace(f":{parts.password}@", ":***@", 1)
            try:
                ok = probe(host, port)
            except OSError:
                ok = False
            self._seen[name] = (
                None
                if ok
                else (
                    f"{name} is not reachable at {host}:{port} ({url}).\n"
                    f"Start it with:  {start}\n(or run .ci/run, which starts it)"
                )
            )
        problem = self._seen[name]
        if problem is not None:
            if in_ci():
                pytest.fail(problem, pytrace=False)
            pytest.skip(problem)

    def require(self, combo: Combination) -> None:
        if combo.database == "postgresql":
            url = os.environ.get("TEST_DATABASE_URL", "")
            if not url.startswith("postgres"):
                url = POSTGRES_DEFAULT_URL
            self._check("PostgreSQL", url, _postgres_answers, START_POSTGRES)
        if combo.cache_backend == "redis":
            url = os.environ.get("TEST_REDIS_URL") or REDIS_DEFAULT_URL
            self._check("Redis", url, _redis_answers, START_REDIS)


@pytest.fixture(scope="session")
def servers() -> Servers:
    return Servers()


# --------------------------------------------------------------------------- rendering

# The fast tier (`pytest -m "not slow"`) leaves out every test that installs a generated project,
# talks to a server or runs podman: a test is slow when it asks for one of these fixtures, sits in
# one of these modules, or carries @pytest.mark.slow itself.
SLOW_FIXTURES = {"synced", "servers", "podman", "builder", "images"}
SLOW_MODULES = {"test_containers.py", "test_scale.py", "test_schemathesis.py"}

# pytest-xdist (pyproject.toml) hands each work group to one worker: a combination's tests share
# its render and `uv sync`, and the container tests share one image builder. Groups go out in
# collection order, so the longest go first and none starts last while the other workers idle:
# the container tests, then the PostgreSQL combinations, the update tests (each runs a generated
# suite), the SQLite combinations, then the rest. Prisma's suites are the longer ones.
CONTAINERS_GROUP = "containers"
MODULE_COST_RANK = {"test_update.py": 2, "test_scale.py": 4, "test_schemathesis.py": 4}


def work_group(nodeid: str) -> str:
    """The worker group of a test: the container tests, a combination its parameters name, or
    the test alone."""
    if nodeid.startswith("tests/test_containers.py::"):
        return CONTAINERS_GROUP
    params = nodeid.partition("[")[2]
    return next((combo.id for combo in COMBINATIONS if combo.id in params), nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    # xdist's own `loadgroup` mode cannot be used: with pytest 9.2 its group marks are lost.
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_group(nodeid)

    return ByWorkGroup(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            or item.path.name in SLOW_MODULES
        ):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> tuple[int, bool]:
        group = work_group(item.nodeid)
        if group == CONTAINERS_GROUP:
            return (0, False)
        combo = next((combo for combo in COMBINATIONS if combo.id == group), None)
        if combo is None:
            return (MODULE_COST_RANK.get(item.path.name, 5), False)
        return (1 if combo.database == "postgresql" else 3, combo.orm != "prisma")

    items.sort(key=rank)  # stable: keeps the order inside each rank


def pytest_configure(config: pytest.Config) -> None:
    # pytest-copie renders `--template` (default: the current directory); make a run started
    # from a sub-directory still render this repository.
    template = getattr(config.option, "template", None)
    if template is not None and not (Path(template) / "copier.yml").is_file():
        config.option.template = str(REPO_ROOT)
    # One mypy cache for every project this process checks: the renders differ in a few modules,
    # and mypy rechecks any module whose source hash changed, so the third-party stubs and the
    # shared modules are analysed once (a second combination: 13 -> 5 s of CPU). One directory
    # per process (an xdist worker replaces the one it inherits), removed at the end, so two
    # workers never write the same files.
    # Bytecode: the sandbox these tests run in may set PYTHONDONTWRITEBYTECODE, so every Python
    # process (a generated suite starts a few hundred: servers, CLI runs, workers) compiled each
    # module again: an app import 1.5 -> 5 s of CPU, a SQLite + memory suite 119 -> 149 s.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    mypy_cache = tempfile.mkdtemp(prefix="template-tests-mypy-")
    os.environ["MYPY_CACHE_DIR"] = mypy_cache
    config.add_cleanup(lambda: shutil.rmtree(mypy_cache, ignore_errors=True))


@dataclass
class Rendered:
    combo: Combination
    project_dir: Path
    answers: dict[str, object]
    # Files as copier left them (tasks included), before any test ran a tool in the project.
    files: list[Path] = field(repr=False)
    # Directories copier left empty (their files all belong to other answers), likewise.
    empty_dirs: list[Path] = field(repr=False, default_factory=list)
    # None until `uv sync` ran; then "" when it succeeded, else the failure message.
    sync_error: str | None = None

    @property
    def slug(self) -> str:
        return str(self.answers["project_slug"])


def rendered_files(project_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in project_dir.rglob("*")
        if path.is_file() and not TOOL_DIRS.intersection(path.relative_to(project_dir).parts)
    )


def empty_dirs(project_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in project_dir.rglob("*")
        if path.is_dir()
        and not any(path.iterdir())
        and not TOOL_DIRS.intersection(path.relative_to(project_dir).parts)
    )


@pytest.fixture(scope="session")
def render(copie_session) -> Callable[[Combination], Rendered]:
    """Render a combination once per session (the working tree, uncommitted edits included).

    pytest-copie's `copy()` renders with vcs_ref="HEAD": copier clones the repository and, when
    the working tree is dirty, commits every tracked and untracked (not ignored) file into that
    clone first, so what is rendered is what is on disk.
    """
    cache: dict[Combination, Rendered | str] = {}

    def _render(combo: Combination) -> Rendered:
        if combo not in cache:
            result = copie_session.copy(extra_answers={**BASE_ANSWERS, **combo.answers})
            if result.exception is not None or result.exit_code != 0 or not result.project_dir:
                cache[combo] = f"copier could not render {combo.id}: {result.exception!r}"
            else:
                answers = {key: str(value) for key, value in result.answers.items()}
                cache[combo] = Rendered(
                    combo=Combination({**answers, **combo.answers}),
                    project_dir=result.project_dir,
                    answers=result.answers,
                    files=rendered_files(result.project_dir),
                    empty_dirs=empty_dirs(result.project_dir),
                )
        project = cache[combo]
        if isinstance(project, str):
            pytest.fail(project, pytrace=False)
        return project

    return _render


# npm compiles better-sqlite3 (the Prisma CLI's SQLite driver) from source when its prebuilt
# binary cannot be downloaded, as here: 95 s of CPU an install. The first install of a session
# compiles it, unoptimized (nothing here measures SQLite's speed: 44 s), and leaves the binary
# where prebuild-install looks for a local prebuild; every later `npm ci` unpacks it instead.
NATIVE_PACKAGE = "better-sqlite3"
PREBUILDS_VARIABLE = f"npm_config_{NATIVE_PACKAGE.replace('-', '_')}_local_prebuilds"


@pytest.fixture(scope="session")
def npm_prebuilds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's build of the native package is kept (one directory for all xdist
    workers: their temporary directories share a parent)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    prebuilds = root / "npm-prebuilds"
    prebuilds.mkdir(exist_ok=True)
    return prebuilds


@pytest.fixture(scope="session")
def npm_ci(npm_prebuilds: Path) -> Callable[[Path, dict[str, str]], None]:
    """`npm ci` in a project, sharing one build of the native package with every other install
    of the session."""

    def _npm_ci(project_dir: Path, env: dict[str, str]) -> None:
        env = {**env, PREBUILDS_VARIABLE: str(npm_prebuilds), "CFLAGS": "-O0", "CXXFLAGS": "-O0"}
        with (npm_prebuilds / ".lock").open("w") as lock:
            # One install at a time until the binary is there; then no waiting.
            if not has_prebuild(npm_prebuilds):
                fcntl.flock(lock, fcntl.LOCK_EX)
            run_ok(["npm", "ci"], project_dir, env)
            package = project_dir / "node_modules" / NATIVE_PACKAGE
            if package.is_dir():
                _keep_prebuild(package, npm_prebuilds, project_dir, env)

    return _npm_ci


def has_prebuild(prebuilds: Path) -> bool:
    return any(prebuilds.glob(f"{NATIVE_PACKAGE}-*.tar.gz"))


def _keep_prebuild(package: Path, prebuilds: Path, cwd: Path, env: dict[str, str]) -> None:
    """Pack the package's compiled binary under the name prebuild-install looks for:
    {name}-v{version}-{runtime}-v{abi}-{platform}{libc}-{arch}.tar.gz (glibc: no libc part)."""
    version = json.loads((package / "package.json").read_text())["version"]
    node = run_ok(
        ["node", "-p", "[process.versions.modules, process.platform, process.arch].join(' ')"],
        cwd,
        env,
    )
    abi, platform, arch = node.split()
    target = prebuilds / f"{NATIVE_PACKAGE}-v{version}-node-v{abi}-{platform}-{arch}.tar.gz"
    if target.exists():
        return
    # The module alone: prebuild-install loads the last .node file of the archive to check it,
    # and the test extension built beside it is not a module Node can load.
    binary = Path("build", "Release", NATIVE_PACKAGE.replace("-", "_") + ".node")
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as archive:
        archive.add(package / binary, arcname=str(binary))
    partial.rename(target)


@pytest.fixture(scope="session")
def synced(render, npm_ci) -> Callable[[Combination], Rendered]:
    """A rendered combination whose own environment is installed: `npm ci` (orm=prisma), then
    `uv sync`, as its README says."""

    def _synced(combo: Combination) -> Rendered:
        project = render(combo)
        if project.sync_error is None:
            project.sync_error = "(uv sync failed)"
            try:
                if project.combo.orm == "prisma":  # the Prisma CLI, pinned by package-lock.json
                    npm_ci(project.project_dir, project_env(project.combo))
                run_ok(["uv", "sync"], project.project_dir, project_env(project.combo))
            except pytest.fail.Exception as exc:
                project.sync_error = str(exc).splitlines()[0]
                raise
            project.sync_error = ""
        if project.sync_error:
            pytest.fail(
                f"{project.sync_error} (earlier; the first test that needed it shows the output)",
                pytrace=False,
            )
        return project

    return _synced


# --------------------------------------------------------------------------- container figures


def pytest_terminal_summary(terminalreporter) -> None:
    """Image sizes and build times the container tests recorded (tests/test_containers.py)."""
    lines = [
        f"{report.nodeid.rsplit('::', 1)[-1]}: "
        + ", ".join(f"{key} {value}" for key, value in report.user_properties)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call" and getattr(report, "user_properties", None)
    ]
    if lines:
        terminalreporter.section("container images")
        for line in lines:
            terminalreporter.write_line(line)
