"""`aurora-image vm --keep`, `ssh -- CMD`, `vm --console` and `vm --stop`, as an
operator runs them.

One extra boot of the image under test, through the real CLI in subprocesses
without a terminal (so `vm --keep` boots, reports and returns); the console is
driven through a pseudo-terminal, as an operator's terminal would. The kept VM's
state lives under a private AURORA_CACHE, away from any operator's VMs.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "builder.cli.main"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "AURORA_CACHE": str(tmp_path / "cache"), "AURORA_QUIET": "1"}


def run(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *argv], env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def running(pid: str, workdir: str) -> list[str]:
    """Live processes that are the keeper or mention its workdir (QEMU does).
    A reaped-late zombie has an empty command line and does not count."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmdline and (proc.name == pid or workdir in cmdline):
            found.append(cmdline.replace("\0", " ")[:120])
    return found


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


@pytest.fixture
def kept(image_dir: Path, env: dict[str, str]) -> Iterator[dict]:
    started = run(env, "vm", str(image_dir), "--keep", "--json", timeout=1200)
    assert started.returncode == 0, started.stderr
    state = json.loads(started.stdout)
    try:
        yield state
    finally:
        run(env, "vm", "--stop", state["tag"], timeout=180)


def test_keep_ssh_stop(kept: dict, image_dir: Path, env: dict[str, str]) -> None:
    tag = kept["tag"]
    assert tag == image_dir.name
    assert Path(kept["serial_log"]).stat().st_size > 0
    state_file = Path(env["AURORA_CACHE"]) / "vms" / f"{tag}.json"
    assert json.loads(state_file.read_text())["ports"] == kept["ports"]

    shown = run(env, "ssh", tag, "--", "cat", "/usr/lib/aurora/image.json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tag"] == tag
    # Without a tag the only kept VM is meant; the exit status comes through.
    assert run(env, "ssh", "--", "exit", "7").returncode == 7

    # The serial console, for when sshd is what broke: the getty answers on it.
    assert Path(kept["console"]).is_socket()
    rc, shown = console_session(env, tag)
    assert b"login:" in shown, shown[-2000:]
    assert rc == 0 and b"still running" in shown, shown[-2000:]
    assert run(env, "ssh", tag, "--", "true").returncode == 0  # leaving did not stop it

    stopped = run(env, "vm", "--stop", tag, "--json", timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"tag": tag, "stopped": True, "forced": False}
    assert not state_file.exists()
    assert not running(str(kept["pid"]), kept["workdir"])
    gone = run(env, "ssh", tag, "--", "true")
    assert gone.returncode == 1 and f"no VM of {tag} is running" in gone.stderr
