"""Boot a built image under QEMU and drive it over SSH, NixOS-test-driver style.

The image file is the product under test, so it is attached with
``snapshot=on`` and never written. Everything the guest must know per run (the
root SSH key) arrives as a systemd credential over SMBIOS, never baked into the
image. Readiness is always polled with a deadline (:func:`builder.retry.retry`);
failures raise typed errors that carry the serial console tail, because a
timeout without the console is undebuggable.

Layout of ``workdir``: ``serial.log`` (kept), ``qemu.log``, ``qmp.sock``,
``id_ed25519`` (per-run key), ``ssh_config`` (for ``ssh -F`` and testinfra's
``ssh://aurora-vm``), ``ssh.mux`` (ControlMaster socket).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from uuid import uuid4

from qemu.qmp import EventListener, QMPClient, QMPError

from builder.host.remote import Remote
from builder.retry import RetryTimeout, retry
from builder.vm import accel as accel_mod

if TYPE_CHECKING:
    from builder.spec.model import HostSpec

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
SSH_HOST = "aurora-vm"
SSH_KEY_CREDENTIAL = "ssh.authorized_keys.root"
DEFAULT_CMDLINE = (
    "root=PARTLABEL=root-x86-64 ro console=ttyS0 systemd.firstboot=off systemd.machine_id=firmware"
)
DISK_NAME, KERNEL_NAME, INITRD_NAME, CMDLINE_NAME = (
    "aurora.raw",
    "aurora.vmlinuz",
    "aurora.initrd",
    "cmdline",
)
# UEFI firmware (Debian's ``ovmf``): the 4M pair, code read-only and shared, vars
# copied per machine because the firmware writes its boot entries there. Not the
# secure-boot build: the image's UKI is not signed with Microsoft's keys.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Credential names end up inside a QEMU option string, where ',' and '=' are
# syntax; systemd also restricts names to a filename-safe set.
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")
_PANIC = re.compile(rb"Kernel panic - not syncing[^\n]*")
_SSH_FAILED = re.compile(r"Failed to start sshd?\.service")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# sun_path is 108 bytes; keep sockets in workdir only while they fit.
_MAX_SOCKET_DIR = 90

T = TypeVar("T")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class MachineError(Exception):
    """Base class for everything the harness raises about the VM."""


class QemuExited(MachineError):
    """QEMU died while we were waiting on it; waiting longer cannot help."""


class GuestPanic(MachineError):
    """The guest kernel panicked (seen on the serial console); it will never recover."""


class BootTimeout(MachineError, TimeoutError):
    """The guest did not become reachable in time; message has the serial tail."""


class CommandTimeout(MachineError, TimeoutError):
    """An SSH command ran past its timeout (the ssh client was killed)."""


class CommandFailed(MachineError):
    """A command expected to succeed (or fail) did the opposite."""

    def __init__(self, cmd: str, rc: int, output: str, stderr: str = "") -> None:
        self.cmd, self.rc, self.output, self.stderr = cmd, rc, output, stderr
        msg = f"command {cmd!r} exited with {rc}"
        if output.strip():
            msg += f"\n--- stdout ---\n{output.rstrip()}"
        if stderr.strip():
            msg += f"\n--- stderr ---\n{stderr.rstrip()}"
        super().__init__(msg)


class UnitFailed(MachineError):
    """A unit we waited for entered ``failed``: fail fast with its status and log."""

    def __init__(self, unit: str, status: str, journal: str) -> None:
        self.unit, self.status, self.journal = unit, status, journal
        super().__init__(
            f"unit {unit} failed\n--- systemctl status ---\n{status.rstrip()}"
            f"\n--- journal ---\n{journal.rstrip()}"
        )


class _NotReady(Exception):
    """Internal: a poll attempt saw a transient state (the retry loop swallows it)."""


class _SshServiceFailed(Exception):
    """Internal: the console says sshd failed for good; waiting longer is pointless."""


# --------------------------------------------------------------------------
# Image description and pure helpers (unit-tested without QEMU)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BootImage:
    """What QEMU boots: by default the split artifacts mkosi writes (disk, kernel,
    initrd, cmdline, booted directly); without a kernel, the disk alone through
    UEFI firmware, as a cloud boots it (systemd-boot and a UKI on the ESP)."""

    disk: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = DEFAULT_CMDLINE
    disk_format: str = "raw"

    @property
    def firmware(self) -> bool:
        """True when the firmware boots the disk (no kernel handed to QEMU)."""
        return self.kernel is None

    @classmethod
    def uefi(cls, disk: Path, disk_format: str = "qcow2") -> BootImage:
        """A whole-disk image booted by OVMF; its kernel cmdline lives in the UKI."""
        if disk_format not in ("raw", "qcow2"):
            raise ValueError(f"{disk}: disk format {disk_format!r}; expected raw or qcow2")
        return cls(disk=Path(disk), cmdline="", disk_format=disk_format)

    @classmethod
    def from_dir(cls, image_dir: Path) -> BootImage:
        """Find ``aurora.{raw,vmlinuz,initrd}`` and the optional ``cmdline`` file."""
        image_dir = Path(image_dir)
        paths = [image_dir / n for n in (DISK_NAME, KERNEL_NAME, INITRD_NAME)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{image_dir}: missing image artifacts {', '.join(missing)}")
        cmdline_file = image_dir / CMDLINE_NAME
        cmdline = DEFAULT_CMDLINE
        if cmdline_file.is_file():
            cmdline = " ".join(cmdline_file.read_text().split()) or DEFAULT_CMDLINE
        return cls(disk=paths[0], kernel=paths[1], initrd=paths[2], cmdline=cmdline)


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


def make_overlay(image: BootImage, path: Path) -> Path:
    """A qcow2 file backed by the image: the guest writes there, never to the image."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk),
         "-F", image.disk_format, str(path)],
        check=True,
    )  # fmt: skip
    return path


