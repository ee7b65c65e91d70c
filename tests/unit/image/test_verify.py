"""verify's comparison: real ext4 and EROFS file systems read with debugfs and erofs-utils."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from builder.image.gpt import Partition, filesystem
from builder.image.verify import differing_files, extract_ext4, extract_tree, list_directory


def _ext4(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    root = tmp_path / f"{name}-tree"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        os.utime(root / rel, (1000, 1000))  # same times on both sides unless a test says not
    image = tmp_path / f"{name}.ext4"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image)], check=True)
    return image


def test_differing_files_named_from_extracted_partitions(tmp_path: Path) -> None:
    a = _ext4(tmp_path, "a", {"etc/hostname": "aurora\n", "usr/lib/x": "same", "var/old": "1"})
    b = _ext4(tmp_path, "b", {"etc/hostname": "borealis\n", "usr/lib/x": "same", "var/new": "2"})
    left = extract_ext4(a, 0, tmp_path / "left")
    right = extract_ext4(b, 0, tmp_path / "right")
    assert (left / "usr/lib/x").read_text() == "same"
    assert differing_files(left, right) == ["/etc/hostname", "/var/new", "/var/old"]


def test_identical_trees_have_no_differences(tmp_path: Path) -> None:
    files = {"etc/a": "1", "usr/b": "2"}
    left = extract_ext4(_ext4(tmp_path, "a", files), 0, tmp_path / "left")
    right = extract_ext4(_ext4(tmp_path, "b", files), 0, tmp_path / "right")
    assert differing_files(left, right) == []


def test_same_size_different_content_is_caught(tmp_path: Path) -> None:
    left = extract_ext4(_ext4(tmp_path, "a", {"etc/seed": "aaaa"}), 0, tmp_path / "left")
    right = extract_ext4(_ext4(tmp_path, "b", {"etc/seed": "bbbb"}), 0, tmp_path / "right")
    assert differing_files(left, right) == ["/etc/seed"]


def test_mtime_difference_is_reported(tmp_path: Path) -> None:
    left = extract_ext4(_ext4(tmp_path, "a", {"etc/x": "1"}), 0, tmp_path / "left")
    right = extract_ext4(_ext4(tmp_path, "b", {"etc/x": "1"}), 0, tmp_path / "right")
    os.utime(right / "etc/x", (1, 1))
    assert differing_files(left, right) == ["/etc/x"]


def _erofs(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "erofs-tree"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    image = tmp_path / "root.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(root)], check=True)
    return image


def _disk(tmp_path: Path, filesystems: list[tuple[str, Path]]) -> tuple[Path, list[Partition]]:
    """The file systems laid out one after another in one file, 1 MiB apart."""
    disk, parts, offset = tmp_path / "disk.raw", [], 1 << 20
    with disk.open("wb") as out:
        for label, fs in filesystems:
            out.seek(offset)
            out.write(fs.read_bytes())
            size = -(-fs.stat().st_size // (1 << 20)) << 20
            parts.append(Partition(label, "", "", offset, size))
            offset += size
        out.truncate(offset)
    return disk, parts


def test_erofs_and_ext4_partitions_are_read_inside_the_disk(tmp_path: Path) -> None:
    erofs = _erofs(tmp_path, {"etc/ssh/sshd_config": "Port 22\n", "usr/bin/x": "x"})
    ext4 = _ext4(tmp_path, "var", {"lib/aurora/ssh/etc/ssh/ssh_host_ed25519_key": "k"})
    disk, (root, var) = _disk(tmp_path, [("root-x86-64", erofs), ("aurora-var", ext4)])
    assert (filesystem(disk, root), filesystem(disk, var)) == ("erofs", "ext4")
    tree = extract_tree(disk, root, tmp_path / "root")
    assert (tree / "etc/ssh/sshd_config").read_text() == "Port 22\n"
    assert "sshd_config" in list_directory(disk, root, "/etc/ssh", tmp_path)
    assert "ssh_host_ed25519_key" in list_directory(disk, var, "/lib/aurora/ssh/etc/ssh", tmp_path)
    assert (extract_tree(disk, var, tmp_path / "var") / "lib/aurora/ssh").is_dir()
    assert sorted(p.name for p in tmp_path.glob("*.img")) == []  # partition copies removed
