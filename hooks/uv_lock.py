"""Pin the project's dependencies in uv.lock: after a copy, and after every update (the answers or
the template may have added or removed dependencies).

Idempotent (`uv lock` keeps a lock that already satisfies pyproject.toml). When the lock cannot be
resolved it exits non-zero, so the copy or update fails instead of leaving a project without a lock
and no word. Two cases are not failures and say what to run instead: uv is not installed, and
pyproject.toml still has an update's conflict markers (they are the user's to resolve first).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")


def main() -> int:
    uv = shutil.which("uv")
    if uv is None:
        print("uv not found: install uv, then run `uv lock` in the project", file=sys.stderr)
        return 0
    pyproject = Path("pyproject.toml")
    if pyproject.is_file() and any(
        line.startswith(CONFLICT_MARKERS)
        for line in pyproject.read_text(encoding="utf-8").splitlines()
    ):
        print(
            "pyproject.toml has conflict markers from the update: resolve them, then run `uv lock`",
            file=sys.stderr,
        )
        return 0
    # The environment copier runs in (a virtualenv, uvx) is not the project's.
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    returncode = subprocess.run([uv, "lock", "--quiet"], env=env, check=False).returncode
    if returncode != 0:
        print(
            "`uv lock` failed (see above): fix the cause, then copy again (copier removes a"
            " directory it created) or run `uv lock` in the project",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
