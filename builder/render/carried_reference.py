"""Generate docs/reference/carried.md, "where a file comes from", from the carried
table (builder.render.carried): every file the image gets from this project, its
producer and the spec keys it depends on. `--check` says when the page is stale."""

from __future__ import annotations

import sys
from pathlib import Path

from builder.generated import page_main
from builder.render.carried import PACKAGE_UNITS, TABLE, Carried

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "carried.md"

KINDS = {
    "template": "rendered from a template in `units/`",
    "generated": "written by the renderer's own code",
    "static": "copied as is from `mkosi.extra/`",
    "build": "made by the image build",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(row: Carried) -> str:
    keys = ", ".join(f"`{k}`" for k in row.keys) or "—"
    notes = []
    if row.each:
        notes.append(f"one per `{row.each}` item")
    if row.when:
        notes.append("only with " + ", ".join(f"`{k}`" for k in row.when))
    if row.enable is True:
        notes.append("enabled")
    elif row.enable:
        notes.append("enabled when " + ", ".join(f"`{k}`" for k in row.enable))
    if row.role:
        notes.append(f"{row.role} unit")
    cells = (f"`{row.path}`", row.kind, f"`{row.producer}`", keys, "; ".join(notes) or "—")
    return "| " + " | ".join(_cell(c) for c in cells) + " |\n"


def render_page() -> str:
    out = [
        "# Where a file comes from\n\n",
        "<!-- Generated from builder/render/carried.py by "
        "`python -m builder.render.carried_reference`; do not edit. -->\n\n",
        "Every file the image gets from this project, declared once in "
        "`builder/render/carried.py`. Render walks the template and generated rows and "
        "records on each file its producer and spec keys; `aurora-image explain FILE` "
        "shows that record with the spec line of every value, `aurora-image audit` checks "
        "the units it names, and the preset enables what the table says. In a path, "
        "`<name>` stands for one file per list item; in a key, `[]` is that item.\n\n",
    ]
    for kind, meaning in KINDS.items():
        out.append(f"- **{kind}**: {meaning}\n")
    out.append("\n| path | kind | producer | spec keys | notes |\n|---|---|---|---|---|\n")
    out += [_row(row) for row in TABLE]
    out.append("\nUnits that Debian packages ship, enabled by the preset or classified:\n\n")
    for unit in PACKAGE_UNITS:
        notes = ["enabled" if unit.enable else "not enabled"]
        if unit.when:
            notes.append("only with " + ", ".join(f"`{k}`" for k in unit.when))
        if unit.role:
            notes.append(f"{unit.role} unit")
        out.append(f"- `{unit.name}`: {'; '.join(notes)}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    return page_main(
        argv,
        module="builder.render.carried_reference",
        doc=__doc__ or "",
        page=PAGE,
        render=render_page,
    )


if __name__ == "__main__":
    sys.exit(main())
