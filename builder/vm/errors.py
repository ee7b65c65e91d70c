"""What the QEMU harness raises about a VM: one branch of the tree in builder.errors.

Every failure carries what is needed to debug it without a rerun (QEMU's log
and the serial console tail, a command's output, a failed unit's status and
journal), because a VM test that fails under TCG costs minutes to repeat.
"""

from __future__ import annotations

from builder.errors import AuroraError


class MachineError(AuroraError):
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
