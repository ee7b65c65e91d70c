"""Boot the image once per session under QEMU and hand tests a machine and a
testinfra host on it.

The session's VM is a kept VM, started as `aurora-image vm --keep` starts one
(builder.vm.session.start: a keeper process owns QEMU, its state is recorded in
a private AURORA_CACHE), with a builder.vm.session.Boot for what the suite adds;
the tests drive it as a builder.vm.session.KeptVm. So the operator's commands
on a kept VM (`aurora-image ssh`, `vm --console`, `vm --stop`) are proven on
this VM (test_vm_command.py; the stop is test_immutable's reboot) and need no
boot of their own: the smoke and flows suites boot twice in all.

Which image: the one this run built (tests/image_choice.py: AURORA_IMAGE, else
the tag `make image` recorded), never the newest stored one.
Two blank volumes stand in for /data and /project (ext4, labelled as the spec's
mounts expect), so the storage layout is created on real mounts as on JASMIN;
a third, labelled BLANK_VOLUME and mounted by nobody, is the wrong or new volume
the data-flow tests swap in over /data. The data-flow tests (test_flows.py)
change timers, credentials and the guest's routes, so they run after the rest;
test_immutable.py runs last: it reboots the session's VM (its disk is a qcow2
overlay over the image, its SMBIOS UUID fixed), the suite's second and last boot.

When the session booted an image, its end writes `attestation.json` into the
image directory (builder.image.store): the disk digest and every test's outcome, so
the release tooling can tell a tested image from an untested one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import testinfra

from builder.errors import AuroraError
from builder.image.logs import write_smoke_log
from builder.image.store import DISK, FAILING, is_image, write_attestation
from builder.release import signing
from builder.spec.model import HostSpec, load_spec
from builder.vm import session as vm_session
from builder.vm.disks import make_overlay, scratch_volumes
from builder.vm.image import BootImage
from builder.vm.session import KeptVm
from tests.image_choice import chosen_image
from tests.mailbox import Mailbox, running_mailbox

SPEC = Path(__file__).resolve().parents[2] / "hosts" / "aurora.yml"
BOOT_FINISHED = (
    "systemctl is-system-running --wait; systemctl is-system-running | grep -qv starting"
)
# The default spec mounts its two volumes by these labels.
VOLUMES = ("aurora-data", "aurora-project")
SESSION_UUID = "6f1c2a6e-5b7d-4c1e-9a55-0d2f3b4c5d6e"
# Attached but in no mount of the spec: the volume test_flows swaps in over /data.
BLANK_VOLUME = "aurora-blank"
# Run last, in this order (pytest_collection_modifyitems).
LAST = ("test_flows.py", "test_immutable.py")
# Host ports the tests reach: nginx, and listeners the firewall must (not) let in.
FORWARDS = {"http": 80, "https": 443, "probe8080": 8080, "probe5006": 5006, "probe9100": 9100}
# QEMU's user-mode network shows the host's loopback to the guest as 10.0.2.2.
HOST_FROM_GUEST = "10.0.2.2"
HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "builder.cli.main"]


@dataclass
class _Run:
    """What the attestation needs, gathered while the suite runs."""

    image: Path | None = None
    started: float = 0.0
    accel: str | None = None
    selected: list[str] = field(default_factory=list)
    deselected: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    serial_log: Path | None = None


_run = _Run()


def _ours(item: pytest.Item) -> bool:
    return item.path.is_relative_to(HERE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The data-flow tests near the end (they stop timers and reroute the guest while
    they run), then the reboot (test_immutable): it ends the session's VM."""
    items.sort(key=lambda item: LAST.index(item.path.name) + 1 if _ours(item)
               and item.path.name in LAST else 0)  # fmt: skip


def pytest_collection_finish(session: pytest.Session) -> None:
    _run.selected = [item.nodeid for item in session.items if _ours(item)]


def pytest_deselected(items: list[pytest.Item]) -> None:
    _run.deselected += sum(1 for item in items if _ours(item))


def _outcome(report: pytest.TestReport) -> str | None:
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if xfail:
            return "xfailed" if report.skipped else "xpassed"
        return report.outcome
    if report.failed:
        return "error"
    if report.when == "setup" and report.skipped:
        return "xfailed" if xfail else "skipped"
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Called for this directory's tests only (pytest routes it by path)."""
    outcome = _outcome(report)
    if outcome is not None and _run.outcomes.get(report.nodeid) not in FAILING:
        _run.outcomes[report.nodeid] = outcome
    if report.failed:
        _run.failures[f"{report.nodeid} ({report.when})"] = report.longreprtext


