"""End of every `copier update`: list the files that hold conflict markers, or say there are none.

Copier exits 0 with conflicts left in files, and a file the template stopped shipping that the
team had edited (hooks/keep_edited_removed.py) holds markers without being an unmerged path for
git. This looks at the content of every file git would commit (tracked, and untracked but not
ignored: .venv and node_modules are never read) for a line that opens a conflict and one that
closes it. It never fails the update: resolving is the team's step (docs/updating.md, step 3).
"""

import subprocess
import sys
from pathlib import Path

OPEN, CLOSE = b"<<<<<<< ", b">>>>>>> "


def _starts_a_line(data: bytes, marker: bytes) -> bool:
    return data.startswith(marker) or b"\n" + marker in data


def _has_markers(data: bytes) -> bool:
    return _starts_a_line(data, OPEN) and _starts_a_line(data, CLOSE)


def files_with_markers() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    found = []
    for name in sorted({part.decode() for part in listed.split(b"\0") if part}):
        path = Path(name)
        if path.is_file() and _has_markers(path.read_bytes()):
            found.append(name)
    return found


def main() -> int:
    found = files_with_markers()
    if not found:
        print("copier update: no conflicts", file=sys.stderr)
        return 0
    print(
        f"copier update: {len(found)} file(s) hold conflict markers; edit each to what you want,"
        " then `git add -A` and commit (docs/updating.md, step 3):",
        file=sys.stderr,
    )
    for name in found:
        print(f"    {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
