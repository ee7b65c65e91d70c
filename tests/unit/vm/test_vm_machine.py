"""builder.vm.machine without a guest: options checked early, short socket paths,
QEMU's death and a guest panic surfacing at once, boot's retry after a panic."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from builder.vm import accel
from builder.vm import machine as vm
from builder.vm.errors import BootTimeout, GuestPanic, MachineError, QemuExited
from builder.vm.image import BootImage
from builder.vm.machine import Machine

needs_qemu = pytest.mark.skipif(shutil.which(accel.QEMU) is None, reason="qemu not installed")
pytestmark = pytest.mark.usefixtures("fake_image_dir")


def test_machine_rejects_reserved_forward_and_bad_credentials(tmp_path: Path) -> None:
    img = BootImage.from_dir(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        Machine(img, tmp_path / "w", host_forwards={"ssh": 2222})
    with pytest.raises(ValueError, match="credential name"):
        Machine(img, tmp_path / "w", credentials={"a,b": "x"})
    m = Machine(img, tmp_path / "w", host_forwards={"http": 80})
    with pytest.raises(MachineError):
        m.forwarded_port("http")
    with pytest.raises(MachineError):
        m.execute("true")


def test_machine_keeps_sockets_short(tmp_path: Path) -> None:
    img = BootImage.from_dir(tmp_path)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    m = Machine(img, deep)
    assert len(str(m.qmp_socket)) < 108
    assert len(str(m.control_path)) < 108
    m.control_path.parent.rmdir()
    short = Machine(img, tmp_path / "w")
    if len(str(tmp_path / "w")) <= 90:
        assert short.qmp_socket.parent == tmp_path / "w"


@needs_qemu
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen missing")
def test_machine_start_reports_qemu_death(tmp_path: Path) -> None:
    """A kernel QEMU cannot load must surface as QemuExited with qemu's own words."""
    img = BootImage.from_dir(tmp_path)
    m = Machine(img, tmp_path / "w", accel="tcg", memory_mb=256, cpus=1)
    with pytest.raises(QemuExited, match="qemu exited"):
        m.start()
    assert (tmp_path / "w" / "qemu.log").read_text().strip()
    pub = (tmp_path / "w" / "id_ed25519.pub").read_text()
    assert m.credentials["ssh.authorized_keys.root"] == pub.encode()
    assert (tmp_path / "aurora.raw").read_bytes() == b"not really aurora.raw"
    m.shutdown()


def test_kernel_panic_on_console_fails_fast(tmp_path: Path) -> None:
    """A panicked guest never answers: waits must stop at once, not at their timeout."""
    img = BootImage.from_dir(tmp_path)
    m = Machine(img, tmp_path / "w")
    m.workdir.mkdir()
    stand_in = subprocess.Popen(["sleep", "30"])  # plays the still-running QEMU
    try:
        m._proc = stand_in
        m.serial_log.write_bytes(b"[    1.0] Linux version 6.12\n[    5.4] Kernel pan")
        m.check_alive()  # half a line is not a panic yet
        with m.serial_log.open("ab") as f:
            f.write(b"ic - not syncing: Fatal exception in interrupt\n")
        start = time.monotonic()
        with pytest.raises(GuestPanic, match="Fatal exception in interrupt"):
            m.wait_for_ssh(timeout=30)
        assert time.monotonic() - start < 2
    finally:
        stand_in.kill()
        stand_in.wait()


def test_boot_retries_only_after_a_panic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes: list[BaseException | None] = [GuestPanic("Kernel panic"), None]
    made: list[_FakeMachine] = []

    class _FakeMachine:
        def __init__(self, image: BootImage, workdir: Path, **kw: object) -> None:
            self.workdir = workdir
            self.serial_log = workdir / "serial.log"
            self.stopped = False
            made.append(self)

        def start(self) -> None:
            self.workdir.mkdir(exist_ok=True)
            self.serial_log.write_text(f"boot {len(made)}\n")

        def wait_for_ssh(self, timeout: float) -> None:
            outcome = outcomes.pop(0)
            if outcome is not None:
                raise outcome

        def shutdown(self, timeout: float = 60) -> bool:
            self.stopped = True
            return True

    monkeypatch.setattr(vm, "Machine", _FakeMachine)
    img = BootImage.from_dir(tmp_path)
    m = vm.boot(img, tmp_path / "w")
    assert m is made[1] and made[0].stopped and not made[1].stopped
    assert (tmp_path / "w" / "serial.panic-1.log").read_text() == "boot 1\n"

    outcomes[:] = [BootTimeout("no ssh")]
    with pytest.raises(BootTimeout):
        vm.boot(img, tmp_path / "w2")
    assert made[-1].stopped


def test_machine_copies_firmware_vars_and_keeps_fixed_ports(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"")
    m = Machine(
        BootImage.uefi(disk),
        tmp_path / "w",
        accel="tcg",
        host_forwards={"http": 80},
        host_ports={"ssh": 40022, "http": 40080},
        ssh_key_via_smbios=False,
    )
    m._ports = {"ssh": 40022, "http": 40080}
    argv = m._argv()
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'w' / 'OVMF_VARS.fd'}" in argv
    assert "hostfwd=tcp:127.0.0.1:40080-:80" in argv[argv.index("-netdev") + 1]
    assert "-smbios" not in argv
    with pytest.raises(ValueError, match="no forward named https"):
        Machine(BootImage.uefi(disk), tmp_path / "w", host_ports={"https": 1})


class _RecordingQmp:
    """Plays QEMU's monitor: records each command; `quit` ends the stand-in process."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.sent = proc, []

    def execute(self, command: str, timeout: float = 0) -> dict[str, object]:
        self.sent.append(command)
        if command == "quit":
            self.proc.terminate()
        return {}

    def has_event(self, name: str) -> bool:
        return False

    def events(self) -> list[dict[str, object]]:
        return []

    def close(self) -> None:
        pass


def test_a_teardown_stop_skips_the_guests_orderly_power_off(tmp_path: Path) -> None:
    """powerdown=False (a throw-away VM's teardown) quits QEMU at once; the default
    asks the guest first and reports it unclean when the guest never answers."""
    img = BootImage.from_dir(tmp_path)
    sent = []
    for powerdown in (False, True):
        m = Machine(img, tmp_path / f"w{powerdown}")
        m.workdir.mkdir()
        m._proc = subprocess.Popen(["sleep", "30"])
        m._qmp = qmp = _RecordingQmp(m._proc)  # type: ignore[assignment]
        started = time.monotonic()
        assert m.shutdown(timeout=1, powerdown=powerdown) is False
        assert m._proc.poll() is not None
        sent.append((qmp.sent, time.monotonic() - started))
    (hard, hard_s), (orderly, _) = sent
    assert hard == ["quit"] and hard_s < 5
    assert orderly == ["system_powerdown", "quit"]
