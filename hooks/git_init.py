"""Copy task: make the new project a git repository, which `copier update` needs.

Idempotent: does nothing inside an existing work tree (a project generated into a monorepo stays
part of it). Never fails the copy: without git it says what to run instead.
"""

import shutil
import subprocess
import sys


def main() -> int:
    git = shutil.which("git")
    if git is None:
        print(
            "git not found: run `git init` in the project before `copier update`", file=sys.stderr
        )
        return 0
    inside = subprocess.run(
        [git, "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, check=False
    )
    if inside.returncode == 0 and inside.stdout.strip() == "true":
        return 0
    subprocess.run([git, "init", "--quiet"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
