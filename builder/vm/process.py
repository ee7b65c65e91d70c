"""The QEMU process on the build host: the loopback ports it binds, and its tie to
the process that started it, so a killed test run leaves no VM spinning."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - non-glibc hosts
    _prctl = None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive its parent (QEMU, a test
    daemon): the kernel SIGKILLs it when the starting *thread* exits."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


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
