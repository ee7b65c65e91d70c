"""The sizes a build records: allocated bytes of sparse disks, the log line."""

from __future__ import annotations

from pathlib import Path

from builder.image.sizes import allocated, format_sizes


def test_allocated_counts_data_not_holes(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as out:
        out.truncate(64 << 20)
        out.seek(8 << 20)
        out.write(b"x" * (1 << 20))
        out.seek(40 << 20)
        out.write(b"y" * (2 << 20))
    assert disk.stat().st_size == 64 << 20
    assert allocated(disk) == 3 << 20
    assert allocated(disk, 0, 16 << 20) == 1 << 20
    assert allocated(disk, 41 << 20, 64 << 20) == 1 << 20


def test_size_line_names_each_part_and_the_disk() -> None:
    sizes = {
        "root_files": {"packages": 900e6, "kernel": 60e6, "venv": 650e6, "app": 1e6},
        "disk": {"size": 4e9, "allocated": 1.4e9},
    }
    line = format_sizes(sizes)
    assert line == (
        "root files: packages 900 MB, kernel 60 MB, venv 650 MB, app 1 MB; "
        "disk 4000 MB apparent, 1400 MB allocated"
    )
    assert format_sizes({"root_files": {}, "disk": {"size": 0, "allocated": 0}}).startswith(
        "root files: not counted"
    )


def test_a_part_under_a_megabyte_is_not_shown_as_zero() -> None:
    """The sample app is a few kB: whole MB said "app 0 MB"."""
    sizes = {
        "root_files": {"packages": 520844658, "kernel": 31941069, "app": 6059},
        "disk": {"size": 999, "allocated": 0},
    }
    assert format_sizes(sizes) == (
        "root files: packages 521 MB, kernel 32 MB, app 6 kB; disk 999 B apparent, 0 B allocated"
    )
