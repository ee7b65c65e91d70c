"""A plain clone is all the build and the tests need: nothing tracked reaches
outside the repository (the project's reference folder once sat beside it, and
three tests failed for every user; its data is in tests/data/reference now)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Ways a path out of the checkout has been spelled: the folder beside it, this
# machine's layout, and a parent of the repository root.
OUTSIDE = re.compile(
    r"\.\./shared\b|/work/(shared|main)\b|\b(REPO|ROOT)\.parent\b|parents\[[3-9]\]"
)
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()


def test_no_tracked_file_reads_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    hits = []
    for name in files:
        if name in (THIS, "uv.lock"):
            continue
        try:
            text = (REPO / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        hits += [
            f"{name}:{number}: {line.strip()}"
            for number, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)
        ]
    assert not hits, "reads outside the repository (copy the data in instead):\n" + "\n".join(hits)


def test_the_reference_data_is_in_the_repository() -> None:
    reference = REPO / "tests" / "data" / "reference"
    for name in ("CONTRACT.md", "reference-units.json", "aurora-dashboard.env", "README.md"):
        assert (reference / name).is_file(), f"{reference / name} missing"
    readme = (reference / "README.md").read_text()
    listed = {p.name for p in reference.iterdir() if p.name != "README.md"}
    assert all(f"`{name}`" in readme for name in listed), "README.md says where each came from"
