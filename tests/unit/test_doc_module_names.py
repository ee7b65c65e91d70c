"""The docs name modules of builder/ as the code has them: after a reshape, a
page that still says `builder.release.core` or `builder/vm.py` sends a newcomer
to a file that is gone."""

from __future__ import annotations

import re
import subprocess

from tests.paths import REPO_ROOT

DOTTED = re.compile(r"\bbuilder(?:\.[a-z_]+)+")
SLASHED = re.compile(r"\bbuilder/[a-z_/]+(?:\.py)?")


def _exists(name: str) -> bool:
    """A module, a package, or a name one defines (builder.plan.Plan)."""
    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        path = REPO_ROOT.joinpath(*parts[:cut])
        source = (
            path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        )
        if not source.is_file():
            continue
        if cut == len(parts):
            return True
        if cut < len(parts) - 1:
            return False
        defined = rf"^(?:class|def)\s+{parts[-1]}\b|^{parts[-1]}\s*[:=]"
        return re.search(defined, source.read_text(), re.M) is not None
    return False


def test_every_module_the_docs_name_exists() -> None:
    files = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "*.md", "Makefile", "scripts/*.sh"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    stale = []
    for name in files:
        text = (REPO_ROOT / name).read_text()
        for number, line in enumerate(text.splitlines(), 1):
            for found in DOTTED.findall(line):
                if not _exists(found.rstrip(".")):
                    stale.append(f"{name}:{number}: {found}")
            for found in SLASHED.findall(line):
                if not (REPO_ROOT / found.rstrip("/")).exists():
                    stale.append(f"{name}:{number}: {found}")
    assert not stale, "the docs name modules that do not exist:\n" + "\n".join(stale)
