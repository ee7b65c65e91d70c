"""What an image is made of, in bytes: the root's parts, each partition and artifact,
and the disk's apparent and allocated size (kept in the manifest, printed by the build)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from builder.image.gpt import partitions
from builder.image.store import ARTIFACTS, DISK


def _read_json(path: Path) -> object:
    return json.loads(path.read_text()) if path.exists() else None


def allocated(path: Path, start: int = 0, end: int | None = None) -> int:
    """Bytes of a sparse file (or a range of it) that hold data, as SEEK_DATA sees them."""
    end = path.stat().st_size if end is None else end
    total, pos = 0, start
    with path.open("rb") as handle:
        fd = handle.fileno()
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            if data >= end:
                break
            pos = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            total += pos - data
    return total


def tree_bytes(top: Path) -> int:
    """Bytes of the files below `top` as stored (links count as links), as the
    postinst counts the root's parts."""
    total = 0
    for root, _dirs, files in os.walk(top):
        total += sum(os.lstat(os.path.join(root, name)).st_size for name in files)
    return total


def image_sizes(
    output: Path, image_dir: Path, app: Path | None = None
) -> dict[str, dict[str, int]]:
    """What the image is made of: the root's parts (from the postinst's count),
    each partition and artifact, and the disk's apparent and allocated size.
    `app` is the dashboard's source as the config layer carries it: the base's root
    holds only its venv, so the postinst counts no app."""
    disk = image_dir / DISK
    parts = _read_json(output / "aurora-sizes.json")
    files = dict(parts) if isinstance(parts, dict) else {}
    if app is not None and files:
        files["app"] = tree_bytes(app)
        files["root_files"] = int(files.get("root_files", 0)) + files["app"]
    return {
        "root_files": files,
        "partitions": {
            part.label: {"size": part.size, "allocated": allocated(disk, part.offset, part.end)}
            for part in partitions(disk)
        },
        "artifacts": {name: {"size": (image_dir / name).stat().st_size} for name in ARTIFACTS},
        "disk": {"size": disk.stat().st_size, "allocated": allocated(disk)},
    }


def format_sizes(sizes: dict[str, dict[str, object]]) -> str:
    """One line for the build log: the root's parts, then the disk."""

    def size_text(value: object) -> str:
        # Whole MB, as bench reports them; kB (or bytes) below 1 MB, where whole MB
        # would print the sample app's few kB as "0 MB".
        size = int(value)  # type: ignore[call-overload]
        for scale, unit in ((1e6, "MB"), (1e3, "kB")):
            if size >= scale:
                return f"{size / scale:.0f} {unit}"
        return f"{size} B"

    files = sizes.get("root_files", {})
    shown = [
        f"{name} {size_text(files[name])}"
        for name in ("packages", "kernel", "venv", "app")
        if name in files
    ]
    disk = sizes["disk"]
    return (
        f"root files: {', '.join(shown) or 'not counted'}; disk {size_text(disk['size'])} "
        f"apparent, {size_text(disk['allocated'])} allocated"
    )
