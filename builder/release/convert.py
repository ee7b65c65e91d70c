"""The local image on its way to Glance: refuse an untested one, convert its disk
to compressed qcow2 (cached beside it), and the properties its upload records.

The conversion is cached as `aurora.qcow2` with a record (`aurora.qcow2.json`)
naming the manifest's disk digest and the file's size; the cache is trusted
only while both still match, and it is written atomically (via a partial file).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from builder import progress
from builder.image.gpt import partitions
from builder.image.store import (
    DISK,
    MANIFEST,
    disk_digest,
    is_attested,
    read_attestation,
    read_manifest,
    resolve_image,
    sha256_file,
)
from builder.release.errors import NotAttested, ReleaseError
from builder.release.glance import now_iso, operator
from builder.render.tree import atomic_write

QCOW = "aurora.qcow2"
QCOW_META = "aurora.qcow2.json"
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
# The STFC Cloud's recommended properties for a q35/UEFI guest on virtio-scsi.
STFC_PROPERTIES = {
    "hw_machine_type": "q35",
    "hw_disk_bus": "scsi",
    "hw_scsi_model": "virtio-scsi",
    "hw_qemu_guest_agent": "yes",
    "os_distro": "debian",
    "os_type": "linux",
}


def builder_version() -> str:
    try:
        return metadata.version("aurora-image")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_attested(ref: str, store: Path) -> Path:
    """The image directory for `ref`, if the smoke suite passed on exactly its disk."""
    path = resolve_image(ref, store)
    record = read_attestation(path)
    tag = path.name
    if record is None:
        raise NotAttested(
            f"{tag}: not tested: no smoke-suite attestation in {path}; "
            f"run `make smoke AURORA_IMAGE={tag}` first"
        )
    if not record.passed:
        raise NotAttested(
            f"{tag}: the smoke suite failed on it ({record.finished}); "
            "fix the failures and rebuild, then run `make smoke` again"
        )
    if not is_attested(path, verify=True):
        tested = (record.image_sha256 or "?")[:16]
        current = (disk_digest(path) or "?")[:16]
        raise NotAttested(
            f"{tag}: the attestation is for disk {tested} but {DISK} is now {current} "
            f"(manifest) or was changed since; run `make smoke AURORA_IMAGE={tag}` again"
        )
    return path


def is_uefi(disk: Path) -> bool:
    """An ESP means systemd-boot is on the disk, so the guest wants UEFI firmware."""
    try:
        return any(p.type_uuid == ESP_TYPE for p in partitions(disk))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Qcow:
    path: Path
    size: int


def cached_qcow(image_dir: Path) -> Qcow | None:
    """The cached conversion, trusted only while its record names the manifest's disk
    digest and the file still has the recorded size."""
    qcow, meta_path = image_dir / QCOW, image_dir / QCOW_META
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("raw_sha256") == disk_digest(image_dir) and qcow.stat().st_size == meta.get(
            "size"
        ):
            return Qcow(qcow, qcow.stat().st_size)
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _qemu_convert(image_dir: Path, dest: Path, purpose: str = "") -> None:
    """`qemu-img convert -c -O qcow2` of the image's disk into `dest` (via a partial file)."""
    partial = dest.with_name(f".{dest.name}.partial")
    argv = ["qemu-img", "convert", "-c", "-m", "4", "-W", "-O", "qcow2"]
    with progress.step(f"convert {image_dir.name} to compressed qcow2{purpose}"):
        try:
            done = subprocess.run(
                [*argv, str(image_dir / DISK), str(partial)],
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            raise ReleaseError("qemu-img is not installed; run `make setup`") from None
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ReleaseError(
                f"{image_dir / DISK}: qemu-img convert failed ({reason}); "
                f"check free space in {dest.parent}"
            )
        os.replace(partial, dest)


def convert(image_dir: Path) -> Qcow:
    """The compressed qcow2 of the image, cached beside it and written atomically."""
    cached = cached_qcow(image_dir)
    if cached is not None:
        return cached
    (image_dir / QCOW_META).unlink(missing_ok=True)
    _qemu_convert(image_dir, image_dir / QCOW)
    size = (image_dir / QCOW).stat().st_size
    record = {"raw_sha256": disk_digest(image_dir), "size": size}
    atomic_write(image_dir / QCOW_META, (json.dumps(record) + "\n").encode())
    return Qcow(image_dir / QCOW, size)


def measure_qcow(image_dir: Path) -> int:
    """The size the upload will have, for a dry run: the cached conversion's, else a
    conversion into a temporary directory (deleted again; the store is not touched)."""
    cached = cached_qcow(image_dir)
    if cached is not None:
        return cached.size
    with tempfile.TemporaryDirectory(prefix="aurora-dry-run-") as scratch:
        dest = Path(scratch) / QCOW
        _qemu_convert(image_dir, dest, " (temporary, to know the upload's size)")
        return dest.stat().st_size


def image_properties(image_dir: Path) -> dict[str, str]:
    """What Glance records about an upload besides its bytes (all strings)."""
    manifest = read_manifest(image_dir)
    attestation = read_attestation(image_dir)
    counts = attestation.counts if attestation else {}
    summary = (
        f"passed {counts.get('total', '?')} smoke tests, "
        f"finished {attestation.finished if attestation else None}"
        + (f" ({attestation.accel})" if attestation and attestation.accel else "")
    )
    props = {
        "aurora_tag": manifest.tag,
        "aurora_release": manifest.release or "",
        "aurora_image_sha256": disk_digest(image_dir) or "",
        "aurora_manifest_sha256": sha256_file(image_dir / MANIFEST),
        "aurora_attestation": summary,
        "aurora_builder_version": builder_version(),
        "aurora_uploaded_at": now_iso(),
        "aurora_uploaded_by": operator(),
        **STFC_PROPERTIES,
    }
    if manifest.root_partition_sha256:
        props["aurora_root_sha256"] = manifest.root_partition_sha256
    if is_uefi(image_dir / DISK):
        props["hw_firmware_type"] = "uefi"
    return props
