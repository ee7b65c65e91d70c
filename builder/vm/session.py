"""A VM an operator works in: `aurora-image vm`, `aurora-image ssh`, `vm --stop`.

The VM is owned by a small keeper process (``python -m builder.vm.session``)
in its own session, so it can outlive the command that started it
(``--keep``). The keeper boots the image exactly as the smoke suite does
(builder.vm.machine: per-run SSH key as an SMBIOS credential, scratch volumes with
the spec's labels for /data and /project, the image attached read-only),
records where it runs in ``<cache>/vms/<tag>.json`` (``vms``: the directory
the CLI passes in, `vms_dir(Paths.cache)`) and powers the guest off
cleanly on SIGTERM. The serial console of every kept VM is also a socket
(``console`` in the state) that `aurora-image vm --console` attaches to; a VM
started for the console is recorded as soon as QEMU runs, without waiting
for sshd, which may be the very thing that is broken. QEMU dies with the
keeper (PDEATHSIG), so no VM is ever left without an owner.

The smoke suite's session VM is a kept VM too, started by :func:`start` with a
:class:`Boot` (more forwards, its own volumes, a credential, a qcow2 overlay and a
fixed UUID that a reboot keeps, an owner whose end stops it) and driven from the
test process as a :class:`KeptVm`: the suite proves `aurora-image ssh`, `vm
--console` and `vm --stop` on it instead of booting a VM of its own for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from builder.errors import AuroraError
from builder.host.remote import Remote
from builder.render.tree import atomic_write
from builder.vm.argv import SSH_HOST
from builder.vm.errors import QemuExited
from builder.vm.guest import Guest, loopback_remote, port_named
from builder.vm.serial import SerialConsole

KEEPER = "builder.vm.session"
# Guest ports forwarded to loopback besides ssh, so the dashboard can be tried.
FORWARDS = {"http": 80, "https": 443}
BOOT_TIMEOUT = 900.0
STOP_TIMEOUT = 120.0
CONSOLE_FIRST = "--console-first"  # keeper flag: record the VM before sshd answers
BOOT_FLAG = "--boot="  # keeper flag: the Boot options' JSON file


class VmError(AuroraError):
    """The VM could not be started, found or stopped."""


@dataclass(frozen=True)
class Boot:
    """How a kept VM boots beyond what `aurora-image vm` gives it (nothing here): what
    the smoke suite's session VM needs to stay one machine across a reboot.

    ``drives`` are volumes the caller made and keeps (the keeper makes and removes
    only the scratch volumes of the labels); ``ssh_key`` is a key pair the caller
    keeps (else the keeper makes one per boot); ``owner`` is a pid whose end powers
    the VM off, so a test run that dies leaves no VM behind."""

    forwards: dict[str, int] = field(default_factory=dict)
    drives: tuple[str, ...] = ()
    credentials: dict[str, str] = field(default_factory=dict)
    overlay: str | None = None
    uuid: str | None = None
    ssh_key: str | None = None
    owner: int | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Boot:
        return cls(**{**data, "drives": tuple(data.get("drives", ()))})

    def machine_options(self) -> dict[str, object]:
        """Keyword arguments for builder.vm.machine.Machine (forwards and drives are
        added to the keeper's own)."""
        return {
            "credentials": self.credentials,
            "overlay": Path(self.overlay) if self.overlay else None,
            "uuid": self.uuid,
            "ssh_key": Path(self.ssh_key) if self.ssh_key else None,
        }


@dataclass(frozen=True)
class VmState:
    """A running kept VM, as its state file records it."""

    tag: str
    image: str
    pid: int
    ports: dict[str, int]
    key: str
    serial_log: str
    workdir: str
    started: float
    ssh_ready_after: float | None = None
    console: str | None = None
    accel: str | None = None

    def remote(self) -> Remote:
        return loopback_remote(self.ports["ssh"], Path(self.key))

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["ssh"] = self.remote().argv()
        return data


def vms_dir(cache: Path) -> Path:
    """Where kept VMs are recorded, inside the build machine's cache (builder.paths)."""
    return cache / "vms"


def state_path(vms: Path, tag: str) -> Path:
    return vms / f"{tag}.json"


def _keeper_alive(pid: int) -> bool:
    """Whether ``pid`` is still one of our keepers (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return KEEPER.encode() in cmdline


def read_state(vms: Path, tag: str) -> VmState | None:
    """The kept VM for ``tag`` if its keeper still runs; a stale file is removed."""
    path = state_path(vms, tag)
    try:
        data = json.loads(path.read_text())
        state = VmState(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not _keeper_alive(state.pid):
        path.unlink(missing_ok=True)
        return None
    return state


def running(vms: Path) -> list[VmState]:
    """Every kept VM whose keeper is alive, oldest first."""
    states = [read_state(vms, p.stem) for p in sorted(vms.glob("*.json"))]
    return sorted((s for s in states if s is not None), key=lambda s: s.started)


def find(vms: Path, tag: str | None) -> VmState:
    """The kept VM for ``tag``, or the only one running when no tag is given."""
    if tag:
        state = read_state(vms, tag)
        if state is None:
            raise VmError(f"no VM of {tag} is running; start one: `aurora-image vm {tag} --keep`")
        return state
    states = running(vms)
    if not states:
        raise VmError("no VM is running; start one with `aurora-image vm --keep`")
    if len(states) > 1:
        tags = ", ".join(s.tag for s in states)
        raise VmError(f"{len(states)} VMs are running ({tags}); name one by its tag")
    return states[0]


def keeper_argv(
    state_file: Path,
    image_dir: Path,
    labels: list[str],
    *,
    wait_ssh: bool = True,
    boot_file: Path | None = None,
) -> list[str]:
    """The keeper's command line (parsed back by :func:`parse_keeper_argv`)."""
    flags = [] if wait_ssh else [CONSOLE_FIRST]
    if boot_file is not None:
        flags.append(f"{BOOT_FLAG}{boot_file}")
    return [sys.executable, "-m", KEEPER, str(state_file), str(image_dir), *flags, *labels]


def parse_keeper_argv(args: list[str]) -> tuple[Path, Path, list[str], bool, Path | None]:
    """``sys.argv[1:]`` of the keeper -> (state file, image dir, labels, wait_ssh, boot file)."""
    state_file, image_dir, *rest = args
    wait_ssh, boot_file = True, None
    while rest and rest[0].startswith("--"):
        flag = rest.pop(0)
        if flag == CONSOLE_FIRST:
            wait_ssh = False
        elif flag.startswith(BOOT_FLAG):
            boot_file = Path(flag.removeprefix(BOOT_FLAG))
        else:
            raise VmError(f"the VM keeper got an unknown flag {flag!r}")
    return Path(state_file), Path(image_dir), rest, wait_ssh, boot_file


def start(
    vms: Path,
    image_dir: Path,
    labels: list[str],
    *,
    note: object = None,
    wait_ssh: bool = True,
    boot: Boot | None = None,
) -> VmState:
    """Start a keeper for ``image_dir`` and wait until ssh works in the guest
    (``wait_ssh=False``: only until QEMU runs and its console can be attached).

    ``note`` (a builder.progress Step) gets the console's latest line while waiting;
    ``boot`` adds what the smoke suite's session VM needs (:class:`Boot`).
    """
    tag = image_dir.name
    existing = read_state(vms, tag)
    if existing is not None:
        raise VmError(
            f"a VM of {tag} is already running (pid {existing.pid}); use `aurora-image ssh {tag}` "
            f"or stop it with `aurora-image vm --stop {tag}`"
        )
    workdir = vms / tag
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    boot_file = None
    if boot is not None:  # credentials may be in it: the keeper's eyes only
        boot_file = workdir / "boot.json"
        atomic_write(boot_file, json.dumps(boot.to_json()).encode(), 0o600)
    argv = keeper_argv(
        state_path(vms, tag), image_dir, labels, wait_ssh=wait_ssh, boot_file=boot_file
    )
    with open(workdir / "keeper.log", "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
        )
    deadline = time.monotonic() + BOOT_TIMEOUT
    try:
        while time.monotonic() < deadline:
            state = _ready_state(vms, tag)
            if state is not None:
                return state
            if proc.poll() is not None:
                raise VmError(_keeper_failure(workdir, proc.returncode))
            if note is not None:
                note.note(_last_line(workdir / "serial.log"))  # type: ignore[attr-defined]
            time.sleep(0.5)
    except BaseException:
        _terminate(proc.pid)
        raise
    _terminate(proc.pid)
    raise VmError(f"{tag}: no ssh after {BOOT_TIMEOUT:.0f} s; serial log: {workdir / 'serial.log'}")


def _ready_state(vms: Path, tag: str) -> VmState | None:
    try:
        return VmState(**json.loads(state_path(vms, tag).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _keeper_failure(workdir: Path, rc: int | None) -> str:
    error = workdir / "keeper.error"
    if error.exists():
        return error.read_text().strip()
    return (
        f"the VM keeper exited with status {rc} before ssh came up; "
        f"see {workdir / 'keeper.log'} and {workdir / 'serial.log'}"
    )


def _last_line(path: Path) -> str:
    from builder.vm.serial import tail_text

    if not path.exists():
        return "starting QEMU"
    lines = [line for line in tail_text(path, 5).splitlines() if line.strip()]
    return lines[-1][:70] if lines else ""


def _terminate(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the keeper (it powers the guest off), SIGKILL if it will not go."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _keeper_alive(pid):
            return True
        time.sleep(0.3)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


def stop(vms: Path, state: VmState) -> bool:
    """Power the VM off; True when the keeper stopped it cleanly."""
    clean = _terminate(state.pid)
    state_path(vms, state.tag).unlink(missing_ok=True)
    return clean


# --------------------------------------------------------------------------
# The keeper process
# --------------------------------------------------------------------------


class KeptVm(Guest):
    """A kept VM driven from another process (the smoke suite's session VM): the
    Machine API's commands and waits, through the ssh config (and ControlMaster) its
    keeper's Machine wrote; alive while its keeper is and the console shows no panic."""

    def __init__(self, vms: Path, state: VmState) -> None:
        self.vms, self.state = vms, state
        self.workdir = Path(state.workdir)
        self.ssh_config = self.workdir / "ssh_config"  # builder.vm.machine's layout
        self.ssh_key = Path(state.key)
        self.serial_log = Path(state.serial_log)
        self.accel = state.accel
        self._console = SerialConsole(self.serial_log)

    def _guest(self, connect_timeout: int | None = None) -> Remote:
        return Remote(
            host=SSH_HOST, port=None, ssh_config=self.ssh_config, connect_timeout=connect_timeout
        )

    def check_alive(self) -> None:
        if not _keeper_alive(self.state.pid):
            raise QemuExited(
                f"the keeper of {self.state.tag} (pid {self.state.pid}) is gone; "
                f"see {self.workdir / 'keeper.log'}\n--- serial (last 40 lines) ---\n"
                f"{self._console.tail(40)}"
            )
        self._console.check_panic()

    def serial_tail(self, n: int = 80) -> str:
        return self._console.tail(n)

    def remote(self) -> Remote:
        return self.state.remote()

    def forwarded_port(self, name: str) -> int:
        return port_named(self.state.ports, name)

    def shutdown(self) -> bool:
        """Power the VM off (as `vm --stop`); True when the keeper stopped it cleanly."""
        return stop(self.vms, self.state)


def _owner_alive(pid: int | None) -> bool:
    return pid is None or Path(f"/proc/{pid}").exists()


def _keep(
    state_file: Path,
    image_dir: Path,
    labels: list[str],
    *,
    wait_ssh: bool = True,
    boot_options: Boot | None = None,
) -> int:
    from builder.vm.disks import scratch_volumes
    from builder.vm.errors import MachineError
    from builder.vm.image import BootImage
    from builder.vm.machine import Machine, boot

    workdir = state_file.parent / image_dir.name
    extra = boot_options or Boot()
    forwards = FORWARDS | extra.forwards
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        drives = scratch_volumes(labels, workdir)
        options = {
            "host_forwards": forwards,
            "extra_drives": [*drives, *map(Path, extra.drives)],
            "console": True,
            **extra.machine_options(),
        }
        if wait_ssh:
            machine = boot(
                BootImage.from_dir(image_dir), workdir, ssh_timeout=BOOT_TIMEOUT, **options
            )
        else:
            machine = Machine(BootImage.from_dir(image_dir), workdir, **options)
            machine.start()
    except (MachineError, OSError, subprocess.CalledProcessError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        serial = workdir / "serial.log"
        (workdir / "keeper.error").write_text(
            f"{image_dir.name}: the VM did not boot: {first}; serial log: {serial}\n"
        )
        return 1
    try:
        state = VmState(
            tag=image_dir.name,
            image=str(image_dir),
            pid=os.getpid(),
            ports={"ssh": machine.forwarded_port("ssh")}
            | {name: machine.forwarded_port(name) for name in forwards},
            key=str(machine.ssh_key),
            serial_log=str(machine.serial_log),
            workdir=str(workdir),
            started=time.time(),
            ssh_ready_after=machine.ssh_ready_after,
            console=str(machine.console_socket),
            accel=machine.accelerator,
        )
        atomic_write(state_file, (json.dumps(asdict(state), indent=2) + "\n").encode(), 0o600)
        while not stopping and machine.running and _owner_alive(extra.owner):
            time.sleep(0.5)
    finally:
        machine.shutdown()
        state_file.unlink(missing_ok=True)
        # The serial log stays for a look afterwards; the disks and the key go.
        for path in [*drives, machine.ssh_key, machine.ssh_key.with_suffix(".pub")]:
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    state_arg, image_arg, label_args, ssh_first, boot_arg = parse_keeper_argv(sys.argv[1:])
    options = Boot.from_json(json.loads(boot_arg.read_text())) if boot_arg else None
    sys.exit(_keep(state_arg, image_arg, label_args, wait_ssh=ssh_first, boot_options=options))
