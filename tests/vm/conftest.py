"""Boot the image once per session under QEMU and hand tests a Machine and a
testinfra host on it.

Which image: AURORA_IMAGE (a tag or a directory), else the newest stored one.
Two blank volumes stand in for /data and /project (ext4, labelled as the spec's
mounts expect), so the storage layout is created on real mounts as on JASMIN.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

from builder.image import images_dir, newest_image
from builder.vm import BootImage, Machine, boot

VOLUMES = {"aurora-data": "data.img", "aurora-project": "project.img"}


def _image_dir() -> Path:
    chosen = os.environ.get("AURORA_IMAGE")
    if not chosen:
        return newest_image()
    path = Path(chosen)
    return path if path.is_dir() else images_dir() / chosen


def _volume(path: Path, label: str) -> Path:
    subprocess.run(["truncate", "-s", "1G", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def image_dir() -> Path:
    path = _image_dir()
    assert (path / "manifest.json").exists(), f"{path} holds no built image"
    return path


@pytest.fixture(scope="session")
def machine(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    work = tmp_path_factory.mktemp("vm")
    drives = [_volume(work / name, label) for label, name in VOLUMES.items()]
    vm = boot(
        BootImage.from_dir(image_dir),
        work,
        ssh_timeout=900,
        host_forwards={"http": 80},
        extra_drives=drives,
    )
    with vm:
        yield vm


@pytest.fixture(scope="session")
def host(machine: Machine) -> testinfra.host.Host:
    return testinfra.get_host("ssh://aurora-vm", ssh_config=str(machine.ssh_config))
