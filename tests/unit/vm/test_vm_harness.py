"""Fast checks of the QEMU harness that need no built image (and no guest boot)."""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.retry import RetryTimeout, retry
from builder.vm import accel
from builder.vm import machine as vm
from builder.vm.argv import build_qemu_argv, credential_smbios, render_ssh_config
from builder.vm.disks import scratch_volumes
from builder.vm.errors import BootTimeout, GuestPanic, MachineError, QemuExited
from builder.vm.image import DEFAULT_CMDLINE, OVMF_CODE, BootImage
from builder.vm.machine import Machine
from builder.vm.process import free_ports
from builder.vm.qmp import QMP

needs_qemu = pytest.mark.skipif(shutil.which(accel.QEMU) is None, reason="qemu not installed")
needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="openssh client missing")


# -- retry -------------------------------------------------------------------


def test_retry_returns_first_truthy_value() -> None:
    results = iter([None, 0, "ready"])
    assert retry(lambda: next(results), timeout=5, interval=0, what="x") == "ready"


def test_retry_timeout_names_what_and_last_error() -> None:
    calls = 0

    def boom() -> bool:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(f"attempt {calls}")

    with pytest.raises(RetryTimeout) as info:
        retry(boom, timeout=0.2, interval=0.05, what="the frobnicator")
    err = info.value
    assert isinstance(err, TimeoutError)
    assert "the frobnicator" in str(err)
    assert "ConnectionRefusedError" in str(err)
    assert f"attempt {calls}" in str(err)  # the *last* error, not the first
    assert err.attempts == calls >= 2


def test_retry_tries_once_even_with_zero_timeout() -> None:
    assert retry(lambda: True, timeout=0, what="x") is True
    with pytest.raises(RetryTimeout, match=r"\(1 attempts\)"):
        retry(lambda: False, timeout=0, what="x")


def test_retry_propagates_exceptions_outside_retry_on() -> None:
    start = time.monotonic()
    with pytest.raises(KeyError):
        retry(lambda: {}["x"], timeout=10, what="x", retry_on=(OSError,))
    assert time.monotonic() - start < 1


# -- BootImage ----------------------------------------------------------------


def _fake_image_dir(tmp_path: Path) -> Path:
    for name in ("aurora.raw", "aurora.vmlinuz", "aurora.initrd"):
        (tmp_path / name).write_bytes(b"not really " + name.encode())
    return tmp_path


def test_boot_image_from_dir_defaults(tmp_path: Path) -> None:
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
    assert img.disk == tmp_path / "aurora.raw"
    assert img.kernel == tmp_path / "aurora.vmlinuz"
    assert img.initrd == tmp_path / "aurora.initrd"
    assert img.cmdline == DEFAULT_CMDLINE
    assert "root=PARTLABEL=root-x86-64" in img.cmdline
    assert "systemd.firstboot=off" in img.cmdline


def test_boot_image_reads_cmdline_file(tmp_path: Path) -> None:
    d = _fake_image_dir(tmp_path)
    (d / "cmdline").write_text("root=PARTLABEL=root-x86-64 ro\n  console=ttyS0 quiet\n")
    assert BootImage.from_dir(d).cmdline == "root=PARTLABEL=root-x86-64 ro console=ttyS0 quiet"


def test_boot_image_names_missing_artifacts(tmp_path: Path) -> None:
    (tmp_path / "aurora.raw").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"aurora\.vmlinuz, aurora\.initrd"):
        BootImage.from_dir(tmp_path)


# -- QEMU command line ---------------------------------------------------------


def _argv(tmp_path: Path, **kw: object) -> list[str]:
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
    args: dict[str, object] = {
        "serial_log": tmp_path / "serial.log",
        "qmp_socket": tmp_path / "qmp.sock",
        "accel_args": accel.accel_args("tcg"),
        "forwards": [(40022, 22), (40080, 80)],
    }
    args.update(kw)
    return build_qemu_argv(img, **args)  # type: ignore[arg-type]


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_attaches_disk_read_only_snapshot(tmp_path: Path) -> None:
    (drive,) = _values(_argv(tmp_path), "-drive")
    opts = drive.split(",")
    assert "snapshot=on" in opts
    assert "format=raw" in opts
    assert f"file={tmp_path / 'aurora.raw'}" in opts
    assert "scsi-hd,drive=root" in _values(_argv(tmp_path), "-device")