def _keep_log(exitstatus: int) -> None:
    """The run's report and its VM's console beside the image (`aurora-image logs TAG`)."""
    assert _run.image is not None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    lines = [f"smoke suite on {_run.image.name}, finished {stamp}, pytest exit status {exitstatus}"]
    lines += [f"{outcome:8} {nodeid}" for nodeid, outcome in _run.outcomes.items()]
    for what, text in _run.failures.items():
        lines += ["", f"--- {what} ---", text]
    write_smoke_log(_run.image, "\n".join(lines) + "\n", _run.serial_log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Attest the booted image; a partial run that saw no failure proves nothing."""
    if _run.image is None:
        return
    _keep_log(int(exitstatus))
    tests = {nodeid: _run.outcomes.get(nodeid, "not run") for nodeid in _run.selected}
    tests.update(_run.outcomes)
    failed = any(outcome in FAILING for outcome in tests.values())
    # Only the whole suite vouches for an image: every test file of this directory ran.
    files = {nodeid.split("::")[0].rsplit("/", 1)[-1] for nodeid in _run.selected}
    complete = (
        bool(tests)
        and files == {path.name for path in HERE.glob("test_*.py")}
        and _run.deselected == 0
        and "not run" not in tests.values()
        and exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
    )
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    say = terminal.write_line if terminal is not None else print
    if not complete and not failed:
        say(f"attestation: not written for {_run.image.name} (partial run, no failures)")
        return
    try:
        record = write_attestation(
            _run.image,
            passed=complete and not failed,
            tests=tests,
            started=_run.started,
            finished=time.time(),
            accel=_run.accel,
        )
    except AuroraError as exc:
        say(f"attestation: not written: {exc}")
        return
    verdict = "passed" if record.passed else "FAILED"
    say(f"attestation: {_run.image.name} {verdict} ({record.counts['total']} tests)")
    signed = signing.sign_if_configured(_run.image) if record.passed else None
    if signed:
        say(f"attestation: {_run.image.name} {signed}")


@pytest.fixture(scope="session")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as relay:
        yield relay


@pytest.fixture(scope="session")
def image_dir() -> Path:
    path = chosen_image()
    assert is_image(path), f"{path} holds no built image"
    _run.image, _run.started = path, time.time()
    return path


@pytest.fixture(scope="session")
def machine(
    image_dir: Path, tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int]
) -> Iterator[KeptVm]:
    work = tmp_path_factory.mktemp("vm")
    drives = scratch_volumes((*VOLUMES, BLANK_VOLUME), work)
    relay = {
        "host": HOST_FROM_GUEST,
        "port": mailbox[1],
        "from": "aurora@data.gamb2le.co.uk",
        "tls": "off",
    }
    image = BootImage.from_dir(image_dir)
    _session.image_dir, _session.work = image_dir, work
    _session.raw_head = raw_head(image_dir)
    _session.boot = vm_session.Boot(
        forwards=FORWARDS,
        drives=tuple(map(str, drives)),
        credentials={"msmtp.relay": json.dumps(relay)},
        # The guest's disk is a qcow2 overlay with a fixed SMBIOS UUID, as a VM on
        # JASMIN keeps both across reboots: test_immutable (run last) reboots it.
        overlay=str(make_overlay(image, work / "disk.qcow2")),
        uuid=SESSION_UUID,
        owner=os.getpid(),  # a test run that dies takes its VM with it
    )
    # Kept beside the image, booted or not.
    _run.serial_log = vm_session.vms_dir(_session.cache) / image_dir.name / "serial.log"
    vm = _session.start()
    try:
        _run.accel = vm.accel
        yield vm
    finally:
        if _session.current is not None:  # the reboot's VM, if test_immutable left it
            _session.current.shutdown()


def cli(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`aurora-image ARGV` in a subprocess without a terminal, as a script runs it."""
    return subprocess.run(
        [*CLI, *argv], env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def running(pid: int, workdir: str) -> list[str]:
    """Live processes that are the keeper or mention its workdir (QEMU does).
    A reaped-late zombie has an empty command line and does not count."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmdline and (proc.name == str(pid) or workdir in cmdline):
            found.append(cmdline.replace("\0", " ")[:120])
    return found


def left_within(pid: int, workdir: str, seconds: float) -> list[str]:
    """What :func:`running` still finds after up to ``seconds``: the ssh connection
    master that `vm --stop` told to exit goes a moment after it answered."""
    deadline = time.monotonic() + seconds
    while (found := running(pid, workdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


@dataclass(frozen=True)
class Stopped:
    """What `aurora-image vm --stop TAG --json` did to the session's VM, and what it left."""

    result: subprocess.CompletedProcess
    state_file_left: bool
    processes_left: list[str]
    ssh_after: subprocess.CompletedProcess


@dataclass
class _Session:
    """How the session's VM was booted, so that it can be booted again (a reboot)."""

    image_dir: Path | None = None
    work: Path | None = None
    boot: vm_session.Boot | None = None
    raw_head: str = ""
    boots: int = 0
    current: KeptVm | None = None

    @property
    def cache(self) -> Path:
        """The AURORA_CACHE the session's kept VM is recorded in (a second one for
        the reboot, so the first boot's console log stays)."""
        assert self.work is not None, "no session VM was booted"
        return self.work / ("cache" if self.boots < 2 else f"cache{self.boots}")

    @property
    def env(self) -> dict[str, str]:
        """The CLI's environment: the session's cache, so `aurora-image ssh` finds its VM."""
        return {**os.environ, "AURORA_CACHE": str(self.cache), "AURORA_QUIET": "1"}

    def start(self) -> KeptVm:
        """Boot the session's disk through the code path `aurora-image vm --keep` takes."""
        assert self.image_dir is not None and self.work is not None and self.boot is not None
        self.boots += 1
        vms = vm_session.vms_dir(self.cache)
        state = vm_session.start(vms, self.image_dir, [], boot=self.boot)
        self.current = KeptVm(vms, state)
        if self.boot.ssh_key is None:  # the same root key for the reboot
            key = self.work / "id_ed25519"
            shutil.copy2(self.current.ssh_key, key)
            shutil.copy2(self.current.ssh_key.with_suffix(".pub"), key.with_suffix(".pub"))
            self.boot = replace(self.boot, ssh_key=str(key))
        return self.current

    def stop_with_cli(self, machine: KeptVm) -> Stopped:
        """Power the session's VM off as an operator does: `aurora-image vm --stop TAG`."""
        tag = machine.state.tag
        result = cli(self.env, "vm", "--stop", tag, "--json", timeout=180)
        stopped = Stopped(
            result=result,
            state_file_left=vm_session.state_path(machine.vms, tag).exists(),
            processes_left=left_within(machine.state.pid, str(machine.workdir), 10),
            ssh_after=cli(self.env, "ssh", tag, "--", "true"),
        )
        if stopped.processes_left:  # the test fails on it; the VM must not outlive it
            machine.shutdown()
        self.current = None
        return stopped

    def reboot(self, machine: KeptVm) -> tuple[Stopped, KeptVm]:
        """Stop the session's VM with the CLI and boot its disk again, as the same
        machine (overlay, UUID, volumes, credentials, root's key)."""
        stopped = self.stop_with_cli(machine)
        return stopped, self.start()


_session = _Session()


def raw_head(image_dir: Path) -> str:
    """sha256 of the image's first 16 MiB (GPT and the ESP): that the image is never written."""
    with (image_dir / DISK).open("rb") as disk:
        return hashlib.sha256(disk.read(1 << 24)).hexdigest()


@pytest.fixture(scope="session")
def session_vm(machine: KeptVm) -> _Session:
    return _session


@pytest.fixture(scope="session")
def host(machine: KeptVm) -> testinfra.host.Host:
    return testinfra.get_host("ssh://aurora-vm", ssh_config=str(machine.ssh_config))


@pytest.fixture(scope="session")
def spec() -> HostSpec:
    return load_spec(SPEC)


@pytest.fixture(scope="session")
def booted(machine: KeptVm) -> KeptVm:
    """The machine once boot has finished, whatever its outcome."""
    machine.wait_until_succeeds(BOOT_FINISHED, timeout=900)
    return machine
