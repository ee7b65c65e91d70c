"""Generated documentation pages: written atomically, or checked for staleness.

The spec reference and the every-option page are generated from the code and
committed; `--check` says when a committed page no longer matches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from builder.render.tree import atomic_write


def write_or_check(out: Path, page: str, *, check: bool, who: str) -> int:
    """Write `page` to `out` (exit 0), or with `check` compare only (exit 1 if stale)."""
    if check:
        if (out.read_text() if out.exists() else "") != page:
            print(f"{who}: {out} is stale: run `make docs` and commit it", file=sys.stderr)
            return 1
        print(f"{out}: up to date")
        return 0
    atomic_write(out, page.encode())
    print(f"wrote {out}")
    return 0