def volume_labels(spec: HostSpec) -> list[str]:
    """The labels the spec mounts its volumes by (what :func:`scratch_volumes` makes)."""
    return [m.what.removeprefix("LABEL=") for m in spec.mounts if m.what.startswith("LABEL=")]


def scratch_volumes(
    labels: Sequence[str],
    workdir: Path,
    size: str = "1G",
    contents: Mapping[str, Path] | None = None,
) -> list[Path]:
    """Ext4 disks with the given labels: stand-ins for the persistent volumes
    (the image mounts its volumes by label, so it cannot tell the difference).

    ``contents`` maps a label to a directory copied in at mkfs time (``mkfs.ext4
    -d`` keeps modes and owners), e.g. a credential store the guest reads at boot.
    """
    drives = []
    for label in labels:
        path = workdir / f"{label}.img"
        subprocess.run(["truncate", "-s", size, str(path)], check=True)
        seed = (contents or {}).get(label)
        populate = ["-d", str(seed)] if seed is not None else []
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, *populate, str(path)], check=True)
        drives.append(path)
    return drives


def free_port() -> int:
    """A currently free loopback TCP port (QEMU binds it moments later)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: all are held open until every one is
    chosen, since the kernel may hand a just-closed port out again at once."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def tail_text(path: Path, n: int) -> str:
    """Last ``n`` lines of a console-ish log, decoded leniently, ANSI stripped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"<{path.name} does not exist>"
    text = _ANSI.sub("", data.decode("utf-8", "replace")).replace("\r", "")
    return "\n".join(text.splitlines()[-n:])


# --------------------------------------------------------------------------
# QMP: synchronous facade over qemu.qmp's asyncio client
# --------------------------------------------------------------------------


