"""`aurora-image verify TAG`: is the image reproducible from its inputs?

Rebuilds the stored image from the checkout (whose inputs must digest to the
same tag) into a scratch store with an empty mkosi cache and workspace (other
Paths, passed to the build; the environment is not touched), then compares the two
disks. Where they differ, it says which partitions and which files, by
extracting both trees (debugfs for ext4, fsck.erofs for the EROFS root; no
loop devices or root mounts), so each cause of non-determinism can be found
and fixed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import AuroraError
from builder.image.build import build
from builder.image.gpt import Partition, copy_partition, filesystem, partition_digest, partitions
from builder.image.inputs import collect
from builder.image.store import DISK, read_manifest, resolve_image, sha256_file
from builder.paths import Paths
from builder.spec.model import load_spec

TREE_LABELS = ("root-x86-64", "aurora-var")


@dataclass
class VerifyResult:
    tag: str
    identical: bool
    artifacts: dict[str, tuple[str, str]]
    partitions: dict[str, bool] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    # Superblock fields (dumpe2fs -h) that differ, per ext4 partition: stored, rebuilt.
    superblock: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "tag": self.tag,
            "identical": self.identical,
            "artifacts": {k: {"stored": a, "rebuilt": b} for k, (a, b) in self.artifacts.items()},
            "partitions_identical": self.partitions,
            "differing_files": self.files,
            "differing_superblock_fields": {
                label: {k: {"stored": a, "rebuilt": b} for k, (a, b) in fields.items()}
                for label, fields in self.superblock.items()
            },
        }


def extract_ext4(disk: Path, offset: int, dest: Path) -> Path:
    """Copy an ext4 partition's tree out of a disk image with debugfs."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debugfs", "-R", f"rdump / {dest}", f"{disk}?offset={offset}"],
        check=True,
        capture_output=True,
    )
    return dest


def extract_tree(disk: Path, part: Partition, dest: Path) -> Path:
    """Copy a partition's tree out of a disk image (ext4 or EROFS)."""
    if filesystem(disk, part) != "erofs":
        return extract_ext4(disk, part.offset, dest)
    dest.mkdir(parents=True, exist_ok=True)
    raw = copy_partition(disk, part, dest.parent / f"{dest.name}.img")
    try:
        subprocess.run(
            ["fsck.erofs", f"--extract={dest}", "--overwrite", str(raw)],
            check=True,
            capture_output=True,
        )
    finally:
        raw.unlink()
    return dest


def list_directory(disk: Path, part: Partition, directory: str, scratch: Path) -> str:
    """A directory's listing inside a partition of a disk image (ext4 or EROFS)."""
    if filesystem(disk, part) != "erofs":
        argv = ["debugfs", "-R", f"ls -p {directory}", f"{disk}?offset={part.offset}"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    raw = copy_partition(disk, part, scratch / f"{part.label}.img")
    try:
        argv = ["dump.erofs", "--ls", f"--path={directory}", str(raw)]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    finally:
        raw.unlink()


def superblock(disk: Path, offset: int) -> dict[str, str]:
    """An ext4 partition's superblock fields as dumpe2fs -h prints them."""
    out = subprocess.run(
        ["dumpe2fs", "-h", f"{disk}?offset={offset}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields[key.strip()] = value.strip()
    return fields


def superblock_diff(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {
        k: (a.get(k, "-"), b.get(k, "-"))
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    }


def _entries(root: Path) -> dict[str, Path]:
    return {"/" + p.relative_to(root).as_posix(): p for p in root.rglob("*")}


def _same(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    if a.is_dir() or b.is_dir():
        return a.is_dir() and b.is_dir()
    sa, sb = a.stat(), b.stat()
    return (
        sa.st_size == sb.st_size
        and int(sa.st_mtime) == int(sb.st_mtime)
        and sa.st_mode == sb.st_mode
        and a.read_bytes() == b.read_bytes()
    )


def differing_files(a: Path, b: Path, limit: int = 200) -> list[str]:
    """Paths on one side only, or whose content, mtime, mode, link target or type differs."""
    left, right = _entries(a), _entries(b)
    found = [
        path
        for path in sorted(left.keys() | right.keys())
        if path not in left or path not in right or not _same(left[path], right[path])
    ]
    return found[:limit]


def compare_disks(stored: Path, rebuilt: Path, scratch: Path, result: VerifyResult) -> None:
    """Per-partition equality; for differing file systems the files (ext4: superblock fields)."""
    same, files, fields = result.partitions, result.files, result.superblock
    theirs = {p.label: p for p in partitions(rebuilt)}
    for part in partitions(stored):
        other = theirs.get(part.label)
        equal = other is not None and partition_digest(stored, part) == partition_digest(
            rebuilt, other
        )
        same[part.label] = equal
        if not equal and other is not None and part.label in TREE_LABELS:
            left = extract_tree(stored, part, scratch / "stored" / part.label)
            right = extract_tree(rebuilt, other, scratch / "rebuilt" / part.label)
            files[part.label] = differing_files(left, right)
            if filesystem(stored, part) == "ext4" and filesystem(rebuilt, other) == "ext4":
                fields[part.label] = superblock_diff(
                    superblock(stored, part.offset), superblock(rebuilt, other.offset)
                )


def verify(ref: str, paths: Paths, *, progress: bool = False) -> VerifyResult:
    """Rebuild `ref` (from `paths.images`) into a scratch store with an empty build
    cache (the tools and downloads in `paths.cache` are reused) and compare."""
    stored = resolve_image(ref, paths.images)
    manifest = read_manifest(stored)
    spec_path = paths.repo / (manifest.spec or "hosts/aurora.yml")
    spec = load_spec(spec_path)
    inputs = collect(spec)
    if inputs.tag != manifest.tag:
        raise AuroraError(
            f"{manifest.tag}: this checkout's inputs make {inputs.tag}; check out the "
            "commit that built the image (and its locks), then verify again"
        )
    with tempfile.TemporaryDirectory(prefix="aurora-verify-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        rebuilt = build(spec, paths.scratch(work), progress=progress).path
        artifacts = {
            name: (info.sha256, sha256_file(rebuilt / name))
            for name, info in manifest.artifacts.items()
        }
        identical = all(a == b for a, b in artifacts.values())
        result = VerifyResult(manifest.tag, identical, artifacts)
        if artifacts[DISK][0] != artifacts[DISK][1]:
            compare_disks(stored / DISK, rebuilt / DISK, work / "trees", result)
    return result


def format_text(result: VerifyResult) -> str:
    lines = [f"{result.tag}: {'bit-for-bit identical' if result.identical else 'DIFFERS'}"]
    for name, (a, b) in result.artifacts.items():
        lines.append(f"  {name}: {'same' if a == b else f'{a[:12]} != {b[:12]}'}")
    for label, same in result.partitions.items():
        lines.append(f"  partition {label}: {'same' if same else 'differs'}")
        if not same and label in result.files and not result.files[label]:
            lines.append(
                "    same files, contents, modes and mtimes: the difference is file-system"
                " metadata (UUIDs, hash seed, inode layout, superblock times)"
            )
        for path in result.files.get(label, []):
            lines.append(f"    {path}")
        for key, (a, b) in result.superblock.get(label, {}).items():
            lines.append(f"    superblock {key}: {a} != {b}")
    return "\n".join(lines)
