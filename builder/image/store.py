"""The image store: one owner of `images/<tag>/` and everything named in it.

Each build is `images/<tag>/` (written by builder.image.build through
`partial_dir`, renamed into place when complete): the boot artifacts, cmdline,
manifest.json, rendered.tar, build.log. The smoke suite leaves
`attestation.json` beside it: the aurora.raw digest it booted and every
test's outcome. An image counts as attested only while that digest is still
the manifest's, so a rebuilt or edited disk never inherits an old verdict.
Listing, "newest", resolving a tag and reading/writing the two records happen
here only; a dot-directory (`.<tag>.partial`, `.<tag>.removing`) is never an
image. What may go is builder.image.prune's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from builder.errors import BuildError, StoreError, UnknownTag
from builder.image.manifest import Attestation, DiskFingerprint, Manifest
from builder.render.tree import atomic_write

# What an image directory holds (builder.image.logs names the logs beside them).
MANIFEST = "manifest.json"
ATTESTATION = "attestation.json"
DISK = "aurora.raw"
ARTIFACTS = (DISK, "aurora.vmlinuz", "aurora.initrd")
CMDLINE = "cmdline"
RENDERED_TAR = "rendered.tar"
BUILD_LOG = "build.log"
FAILING = frozenset({"failed", "error"})


def partial_dir(store: Path, tag: str) -> Path:
    """Where a build of `tag` assembles its files before the rename that stores it."""
    return store / f".{tag}.partial"


def removing_dir(image_dir: Path) -> Path:
    """Where an image goes out of sight while it is removed (see builder.image.prune)."""
    return image_dir.with_name(f".{image_dir.name}.removing")


def partial_dirs(store: Path) -> list[Path]:
    """Partial builds in the store (live or abandoned), by name."""
    found = store.glob(partial_dir(store, "*").name) if store.is_dir() else []
    return sorted(p for p in found if p.is_dir())


def removing_dirs(store: Path) -> list[Path]:
    """Images an interrupted removal left half-removed, by name."""
    return sorted(store.glob(removing_dir(store / "*").name)) if store.is_dir() else []


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a (possibly multi-GB) file, read in chunks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path)


@dataclass(frozen=True)
class ImageRecord:
    """One stored image as `aurora-image list` shows it."""

    tag: str
    path: Path
    size_bytes: int
    built_at: float
    attested: bool
    attestation: Attestation | None

    def to_json(self) -> dict[str, object]:
        return {
            "tag": self.tag,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "built_at": iso(self.built_at),
            "attested": self.attested,
            "attestation": self.attestation.to_json() if self.attestation else None,
        }


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def allocated_bytes(path: Path) -> int:
    """Disk space a directory really uses: aurora.raw is sparse, so st_size overstates it."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in [".", *dirs, *files]:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def _read_json(path: Path) -> object:
    """The file's JSON; StoreError naming the file when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot read it ({exc})") from None


def read_manifest(image_dir: Path) -> Manifest:
    """The image's manifest; StoreError naming the file when it is missing or not one."""
    path = image_dir / MANIFEST
    return Manifest.from_json(_read_json(path), str(path))


def manifest_bytes(manifest: Manifest) -> bytes:
    """manifest.json's bytes, as every build has written them."""
    return (json.dumps(manifest.to_json(), indent=2) + "\n").encode()


def write_manifest(image_dir: Path, manifest: Manifest) -> None:
    atomic_write(image_dir / MANIFEST, manifest_bytes(manifest))


def read_attestation(image_dir: Path) -> Attestation | None:
    """The smoke suite's verdict, or None when there is none (or it is unreadable)."""
    try:
        return Attestation.from_json(_read_json(image_dir / ATTESTATION))
    except StoreError:
        return None


def disk_digest(image_dir: Path) -> str | None:
    """The aurora.raw sha256 the manifest recorded at build time."""
    try:
        return read_manifest(image_dir).disk_sha256(DISK)
    except StoreError:
        return None


def is_image(path: Path) -> bool:
    """A directory holding a build's manifest."""
    return (path / MANIFEST).is_file()


