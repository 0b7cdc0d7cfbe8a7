"""Copy task and update migration (orm=prisma): generate the Python Prisma client from
prisma/schema.prisma with aprisma, the same command README.md documents for after a schema change.

Runs in the project's own environment (`uv run`, so the aprisma version is the one pinned in
pyproject.toml). Idempotent: regenerating writes the same files. Without uv it says what to run
instead; when the client cannot be generated it exits non-zero, so the copy fails.
"""

import os
import shutil
import subprocess
import sys

COMMAND = ["aprisma", "generate", "--schema", "prisma/schema.prisma"]


def main() -> int:
    uv = shutil.which("uv")
    manual = f"run `uv run {' '.join(COMMAND)}` in the project"
    if uv is None:
        print(f"uv not found: install uv, then {manual}", file=sys.stderr)
        return 0
    # The environment copier runs in (a virtualenv, uvx) is not the project's.
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    result = subprocess.run(
        [uv, "run", "--quiet", *COMMAND], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
        print(
            f"could not generate the Prisma client: fix the cause, then {manual}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
