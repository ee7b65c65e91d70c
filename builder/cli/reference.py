"""docs/reference/cli.md: every `aurora-image` command and option, generated from the parser.

The parser is the one command table: the completion script
(builder.cli.completion) and this page are both derived from it, so a flag
cannot exist without appearing in either. `make docs` writes the page; a
test fails when the committed page is stale, like the spec reference.

    python -m builder.cli.reference          # write docs/reference/cli.md
    python -m builder.cli.reference --check  # exit 1 if the page is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder.generated import write_or_check
from builder.image.inputs import REPO

PAGE = REPO / "docs" / "reference" / "cli.md"
_HIDDEN = {"-h", "--help"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def _default(action: argparse.Action) -> str:
    value = action.default
    if value in (None, False, [], argparse.SUPPRESS) or action.nargs == 0:
        return ""
    if isinstance(value, Path) and value.is_relative_to(REPO):
        value = value.relative_to(REPO)
    return f"`{value}`"


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = str(action.metavar or action.dest.upper())
    return f"{names} `{value}`" if action.nargs != "?" else f"{names} `[{value}]`"


def _table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | what | default |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or _HIDDEN & set(action.option_strings):
            continue
        help_text = action.help if action.help not in (None, argparse.SUPPRESS) else ""
        rows.append(f"| {_argument(action)} | {_cell(str(help_text))} | {_default(action)} |")
    return rows


def render_page(parser: argparse.ArgumentParser | None = None) -> str:
    if parser is None:
        from builder.cli.main import build_parser

        parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        "# Every command and option",
        "",
        "<!-- Generated from the parser by `python -m builder.cli.reference` (`make docs`); "
        "do not edit. -->",
        "",
        "Generated from `aurora-image`'s parser, as its tab completion is; "
        "[Commands](commands.md) says when to use which. Options of the top level "
        "may also follow the command.",
        "",
        "## aurora-image",
        "",
        *_table(parser),
    ]
    for name, sub in subs.choices.items():
        lines += ["", f"## aurora-image {name}", "", _cell(sub.description or ""), ""]
        lines += _table(sub)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m builder.cli.reference", description=__doc__.splitlines()[0]
    )
    cli.add_argument("--out", type=Path, default=PAGE, help="page to write")
    cli.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = cli.parse_args(argv)
    return write_or_check(args.out, render_page(), check=args.check, who="cli_reference")


if __name__ == "__main__":
    sys.exit(main())
