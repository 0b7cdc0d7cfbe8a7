"""Migration: `copier update -d package_name=NEW` renames the service's package. The team's edits
and files in src/OLD/ must follow it instead of being deleted with the old path.

Usage: rename_package.py before ANSWERS_FILE NEW_NAME
       rename_package.py after ANSWERS_FILE

before (NEW_NAME is the -d answer, empty when none was given): move src/OLD to src/NEW (and
src/OLD_bench, the load-test command, to src/NEW_bench) with `git mv` before copier merges
(copier merges what is in the git index), as hooks/move_path.py does for one file, and list the
files outside it that still import OLD.

after: if package_name changed without that move (a new name typed at an interactive prompt, which
copier asks only after the "before" migrations ran), copier has deleted src/OLD; fail with the
commands that undo the update and redo it with -d. Idempotent: with no rename, nothing happens.
"""

import keyword
import re
import subprocess
import sys
from pathlib import Path

import yaml  # installed with copier, which runs this script

RESERVED = Path(__file__).resolve().parent.parent / "copier" / "reserved_names.yml"
MARKER = "copier-package-rename"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def _marker() -> Path:
    return Path(_git("rev-parse", "--git-path", MARKER).strip())


def _package(answers_text: str) -> str:
    return str((yaml.safe_load(answers_text) or {}).get("package_name", ""))


def _refused(name: str) -> str | None:
    """Why copier.yml would refuse NAME (checked here too: this runs before copier validates)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or keyword.iskeyword(name):
        return "not a valid Python identifier"
    lists = yaml.safe_load(RESERVED.read_text(encoding="utf-8"))
    if name in lists["reserved_package_names"]["default"]:
        return "a Python keyword or standard-library module"
    if name.lower() in lists["dependency_import_names"]["default"]:
        return "the import name of a dependency"
    return None


def before(answers_file: str, new: str) -> int:
    old = _package(Path(answers_file).read_text(encoding="utf-8"))
    source, target = Path("src", old), Path("src", new)
    if not new or not old or new == old or not source.is_dir():
        return 0
    if (reason := _refused(new)) is not None:
        print(f"package_name {new!r} is {reason}; src/{old} is left as it is", file=sys.stderr)
        return 1
    if target.exists():
        print(f"src/{new} already exists: not moving src/{old} onto it", file=sys.stderr)
        return 1
    _git("mv", "--", str(source), str(target))
    _marker().write_text(f"{old} {new}\n", encoding="utf-8")
    print(f"moved src/{old} -> src/{new}", file=sys.stderr)
    # The load-test command beside the package (src/<package>_bench) is named after it.
    tool, new_tool = Path("src", f"{old}_bench"), Path("src", f"{new}_bench")
    if tool.is_dir() and not new_tool.exists():
        _git("mv", "--", str(tool), str(new_tool))
        print(f"moved {tool} -> {new_tool}", file=sys.stderr)
    pattern = rf"^\s*(from|import)\s+{re.escape(old)}\b"
    found = subprocess.run(
        ["git", "grep", "-l", "-E", pattern, "--", ".", f":!src/{new}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if found:
        print(
            f"still importing {old} (the template's own files are updated; change these):\n  "
            + "\n  ".join(found),
            file=sys.stderr,
        )
    return 0


def after(answers_file: str) -> int:
    marker = _marker()
    moved = marker.read_text(encoding="utf-8").split() if marker.is_file() else []
    marker.unlink(missing_ok=True)
    new = _package(Path(answers_file).read_text(encoding="utf-8"))
    recorded = subprocess.run(
        ["git", "show", f"HEAD:./{answers_file}"], capture_output=True, text=True, check=False
    )
    old = _package(recorded.stdout) if recorded.returncode == 0 else new
    if old == new or moved == [old, new]:
        return 0
    print(
        f"package_name changed from {old} to {new} without moving src/{old}: copier removed it,"
        " with the team's edits (git HEAD still has them). Undo this update and redo it with the"
        f" new name given on the command line, which moves src/{old} first:\n"
        f"  git reset --hard && git clean -fd -- src/{new}\n"
        f"  copier update --trust --defaults -d package_name={new}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "before":
        sys.exit(before(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 3 and sys.argv[1] == "after":
        sys.exit(after(sys.argv[2]))
    sys.exit(__doc__)
