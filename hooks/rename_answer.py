"""Migration: the template renamed a question from OLD to NEW. Rename the recorded answer in the
answers file before the update reads it, so the user's answer is kept instead of the new
question's default.

Usage: rename_answer.py ANSWERS_FILE OLD NEW. Idempotent: does nothing when OLD is not recorded or
NEW already is. Copier rewrites the whole answers file after the update.
"""

import re
import sys
from pathlib import Path


def main(answers_file: str, old: str, new: str) -> int:
    path = Path(answers_file)
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    old_key = re.compile(rf"^{re.escape(old)}:", re.MULTILINE)
    if not old_key.search(text) or re.search(rf"^{re.escape(new)}:", text, re.MULTILINE):
        return 0
    path.write_text(old_key.sub(f"{new}:", text, count=1), encoding="utf-8")
    print(f"answer {old} is now {new} in {answers_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
