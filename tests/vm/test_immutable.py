"""Immutability across a reboot: the root is read-only, state is kept only on
/var, and the second boot of the same disk comes back identical.

Two boots of one qcow2 overlay over the image (the image itself stays
untouched), with the same SMBIOS UUID, as a VM keeps across reboots on JASMIN.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.host import health
from builder.image.store import read_manifest
from builder.vm.disks import make_overlay, scratch_volumes
from builder.vm.image import BootImage
from builder.vm.machine import Machine, boot
from tests.vm.conftest import BOOT_FINISHED, VOLUMES

TREE_DIGEST = (
    "find /usr /etc -xdev \\( -type f -o -type l \\) -printf '%p %s %m %l\\n' | sort | sha256sum"
)


def _failed_classes(machine: Machine) -> list[tuple[str, str | None]]:
    classes, failing = health.observe(machine.remote())
    return [(unit, classes.get(unit)) for unit in failing]


def _snapshot(machine: Machine) -> dict[str, str]:
    return {
        "machine_id": machine.succeed("cat /etc/machine-id").strip(),
        "host_key": machine.succeed(
            "ssh-keygen -lf /var/lib/aurora/ssh/etc/ssh/ssh_host_ed25519_key.pub"
        ).strip(),
        "tree": machine.succeed(TREE_DIGEST).split()[0],
        # Pipeline units may fail on the empty volumes (builder.host.health), at their own pace.
        "failed": " ".join(sorted(u for u, c in _failed_classes(machine) if c != health.PIPELINE)),
    }


@pytest.fixture(scope="module")
def two_boots(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    work = tmp_path_factory.mktemp("reboot")
    image = BootImage.from_dir(image_dir)
    overlay = make_overlay(image, work / "disk.qcow2")
    volumes = scratch_volumes(VOLUMES, work)
    raw_before = hashlib.sha256((image_dir / "aurora.raw").read_bytes()[: 1 << 24]).hexdigest()
    uuid = "6f1c2a6e-5b7d-4c1e-9a55-0d2f3b4c5d6e"
    seen: list[dict] = []
    for index in range(2):
        vm = boot(
            image,
            work / f"boot{index}",
            ssh_timeout=900,
            overlay=overlay,
            uuid=uuid,
            extra_drives=volumes,
            ssh_key=None if index == 0 else work / "boot0" / "id_ed25519",
        )
        with vm:
            vm.wait_until_succeeds(BOOT_FINISHED, timeout=900)
            record = _snapshot(vm)
            if index == 0:
                vm.succeed("echo kept > /var/lib/aurora/reboot-marker")
                record["usr_write"] = vm.execute("touch /usr/aurora-x 2>&1")[1]
                record["units_write"] = vm.execute("touch /etc/systemd/system/aurora-x 2>&1")[1]
                record["root_source"] = vm.succeed("findmnt -n -o SOURCE /").strip()
                record["root_dm_uuid"] = vm.succeed(
                    "cat /sys/dev/block/$(mountpoint -d /)/dm/uuid"
                ).strip()
                record["cmdline"] = vm.succeed("cat /proc/cmdline").split()
            else:
                record["marker"] = vm.succeed("cat /var/lib/aurora/reboot-marker").strip()
            seen.append(record)
    seen.append(
        {
            "raw_unchanged": raw_before
            == hashlib.sha256((image_dir / "aurora.raw").read_bytes()[: 1 << 24]).hexdigest()
        }
    )
    yield seen


def test_writes_to_usr_and_units_fail(two_boots) -> None:
    first = two_boots[0]
    assert "Read-only file system" in first["usr_write"]
    assert "Read-only file system" in first["units_write"]


def test_root_is_dm_verity_with_the_manifest_root_hash(two_boots, image_dir: Path) -> None:
    first = two_boots[0]
    manifest = read_manifest(image_dir)
    assert first["root_source"] == "/dev/mapper/root"
    assert first["root_dm_uuid"].startswith("CRYPT-VERITY-"), first["root_dm_uuid"]
    assert manifest.root_hash, "the manifest records no dm-verity root hash"
    assert f"roothash={manifest.root_hash}" in first["cmdline"]


def test_second_boot_is_identical(two_boots) -> None:
    first, second, _ = two_boots
    assert first["tree"] == second["tree"], "the root file system changed across a reboot"
    assert first["machine_id"] == second["machine_id"] == "6f1c2a6e5b7d4c1e9a550d2f3b4c5d6e"
    assert first["host_key"] == second["host_key"], "SSH host key regenerated on reboot"
    assert first["failed"] == second["failed"] == ""


def test_state_lives_on_var_and_the_image_is_untouched(two_boots) -> None:
    assert two_boots[1]["marker"] == "kept"
    assert two_boots[2]["raw_unchanged"]
