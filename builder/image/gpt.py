"""Read a disk image's GPT partition table, so tests and `verify` can look
inside a partition (debugfs for ext4, erofs-utils for the EROFS root) without
loop devices or root mounts."""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512


@dataclass(frozen=True)
class Partition:
    label: str
    type_uuid: str
    part_uuid: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def partitions(image: Path) -> list[Partition]:
    with image.open("rb") as disk:
        disk.seek(SECTOR)
        header = disk.read(92)
        if header[:8] != b"EFI PART":
            raise ValueError(f"{image}: no GPT header (not a disk image?)")
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        disk.seek(entries_lba * SECTOR)
        table = disk.read(count * entry_size)
    found = []
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        label = entry[56:128].decode("utf-16-le").rstrip("\0")
        found.append(
            Partition(
                label=label,
                type_uuid=str(type_guid),
                part_uuid=str(uuid.UUID(bytes_le=entry[16:32])),
                offset=first * SECTOR,
                size=(last - first + 1) * SECTOR,
            )
        )
    return found


def partition(image: Path, label: str) -> Partition:
    for part in partitions(image):
        if part.label == label:
            return part
    raise KeyError(f"{image}: no partition labelled {label!r}")


def partition_digest(image: Path, part: Partition) -> str:
    """sha256 of one partition's bytes, read straight from the disk image."""
    h = hashlib.sha256()
    with image.open("rb") as disk:
        disk.seek(part.offset)
        left = part.size
        while left and (chunk := disk.read(min(left, 1 << 20))):
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def filesystem(image: Path, part: Partition) -> str | None:
    """ "ext4" or "erofs" from the partition's superblock magic (None for anything else)."""
    with image.open("rb") as disk:
        disk.seek(part.offset + 1024)
        block = disk.read(64)
    if len(block) == 64 and struct.unpack_from("<I", block, 0)[0] == 0xE0F5E1E2:
        return "erofs"
    if len(block) == 64 and struct.unpack_from("<H", block, 56)[0] == 0xEF53:
        return "ext4"
    return None


def copy_partition(image: Path, part: Partition, dest: Path) -> Path:
    """One partition's bytes as a file of its own (for tools without an offset option)."""
    with image.open("rb") as src, dest.open("wb") as out:
        left, offset = part.size, part.offset
        while left:
            copied = os.copy_file_range(src.fileno(), out.fileno(), min(left, 1 << 30), offset)
            if copied == 0:
                break
            left, offset = left - copied, offset + copied
    return dest
