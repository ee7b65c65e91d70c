"""builder.vm.session without a guest: the keeper's command line and Boot options,
the real keeper process turning a Boot into QEMU's command line, and KeptVm, the
handle the smoke suite drives its session VM by (tests/vm boots it through this
same keeper, so `vm --keep` needs no boot of its own there)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.vm import accel
from builder.vm import session as vm_session
from builder.vm.errors import GuestPanic, QemuExited
from builder.vm.session import Boot, KeptVm, VmState

UUID = "6f1c2a6e-5b7d-4c1e-9a55-0d2f3b4c5d6e"


@pytest.mark.parametrize(
    ("labels", "wait_ssh", "boot_file"),
    [
        (["aurora-data", "aurora-project"], True, None),
        ([], False, None),
        (["aurora-data"], True, Path("/c/vms/t/boot.json")),
        ([], False, Path("/c/vms/t/boot.json")),
    ],
)
def test_keeper_argv_round_trips(labels: list[str], wait_ssh: bool, boot_file: Path | None) -> None:
    state, image = Path("/c/vms/t.json"), Path("/images/t")
    argv = vm_session.keeper_argv(state, image, labels, wait_ssh=wait_ssh, boot_file=boot_file)
    assert argv[:3] == [sys.executable, "-m", vm_session.KEEPER]
    assert vm_session.parse_keeper_argv(argv[3:]) == (state, image, labels, wait_ssh, boot_file)


def test_keeper_refuses_an_unknown_flag() -> None:
    with pytest.raises(vm_session.VmError, match="unknown flag '--bogus'"):
        vm_session.parse_keeper_argv(["/s.json", "/i", "--bogus", "aurora-data"])


def test_boot_round_trips_through_its_json_file() -> None:
    boot = Boot(
        forwards={"probe8080": 8080},
        drives=("/w/aurora-data.img",),
        credentials={"msmtp.relay": '{"host": "10.0.2.2"}'},
        overlay="/w/disk.qcow2",
        uuid=UUID,
        ssh_key="/w/id_ed25519",
        owner=123,
    )
    assert Boot.from_json(json.loads(json.dumps(boot.to_json()))) == boot
    assert boot.machine_options() == {
        "credentials": {"msmtp.relay": '{"host": "10.0.2.2"}'},
        "overlay": Path("/w/disk.qcow2"),
        "uuid": UUID,
        "ssh_key": Path("/w/id_ed25519"),
    }
    assert Boot().machine_options() == {
        "credentials": {}, "overlay": None, "uuid": None, "ssh_key": None,
    }  # fmt: skip


@pytest.mark.skipif(shutil.which(accel.QEMU) is None, reason="qemu not installed")
def test_the_keeper_boots_with_the_boot_options(
    fake_image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real keeper process, on an image whose kernel QEMU cannot load: the QEMU
    command line it built carries the Boot's forwards, volumes, credential, overlay
    and UUID beside `vm --keep`'s own; QEMU's death comes back as one line."""
    monkeypatch.setenv(accel.ENV_VAR, "tcg")  # no KVM probe for a fake kernel
    volume = tmp_path / "volume.img"
    volume.write_bytes(b"")
    overlay = tmp_path / "disk.qcow2"
    boot = Boot(
        forwards={"probe8080": 8080},
        drives=(str(volume),),
        credentials={"msmtp.relay": "{}"},
        overlay=str(overlay),
        uuid=UUID,
        owner=os.getpid(),
    )
    vms = tmp_path / "cache" / "vms"
    with pytest.raises(vm_session.VmError, match="the VM did not boot: qemu exited"):
        vm_session.start(vms, fake_image_dir, ["aurora-data"], boot=boot)
    workdir = vms / fake_image_dir.name
    argv = shlex.split((workdir / "qemu.argv").read_text())
    line = " ".join(argv)
    assert f"uuid={UUID}" in line or UUID in argv
    assert ":8080" in line and ":80," in line and ":443" in line  # the Boot's and vm's own
    assert f"file={volume}" in line and f"file={overlay}" in line
    assert f"file={workdir / 'aurora-data.img'}" in line  # the label's scratch volume
    assert "io.systemd.credential.binary:msmtp.relay=" in line
    assert (workdir / "boot.json").stat().st_mode & 0o777 == 0o600
    assert not vm_session.state_path(vms, fake_image_dir.name).exists()
    assert volume.exists()  # the caller's volume stays


def test_kept_vm_runs_commands_through_the_keepers_ssh_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = VmState(
        tag="2026.11-cccccccccccc",
        image="/images/x",
        pid=os.getpid(),  # alive, but not a keeper
        ports={"ssh": 2222, "http": 8080},
        key=str(tmp_path / "id_ed25519"),
        serial_log=str(tmp_path / "serial.log"),
        workdir=str(tmp_path),
        started=0.0,
        accel="tcg",
    )
    vm = KeptVm(tmp_path, state)
    assert vm.forwarded_port("http") == 8080 and vm.accel == "tcg"
    with pytest.raises(KeyError, match="probe"):
        vm.forwarded_port("probe")
    assert ["-F", str(tmp_path / "ssh_config")] == vm._guest().argv("true")[1:3]
    with pytest.raises(QemuExited, match=r"keeper of 2026\.11-cccccccccccc"):
        vm.check_alive()
    # With its keeper alive, a panic on the console ends every wait at once too.
    monkeypatch.setattr(vm_session, "_keeper_alive", lambda pid: True)
    vm.check_alive()
    (tmp_path / "serial.log").write_bytes(
        b"[ 5.3] RIP: 0010:do_idle\n[ 5.4] Kernel panic - not syncing: Fatal exception\n"
    )
    with pytest.raises(GuestPanic, match="Fatal exception") as panic:
        vm.check_alive()
    # ... saying what led to it, as Machine's check does: the console's tail.
    assert "--- serial (last 40 lines) ---\n[ 5.3] RIP: 0010:do_idle" in str(panic.value)


def test_the_keeper_outlives_no_owner() -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert vm_session._owner_alive(None) and vm_session._owner_alive(os.getpid())
    assert not vm_session._owner_alive(finished.pid)