def test_argv_forwards_only_on_loopback(tmp_path: Path) -> None:
    (netdev,) = _values(_argv(tmp_path), "-netdev")
    fwds = [o for o in netdev.split(",") if o.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:40022-:22", "hostfwd=tcp:127.0.0.1:40080-:80"]


def test_argv_basics(tmp_path: Path) -> None:
    argv = _argv(tmp_path, memory_mb=1024, cpus=3, extra_cmdline=" debug  ")
    assert argv[0] == "qemu-system-x86_64"
    assert _values(argv, "-m") == ["1024"]
    assert _values(argv, "-smp") == ["3"]
    assert _values(argv, "-accel") == ["tcg,thread=multi"]
    assert _values(argv, "-cpu") == ["max"]
    assert _values(argv, "-append") == [f"{DEFAULT_CMDLINE} debug"]
    assert _values(argv, "-serial") == [f"file:{tmp_path / 'serial.log'}"]
    assert _values(argv, "-qmp") == [f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"]
    assert {"-nographic", "-no-reboot"} <= set(argv)
    assert "virtio-rng-pci" in _values(argv, "-device")


def test_credential_smbios_round_trips(tmp_path: Path) -> None:
    blob = bytes(range(256))
    creds = {"ssh.authorized_keys.root": "ssh-ed25519 AAAA test\n", "aurora.blob": blob}
    smbios = _values(_argv(tmp_path, credentials=creds), "-smbios")
    assert len(smbios) == 2
    decoded = {}
    for s in smbios:
        prefix = "type=11,value=io.systemd.credential.binary:"
        assert s.startswith(prefix)
        name, _, b64 = s.removeprefix(prefix).partition("=")
        assert "," not in b64  # would split QEMU's option string
        decoded[name] = base64.b64decode(b64, validate=True)
    assert decoded == {"ssh.authorized_keys.root": b"ssh-ed25519 AAAA test\n", "aurora.blob": blob}


@pytest.mark.parametrize("name", ["", "a,b", "a=b", "a b", "a/b"])
def test_credential_names_that_break_qemu_syntax_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="credential name"):
        credential_smbios(name, "x")


# -- ssh_config ------------------------------------------------------------------


def test_ssh_config_content(tmp_path: Path) -> None:
    text = render_ssh_config(
        port=40022, identity_file=tmp_path / "id_ed25519", control_path=tmp_path / "ssh.mux"
    )
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "Host aurora-vm"
    for expected in (
        "HostName 127.0.0.1",
        "Port 40022",
        "User root",
        f"IdentityFile {tmp_path / 'id_ed25519'}",
        "StrictHostKeyChecking no",
        "UserKnownHostsFile /dev/null",
        "ControlMaster auto",
        f"ControlPath {tmp_path / 'ssh.mux'}",
        "ControlPersist 60s",
        "LogLevel ERROR",
        "BatchMode yes",
    ):
        assert expected in lines


@needs_ssh
def test_ssh_config_is_what_openssh_resolves(tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        render_ssh_config(
            port=40022, identity_file=tmp_path / "id_ed25519", control_path=tmp_path / "ssh.mux"
        )
    )
    out = subprocess.run(
        ["ssh", "-G", "-F", str(cfg), "aurora-vm"], capture_output=True, text=True, check=True
    ).stdout
    resolved = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert resolved["hostname"] == "127.0.0.1"
    assert resolved["port"] == "40022"
    assert resolved["user"] == "root"
    assert resolved["controlpath"] == str(tmp_path / "ssh.mux")
    assert resolved["controlpersist"] == "60"
    assert resolved["batchmode"] == "yes"


# -- accelerator choice ---------------------------------------------------------------


@pytest.fixture
def fresh_accel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    accel.reset_cache()
    monkeypatch.delenv(accel.ENV_VAR, raising=False)
    yield
    accel.reset_cache()


def _no_probe(*_: object, **__: object) -> bool:
    raise AssertionError("KVM probe must not run")


@pytest.mark.usefixtures("fresh_accel")
@pytest.mark.parametrize("value", ["kvm", "tcg", " TCG "])
def test_env_forces_accel_without_probe(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(accel.ENV_VAR, value)
    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    assert accel.choose_accel(Path("k"), Path("i")) == value.strip().lower()


@pytest.mark.usefixtures("fresh_accel")
def test_env_rejects_unknown_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ENV_VAR, "hvf")
    with pytest.raises(ValueError, match="AURORA_ACCEL"):
        accel.choose_accel(Path("k"), Path("i"))


@pytest.mark.usefixtures("fresh_accel")
def test_probe_result_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def probe(kernel: Path, initrd: Path, timeout: float = 20.0) -> bool:
        calls.append(kernel)
        return True

    monkeypatch.setattr(accel, "kvm_device_usable", lambda: True)
    monkeypatch.setattr(accel, "probe_kvm", probe)
    assert accel.choose_accel(Path("k"), Path("i")) == "kvm"
    assert accel.choose_accel(Path("k"), Path("i")) == "kvm"
    assert len(calls) == 1


@pytest.mark.usefixtures("fresh_accel")
def test_no_kvm_device_means_tcg_without_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_device_usable", lambda: False)
    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    assert accel.choose_accel(Path("k"), Path("i")) == "tcg"


def test_accel_args() -> None:
    assert accel.accel_args("tcg") == ["-accel", "tcg,thread=multi", "-cpu", "max"]
    assert accel.accel_args("kvm") == ["-accel", "kvm", "-cpu", "host"]
    with pytest.raises(ValueError):
        accel.accel_args("xen")


# -- Machine without a guest ------------------------------------------------------------


def test_machine_rejects_reserved_forward_and_bad_credentials(tmp_path: Path) -> None:
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
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
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
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
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
    m = Machine(img, tmp_path / "w", accel="tcg", memory_mb=256, cpus=1)
    with pytest.raises(QemuExited, match="qemu exited"):
        m.start()
    assert (tmp_path / "w" / "qemu.log").read_text().strip()
    pub = (tmp_path / "w" / "id_ed25519.pub").read_text()
    assert m.credentials["ssh.authorized_keys.root"] == pub.encode()
    assert (tmp_path / "aurora.raw").read_bytes() == b"not really aurora.raw"
    m.shutdown()


@needs_qemu
def test_qmp_facade_against_real_qemu(tmp_path: Path) -> None:
    """The sync QMP facade talks to a device-less QEMU (starts in well under a second)."""
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [accel.QEMU, "-machine", "none", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    qmp = QMP("unit")
    try:
        retry(sock.exists, timeout=10, interval=0.05, what="qmp socket")
        qmp.connect(sock)
        status = qmp.execute("query-status")
        assert isinstance(status, dict)
        assert "status" in status
        with contextlib.suppress(Exception):  # QEMU may hang up before answering
            qmp.execute("quit", timeout=5)
        assert proc.wait(timeout=10) == 0
    finally:
        qmp.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kernel_panic_on_console_fails_fast(tmp_path: Path) -> None:
    """A panicked guest never answers: waits must stop at once, not at their timeout."""
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
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
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
    m = vm.boot(img, tmp_path / "w")
    assert m is made[1] and made[0].stopped and not made[1].stopped
    assert (tmp_path / "w" / "serial.panic-1.log").read_text() == "boot 1\n"

    outcomes[:] = [BootTimeout("no ssh")]
    with pytest.raises(BootTimeout):
        vm.boot(img, tmp_path / "w2")
    assert made[-1].stopped


# -- UEFI firmware boot ------------------------------------------------------------------


def _uefi_argv(tmp_path: Path, **kw: object) -> list[str]:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb")
    args: dict[str, object] = {
        "serial_log": tmp_path / "serial.log",
        "qmp_socket": tmp_path / "qmp.sock",
        "accel_args": accel.accel_args("tcg"),
        "forwards": [(40022, 22)],
        "firmware_vars": tmp_path / "vars.fd",
    }
    args.update(kw)
    return build_qemu_argv(BootImage.uefi(disk), **args)  # type: ignore[arg-type]


def test_uefi_argv_boots_firmware_not_a_kernel(tmp_path: Path) -> None:
    argv = _uefi_argv(tmp_path)
    assert not {"-kernel", "-initrd", "-append"} & set(argv)
    pflash, root = _values(argv, "-drive")[:2], _values(argv, "-drive")[2]
    code = pflash[0].split(",")
    assert {"if=pflash", "unit=0", "readonly=on", f"file={OVMF_CODE}"} <= set(code)
    vars_ = pflash[1].split(",")
    assert {"if=pflash", "unit=1", f"file={tmp_path / 'vars.fd'}"} <= set(vars_)
    assert "readonly=on" not in vars_  # the firmware writes its boot entries there
    assert {"format=qcow2", "snapshot=on", f"file={tmp_path / 'disk.qcow2'}"} <= set(
        root.split(",")
    )
    assert "scsi-hd,drive=root,bootindex=0" in _values(argv, "-device")


def test_uefi_argv_with_overlay_and_volumes(tmp_path: Path) -> None:
    argv = _uefi_argv(
        tmp_path, overlay=tmp_path / "root.qcow2", extra_drives=[tmp_path / "aurora-data.img"]
    )
    drives = _values(argv, "-drive")
    assert f"if=none,id=root,file={tmp_path / 'root.qcow2'},format=qcow2" in drives
    assert f"if=none,id=vol0,file={tmp_path / 'aurora-data.img'},format=raw" in drives


def test_uefi_argv_refuses_missing_vars_and_cmdline(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="firmware_vars"):
        _uefi_argv(tmp_path, firmware_vars=None)
    with pytest.raises(ValueError, match="extra_cmdline"):
        _uefi_argv(tmp_path, extra_cmdline="debug")
    with pytest.raises(ValueError, match="vmdk"):
        BootImage.uefi(tmp_path / "disk.vmdk", disk_format="vmdk")


def test_direct_kernel_stays_the_default(tmp_path: Path) -> None:
    img = BootImage.from_dir(_fake_image_dir(tmp_path))
    assert not img.firmware
    argv = _argv(tmp_path, firmware_vars=tmp_path / "ignored.fd")
    assert not any("pflash" in d for d in _values(argv, "-drive"))
    assert "scsi-hd,drive=root" in _values(argv, "-device")


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
    assert "hostfwd=tcp:127.0.0.1:40080-:80" in _values(argv, "-netdev")[0]
    assert "-smbios" not in argv
    with pytest.raises(ValueError, match="no forward named https"):
        Machine(BootImage.uefi(disk), tmp_path / "w", host_ports={"https": 1})


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs missing")
@pytest.mark.skipif(shutil.which("debugfs") is None, reason="e2fsprogs missing")
def test_scratch_volume_populated_from_directory(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    store = seed / "aurora" / "credstore"
    store.mkdir(parents=True)
    store.chmod(0o700)
    (store / "ssh.authorized_keys.root").write_text("ssh-ed25519 AAAA k\n")
    (store / "ssh.authorized_keys.root").chmod(0o600)
    (data,) = scratch_volumes(["aurora-data"], tmp_path, size="16M", contents={"aurora-data": seed})
    out = subprocess.run(
        ["debugfs", "-R", "stat /aurora/credstore/ssh.authorized_keys.root", str(data)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Mode:  0600" in out
    cat = subprocess.run(
        ["debugfs", "-R", "cat /aurora/credstore/ssh.authorized_keys.root", str(data)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert cat == "ssh-ed25519 AAAA k\n"
    label = subprocess.run(["e2label", str(data)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "aurora-data"


def test_free_ports_are_distinct() -> None:
    """Two forwards on one host port make QEMU refuse to start."""
    ports = free_ports(64)
    assert len(set(ports)) == 64
