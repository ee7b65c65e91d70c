"""builder/image/root.py's pure parts: which fstab lines are the image's own mounts,
which mount points a writable layer covers, and nspawn's command line. The mounts
themselves are exercised on a real image by tests/container."""

from __future__ import annotations

import struct
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from builder.image.root import (
    Container,
    ContainerError,
    FstabMount,
    disk_mounts,
    image_root,
    mounts_under,
)
from builder.image.store import DISK

FSTAB = """\
# Root is read-only; machine state lives on the var partition.
PARTLABEL=aurora-var /var ext4 defaults,noatime 0 2
/var/home /home none bind,x-systemd.requires-mounts-for=/var 0 0
/var/roothome /root none bind 0 0
LABEL=aurora-data /data ext4 defaults,nofail 0 2
"""


def test_fstab_gives_the_partitions_and_binds_in_order_and_no_volume() -> None:
    assert disk_mounts(FSTAB) == [
        FstabMount("aurora-var", "/var", bind=False),
        FstabMount("/var/home", "/home", bind=True),
        FstabMount("/var/roothome", "/root", bind=True),
    ]
    assert disk_mounts("# nothing\n\n") == []


def test_mounts_under_keeps_mount_order_and_only_the_tree(tmp_path: Path) -> None:
    top = tmp_path / "root"
    info = "\n".join(
        f"{n} 1 0:1 / {point} ro - erofs x ro"
        for n, point in enumerate(
            ["/", f"{top}", f"{top}/var", f"{tmp_path}/rootless", f"{top}/home", f"{top}/var"]
        )
    )
    assert mounts_under(top, info) == [top, top / "var", top / "home"]


def test_nspawn_command_line(tmp_path: Path) -> None:
    box = Container(tmp_path, network=False)
    with pytest.raises(ContainerError, match="outside its with-block"):
        box.argv(["true"])
    box.tree = tmp_path / "tree"
    argv = box.argv(["id"], env={"A": "1"}, binds={tmp_path / "c": "/run/c"})
    assert argv[:3] == ["systemd-nspawn", "--quiet", "--directory"]
    assert "--private-network" in argv and "--register=no" in argv
    assert f"--bind-ro={tmp_path / 'c'}:/run/c" in argv and "--setenv=A=1" in argv
    assert argv[-2:] == ["--", "id"]


# ----------------------------------------------------------- image_root on a real (tiny) disk

LINUX = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


def _tree(base: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = base / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return base


def _erofs(tmp_path: Path, name: str, files: dict[str, str]) -> bytes:
    image = tmp_path / f"{name}.erofs"
    tree = _tree(tmp_path / f"{name}-tree", files)
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(tree)], check=True)
    return image.read_bytes()


def _ext4(tmp_path: Path, name: str, files: dict[str, str]) -> bytes:
    image = tmp_path / f"{name}.ext4"
    tree = _tree(tmp_path / f"{name}-tree", files)
    subprocess.run(["truncate", "-s", "4M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True)
    return image.read_bytes()


def _image(tmp_path: Path, parts: list[tuple[str, bytes]]) -> Path:
    """An image directory whose disk has a GPT (as builder.image.gpt reads it) naming
    each partition, 1 MiB aligned; ``b""`` is an empty (zeroed) slot."""
    image_dir = tmp_path / "2026.11-000000000000"
    image_dir.mkdir()
    entries, offset, blobs = b"", 1 << 20, []
    for label, data in parts:
        size = max(1 << 20, -(-len(data) // (1 << 20)) << 20)
        first, last = offset // 512, (offset + size) // 512 - 1
        entries += struct.pack(
            "<16s16sQQQ72s", LINUX.bytes_le, uuid.uuid4().bytes_le, first, last, 0,
            label.encode("utf-16-le"),
        )  # fmt: skip
        blobs.append((offset, data))
        offset += size
    header = b"EFI PART" + bytes(64) + struct.pack("<QII", 2, len(parts), 128)
    with (image_dir / DISK).open("wb") as disk:
        disk.seek(512)
        disk.write(header)
        disk.seek(1024)
        disk.write(entries)
        for at, data in blobs:
            disk.seek(at)
            disk.write(data)
        disk.truncate(offset)
    return image_dir


FSTAB_FILES = {
    "etc/fstab": "PARTLABEL=aurora-var /var ext4 defaults 0 2\n/var/home /home none bind 0 0\n",
    "etc/a": "base",
    "etc/b": "base only",
    "var/": "",
    "home/": "",
}


def _mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


def test_image_root_lays_the_config_layer_over_the_root_and_mounts_fstab(tmp_path: Path) -> None:
    image_dir = _image(tmp_path, [
        ("root-x86-64", _erofs(tmp_path, "root", FSTAB_FILES)),
        ("aurora-config", _erofs(tmp_path, "config", {"etc/a": "config"})),
        ("aurora-var", _ext4(tmp_path, "var", {"home/u/file": "on var"})),
    ])  # fmt: skip
    with image_root(image_dir) as tree:
        assert (tree / "etc/a").read_text() == "config"  # the layer wins, as at boot
        assert (tree / "etc/b").read_text() == "base only"
        assert (tree / "home/u/file").read_text() == "on var"  # /var, then the bind
        with pytest.raises(OSError, match="Read-only"):
            (tree / "etc/c").write_text("x")
        with Container(tree) as box:
            assert box.tree is not None
            (box.tree / "etc/a").write_text("scratch")
            (box.tree / "home/u/file").write_text("scratch")
            assert (box.tree / "etc/b").read_text() == "base only"
        assert (tree / "etc/a").read_text() == "config"
        assert (tree / "home/u/file").read_text() == "on var"
    assert not tree.exists(), "scratch directory left behind"


def test_image_root_without_a_config_layer_mounts_the_root_alone(tmp_path: Path) -> None:
    image_dir = _image(tmp_path, [
        ("root-x86-64", _erofs(tmp_path, "root", FSTAB_FILES)),
        ("aurora-config", b""),
        ("aurora-var", _ext4(tmp_path, "var", {"home/u/file": "on var"})),
    ])  # fmt: skip
    with image_root(image_dir) as tree:
        assert (tree / "etc/a").read_text() == "base"
        assert (tree / "home/u/file").read_text() == "on var"
    assert not tree.exists()


def test_image_root_refuses_an_fstab_partition_the_disk_lacks(tmp_path: Path) -> None:
    image_dir = _image(tmp_path, [("root-x86-64", _erofs(tmp_path, "root", FSTAB_FILES))])
    refused = pytest.raises(ContainerError, match=r"PARTLABEL=aurora-var on /var, but .* no such")
    with refused, image_root(image_dir):
        pass
    assert list(Path(tempfile.gettempdir()).glob(f"aurora-root-{image_dir.name}-*")) == []
