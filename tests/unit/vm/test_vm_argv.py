"""builder.vm.argv: the QEMU command line, SMBIOS credentials and the ssh client
config, checked without starting QEMU (they are pure)."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.vm import accel
from builder.vm.argv import build_qemu_argv, credential_smbios, render_ssh_config
from builder.vm.image import DEFAULT_CMDLINE, OVMF_CODE, BootImage

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="openssh client missing")
pytestmark = pytest.mark.usefixtures("fake_image_dir")


def _argv(tmp_path: Path, **kw: object) -> list[str]:
    img = BootImage.from_dir(tmp_path)
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
    img = BootImage.from_dir(tmp_path)
    assert not img.firmware
    argv = _argv(tmp_path, firmware_vars=tmp_path / "ignored.fd")
    assert not any("pflash" in d for d in _values(argv, "-drive"))
    assert "scsi-hd,drive=root" in _values(argv, "-device")
