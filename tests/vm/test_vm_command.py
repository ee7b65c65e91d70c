"""`aurora-image ssh -- CMD` and `vm --console` on a kept VM, as an operator runs them.

The kept VM is the session's own (tests/vm/conftest.py boots it through
builder.vm.session.start, the code path of `aurora-image vm --keep`, with its
state in the session's private AURORA_CACHE), so this needs no boot of its own:
the CLI runs in subprocesses without a terminal, the console through a
pseudo-terminal as an operator's terminal would. `vm --stop` powers this VM off
for test_immutable's reboot, which asserts what it leaves behind; `vm --keep`'s
own lines (which image, which volumes, what it prints) are unit-tested in
tests/unit/cli/test_cli_ops.py.
"""

from __future__ import annotations

import json
import os
import pty
import select
import time
from pathlib import Path

from builder.vm import session as vm_session
from builder.vm.session import KeptVm
from tests.vm.conftest import CLI, cli


def console_session(env: dict[str, str], tag: str, timeout: float = 180) -> tuple[int, bytes]:
    """`vm --console TAG` on a pty: wait for the getty's login prompt, press Ctrl-],
    return the exit status and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        os.execvpe(CLI[0], [*CLI, "vm", "--console", tag], env)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while b"login:" not in shown and time.monotonic() < deadline:
            if select.select([fd], [], [], 1.0)[0]:
                try:
                    shown += os.read(fd, 4096)
                except OSError:  # the child is gone
                    break
        os.write(fd, b"\x1d")  # Ctrl-]: leave the console, the VM keeps running
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown


def test_ssh_and_console_reach_the_kept_vm(machine: KeptVm, image_dir: Path, session_vm) -> None:
    env, tag = session_vm.env, image_dir.name
    state_file = vm_session.state_path(vm_session.vms_dir(Path(env["AURORA_CACHE"])), tag)
    recorded = json.loads(state_file.read_text())
    assert recorded["tag"] == tag and recorded["image"] == str(image_dir)
    assert recorded["ports"]["ssh"] == machine.forwarded_port("ssh")
    assert {"http", "https"} <= set(recorded["ports"])  # what `vm --keep` forwards
    assert Path(recorded["serial_log"]).stat().st_size > 0

    shown = cli(env, "ssh", tag, "--", "cat", "/usr/lib/aurora/image.json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tag"] == tag
    # Without a tag the only kept VM is meant; the exit status comes through.
    assert cli(env, "ssh", "--", "exit", "7").returncode == 7

    # The serial console, for when sshd is what broke: the getty answers on it.
    assert Path(recorded["console"]).is_socket()
    rc, shown = console_session(env, tag)
    assert b"login:" in shown, shown[-2000:]
    assert rc == 0 and b"still running" in shown, shown[-2000:]
    assert cli(env, "ssh", tag, "--", "true").returncode == 0  # leaving did not stop it
