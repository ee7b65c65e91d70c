"""builder.vm.image: what QEMU boots, found in an image directory or a whole disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.vm.image import DEFAULT_CMDLINE, BootImage


@pytest.mark.usefixtures("fake_image_dir")
def test_boot_image_from_dir_defaults(tmp_path: Path) -> None:
    img = BootImage.from_dir(tmp_path)
    assert img.disk == tmp_path / "aurora.raw"
    assert img.kernel == tmp_path / "aurora.vmlinuz"
    assert img.initrd == tmp_path / "aurora.initrd"
    assert img.cmdline == DEFAULT_CMDLINE
    assert "root=PARTLABEL=root-x86-64" in img.cmdline
    assert "systemd.firstboot=off" in img.cmdline


@pytest.mark.usefixtures("fake_image_dir")
def test_boot_image_reads_cmdline_file(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("root=PARTLABEL=root-x86-64 ro\n  console=ttyS0 quiet\n")
    expected = "root=PARTLABEL=root-x86-64 ro console=ttyS0 quiet"
    assert BootImage.from_dir(tmp_path).cmdline == expected


def test_boot_image_names_missing_artifacts(tmp_path: Path) -> None:
    (tmp_path / "aurora.raw").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"aurora\.vmlinuz, aurora\.initrd"):
        BootImage.from_dir(tmp_path)
