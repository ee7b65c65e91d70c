"""builder/image/root.py's pure parts: which fstab lines are the image's own mounts,
which mount points a writable layer covers, and nspawn's command line. The mounts
themselves are exercised on a real image by tests/container."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.image.root import Container, ContainerError, FstabMount, disk_mounts, mounts_under

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
