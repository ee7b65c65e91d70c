"""The Machine API's commands and waits (builder.vm.guest) over the one runner,
builder.host.remote.Remote, against a real sshd on loopback instead of a guest.

The machine's own rendered ssh config points at the sshd, so what is tested is
the harness's real path: ``ssh -F ssh_config aurora-vm`` through its
ControlMaster, stopped again at shutdown. A ``sleep`` plays the QEMU process.
"""

from __future__ import annotations

import getpass
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.vm.argv import render_ssh_config
from builder.vm.errors import CommandFailed, CommandTimeout, MachineError
from builder.vm.image import BootImage
from builder.vm.machine import Machine
from tests.sshd import SshServer, missing_tools, running_sshd

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"missing {missing_tools()}"),
    # The harness logs in as root, as in the guest; sshd here admits only the test's user.
    pytest.mark.skipif(getpass.getuser() != "root", reason="the harness's ssh user is root"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as (one,):
        yield one


@pytest.fixture
def machine(server: SshServer, tmp_path: Path) -> Iterator[Machine]:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"")
    m = Machine(BootImage.uefi(disk), tmp_path / "w")
    m.workdir.mkdir()
    m.ssh_config.write_text(
        render_ssh_config(
            port=server.port, identity_file=server.client_key, control_path=m.control_path
        )
    )
    stand_in = subprocess.Popen(["sleep", "120"])  # plays the running QEMU
    m._proc = stand_in  # type: ignore[assignment]
    m._ports = {"ssh": server.port}  # what start() forwards to the guest's sshd
    try:
        yield m
    finally:
        m._close_ssh_master()
        stand_in.kill()
        stand_in.wait()


def test_commands_run_through_the_machines_ssh_config(machine: Machine) -> None:
    assert machine.succeed("echo hello") == "hello\n"
    assert machine.control_path.is_socket()  # later commands reuse one connection
    assert machine.execute("echo out; exit 4") == (4, "out\n")
    assert machine.fail("echo refused; exit 1") == "refused\n"


def test_succeed_and_fail_report_the_opposite_outcome(machine: Machine) -> None:
    expected = r"exited with 3\n--- stdout ---\nso\n--- stderr ---\nse"
    with pytest.raises(CommandFailed, match=expected):
        machine.succeed("echo so; echo se >&2; exit 3")
    with pytest.raises(CommandFailed) as info:
        machine.fail("true")
    assert info.value.rc == 0


def test_a_command_past_its_timeout_is_a_command_timeout(machine: Machine) -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"'sleep 30' timed out after 1s"):
        machine.execute("sleep 30", timeout=1)
    assert time.monotonic() - start < 10


def test_waits_poll_until_the_state_is_reached(machine: Machine, tmp_path: Path) -> None:
    machine.wait_for_ssh(timeout=30)
    flag = tmp_path / "flag"
    writer = subprocess.Popen(["sh", "-c", f"sleep 1.5; echo ready > {flag}"])
    start = time.monotonic()
    assert machine.wait_until_succeeds(f"cat {flag}", timeout=30) == "ready\n"
    assert time.monotonic() - start >= 1.0
    writer.wait()


def test_shutdown_stops_the_control_master(machine: Machine) -> None:
    machine.succeed("true")
    assert machine.control_path.is_socket()
    machine._close_ssh_master()
    deadline = time.monotonic() + 10
    while machine.control_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not machine.control_path.exists()


def test_no_command_before_start(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"")
    with pytest.raises(MachineError, match="not started"):
        Machine(BootImage.uefi(disk), tmp_path / "w").succeed("true")


def test_the_ssh_probe_tells_a_banner_from_a_hang_up_and_from_silence(
    server: SshServer,
) -> None:
    """wait_for_ssh starts ssh on a banner only: QEMU's user network accepts on the host
    before the guest listens, so a bare connect proves nothing."""
    import socket
    import threading

    from builder.vm.machine import ssh_banner

    assert ssh_banner(server.port) == "banner"  # a real sshd
    hang_up, silent = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    port = hang_up.getsockname()[1]

    def serve() -> None:
        conn, _ = hang_up.accept()
        conn.close()  # what slirp does when nothing listens in the guest
        held.append(silent.accept()[0])  # accepted, never answered

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ssh_banner(port) == "closed"
        start = time.monotonic()
        assert ssh_banner(silent.getsockname()[1], timeout=0.5) == "silent"
        assert time.monotonic() - start < 5
    finally:
        thread.join(10)
        for sock in (hang_up, silent, *held):
            sock.close()


def test_ssh_waits_for_a_banner_and_tries_silence_only_once_sshd_started() -> None:
    """A guest without an address yet is silent; ssh started then would wait inside
    slirp for its whole timeout. Silence counts once the console says sshd started
    (a slow greeting), or after many probes when the console says nothing."""
    from builder.vm.machine import SILENT_BLIND, SILENT_PROBES, ProbeRun

    run = ProbeRun()
    assert not any(run.worth_ssh("silent", sshd_started=False) for _ in range(SILENT_PROBES))
    assert not run.worth_ssh("closed", sshd_started=True)
    assert [run.worth_ssh("silent", sshd_started=True) for _ in range(SILENT_PROBES)] == [
        *[False] * (SILENT_PROBES - 1),
        True,
    ]
    # the count starts again after an attempt, and a refused probe breaks a run
    assert not run.worth_ssh("silent", sshd_started=True)
    assert not run.worth_ssh("closed", sshd_started=True)
    assert run.worth_ssh("banner", sshd_started=False)
    run = ProbeRun()
    blind = [run.worth_ssh("silent", sshd_started=False) for _ in range(SILENT_BLIND)]
    assert blind == [*[False] * (SILENT_BLIND - 1), True]


def test_the_console_is_read_once_per_scan_for_every_question(tmp_path: Path) -> None:
    """sshd's start and failure are read from what the console wrote since the last
    scan (a status line split across two scans, with its colour codes, still counts),
    each fact sticks, and a log started anew is read from its start."""
    from builder.vm.serial import SerialConsole

    log = tmp_path / "serial.log"
    console = SerialConsole(log)
    assert not console.ssh_started()  # no log yet
    log.write_bytes(b"[  OK  ] Reached target basic.target.\n[  OK  ] Started \x1b[0;1;39mss")
    assert not console.ssh_started() and not console.ssh_failed()
    with open(log, "ab") as f:
        f.write(b"h.service\x1b[0m - OpenBSD Secure Shell server.\n" + b"x" * 4096 + b"\n")
    assert console.ssh_started() and not console.ssh_failed()
    with open(log, "ab") as f:
        f.write(b"[FAILED] Failed to start \x1b[0;1;39mssh.service\x1b[0m.\n")
    assert console.ssh_failed() and console.ssh_started()  # both stick
    fresh = SerialConsole(log)
    log.write_bytes(b"x" * 8192 + b"\n")
    assert not fresh.panicked() and not fresh.ssh_started()
    log.write_bytes(b"[ 1.0] Kernel panic - not syncing: VFS\n")  # shorter: a new log
    assert fresh.panicked() and fresh.panic == "Kernel panic - not syncing: VFS"
