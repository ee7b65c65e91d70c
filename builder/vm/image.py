"""What QEMU boots (:class:`BootImage`): an image directory's split artifacts booted
directly, or a whole disk booted by UEFI firmware as a cloud boots it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.image.store import ARTIFACTS, CMDLINE

DEFAULT_CMDLINE = (
    "root=PARTLABEL=root-x86-64 ro console=ttyS0 systemd.firstboot=off systemd.machine_id=firmware"
)
# An image directory's names are builder.image.store's.
(DISK_NAME, KERNEL_NAME, INITRD_NAME), CMDLINE_NAME = ARTIFACTS, CMDLINE
# UEFI firmware (Debian's ``ovmf``): the 4M pair, code read-only and shared, vars
# copied per machine because the firmware writes its boot entries there. Not the
# secure-boot build: the image's UKI is not signed with Microsoft's keys.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(frozen=True)
class BootImage:
    """What QEMU boots: by default the split artifacts mkosi writes (disk, kernel,
    initrd, cmdline, booted directly); without a kernel, the disk alone through
    UEFI firmware, as a cloud boots it (systemd-boot and a UKI on the ESP)."""

    disk: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = DEFAULT_CMDLINE
    disk_format: str = "raw"

    @property
    def firmware(self) -> bool:
        """True when the firmware boots the disk (no kernel handed to QEMU)."""
        return self.kernel is None

    @classmethod
    def uefi(cls, disk: Path, disk_format: str = "qcow2") -> BootImage:
        """A whole-disk image booted by OVMF; its kernel cmdline lives in the UKI."""
        if disk_format not in ("raw", "qcow2"):
            raise ValueError(f"{disk}: disk format {disk_format!r}; expected raw or qcow2")
        return cls(disk=Path(disk), cmdline="", disk_format=disk_format)

    @classmethod
    def from_dir(cls, image_dir: Path) -> BootImage:
        """Find ``aurora.{raw,vmlinuz,initrd}`` and the optional ``cmdline`` file."""
        image_dir = Path(image_dir)
        paths = [image_dir / n for n in (DISK_NAME, KERNEL_NAME, INITRD_NAME)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{image_dir}: missing image artifacts {', '.join(missing)}")
        cmdline_file = image_dir / CMDLINE_NAME
        cmdline = DEFAULT_CMDLINE
        if cmdline_file.is_file():
            cmdline = " ".join(cmdline_file.read_text().split()) or DEFAULT_CMDLINE
        return cls(disk=paths[0], kernel=paths[1], initrd=paths[2], cmdline=cmdline)