def image_dirs(store: Path) -> list[Path]:
    """Stored images, newest first; dot-dirs are partial or half-removed builds."""
    if not store.is_dir():
        return []
    dirs = [d for d in store.iterdir() if not d.name.startswith(".") and is_image(d)]
    return sorted(dirs, key=lambda d: ((d / MANIFEST).stat().st_mtime, d.name), reverse=True)


def newest_image(store: Path) -> Path:
    """The most recently stored image directory (what `make smoke` tests), never a partial."""
    dirs = image_dirs(store)
    if not dirs:
        raise BuildError(f"no image in {store}; run `make image` first")
    return dirs[0]


def list_images(store: Path) -> list[ImageRecord]:
    """Every stored image, newest build first."""
    records = []
    for path in image_dirs(store):
        attestation = read_attestation(path)
        records.append(
            ImageRecord(
                tag=path.name,
                path=path,
                size_bytes=allocated_bytes(path),
                built_at=(path / MANIFEST).stat().st_mtime,
                attested=_attested(path, attestation, verify=False),
                attestation=attestation,
            )
        )
    return records


def resolve_image(ref: str, store: Path) -> Path:
    """A tag in the store, or a directory holding a built image."""
    root = store
    if "/" not in ref and ref not in (".", "..") and is_image(root / ref):
        return root / ref
    path = Path(ref)
    if is_image(path):
        return path
    if path.is_dir():
        raise UnknownTag(f"{ref}: the directory holds no {MANIFEST}, so it is not a built image")
    tags = [d.name for d in image_dirs(root)]
    held = f"it holds {', '.join(tags)}" if tags else "it holds no images"
    raise UnknownTag(f"unknown image {ref!r}: no such tag or directory in {root} ({held})")


def write_attestation(
    image_dir: Path,
    *,
    passed: bool,
    tests: dict[str, str],
    started: float,
    finished: float,
    accel: str | None = None,
) -> Attestation:
    """Record a smoke-suite verdict against the exact disk bytes that were booted.

    The disk is hashed again rather than trusting the manifest, so a disk
    edited after its build can never be vouched for. `passed` is forced
    false when no test ran or one failed.
    """
    try:
        manifest = read_manifest(image_dir)
    except StoreError:
        manifest = None
    expected = manifest.disk_sha256(DISK) if manifest else None
    if manifest is None or expected is None:
        raise StoreError(f"{image_dir}: no {MANIFEST} with a {DISK} digest; not a built image")
    disk = image_dir / DISK
    try:
        stat = disk.stat()
        actual = sha256_file(disk)
    except OSError as exc:
        raise StoreError(f"{disk}: cannot read the disk to attest it: {exc}") from exc
    if actual != expected:
        raise StoreError(
            f"{disk}: sha256 {actual[:16]} is not the manifest's {expected[:16]}; "
            "the disk changed after its build, rebuild it before attesting"
        )
    counts = Counter(tests.values())
    record = Attestation(
        tag=manifest.tag,
        image_sha256=actual,
        disk=DiskFingerprint(stat.st_size, stat.st_mtime_ns),
        passed=bool(passed and tests and not FAILING & counts.keys()),
        counts={"total": len(tests), **dict(sorted(counts.items()))},
        tests=dict(sorted(tests.items())),
        started=iso(started),
        finished=iso(finished),
        seconds=round(finished - started, 1),
        accel=accel or None,
    )
    atomic_write(image_dir / ATTESTATION, (json.dumps(record.to_json(), indent=2) + "\n").encode())
    return record


def is_attested(image_dir: Path, *, verify: bool = False) -> bool:
    """Passed, for the disk the manifest names, and the disk is still those bytes.

    The disk is re-hashed only when its size or mtime moved since the
    attestation (or `verify` asks), so listing the store stays cheap.
    """
    return _attested(image_dir, read_attestation(image_dir), verify=verify)


def _attested(image_dir: Path, attestation: Attestation | None, *, verify: bool) -> bool:
    if attestation is None or not attestation.passed:
        return False
    expected = disk_digest(image_dir)
    if expected is None or attestation.image_sha256 != expected:
        return False
    disk = image_dir / DISK
    try:
        stat = disk.stat()
        fingerprint = DiskFingerprint(stat.st_size, stat.st_mtime_ns)
        if not verify and attestation.disk == fingerprint:
            return True
        return sha256_file(disk) == expected
    except OSError:
        return False
