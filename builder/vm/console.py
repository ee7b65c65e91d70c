"""Attach the terminal to a VM's serial console (QEMU's console socket).

For when sshd is what broke: the getty on ttyS0 still answers. The terminal
is put in raw mode so keys (Ctrl-C, arrows) reach the guest, and Ctrl-]
leaves, as in telnet and `virsh console`. Without a terminal (a pipe) the
bytes are bridged as they come and end of input leaves.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

from builder.errors import AuroraError

ESCAPE = b"\x1d"  # Ctrl-]


class ConsoleError(AuroraError):
    """The console socket cannot be reached (the VM is gone, or another client holds it)."""


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """The terminal in raw mode while attached, restored whatever happens."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(
    path: Path, *, stdin: int = 0, stdout: int = 1, banner: str = "", wake: bool = True
) -> str:
    """Bridge ``stdin``/``stdout`` and the console at ``path`` until Ctrl-], end of
    input or the VM going away; returns which of those ended it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise ConsoleError(f"cannot attach to the console {path}: {exc.strerror or exc}") from None
    with sock, _raw(stdin):
        if banner:
            os.write(stdout, banner.replace("\n", "\r\n").encode())
        if wake:
            sock.sendall(b"\r")  # the getty answers with a fresh login prompt
        while True:
            ready, _, _ = select.select([sock, stdin], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return "the VM went away"
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data:
                    return "end of input"
                before, escape, _ = data.partition(ESCAPE)
                if before:
                    sock.sendall(before)
                if escape:
                    return "detached"
