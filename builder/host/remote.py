"""Commands on a running host over the system's ssh client: the one command runner.

The release probe, the drift audit, the secrets check and the VM harness
(builder.vm.machine) all reach a host through this one adapter, so they share
its options: batch mode (never a password prompt), a connect timeout, and the
operator's usual ssh configuration unless a config file, key or known-hosts
file is given.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import AuroraError

SSH = "ssh"


class RemoteError(AuroraError):
    """A host could not be reached or a command on it failed."""


class RemoteTimeout(RemoteError, TimeoutError):
    """A command ran past its timeout; the ssh client was killed."""


@dataclass(frozen=True)
class Completed:
    """All a command left: its exit status (255: ssh itself failed), stdout, stderr."""

    status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Remote:
    """Where and as whom to run commands; nothing is connected until a call."""

    host: str
    user: str = "root"
    # None leaves the port to the ssh configuration (an alias's Port, else 22).
    port: int | None = 22
    identity: Path | None = None
    ssh_config: Path | None = None
    known_hosts: Path | None = None
    # ssh's StrictHostKeyChecking (yes, accept-new, no); None keeps the user's setting.
    host_key_checking: str | None = None
    # Seconds for the TCP connection and handshake; None leaves it to the ssh configuration.
    connect_timeout: int | None = 10

    @property
    def name(self) -> str:
        port = f":{self.port}" if self.port not in (None, 22) else ""
        return f"{self.user}@{self.host}{port}"

    def _options(self) -> list[str]:
        """ssh and every option up to the destination (shared by commands and control)."""
        argv = [SSH]
        if self.ssh_config is not None:
            argv += ["-F", str(self.ssh_config)]
        if self.identity is not None:
            argv += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.host_key_checking is not None:
            argv += ["-o", f"StrictHostKeyChecking={self.host_key_checking}"]
        if self.connect_timeout is not None:
            argv += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        argv += ["-o", "LogLevel=ERROR", "-l", self.user]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        return argv

    def argv(self, command: str | None = None, *, tty: bool = False) -> list[str]:
        """The ssh command line; ``command`` is one shell string run by the remote shell."""
        argv = self._options()
        argv += ["-t"] if tty else ["-T", "-o", "BatchMode=yes"]
        argv += ["--", self.host]
        if command is not None:
            argv.append(command)
        return argv

    def call(self, command: str, *, timeout: float = 60) -> Completed:
        """Run ``command`` and return all it left, ssh's own failure (status 255) included:
        for callers that judge the status themselves (polling a booting VM). Only a
        command that outruns ``timeout`` raises (:class:`RemoteTimeout`)."""
        try:
            proc = subprocess.run(
                self.argv(command),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",  # a stray non-UTF-8 byte must not hide the answer
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RemoteTimeout(
                f"{self.name}: {_short(command)!r} did not finish within {timeout:.0f} s "
                "(is the host overloaded? retry, or raise the timeout)"
            ) from None
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    def execute(self, command: str, *, timeout: float = 60) -> tuple[int, str]:
        """Run ``command``; its exit status and stdout. ssh's own failure is an error."""
        done = self.call(command, timeout=timeout)
        if done.status == 255:
            reason = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RemoteError(
                f"{self.name}: ssh failed: {reason[0]} "
                "(check the address, port, key and known_hosts, e.g. with plain ssh)"
            )
        return done.status, done.stdout

    def run(self, command: str, *, timeout: float = 60, check: bool = True) -> str:
        """Run ``command`` and return its stdout; a non-zero exit is an error if ``check``."""
        rc, out = self.execute(command, timeout=timeout)
        if check and rc != 0:
            raise RemoteError(f"{self.name}: {_short(command)!r} exited with status {rc}")
        return out

    def reachable(self, timeout: float = 15) -> bool:
        """Whether ssh gets in right now (for polling after a boot or rebuild)."""
        try:
            return self.execute("true", timeout=timeout)[0] == 0
        except RemoteError:
            return False

    def interactive(self, command: str | None = None) -> int:
        """Hand the terminal to ssh (a login shell, or ``command`` with a TTY)."""
        argv = self.argv(command, tty=True)
        return subprocess.call(argv, env=os.environ.copy())

    def stop_master(self, timeout: float = 10) -> None:
        """Stop the connection master a ControlMaster configuration started, so no ssh
        process outlives the host (a no-op when none runs)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [*self._options(), "-O", "exit", "--", self.host],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
            )  # fmt: skip


def _short(command: str, limit: int = 60) -> str:
    text = " ".join(shlex.split(command)) if command.count("'") % 2 == 0 else command
    return text if len(text) <= limit else text[: limit - 1] + "…"
