"""The rendered tree: its entries (with where each came from) and writing it atomically.

The tree is written into a temporary sibling directory and renamed into
place, so a failed or interrupted render never leaves a half-written tree
where a build would pick it up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Provenance:
    """Where a carried file comes from: its producer (a template in units/, the
    function that generates it, the build) and the spec keys it depends on, with
    the item's index for a file made once per list item (``gws.jobs[2]``).
    ``unit`` is the systemd unit the file is, if it is one."""

    producer: str
    keys: tuple[str, ...] = ()
    unit: str | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"producer": self.producer, "keys": list(self.keys)}
        if self.unit:
            data["unit"] = self.unit
        return data


@dataclass(frozen=True)
class File:
    """One entry of the rendered tree: a regular file, a directory or a symlink.
    Its provenance is a record, not content: two equal files compare equal."""

    content: bytes = b""
    mode: int = 0o644
    link: str | None = None
    directory: bool = False
    provenance: Provenance | None = field(default=None, compare=False)


Tree = dict[str, File]


def write_tree(tree: Tree, dest: Path) -> Path:
    """Replace `dest` with exactly the files of `tree`; return `dest`."""
    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for path, entry in tree.items():
            _write_entry(staging / path.lstrip("/"), entry)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        staging.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _write_entry(target: Path, entry: File) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if entry.link is not None:
        target.symlink_to(entry.link)
    elif entry.directory:
        target.mkdir(exist_ok=True)
        target.chmod(entry.mode)
    else:
        target.write_bytes(entry.content)
        target.chmod(entry.mode)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write one file so readers see either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def carried_manifest(tree: Tree) -> dict[str, dict[str, object]]:
    """The provenance record of every rendered file, as the image manifest keeps it
    (``carried``): what audit's unit list and explain read instead of guessing."""
    return {p: e.provenance.to_json() for p, e in sorted(tree.items()) if e.provenance}
