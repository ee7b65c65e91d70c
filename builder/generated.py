"""Generated documentation pages: written atomically, or checked for staleness.

The spec reference, the command reference and the carried-files page are
generated from the code and committed; each generator's `python -m ...` is
`page_main`, and `--check` says when a committed page no longer matches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from builder.errors import AuroraError
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


def page_main(
    argv: list[str] | None, *, module: str, doc: str, page: Path, render: Callable[[], str]
) -> int:
    """`python -m <module> [--out PATH] [--check]`: one generator's command line."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=page, help="page to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    who = f"python -m {module}"
    try:
        return write_or_check(args.out, render(), check=args.check, who=who)
    except AuroraError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 1
