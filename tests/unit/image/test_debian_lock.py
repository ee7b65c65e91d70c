"""The Debian lock records a tested image's packages and reports drift."""

from __future__ import annotations

from pathlib import Path

from builder.image.debian_lock import compare, read_debian_lock, warning, write_debian_lock
from builder.image.manifest import Manifest
from builder.image.store import write_manifest


def _image(tmp_path: Path, packages: dict[str, str]) -> Path:
    image = tmp_path / "2026.11-abc"
    image.mkdir()
    write_manifest(image, Manifest(tag=image.name, debian_packages=packages))
    return image


def test_round_trip_and_no_drift(tmp_path: Path) -> None:
    lock = tmp_path / "debian-packages.txt"
    write_debian_lock(_image(tmp_path, {"nginx": "1.26.3-3", "rsync": "3.4.1-0"}), lock)
    assert read_debian_lock(lock) == {"nginx": "1.26.3-3", "rsync": "3.4.1-0"}
    result = compare({"nginx": "1.26.3-3", "rsync": "3.4.1-0"}, lock)
    assert result == {"locked": True, "matches": True, "changed": [], "pinned": False}
    assert warning(result) is None


def test_drift_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "debian-packages.txt"
    write_debian_lock(_image(tmp_path, {"nginx": "1.26.3-3", "rsync": "3.4.1-0"}), lock)
    result = compare({"nginx": "1.26.3-4", "curl": "8.14.1-2"}, lock)
    assert result["changed"] == [
        "curl: (new) -> 8.14.1-2",
        "nginx: 1.26.3-3 -> 1.26.3-4",
        "rsync: 3.4.1-0 -> (removed)",
    ]
    assert "debian.snapshot" in (warning(result) or "")


def test_missing_lock_says_how_to_make_one(tmp_path: Path) -> None:
    result = compare({"nginx": "1"}, tmp_path / "none.txt")
    assert result["locked"] is False
    assert "aurora-image lock --debian" in (warning(result) or "")
