"""What a spec change does to the rendered files, before anything is built.

`aurora-image render --diff` renders the spec and compares the tree with a
base: the newest stored image (its manifest and rendered.tar), an image
named by tag, the image live on the server (`--against live`, its files from
Glance when this clone did not build it: builder.release.live), or a directory
written by an earlier `aurora-image render`. Pure apart from reading the base.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from builder.errors import StoreError
from builder.image.build import IDENTITY, rendered_manifest
from builder.image.diff import FileChange, change_lines, rendered_contents, unified
from builder.image.store import read_manifest
from builder.render.engine import Tree

Entry = dict[str, str]


@dataclass(frozen=True)
class Base:
    """The side compared against: entries as the manifest writes them, and contents."""

    label: str
    entries: dict[str, Entry]
    contents: dict[str, bytes]


@dataclass(frozen=True)
class RenderDiff:
    """Rendered paths added, removed and changed against the base."""

    base: str
    added: list[str]
    removed: list[str]
    changed: list[FileChange]
    unchanged: int

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, object]:
        return {
            "against": self.base,
            "changed": not self.empty,
            "added": self.added,
            "removed": self.removed,
            "modified": [
                {"path": c.path, "notes": c.notes(), "diff": c.diff} for c in self.changed
            ],
            "unchanged": self.unchanged,
        }


def image_base(image_dir: Path, origin: str | None = None) -> Base:
    """A stored image (or a release's files fetched from Glance): the manifest's
    entries, contents from its rendered.tar."""
    try:
        manifest = read_manifest(image_dir)
    except StoreError as exc:
        raise StoreError(f"{exc}; rebuild it") from None
    # The identity file is added at build time, not rendered from the spec.
    entries = {p: e for p, e in manifest.rendered.items() if p != IDENTITY}
    label = f"image {manifest.tag}" + (f" ({origin})" if origin else "")
    return Base(label, entries, rendered_contents(image_dir, entries))


def directory_base(root: Path) -> Base:
    """A tree written by `aurora-image render`; empty directories count as entries
    (the renderer declares only those, e.g. mount points)."""
    entries: dict[str, Entry] = {}
    contents: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = here / name
            key = "/" + path.relative_to(root).as_posix()
            mode = f"{path.lstat().st_mode & 0o7777:04o}"
            if path.is_symlink():
                entries[key] = {"link": os.readlink(path)}
            elif path.is_dir():
                if not any(path.iterdir()):
                    entries[key] = {"directory": mode}
            else:
                data = path.read_bytes()
                contents[key] = data
                entries[key] = {"sha256": hashlib.sha256(data).hexdigest(), "mode": mode}
    return Base(f"directory {root}", entries, contents)


def diff_tree(tree: Tree, base: Base) -> RenderDiff:
    """Compare a freshly rendered tree with ``base``."""
    new = rendered_manifest(tree)
    changed = []
    for path in sorted(new.keys() & base.entries.keys()):
        before, after = base.entries[path], new[path]
        if before == after:
            continue
        text, reason = None, ""
        if before.get("sha256") != after.get("sha256"):
            old = base.contents.get(path)
            if old is None:
                reason = "the base has no stored contents for it"
            else:
                text = unified(path, old, tree[path].content, "base:", "new:")
                reason = "not text" if text is None else ""
        changed.append(FileChange(path, before, after, text, reason))
    return RenderDiff(
        base=base.label,
        added=sorted(new.keys() - base.entries.keys()),
        removed=sorted(base.entries.keys() - new.keys()),
        changed=changed,
        unchanged=len(new.keys() & base.entries.keys()) - len(changed),
    )


def format_text(diff: RenderDiff) -> str:
    """Unified diffs for changed files, then one line saying what changed in all."""
    lines = change_lines(diff.added, diff.removed, diff.changed)
    if diff.empty:
        lines.append(f"no changes against {diff.base} ({diff.unchanged} files)")
    else:
        lines.append(
            f"against {diff.base}: {len(diff.added)} added, {len(diff.removed)} removed, "
            f"{len(diff.changed)} changed, {diff.unchanged} unchanged"
        )
    return "\n".join(lines) + "\n"