class QMP:
    """Blocking QMP calls for synchronous test code.

    qemu.qmp is asyncio-only; running its loop in a private daemon thread keeps
    the event reader alive between calls (so no event is missed) without
    imposing asyncio on the harness or on pytest.
    """

    def __init__(self, name: str = SSH_HOST) -> None:
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._client: QMPClient | None = None
        self._events: EventListener | None = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def connect(self, path: Path, timeout: float = 5.0) -> None:
        """One connection attempt (callers retry while QEMU creates the socket)."""

        async def go() -> tuple[QMPClient, EventListener]:
            client = QMPClient(self._name)
            listener = EventListener()
            client.register_listener(listener)
            await client.connect(str(path))
            return client, listener

        self._client, self._events = self._call(go(), timeout)

    def execute(
        self, cmd: str, arguments: Mapping[str, object] | None = None, timeout: float = 30.0
    ) -> object:
        """Run a QMP command and return its result (raises ``QMPError`` subclasses)."""
        if self._client is None:
            raise MachineError("QMP is not connected")
        return self._call(self._client.execute(cmd, arguments), timeout)

    def events(self) -> list[dict[str, Any]]:
        """Every event received since connecting, oldest first."""
        listener = self._events
        if listener is None:
            return []

        async def history() -> list[dict[str, Any]]:
            return [dict(e) for e in listener.history]

        return self._call(history(), 5.0)

    def has_event(self, name: str) -> bool:
        """Whether an event called ``name`` (e.g. ``SHUTDOWN``) has been seen."""
        return any(e.get("event") == name for e in self.events())

    def close(self) -> None:
        """Disconnect (tolerating a QEMU that already hung up) and stop the loop."""
        if self._client is not None:
            try:
                self._call(self._client.disconnect(), 5.0)
            except (QMPError, OSError, EOFError, TimeoutError) as exc:
                log.debug("QMP disconnect: %r", exc)
            self._client = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - non-glibc hosts
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the forked child: a killed test run must not leave QEMU spinning."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class Machine:
    """One QEMU VM booted from a :class:`BootImage`, reachable over SSH.

    Use as a context manager (``with Machine(...) as m:``) so the VM is always
    powered down; ``start`` does not wait for the guest, ``wait_for_ssh`` does.
    """

    def __init__(
        self,
        image: BootImage,
        workdir: Path,
        *,
        credentials: Mapping[str, str | bytes] | None = None,
        memory_mb: int = 2048,
        cpus: int = 2,
        accel: str | None = None,
        host_forwards: Mapping[str, int] | None = None,
        extra_cmdline: str = "",
        extra_drives: Sequence[Path] = (),
        overlay: Path | None = None,
        uuid: str | None = None,
        ssh_key: Path | None = None,
        ssh_key_via_smbios: bool = True,
        host_ports: Mapping[str, int] | None = None,
        console: bool = False,
    ) -> None:
        self.image = image
        # True: the serial console is also a socket to attach to (``console_socket``).
        self.console = console
        self.workdir = Path(workdir).absolute()
        self.credentials = dict(credentials or {})
        for name in self.credentials:
            credential_smbios(name, b"")  # validate early
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.accel = accel
        self.host_forwards = dict(host_forwards or {})
        if "ssh" in self.host_forwards:
            raise ValueError("host_forwards: 'ssh' is reserved for guest port 22")
        self.extra_cmdline = extra_cmdline
        self.extra_drives = [Path(d) for d in extra_drives]
        # A qcow2 overlay over the image keeps writes across reboots (the image
        # itself stays untouched); without one the disk is snapshot=on.
        self.overlay = Path(overlay) if overlay else None
        self.uuid = uuid or str(uuid4())
        # False: root's key must reach the guest some other way (a credential
        # store on a volume, as on the cloud); the harness still uses the key.
        self.ssh_key_via_smbios = ssh_key_via_smbios
        # Fixed loopback ports by forward name ("ssh" included), for a VM that
        # must keep its address across restarts; the rest are picked at start.
        self.host_ports = dict(host_ports or {})
        unknown = set(self.host_ports) - {"ssh", *self.host_forwards}
        if unknown:
            raise ValueError(f"host_ports: no forward named {', '.join(sorted(unknown))}")

        self.serial_log = self.workdir / "serial.log"
        self.firmware_vars = self.workdir / "OVMF_VARS.fd"
        self.qemu_log = self.workdir / "qemu.log"
        self.ssh_config = self.workdir / "ssh_config"
        self.ssh_key = self.workdir / "id_ed25519"
        # An operator's existing key (e.g. the same one across reboots of one
        # disk: systemd provisions root's authorized_keys only when absent).
        self._given_key = Path(ssh_key) if ssh_key else None
        self._socket_dir: Path | None = None
        self._ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QMP | None = None
        self._finalizer: weakref.finalize | None = None
        self._stopped = False
        self._serial_offset = 0
        self._panic: str | None = None
        self._clean_shutdown = False
        self.started_at: float | None = None
        #: Seconds from ``start()`` to the first successful SSH command.
        self.ssh_ready_after: float | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def qmp_socket(self) -> Path:
        return self._sockets() / "qmp.sock"

    @property
    def console_socket(self) -> Path | None:
        return self._sockets() / "console.sock" if self.console else None

    @property
    def control_path(self) -> Path:
        return self._sockets() / "ssh.mux"

    def _sockets(self) -> Path:
        if self._socket_dir is None:
            if len(str(self.workdir)) <= _MAX_SOCKET_DIR:
                self._socket_dir = self.workdir
            else:
                self._socket_dir = Path(tempfile.mkdtemp(prefix="aurora-vm-"))
        return self._socket_dir

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def qmp(self) -> QMP:
        """The QMP facade, for ad-hoc commands (``query-status`` etc.)."""
        if self._qmp is None:
            raise MachineError("machine not started")
        return self._qmp

    def _generate_key(self) -> str:
        if self._given_key is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self._given_key, self.ssh_key)
            shutil.copy2(self._given_key.with_suffix(".pub"), self.ssh_key.with_suffix(".pub"))
            return self.ssh_key.with_suffix(".pub").read_text()
        for p in (self.ssh_key, self.ssh_key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aurora-vm-test",
             "-f", str(self.ssh_key)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True,
        )  # fmt: skip
        return self.ssh_key.with_suffix(".pub").read_text()

    def _choose_accel(self) -> str:
        if self.accel:
            return self.accel
        if self.image.kernel is None or self.image.initrd is None:
            # The KVM probe boots a kernel directly; a firmware image has none to
            # hand over, and OVMF fails under the nested KVM seen here: TCG unless forced.
            return accel_mod.forced_accel() or "tcg"
        return accel_mod.choose_accel(self.image.kernel, self.image.initrd)

    def _argv(self) -> list[str]:
        """The QEMU command line for this machine (needs the ports from ``start``)."""
        accel = self._choose_accel()
        forwards = [(self._ports["ssh"], 22)]
        forwards += [(self._ports[n], g) for n, g in self.host_forwards.items()]
        return build_qemu_argv(
            self.image,
            serial_log=self.serial_log,
            qmp_socket=self.qmp_socket,
            accel_args=accel_mod.accel_args(accel),
            forwards=forwards,
            credentials=self.credentials,
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            extra_cmdline=self.extra_cmdline,
            extra_drives=self.extra_drives,
            overlay=self.overlay,
            uuid=self.uuid,
            firmware_vars=self.firmware_vars if self.image.firmware else None,
            console_socket=self.console_socket,
        )

    def start(self) -> None:
        """Launch QEMU and connect QMP; returns before the guest has booted.

        Call it from a thread that outlives the VM: the kernel's parent-death
        signal that stops a leaked QEMU fires when the starting *thread* exits.
        """
        if self._proc is not None:
            raise MachineError("machine already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stale in (self.serial_log, self.qmp_socket, self.control_path, self.console_socket):
            if stale is not None:
                stale.unlink(missing_ok=True)

        pubkey = self._generate_key()
        if self.ssh_key_via_smbios:
            extra_keys = self.credentials.get(SSH_KEY_CREDENTIAL, b"")
            if isinstance(extra_keys, str):
                extra_keys = extra_keys.encode()
            self.credentials[SSH_KEY_CREDENTIAL] = pubkey.encode() + extra_keys
        if self.image.firmware:
            shutil.copyfile(OVMF_VARS, self.firmware_vars)

        names = ("ssh", *self.host_forwards)
        unfixed = [n for n in names if not self.host_ports.get(n)]
        fresh = iter(free_ports(len(unfixed)))
        self._ports = {n: self.host_ports.get(n) or next(fresh) for n in names}
        self.ssh_config.write_text(
            render_ssh_config(
                port=self._ports["ssh"], identity_file=self.ssh_key, control_path=self.control_path
            )
        )
        argv = self._argv()
        (self.workdir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        log.info("starting VM: %s", shlex.join(argv))
        with open(self.qemu_log, "wb") as qemu_log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        self._qmp = QMP()
        try:
            retry(
                self._try_qmp_connect,
                timeout=30,
                interval=0.1,
                what=f"QMP socket {self.qmp_socket}",
                retry_on=(QMPError, OSError, TimeoutError),
            )
        except BaseException:
            self._abort()
            raise

    def _try_qmp_connect(self) -> bool:
        self.check_alive()
        if not self.qmp_socket.exists():
            return False  # not created yet; connecting now would only log an error
        assert self._qmp is not None
        self._qmp.connect(self.qmp_socket)
        return True

    def check_alive(self) -> None:
        """Raise :class:`QemuExited` or :class:`GuestPanic` if the VM is gone or panicked."""
        if self._proc is None:
            raise MachineError("machine not started")
        rc = self._proc.poll()
        if rc is not None:
            raise QemuExited(
                f"qemu exited with status {rc}\n--- qemu.log ---\n{tail_text(self.qemu_log, 20)}"
                f"\n--- serial (last 40 lines) ---\n{self.serial_tail(40)}"
            )
        if self._scan_for_panic():
            raise GuestPanic(
                f"guest kernel panicked: {self._panic}\n"
                f"--- serial (last 40 lines) ---\n{self.serial_tail(40)}"
            )

    def _scan_for_panic(self) -> bool:
        """Look for a kernel panic in console output written since the last scan.

        With ``-no-reboot`` and the default ``panic=0`` a panicked guest just
        sits there, so without this every wait would run to its full timeout.
        """
        if self._panic is None:
            try:
                with open(self.serial_log, "rb") as f:
                    start = max(0, self._serial_offset - 128)  # a line split across scans
                    f.seek(start)
                    chunk = f.read()
            except FileNotFoundError:
                return False
            self._serial_offset = start + len(chunk)
            found = _PANIC.search(chunk)
            if found:
                self._panic = found.group().decode("utf-8", "replace").strip()
        return self._panic is not None

    def _abort(self) -> None:
        if self._proc is not None:
            _kill(self._proc)
        if self._qmp is not None:
            self._qmp.close()

    def shutdown(self, timeout: float = 60.0) -> bool:
        """Power the guest off via ACPI, escalating to QMP ``quit`` and then SIGKILL.

        Returns True when the guest shut down by itself (a clean shutdown is a
        property worth asserting: it means systemd stopped every unit).
        """
        proc, qmp = self._proc, self._qmp
        if proc is None or self._stopped:
            return self._clean_shutdown
        self._stopped = True
        self._close_ssh_master()
        clean = False
        if proc.poll() is None and qmp is not None and not self._scan_for_panic():
            t0 = time.monotonic()
            try:
                qmp.execute("system_powerdown", timeout=10)
                retry(
                    lambda: proc.poll() is not None or qmp.has_event("SHUTDOWN"),
                    timeout=timeout,
                    interval=0.2,
                    what="guest ACPI shutdown",
                    retry_on=(),
                )
                proc.wait(timeout=15)
                # With -no-reboot a guest reset or panic also ends in SHUTDOWN;
                # only the guest powering itself off counts as clean.
                shutdowns = [e for e in qmp.events() if e.get("event") == "SHUTDOWN"]
                reasons = [e.get("data", {}).get("reason") for e in shutdowns]
                clean = "guest-shutdown" in reasons
                log.info(
                    "guest stopped %.1fs after system_powerdown (SHUTDOWN reasons: %s)",
                    time.monotonic() - t0,
                    reasons,
                )
            except (QMPError, OSError, TimeoutError, subprocess.TimeoutExpired) as exc:
                log.warning("clean powerdown failed (%s); escalating", exc)
        if proc.poll() is None and qmp is not None:
            try:
                qmp.execute("quit", timeout=5)
            except (QMPError, OSError, EOFError, TimeoutError) as exc:
                log.debug("QMP quit: %r", exc)  # QEMU may hang up before replying
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        _kill(proc)
        if qmp is not None:
            qmp.close()
        if self._socket_dir is not None and self._socket_dir != self.workdir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._clean_shutdown = clean
        return clean

    def _close_ssh_master(self) -> None:
        """Stop the ControlPersist master so no ssh process outlives the VM."""
        if self.control_path.exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    ["ssh", "-F", str(self.ssh_config), "-O", "exit", SSH_HOST],
                    stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False,
                )  # fmt: skip

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- observation -------------------------------------------------------

    def serial_tail(self, n: int = 80) -> str:
        """Last ``n`` lines of the serial console (what to look at when boot stalls)."""
        return tail_text(self.serial_log, n)

    def remote(self) -> Remote:
        """A :class:`builder.host.remote.Remote` on this VM, for tools that take any host."""
        return Remote(
            host="127.0.0.1",
            port=self.forwarded_port("ssh"),
            identity=self.ssh_key,
            known_hosts=Path(os.devnull),
            host_key_checking="no",
        )

    def forwarded_port(self, name: str) -> int:
        """Loopback host port forwarded to the guest port registered as ``name``."""
        if not self._ports:
            raise MachineError("ports are allocated by start()")
        try:
            return self._ports[name]
        except KeyError:
            raise KeyError(f"no forward named {name!r}; have {sorted(self._ports)}") from None

    # -- commands ----------------------------------------------------------

    def _ssh(
        self, cmd: str, timeout: float, options: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        if self._proc is None:
            raise MachineError("machine not started")
        argv = ["ssh", "-F", str(self.ssh_config), *options, SSH_HOST, "--", cmd]
        try:
            return subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                errors="replace", timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(f"command {cmd!r} timed out after {timeout:g}s") from exc

    def execute(self, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run a shell command in the guest; returns ``(exit status, stdout)``.

        Status 255 is what ssh itself returns when it cannot connect.
        """
        r = self._ssh(cmd, timeout)
        if r.stderr.strip():
            log.debug("%s stderr: %s", cmd, r.stderr.rstrip())
        return r.returncode, r.stdout

    def succeed(self, cmd: str, timeout: float = 120.0) -> str:
        """Run ``cmd``, return stdout; raise :class:`CommandFailed` on non-zero status."""
        r = self._ssh(cmd, timeout)
        if r.returncode != 0:
            raise CommandFailed(cmd, r.returncode, r.stdout, r.stderr)
        return r.stdout

    def fail(self, cmd: str, timeout: float = 120.0) -> str:
        """Run ``cmd`` that must fail (and not merely because ssh could not connect)."""
        r = self._ssh(cmd, timeout)
        if r.returncode == 0 or r.returncode == 255:
            raise CommandFailed(cmd, r.returncode, r.stdout, r.stderr)
        return r.stdout

    # -- readiness ---------------------------------------------------------

    def wait_for_ssh(self, timeout: float = 600.0, *, ssh_failed_grace: float = 90.0) -> None:
        """Poll until a command runs over SSH; :class:`BootTimeout` with console tail if not.

        If the console reports that ssh.service failed and SSH is still
        unreachable ``ssh_failed_grace`` seconds later (systemd's restarts have
        had their chance), give up early instead of burning the whole timeout.
        """
        failed_seen: float | None = None

        def attempt() -> bool:
            nonlocal failed_seen
            self.check_alive()
            r = self._ssh("true", timeout=60, options=("-o", "ConnectTimeout=15"))
            if r.returncode == 0:
                return True
            if failed_seen is None and _SSH_FAILED.search(tail_text(self.serial_log, 10**6)):
                failed_seen = time.monotonic()
            if failed_seen is not None and time.monotonic() - failed_seen > ssh_failed_grace:
                raise _SshServiceFailed(
                    f"console reports ssh.service failed and ssh is still unreachable "
                    f"{ssh_failed_grace:g}s later"
                )
            raise _NotReady(r.stderr.strip() or f"ssh exited with {r.returncode}")

        try:
            retry(
                attempt,
                timeout=timeout,
                interval=1.0,
                what=f"ssh to {SSH_HOST}",
                retry_on=(_NotReady, CommandTimeout),
            )
        except (RetryTimeout, _SshServiceFailed) as exc:
            raise BootTimeout(
                f"{exc}\n--- serial (last 40 lines of {self.serial_log}) ---\n"
                f"{self.serial_tail(40)}"
            ) from exc
        if self.started_at is not None:
            self.ssh_ready_after = time.monotonic() - self.started_at
            log.info("ssh ready %.1fs after start", self.ssh_ready_after)

    def wait_until_succeeds(self, cmd: str, timeout: float = 120.0) -> str:
        """Poll ``cmd`` until it exits 0; return its stdout."""

        def attempt() -> str | bool:
            self.check_alive()
            r = self._ssh(cmd, timeout=max(timeout, 1.0))
            if r.returncode == 0:
                return r.stdout or True
            raise _NotReady(f"rc={r.returncode} {r.stderr.strip()}".strip())

        out = retry(
            attempt,
            timeout=timeout,
            interval=1.0,
            what=f"{cmd!r} to succeed",
            retry_on=(_NotReady, CommandTimeout),
        )
        return out if isinstance(out, str) else ""

    def wait_for_unit(self, unit: str, timeout: float = 300.0) -> None:
        """Poll until ``unit`` is active; raise :class:`UnitFailed` as soon as it fails."""
        q = shlex.quote(unit)

        def attempt() -> bool:
            self.check_alive()
            rc, out = self.execute(f"systemctl is-active {q}", timeout=60)
            state = out.strip()
            if state == "active":
                return True
            if state == "failed":
                _, status = self.execute(f"systemctl status --no-pager --full {q} 2>&1")
                _, journal = self.execute(f"journalctl --no-pager -b -n 60 -u {q} 2>&1")
                raise UnitFailed(unit, status, journal)
            raise _NotReady(f"{unit} is {state or 'unknown'} (rc {rc})")

        retry(
            attempt,
            timeout=timeout,
            interval=1.0,
            what=f"unit {unit}",
            retry_on=(_NotReady, CommandTimeout),
        )

    def wait_for_open_port(self, port: int, timeout: float = 120.0) -> None:
        """Poll until something in the guest listens on TCP ``port``."""

        def attempt() -> bool:
            self.check_alive()
            rc, out = self.execute(f"ss -Htln 'sport = :{int(port)}'", timeout=60)
            if rc == 0 and out.strip():
                return True
            raise _NotReady(f"nothing listening on {port} (rc {rc})")

        retry(
            attempt,
            timeout=timeout,
            interval=1.0,
            what=f"guest TCP port {port}",
            retry_on=(_NotReady, CommandTimeout),
        )


def boot(
    image: BootImage,
    workdir: Path,
    *,
    attempts: int = 2,
    ssh_timeout: float = 600.0,
    **machine_kw: Any,
) -> Machine:
    """Start a :class:`Machine` and wait for SSH, retrying after a guest kernel panic.

    Under multi-threaded TCG the guest kernel occasionally oopses while patching
    its own text early in boot (seen once in six boots here); that is an
    emulator race, not an image defect, so it earns a fresh boot. The panicked
    console is kept as ``serial.panic-N.log``. Other failures are not retried.
    """
    for attempt in range(1, attempts + 1):
        machine = Machine(image, workdir, **machine_kw)
        machine.start()
        try:
            machine.wait_for_ssh(timeout=ssh_timeout)
            return machine
        except GuestPanic as exc:
            machine.shutdown(timeout=5)
            if attempt == attempts:
                raise
            machine.serial_log.replace(machine.workdir / f"serial.panic-{attempt}.log")
            log.warning("boot attempt %d panicked, retrying: %s", attempt, str(exc).splitlines()[0])
        except BaseException:
            machine.shutdown()
            raise
    raise AssertionError("unreachable")
