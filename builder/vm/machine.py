"""The Machine API: one QEMU VM booted from a built image and driven over SSH,
NixOS-test-driver style (``succeed``, ``fail``, ``wait_for_unit``, ...).

The image file is the product under test, so it is attached with
``snapshot=on`` and never written. Everything the guest must know per run (the
root SSH key) arrives as a systemd credential over SMBIOS, never baked into the
image. Readiness is always polled with a deadline (:func:`builder.retry.retry`);
failures raise typed errors (builder.vm.errors) that carry the serial console
tail, because a timeout without the console is undebuggable. Commands run
through builder.host.remote.Remote, the one command runner, over the machine's
own ssh config (its ControlMaster makes testinfra's many commands cheap).

The parts it is made of: builder.vm.argv (the pure QEMU and ssh command
lines), builder.vm.qmp (QMP), builder.vm.serial (the console log),
builder.vm.disks and builder.vm.process (what it takes from the build host).

Layout of ``workdir``: ``serial.log`` (kept), ``qemu.log``, ``qmp.sock``,
``id_ed25519`` (per-run key), ``ssh_config`` (for ``ssh -F`` and testinfra's
``ssh://aurora-vm``), ``ssh.mux`` (ControlMaster socket).

Over 400 lines for a reason: what is left is one class whose lifecycle steps
(start, liveness, the shutdown escalation) share the QEMU process's state;
the commands and waits live in builder.vm.guest.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from uuid import uuid4

from qemu.qmp import QMPError

from builder.host.remote import Remote
from builder.retry import RetryTimeout, retry
from builder.vm import accel as accel_mod
from builder.vm.argv import SSH_HOST, build_qemu_argv, credential_smbios, render_ssh_config
from builder.vm.errors import BootTimeout, GuestPanic, MachineError, QemuExited
from builder.vm.guest import Guest, _NotReady, loopback_remote, port_named
from builder.vm.image import OVMF_VARS, BootImage
from builder.vm.process import die_with_parent, free_ports, kill
from builder.vm.qmp import QMP
from builder.vm.serial import SerialConsole, tail_text

log = logging.getLogger(__name__)

SSH_KEY_CREDENTIAL = "ssh.authorized_keys.root"
# sun_path is 108 bytes; keep sockets in workdir only while they fit.
_MAX_SOCKET_DIR = 90


class _SshServiceFailed(Exception):
    """Internal: the console says sshd failed for good; waiting longer is pointless."""


class Machine(Guest):
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
        self._console = SerialConsole(self.serial_log)
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

    @property
    def accelerator(self) -> str:
        """What QEMU runs this machine under ("kvm" or "tcg"; the probe's answer is cached)."""
        return self._choose_accel()

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
                preexec_fn=die_with_parent,
            )
        self.started_at = time.monotonic()
        self._finalizer = weakref.finalize(self, kill, self._proc)
        self._qmp = QMP(SSH_HOST)
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
        self._console.check_panic()

    def _abort(self) -> None:
        if self._proc is not None:
            kill(self._proc)
        if self._qmp is not None:
            self._qmp.close()

    def shutdown(self, timeout: float = 60.0, *, powerdown: bool = True) -> bool:
        """Power the guest off via ACPI, escalating to QMP ``quit`` and then SIGKILL.

        Returns True when the guest shut down by itself (a clean shutdown is a
        property worth asserting: it means systemd stopped every unit).
        ``powerdown=False`` goes straight to ``quit``: for a teardown that checks
        nothing after and throws the disks away, where a guest's orderly stop is
        8-18 s of nothing under TCG.
        """
        proc, qmp = self._proc, self._qmp
        if proc is None or self._stopped:
            return self._clean_shutdown
        self._stopped = True
        self._close_ssh_master()
        clean = False
        if powerdown and proc.poll() is None and qmp is not None and not self._console.panicked():
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
        kill(proc)
        if qmp is not None:
            qmp.close()
        if self._socket_dir is not None and self._socket_dir != self.workdir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._clean_shutdown = clean
        return clean

    def _close_ssh_master(self) -> None:
        """Stop the ControlPersist master so no ssh process outlives the VM."""
        if self.control_path.exists():
            self._guest().stop_master(timeout=10)

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
        return self._console.tail(n)

    def remote(self) -> Remote:
        """A :class:`builder.host.remote.Remote` on this VM, for tools that take any host."""
        return loopback_remote(self.forwarded_port("ssh"), self.ssh_key)

    def forwarded_port(self, name: str) -> int:
        """Loopback host port forwarded to the guest port registered as ``name``."""
        if not self._ports:
            raise MachineError("ports are allocated by start()")
        return port_named(self._ports, name)

    # -- commands --------------------------------------------------------

    def _guest(self, connect_timeout: int | None = None) -> Remote:
        """The runner for the harness's own commands: ssh through ``ssh_config`` (the
        ControlMaster), with no connect timeout unless one is asked for."""
        if self._proc is None:
            raise MachineError("machine not started")
        return Remote(
            host=SSH_HOST, port=None, ssh_config=self.ssh_config, connect_timeout=connect_timeout
        )

    # -- readiness ---------------------------------------------------------

    def wait_for_ssh(self, timeout: float = 600.0, *, ssh_failed_grace: float = 90.0) -> None:
        """Poll until a command runs over SSH; :class:`BootTimeout` with console tail if not.

        If the console reports that ssh.service failed and SSH is still
        unreachable ``ssh_failed_grace`` seconds later (systemd's restarts have
        had their chance), give up early instead of burning the whole timeout.
        """
        failed_seen: float | None = None
        probes = ProbeRun()

        def attempt() -> bool:
            nonlocal failed_seen
            banner = ssh_banner(self._ports["ssh"])
            log.debug("ssh probe: %s", banner)
            if probes.worth_ssh(banner, sshd_started=self._console.ssh_started()):
                r = self._ssh("true", timeout=60, connect_timeout=15)
                if r.status == 0:
                    return True
                why = r.stderr.strip() or f"ssh exited with {r.status}"
            else:
                why = f"no SSH banner on the forwarded port yet ({banner})"
            if failed_seen is None and self._console.ssh_failed():
                failed_seen = time.monotonic()
            if failed_seen is not None and time.monotonic() - failed_seen > ssh_failed_grace:
                raise _SshServiceFailed(
                    f"console reports ssh.service failed and ssh is still unreachable "
                    f"{ssh_failed_grace:g}s later"
                )
            raise _NotReady(why)

        try:
            self._poll(attempt, timeout, f"ssh to {SSH_HOST}", interval=SSH_POLL)
        except (RetryTimeout, _SshServiceFailed) as exc:
            raise BootTimeout(
                f"{exc}\n--- serial (last 40 lines of {self.serial_log}) ---\n"
                f"{self.serial_tail(40)}"
            ) from exc
        if self.started_at is not None:
            self.ssh_ready_after = time.monotonic() - self.started_at
            log.info("ssh ready %.1fs after start", self.ssh_ready_after)


