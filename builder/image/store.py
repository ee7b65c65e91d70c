"""The image store: one owner of `images/<tag>/` and everything named in it.

Each build is `images/<tag>/` (written by builder.image.build through
`partial_dir`, renamed into place when complete): the boot artifacts, cmdline,
manifest.json, rendered.tar, build.log. The smoke suite leaves
`attestation.json` beside it: the aurora.raw digest it booted and every
test's outcome. An image counts as attested only while that digest is still
the manifest's, so a rebuilt or edited disk never inherits an old verdict.
Listing, "newest", resolving a tag and reading/writing the two records happen
here only; a dot-directory (`.<tag>.partial`, `.<tag>.removing`) is never an
image. Pruning keeps the newest images, every live image and the attested
image before each live one, which is where a rollback would go.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.errors import BuildError, StoreError, UnknownTag
from builder.image.manifest import Attestation, DiskFingerprint, Manifest
from builder.paths import Paths
from builder.plan import Plan, Step
from builder.render.tree import atomic_write

# What an image directory holds (builder.image.logs names the logs beside them).
MANIFEST = "manifest.json"
ATTESTATION = "attestation.json"
DISK = "aurora.raw"
ARTIFACTS = (DISK, "aurora.vmlinuz", "aurora.initrd")
CMDLINE = "cmdline"
RENDERED_TAR = "rendered.tar"
BUILD_LOG = "build.log"
# A build streams mkosi's output into its partial dir's build.log, so a
# partial untouched for this long has no build behind it any more.
STALE_PARTIAL_SECONDS = 3600.0
FAILING = frozenset({"failed", "error"})


def _root(store: Path | None) -> Path:
    """The store the caller passed. None is transitional, for builder/release callers
    that do not pass theirs yet: the CLI's default store (builder.paths)."""
    return store if store is not None else Paths.from_env().images


def partial_dir(store: Path, tag: str) -> Path:
    """Where a build of `tag` assembles its files before the rename that stores it."""
    return store / f".{tag}.partial"


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


def _image_dirs(store: Path) -> list[Path]:
    """Stored images, newest first; dot-dirs are partial or half-removed builds."""
    if not store.is_dir():
        return []
    dirs = [d for d in store.iterdir() if not d.name.startswith(".") and is_image(d)]
    return sorted(dirs, key=lambda d: ((d / MANIFEST).stat().st_mtime, d.name), reverse=True)


def newest_image(store: Path | None = None) -> Path:
    """The most recently stored image directory (what `make smoke` tests), never a partial."""
    root = _root(store)
    dirs = _image_dirs(root)
    if not dirs:
        raise BuildError(f"no image in {root}; run `make image` first")
    return dirs[0]


def list_images(store: Path | None = None) -> list[ImageRecord]:
    """Every stored image, newest build first."""
    records = []
    for path in _image_dirs(_root(store)):
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


def resolve_image(ref: str, store: Path | None = None) -> Path:
    """A tag in the store, or a directory holding a built image."""
    root = _root(store)
    if "/" not in ref and ref not in (".", "..") and is_image(root / ref):
        return root / ref
    path = Path(ref)
    if is_image(path):
        return path
    if path.is_dir():
        raise UnknownTag(f"{ref}: the directory holds no {MANIFEST}, so it is not a built image")
    tags = [d.name for d in _image_dirs(root)]
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


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _remove(path: Path) -> None:
    """Rename out of sight first, so an interrupted removal never looks like an image."""
    doomed = path.with_name(f".{path.name}.removing")
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    shutil.rmtree(doomed)


@dataclass(frozen=True)
class PrunePlan:
    """What `prune` removes and why, and what it keeps because it must."""

    store: Path
    images: tuple[Path, ...]  # older than the newest `keep`, not protected
    partials: tuple[Path, ...]  # partial builds no build has touched for a while
    leftovers: tuple[Path, ...]  # half-removed images of an interrupted prune
    protected: dict[str, str]  # tag -> why it stays although older than `keep`
    kept: tuple[str, ...]

    def to_json(self, keep: int) -> dict[str, Any]:
        """The plan for --dry-run --json, with the same keys a real prune reports."""
        removed = [p.name for p in (*self.images, *self.partials)]
        return {
            **self.to_plan(keep).to_json(),
            "store": str(self.store),
            "removed": removed,
            "kept": list(self.kept),
        }

    def to_plan(self, keep: int) -> Plan:
        steps = [
            Step(
                "remove",
                path.name,
                f"not among the {keep} newest; {human_size(allocated_bytes(path))}",
                {"path": str(path), "bytes": allocated_bytes(path)},
            )
            for path in self.images
        ]
        steps += [
            Step("remove", p.name, "partial build untouched for an hour", {"path": str(p)})
            for p in self.partials
        ]
        steps += [
            Step("remove", p.name, "left by an interrupted removal", {"path": str(p)})
            for p in self.leftovers
        ]
        steps += [Step("keep", tag, why) for tag, why in self.protected.items()]
        n = len(self.kept)
        return Plan(
            command=f"prune --keep {keep}",
            target=f"the image store {self.store}",
            steps=tuple(steps),
            summary=f"then {n} image{' is' if n == 1 else 's are'} left",
        )


def plan_prune(
    keep: int,
    live: Collection[str] = frozenset(),
    *,
    store: Path | None = None,
    stale_after: float = STALE_PARTIAL_SECONDS,
) -> PrunePlan:
    """Which images go: those older than the `keep` newest. Reads only.

    Never removed: a live image, and the newest attested image older than
    each live one (its rollback target). Partial builds untouched for
    `stale_after` seconds and leftovers of interrupted removals go too.
    """
    if keep < 0:
        raise StoreError(f"--keep {keep}: keep must be 0 or more")
    root = _root(store)
    dirs = _image_dirs(root)
    tags = [d.name for d in dirs]
    unknown = sorted(set(live) - set(tags))
    if unknown:
        held = ", ".join(tags) or "no images"
        raise UnknownTag(
            f"live image {', '.join(unknown)} is not in {root} (it holds {held}); "
            "refusing to prune without knowing what is live"
        )
    protected = {tag: "live (--live)" for tag in live}
    for index, path in enumerate(dirs):
        if path.name in live:
            target = next((d for d in dirs[index + 1 :] if is_attested(d)), None)
            if target is not None:
                protected.setdefault(target.name, f"rollback target of live {path.name}")
    doomed = tuple(p for p in dirs[keep:] if p.name not in protected)
    now = time.time()
    exists = root.is_dir()
    partials = tuple(
        p
        for p in (sorted(root.glob(partial_dir(root, "*").name)) if exists else [])
        if p.is_dir() and now - _newest_mtime(p) > stale_after
    )
    return PrunePlan(
        store=root,
        images=doomed,
        partials=partials,
        leftovers=tuple(sorted(root.glob(".*.removing")) if exists else []),
        protected={t: w for t, w in protected.items() if t in {d.name for d in dirs[keep:]}},
        kept=tuple(d.name for d in dirs if d not in doomed),
    )


def prune(
    keep: int,
    live: Collection[str] = frozenset(),
    *,
    store: Path | None = None,
    stale_after: float = STALE_PARTIAL_SECONDS,
) -> list[str]:
    """Remove what `plan_prune` picks; return the names removed."""
    plan = plan_prune(keep, live, store=store, stale_after=stale_after)
    return execute_prune(plan)


def execute_prune(plan: PrunePlan) -> list[str]:
    removed = []
    for path in plan.images:
        _remove(path)
        removed.append(path.name)
    for path in plan.partials:
        shutil.rmtree(path)
        removed.append(path.name)
    for path in plan.leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return removed
