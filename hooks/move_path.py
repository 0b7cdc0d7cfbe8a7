"""Migration: the template moved a file from OLD to NEW. Move the project's copy before the update
merges, so the user's edits follow the file instead of being deleted with the old path.

Usage: move_path.py ANSWERS_FILE OLD NEW, paths relative to the project; `{question}` in them is
replaced by the recorded answer (copier renders no answers for the "before" stage). Idempotent:
does nothing when OLD is gone or NEW already exists. Uses `git mv`, because copier merges what is
in the git index.
"""

import subprocess
import sys
from pathlib import Path

import yaml  # installed with copier, which runs this script


def main(answers_file: str, old: str, new: str) -> int:
    answers = yaml.safe_load(Path(answers_file).read_text(encoding="utf-8")) or {}
    old, new = old.format_map(answers), new.format_map(answers)
    source, target = Path(old), Path(new)
    if not source.exists() or target.exists():
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "--", old], capture_output=True, check=False
    )
    if tracked.returncode == 0:
        subprocess.run(["git", "mv", "--", old, new], check=True)
    else:
        source.rename(target)
    print(f"moved {old} -> {new}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
