"""Run each generated project's own checks and tests, the way its users will.

Every combination is rendered and `uv sync`ed once per session (see conftest.py); the checks
below run inside it with its own virtualenv.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import project_env, run_ok
from template_config import combinations, default_combination, questions

COMBINATIONS = combinations()
IDS = [combo.id for combo in COMBINATIONS]

CHECKS = {
    "ruff-check": ["uv", "run", "ruff", "check", "."],
    "ruff-format": ["uv", "run", "ruff", "format", "--check", "."],
    "mypy": ["uv", "run", "mypy"],
    "pytest": ["uv", "run", "pytest", "-q"],
}
# Checks that talk to the combination's database and cache servers.
NEEDS_SERVERS = {"pytest"}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=IDS)
def test_uv_sync(combo, synced) -> None:
    assert (synced(combo).project_dir / ".venv").is_dir()


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("combo", COMBINATIONS, ids=IDS)
def test_check(combo, check: str, synced, servers) -> None:
    project = synced(combo)
    if check in NEEDS_SERVERS:
        servers.require(project.combo)
    run_ok(CHECKS[check], project.project_dir, project_env(project.combo))


@pytest.mark.parametrize("combo", COMBINATIONS, ids=IDS)
def test_dependency_import_names_are_reserved(combo, synced) -> None:
    """copier.yml refuses a package_name that would shadow a dependency: every import name the
    synced environment provides must be in copier/reserved_names.yml's list."""
    project = synced(combo)
    listed = run_ok(
        [
            "uv",
            "run",
            "python",
            "-c",
            "import importlib.metadata as m; print(*m.packages_distributions())",
        ],
        project.project_dir,
        project_env(project.combo),
    )
    own = str(project.answers["package_name"])
    # Not identifiers (mypyc's hashed modules, *-stubs) cannot be a package_name anyway.
    provided = {name.lower() for name in listed.split() if name.isidentifier()}
    reserved = set(questions()["dependency_import_names"]["default"])
    assert sorted(provided - reserved - {own.lower()}) == [], (
        "add these to dependency_import_names in copier/reserved_names.yml"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Straight to the local server, whatever *_PROXY variables say.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_service_starts_and_answers(synced, tmp_path: Path) -> None:
    project = synced(default_combination())
    env = project_env(project.combo, DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}")
    run_ok(["uv", "run", project.slug, "db", "upgrade"], project.project_dir, env, timeout=300)

    port = _free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            ["uv", "run", project.slug, "serve", "--port", str(port)],
            cwd=project.project_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: uv and the server stop together
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"`{project.slug} serve` exited {server.returncode}:\n{log_path.read_text()}",
                    pytrace=False,
                )
            try:
                status, _ = _get(f"{base}/health/live")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"no answer on {base} within 60 s:\n{log_path.read_text()}", pytrace=False
                    )
                time.sleep(0.25)
        assert status == 200, log_path.read_text()
        status, body = _get(f"{base}/api/v1/projects")
        assert status == 200, f"{body[:500]!r}\n{log_path.read_text()}"
    finally:
        _stop_group(server)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group (uv and the server): SIGTERM, then SIGKILL leftovers."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
