"""Reading a VM's serial console log: its tail for error messages, the two things
on it that end a wait early (a kernel panic, sshd failing for good), and the one
that tells the wait for ssh what a silent probe means (sshd started)."""

from __future__ import annotations

import re
from pathlib import Path

from builder.vm.errors import GuestPanic

_PANIC = re.compile(rb"Kernel panic - not syncing[^\n]*")
_SSH_FAILED = re.compile(r"Failed to start sshd?\.service")
_SSH_STARTED = re.compile(r"Started sshd?\.service")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Bytes re-read before the last scan's end, so a line split across two scans is seen whole.
_OVERLAP = 128


def tail_text(path: Path, n: int) -> str:
    """Last ``n`` lines of a console-ish log, decoded leniently, ANSI stripped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"<{path.name} does not exist>"
    text = _ANSI.sub("", data.decode("utf-8", "replace")).replace("\r", "")
    return "\n".join(text.splitlines()[-n:])


class SerialConsole:
    """One machine's console log, read incrementally: each scan reads only what was
    written since the last one (and a little before it), so polling it several times a
    second stays cheap, and records what it saw; each fact sticks once seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        #: The panic line once seen; a panicked guest never recovers, so it sticks.
        self.panic: str | None = None
        self._ssh_failed = False
        self._ssh_started = False

    def tail(self, n: int = 80) -> str:
        return tail_text(self.path, n)

    def _scan(self) -> None:
        """Read what the console wrote since the last scan, once for every question."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                # A log started anew (smaller than what was read) is read from its start.
                start = max(0, self._offset - _OVERLAP) if size >= self._offset else 0
                f.seek(start)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset = start + len(chunk)
        if self.panic is None and (found := _PANIC.search(chunk)):
            self.panic = found.group().decode("utf-8", "replace").strip()
        text = _ANSI.sub("", chunk.decode("utf-8", "replace"))
        self._ssh_failed = self._ssh_failed or _SSH_FAILED.search(text) is not None
        self._ssh_started = self._ssh_started or _SSH_STARTED.search(text) is not None

    def panicked(self) -> bool:
        """Whether a kernel panic has appeared on the console.

        With ``-no-reboot`` and the default ``panic=0`` a panicked guest just
        sits there, so without this every wait would run to its full timeout.
        """
        if self.panic is None:
            self._scan()
        return self.panic is not None

    def check_panic(self) -> None:
        """Raise :class:`GuestPanic` (the panic line, the console's last 40 lines) once
        the guest panicked: every liveness check of a VM ends with this one."""
        if self.panicked():
            raise GuestPanic(
                f"guest kernel panicked: {self.panic}\n"
                f"--- serial (last 40 lines) ---\n{self.tail(40)}"
            )

    def ssh_failed(self) -> bool:
        """Whether systemd reported that the ssh service failed to start."""
        self._scan()
        return self._ssh_failed

    def ssh_started(self) -> bool:
        """Whether systemd reported that the ssh service started (its status line)."""
        self._scan()
        return self._ssh_started