# Probes in a row that connect but hear no banner before ssh is tried anyway: once the
# console says sshd started, and in any case (a console that says nothing).
SILENT_PROBES = 3
SILENT_BLIND = 60


@dataclass
class ProbeRun:
    """When a wait for ssh starts ssh: on sshd's banner. A probe that hears nothing
    means the guest is not on the network yet, or sshd is slow to greet (a loaded TCG
    guest): ssh is tried after SILENT_PROBES such probes in a row once the console says
    sshd started, or after SILENT_BLIND in any case, not before: an ssh started before
    the guest has an address waits inside slirp for its whole connect timeout."""

    silent: int = 0  # in a row, since the console said sshd started
    blind: int = 0  # in a row, whatever the console says

    def worth_ssh(self, banner: str, *, sshd_started: bool) -> bool:
        quiet = banner == "silent"
        self.silent = self.silent + 1 if quiet and sshd_started else 0
        self.blind = self.blind + 1 if quiet else 0
        if banner == "banner" or self.silent >= SILENT_PROBES or self.blind >= SILENT_BLIND:
            self.silent = self.blind = 0
            return True
        return False


# Seconds between probes: a refused probe costs nothing, and each second of waiting
# is a second on every boot's figure.
SSH_POLL = 0.25


def ssh_banner(port: int, timeout: float = 1.0) -> str:
    """What a loopback TCP probe of a forwarded ssh port hears: "banner" (sshd's
    `SSH-` line), "closed" (refused, reset or hung up: nothing listens in the guest)
    or "silent" (connected, nothing said within `timeout`).

    QEMU's user network accepts on the host at once and only then connects to the
    guest; an ssh client that starts before the guest has an address waits there for
    a SYN retransmit, up to ~9 s of a measured boot with ssh's ConnectTimeout=15. A
    short probe says when to start ssh; ssh itself keeps its long timeout, which also
    covers its key exchange (too short a one under TCG ends in sshd's penalties). The
    probe's own second is short for the same reason: a probe begun just before the
    guest had its address heard nothing for its whole 3 s (two boots: the banner came
    2.5 s after DHCP); a new one after a second reaches sshd at once.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as probe:
            return "banner" if probe.recv(64).startswith(b"SSH-") else "closed"
    except TimeoutError:
        return "silent"
    except OSError:
        return "closed"


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
