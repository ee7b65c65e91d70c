"""Disks a VM gets besides its image: a qcow2 overlay that takes the guest's writes,
and ext4 scratch volumes standing in for the persistent volumes (/data, /project)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from builder.vm.image import BootImage

if TYPE_CHECKING:
    from builder.spec.model import HostSpec


def make_overlay(image: BootImage, path: Path) -> Path:
    """A qcow2 file backed by the image: the guest writes there, never to the image."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk),
         "-F", image.disk_format, str(path)],
        check=True,
    )  # fmt: skip
    return path


def volume_labels(spec: HostSpec) -> list[str]:
    """The labels the spec mounts its volumes by (what :func:`scratch_volumes` makes)."""
    return [m.what.removeprefix("LABEL=") for m in spec.mounts if m.what.startswith("LABEL=")]


def scratch_volumes(
    labels: Sequence[str],
    workdir: Path,
    size: str = "1G",
    contents: Mapping[str, Path] | None = None,
) -> list[Path]:
    """Ext4 disks with the given labels: stand-ins for the persistent volumes
    (the image mounts its volumes by label, so it cannot tell the difference).

    ``contents`` maps a label to a directory copied in at mkfs time (``mkfs.ext4
    -d`` keeps modes and owners), e.g. a credential store the guest reads at boot.
    """
    drives = []
    for label in labels:
        path = workdir / f"{label}.img"
        subprocess.run(["truncate", "-s", size, str(path)], check=True)
        seed = (contents or {}).get(label)
        populate = ["-d", str(seed)] if seed is not None else []
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, *populate, str(path)], check=True)
        drives.append(path)
    return drives
