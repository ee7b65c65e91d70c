"""Pure: what QEMU and ssh are told about a VM (QEMU argv, SMBIOS credentials, the
ssh client config), so every command line is testable without starting QEMU."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder.vm.image import OVMF_CODE, BootImage

QEMU = "qemu-system-x86_64"
SSH_HOST = "aurora-vm"
# Credential names end up inside a QEMU option string, where ',' and '=' are
# syntax; systemd also restricts names to a filename-safe set.
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")


def credential_smbios(name: str, value: str | bytes) -> str:
    """SMBIOS type 11 string that systemd (PID 1) imports as credential ``name``.

    The ``binary`` form is base64, which keeps arbitrary bytes and QEMU's comma
    syntax apart.
    """
    if not _CREDENTIAL_NAME.match(name):
        raise ValueError(f"invalid credential name {name!r}")
    data = value.encode() if isinstance(value, str) else value
    b64 = base64.b64encode(data).decode("ascii")
    return f"type=11,value=io.systemd.credential.binary:{name}={b64}"


def build_qemu_argv(
    image: BootImage,
    *,
    serial_log: Path,
    qmp_socket: Path,
    accel_args: Sequence[str],
    forwards: Sequence[tuple[int, int]],
    credentials: Mapping[str, str | bytes] | None = None,
    memory_mb: int = 2048,
    cpus: int = 2,
    extra_cmdline: str = "",
    extra_drives: Sequence[Path] = (),
    overlay: Path | None = None,
    uuid: str | None = None,
    qemu: str = QEMU,
    firmware_vars: Path | None = None,
    firmware_code: Path = OVMF_CODE,
    console_socket: Path | None = None,
) -> list[str]:
    """The full QEMU argv; pure so the command line is testable without QEMU.

    With ``console_socket`` the serial console is also a Unix socket an
    operator attaches to (`aurora-image vm --console`), still logged whole
    to ``serial_log``; without it the console only goes to the log.

    ``forwards`` is ``(host_port, guest_port)`` pairs, bound to 127.0.0.1 only
    so the VM is never reachable from the network. A firmware image needs
    ``firmware_vars``, the machine's own writable copy of the UEFI variables.
    """
    if image.firmware:
        if firmware_vars is None:
            raise ValueError(f"{image.disk}: firmware boot needs a per-machine firmware_vars file")
        if extra_cmdline.strip():
            raise ValueError("extra_cmdline: a firmware boot takes its cmdline from the UKI")
        boot = [
            "-drive", f"if=pflash,format=raw,unit=0,file={firmware_code},readonly=on",
            "-drive", f"if=pflash,format=raw,unit=1,file={firmware_vars}",
        ]  # fmt: skip
    else:
        append = " ".join(f"{image.cmdline} {extra_cmdline}".split())
        boot = ["-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append]
    hostfwds = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in forwards)
    argv = [
        qemu,
        "-machine", "q35",
        "-m", str(memory_mb),
        "-smp", str(cpus),
        *accel_args,
        "-nographic",
        "-monitor", "none",
        "-no-reboot",
        *(["-chardev", f"socket,id=console,path={console_socket},server=on,wait=off,"
                       f"logfile={serial_log},logappend=off", "-serial", "chardev:console"]
          if console_socket else ["-serial", f"file:{serial_log}"]),
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        *boot,
        "-drive", (
            f"if=none,id=root,file={overlay},format=qcow2" if overlay
            else f"if=none,id=root,file={image.disk},format={image.disk_format},snapshot=on"
        ),
        *(["-uuid", uuid] if uuid else []),
        "-device", "virtio-scsi-pci,id=scsi",
        "-device", "scsi-hd,drive=root" + (",bootindex=0" if image.firmware else ""),
        # Scratch volumes (stand-ins for /data and /project): written, unlike the image.
        *(arg for i, drive in enumerate(extra_drives) for arg in (
            "-drive", f"if=none,id=vol{i},file={drive},format=raw",
            "-device", f"scsi-hd,drive=vol{i}",
        )),
        "-netdev", f"user,id=net0{hostfwds}",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    for name, value in (credentials or {}).items():
        argv += ["-smbios", credential_smbios(name, value)]
    return argv


def _ssh_quote(value: str | Path) -> str:
    value = str(value)
    return f'"{value}"' if any(c.isspace() for c in value) else value


def render_ssh_config(
    *, port: int, identity_file: Path, control_path: Path, host: str = SSH_HOST
) -> str:
    """OpenSSH client config for the VM, shared by the harness and testinfra.

    Host keys are generated at first boot, so checking them is meaningless;
    BatchMode stops ssh from ever prompting; the ControlMaster makes repeated
    commands (testinfra issues many) cost one handshake instead of one each.
    """
    return (
        f"Host {host}\n"
        f"  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        f"  User root\n"
        f"  IdentityFile {_ssh_quote(identity_file)}\n"
        f"  IdentitiesOnly yes\n"
        f"  BatchMode yes\n"
        f"  StrictHostKeyChecking no\n"
        f"  UserKnownHostsFile /dev/null\n"
        f"  ControlMaster auto\n"
        f"  ControlPath {_ssh_quote(control_path)}\n"
        f"  ControlPersist 60s\n"
        f"  LogLevel ERROR\n"
    )
