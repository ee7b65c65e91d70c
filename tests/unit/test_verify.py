"""verify's comparison: real ext4 file systems read with debugfs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from builder.verify import differing_files, extract_ext4


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
