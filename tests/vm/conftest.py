"""Boot the image once per session under QEMU and hand tests a Machine and a
testinfra host on it.

Which image: AURORA_IMAGE (a tag or a directory), else the newest stored one.
Two blank volumes stand in for /data and /project (ext4, labelled as the spec's
mounts expect), so the storage layout is created on real mounts as on JASMIN.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from builder.image import images_dir, newest_image
from builder.vm import BootImage, Machine, boot, free_port

VOLUMES = {"aurora-data": "data.img", "aurora-project": "project.img"}
# Host ports the tests reach: nginx, and listeners the firewall must (not) let in.
FORWARDS = {"http": 80, "https": 443, "probe8080": 8080, "probe5006": 5006, "probe9100": 9100}
# QEMU's user-mode network shows the host's loopback to the guest as 10.0.2.2.
HOST_FROM_GUEST = "10.0.2.2"


class Mailbox:
    """A real SMTP server on the host's loopback (aiosmtpd) collecting messages."""

    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def handle_DATA(self, server, session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture(scope="session")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


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
def machine(
    image_dir: Path, tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int]
) -> Iterator[Machine]:
    work = tmp_path_factory.mktemp("vm")
    drives = [_volume(work / name, label) for label, name in VOLUMES.items()]
    relay = {
        "host": HOST_FROM_GUEST,
        "port": mailbox[1],
        "from": "aurora@data.gamb2le.co.uk",
        "tls": "off",
    }
    vm = boot(
        BootImage.from_dir(image_dir),
        work,
        ssh_timeout=900,
        host_forwards=FORWARDS,
        extra_drives=drives,
        credentials={"msmtp.relay": json.dumps(relay)},
    )
    with vm:
        yield vm


@pytest.fixture(scope="session")
def host(machine: Machine) -> testinfra.host.Host:
    return testinfra.get_host("ssh://aurora-vm", ssh_config=str(machine.ssh_config))
