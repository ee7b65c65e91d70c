"""Immutability across a reboot: the root is read-only, state is kept only on
/var, and the second boot of the same disk comes back identical.

The session's VM is the first boot (its disk a qcow2 overlay over the image, its
SMBIOS UUID fixed, as a VM on JASMIN keeps both): this module runs last, records
it after the whole suite has used it, powers it off as an operator powers a kept
VM off (`aurora-image vm --stop TAG`: what that leaves behind is asserted here) and
boots the same overlay, volumes and UUID again, the suite's second boot. The image
itself stays untouched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.host import health
from builder.image.store import read_manifest
from builder.vm.session import KeptVm
from tests.vm.conftest import BOOT_FINISHED, SESSION_UUID, Stopped, raw_head

TREE_DIGEST = (
    "find /usr /etc -xdev \\( -type f -o -type l \\) -printf '%p %s %m %l\\n' | sort | sha256sum"
)


def _failed_classes(machine: KeptVm) -> list[tuple[str, str | None]]:
    classes, failing = health.observe(machine.remote())
    return [(unit, classes.get(unit)) for unit in failing]


def _snapshot(machine: KeptVm) -> dict[str, str]:
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
def two_boots(booted: KeptVm, session_vm, image_dir: Path) -> Iterator[list]:
    booted.wait_until_succeeds(BOOT_FINISHED, timeout=900)
    first = _snapshot(booted)
    booted.succeed("echo kept > /var/lib/aurora/reboot-marker")
    first["usr_write"] = booted.execute("touch /usr/aurora-x 2>&1")[1]
    first["units_write"] = booted.execute("touch /etc/systemd/system/aurora-x 2>&1")[1]
    first["root_mount"] = booted.succeed("findmnt -n -o FSTYPE,OPTIONS /").strip()
    # Every device-mapper device: name and uuid (dm-verity's say CRYPT-VERITY-...).
    first["layers"] = booted.succeed("findmnt -rn -o TARGET,SOURCE | grep '^/run/aurora/'")
    first["dm"] = booted.succeed(
        "for d in /sys/block/dm-*/dm; do echo $(cat $d/name) $(cat $d/uuid); done"
    ).strip()
    first["cmdline"] = booted.succeed("cat /proc/cmdline").split()
    first["tag"] = booted.state.tag
    started = time.monotonic()
    stopped, again = session_vm.reboot(booted)
    try:
        ssh = time.monotonic() - started
        again.wait_until_succeeds(BOOT_FINISHED, timeout=900)
        second = _snapshot(again)
        second["boot"] = (
            f"reboot: ssh after {ssh:.0f} s, settled after {time.monotonic() - started:.0f} s"
        )
        second["marker"] = again.succeed("cat /var/lib/aurora/reboot-marker").strip()
    finally:
        session_vm.current = None
        again.shutdown()
    yield [first, second, {"raw_unchanged": raw_head(image_dir) == session_vm.raw_head}, stopped]


def test_vm_stop_powers_the_kept_vm_off_cleanly_and_leaves_nothing(two_boots) -> None:
    """`aurora-image vm --stop TAG --json`: the guest powered itself off (not forced),
    its state file is gone, no keeper or QEMU of it is left, and `ssh TAG` says so."""
    first, stopped = two_boots[0], two_boots[3]
    assert isinstance(stopped, Stopped)
    tag = first["tag"]
    assert stopped.result.returncode == 0, stopped.result.stderr
    assert json.loads(stopped.result.stdout) == {"tag": tag, "stopped": True, "forced": False}
    assert not stopped.state_file_left
    assert not stopped.processes_left, stopped.processes_left
    gone = stopped.ssh_after
    assert gone.returncode == 1 and f"no VM of {tag} is running" in gone.stderr, gone.stderr


def test_writes_to_usr_and_units_fail(two_boots) -> None:
    first = two_boots[0]
    assert "Read-only file system" in first["usr_write"]
    assert "Read-only file system" in first["units_write"]


def test_root_is_the_config_layer_over_the_base_both_dm_verity(two_boots, image_dir: Path) -> None:
    """/ is the read-only overlay the initrd makes: the config layer over the base root,
    each a dm-verity device opened with the root hash the manifest records."""
    first = two_boots[0]
    manifest = read_manifest(image_dir)
    fstype, options = first["root_mount"].split()
    assert fstype == "overlay", first["root_mount"]
    assert "ro" in options.split(",")
    assert "lowerdir=/run/aurora/config:/run/aurora/base" in options.split(","), options
    assert "upperdir" not in options
    layers = dict(line.split() for line in first["layers"].splitlines())
    assert layers == {
        "/run/aurora/base": "/dev/mapper/root",
        "/run/aurora/config": "/dev/mapper/config",
    }
    devices = dict(line.split() for line in first["dm"].splitlines())
    assert set(devices) == {"root", "config"}, devices
    assert all(uuid.startswith("CRYPT-VERITY-") for uuid in devices.values()), devices
    assert manifest.root_hash and manifest.config_hash, "the manifest lacks a root hash"
    assert f"roothash={manifest.root_hash}" in first["cmdline"]
    assert f"aurora.config_hash={manifest.config_hash}" in first["cmdline"]


def test_second_boot_is_identical(two_boots, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = two_boots[0], two_boots[1]
    with capsys.disabled():
        print(f"\n{second['boot']}")
    assert first["tree"] == second["tree"], "the root file system changed across a reboot"
    assert first["machine_id"] == second["machine_id"] == SESSION_UUID.replace("-", "")
    assert first["host_key"] == second["host_key"], "SSH host key regenerated on reboot"
    assert first["failed"] == second["failed"] == ""


def test_state_lives_on_var_and_the_image_is_untouched(two_boots) -> None:
    assert two_boots[1]["marker"] == "kept"
    assert two_boots[2]["raw_unchanged"]
