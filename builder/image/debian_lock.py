"""The Debian half of the lock: which package versions an accepted build had.

`aurora-image lock --debian` records the package set of a built, tested image.
Later builds compare their package set with it and say what moved: with a
snapshot mirror in the spec nothing can move; against a live mirror a point
release shows up here instead of slipping into an image unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from builder.image.inputs import REPO
from builder.image.store import read_manifest
from builder.render.tree import atomic_write

DEBIAN_LOCK = REPO / "locks" / "debian-packages.txt"
_HEADER = "# aurora-image Debian lock: package version, from image "


def write_debian_lock(image_dir: Path, lock: Path = DEBIAN_LOCK) -> Path:
    manifest = read_manifest(image_dir)
    debs = manifest.debian_debs or {}
    lines = [f"{_HEADER}{manifest.tag}"]
    lines += [
        f"{name} {version} {debs[name]}" if name in debs else f"{name} {version}"
        for name, version in sorted(manifest.debian_packages.items())
    ]
    atomic_write(lock, ("\n".join(lines) + "\n").encode())
    return lock


def _entries(lock: Path) -> list[list[str]] | None:
    if not lock.exists():
        return None
    return [line.split() for line in lock.read_text().splitlines() if line and line[:1] != "#"]


def read_debian_lock(lock: Path = DEBIAN_LOCK) -> dict[str, str] | None:
    """{package: version}; None without a lock."""
    entries = _entries(lock)
    return None if entries is None else {e[0]: e[1] for e in entries}


def read_debian_digests(lock: Path = DEBIAN_LOCK) -> dict[str, tuple[str, str]]:
    """{package: (version, .deb sha256)} for the lines that carry a digest."""
    return {e[0]: (e[1], e[2]) for e in _entries(lock) or [] if len(e) >= 3}


def compare(
    built: dict[str, str], lock: Path = DEBIAN_LOCK, debs: dict[str, str] | None = None
) -> dict[str, object]:
    """What the build's packages did relative to the lock (for manifest and warning).
    With .deb digests in the lock and the build's (`debs`), the files are compared too:
    `pinned` says the lock names exact files, so a mismatch is refused, not warned."""
    locked = read_debian_lock(lock)
    if locked is None:
        return {"locked": False, "matches": False, "changed": [], "pinned": False}
    changed = [
        f"{name}: {locked.get(name, '(new)')} -> {built.get(name, '(removed)')}"
        for name in sorted(set(locked) | set(built))
        if locked.get(name) != built.get(name)
    ]
    pinned = read_debian_digests(lock)
    if pinned and debs is not None:
        changed += [
            f"{name} {version}: .deb {digest[:12]} -> {debs[name][:12]}"
            for name, (version, digest) in sorted(pinned.items())
            if built.get(name) == version and name in debs and debs[name] != digest
        ]
    return {"locked": True, "matches": not changed, "changed": changed, "pinned": bool(pinned)}


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
