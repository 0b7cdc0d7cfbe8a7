"""Pin the project's dependencies in uv.lock: after a copy, and after every update (the answers or
the template may have added or removed dependencies).

Idempotent (`uv lock` keeps a lock that already satisfies pyproject.toml). Never fails the copier
run: without uv, or when the lock cannot be resolved (offline, conflict markers left in
pyproject.toml), it says what to run once that is fixed.
"""

import os
import shutil
import subprocess
import sys


def main() -> int:
    uv = shutil.which("uv")
    if uv is None:
        print("uv not found: install uv, then run `uv lock` in the project", file=sys.stderr)
        return 0
    # The environment copier runs in (a virtualenv, uvx) is not the project's.
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    if subprocess.run([uv, "lock", "--quiet"], env=env, check=False).returncode != 0:
        print(
            "`uv lock` failed (see above); fix pyproject.toml (look for conflict markers after an"
            " update), then run `uv lock`",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
