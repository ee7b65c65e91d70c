"""The Debian half of the lock: which package versions an accepted build had.

`aurora-image lock --debian` records the package set of a built, tested image.
Later builds compare their package set with it and say what moved: with a
snapshot mirror in the spec nothing can move; against a live mirror a point
release shows up here instead of slipping into an image unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path

from builder.inputs import REPO
from builder.tree import atomic_write

DEBIAN_LOCK = REPO / "locks" / "debian-packages.txt"
_HEADER = "# aurora-image Debian lock: package version, from image "


def write_debian_lock(image_dir: Path, lock: Path = DEBIAN_LOCK) -> Path:
    manifest = json.loads((image_dir / "manifest.json").read_text())
    lines = [f"{_HEADER}{manifest['tag']}"]
    lines += [f"{name} {version}" for name, version in sorted(manifest["debian_packages"].items())]
    atomic_write(lock, ("\n".join(lines) + "\n").encode())
    return lock


def read_debian_lock(lock: Path = DEBIAN_LOCK) -> dict[str, str] | None:
    if not lock.exists():
        return None
    pairs = (line.split(" ", 1) for line in lock.read_text().splitlines() if line[:1] != "#")
    return {name: version for name, version in pairs}


def compare(built: dict[str, str], lock: Path = DEBIAN_LOCK) -> dict[str, object]:
    """What the build's packages did relative to the lock (for manifest and warning)."""
    locked = read_debian_lock(lock)
    if locked is None:
        return {"locked": False, "matches": False, "changed": []}
    changed = [
        f"{name}: {locked.get(name, '(new)')} -> {built.get(name, '(removed)')}"
        for name in sorted(set(locked) | set(built))
        if locked.get(name) != built.get(name)
    ]
    return {"locked": True, "matches": not changed, "changed": changed}


def warning(result: dict[str, object]) -> str | None:
    if not result["locked"]:
        return "no Debian lock yet: run `aurora-image lock --debian` once this image is tested"
    changed = list(result["changed"])  # type: ignore[call-overload]
    if not changed:
        return None
    shown = "; ".join(changed[:5]) + (f"; +{len(changed) - 5} more" if len(changed) > 5 else "")
    return (
        f"Debian packages moved from locks/debian-packages.txt ({shown}); "
        "pin `debian.snapshot` in the spec, or accept with `aurora-image lock --debian`"
    )
