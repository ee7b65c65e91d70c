"""The command half of the Machine API: run shell commands in a guest and poll its
state (a command, a unit, a port) until a deadline, NixOS-test-driver style.

Commands go through builder.host.remote.Remote, the one command runner. A
subclass says how to reach the guest and whether it is still alive;
builder.vm.machine.Machine, which boots it under QEMU, is the one there is.
Every wait checks liveness on each attempt, so a dead or panicked VM ends it
at once instead of at its timeout.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from builder.host.remote import Completed, Remote, RemoteTimeout
from builder.retry import retry
from builder.vm.errors import CommandFailed, CommandTimeout, UnitFailed

log = logging.getLogger(__name__)

T = TypeVar("T")


def loopback_remote(port: int, key: Path) -> Remote:
    """A guest reached on a forwarded loopback port with its per-run key, for tools
    that take any host (audit, probe, `aurora-image ssh`). Its host keys are made at
    first boot, so there is nothing to check them against."""
    return Remote(
        host="127.0.0.1",
        port=port,
        identity=key,
        known_hosts=Path(os.devnull),
        host_key_checking="no",
    )


def port_named(ports: Mapping[str, int], name: str) -> int:
    """The loopback host port forwarded to the guest port registered as ``name``."""
    try:
        return ports[name]
    except KeyError:
        raise KeyError(f"no forward named {name!r}; have {sorted(ports)}") from None


class _NotReady(Exception):
    """A poll attempt saw a transient state (the retry loop swallows it)."""


class Guest:
    """Commands in a running guest and waits on its state."""

    def _guest(self, connect_timeout: int | None = None) -> Remote:
        """The runner that reaches the guest (raises while there is none)."""
        raise NotImplementedError

    def check_alive(self) -> None:
        """Raise a :class:`builder.vm.errors.MachineError` if the guest is gone for good."""
        raise NotImplementedError

    def _ssh(self, cmd: str, timeout: float, *, connect_timeout: int | None = None) -> Completed:
        try:
            return self._guest(connect_timeout).call(cmd, timeout=timeout)
        except RemoteTimeout as exc:
            raise CommandTimeout(f"command {cmd!r} timed out after {timeout:g}s") from exc

    def execute(self, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run a shell command in the guest; returns ``(exit status, stdout)``.

        Status 255 is what ssh itself returns when it cannot connect.
        """
        r = self._ssh(cmd, timeout)
        if r.stderr.strip():
            log.debug("%s stderr: %s", cmd, r.stderr.rstrip())
        return r.status, r.stdout

    def succeed(self, cmd: str, timeout: float = 120.0) -> str:
        """Run ``cmd``, return stdout; raise :class:`CommandFailed` on non-zero status."""
        r = self._ssh(cmd, timeout)
        if r.status != 0:
            raise CommandFailed(cmd, r.status, r.stdout, r.stderr)
        return r.stdout

    def fail(self, cmd: str, timeout: float = 120.0) -> str:
        """Run ``cmd`` that must fail (and not merely because ssh could not connect)."""
        r = self._ssh(cmd, timeout)
        if r.status == 0 or r.status == 255:
            raise CommandFailed(cmd, r.status, r.stdout, r.stderr)
        return r.stdout

    # -- waiting ----------------------------------------------------------

    def _poll(
        self, attempt: Callable[[], T], timeout: float, what: str, interval: float = 1.0
    ) -> T:
        """Run ``attempt`` every ``interval`` s until it returns something truthy. Each round
        first checks that the guest is alive, so a dead VM ends the wait at once;
        ``attempt`` says "not yet" by raising :class:`_NotReady` (a command that
        times out counts as not yet too)."""

        def checked() -> T:
            self.check_alive()
            return attempt()

        return retry(
            checked,
            timeout=timeout,
            interval=interval,
            what=what,
            retry_on=(_NotReady, CommandTimeout),
        )

    def wait_until_succeeds(self, cmd: str, timeout: float = 120.0) -> str:
        """Poll ``cmd`` until it exits 0; return its stdout."""

        def attempt() -> str | bool:
            r = self._ssh(cmd, timeout=max(timeout, 1.0))
            if r.status == 0:
                return r.stdout or True
            raise _NotReady(f"rc={r.status} {r.stderr.strip()}".strip())

        out = self._poll(attempt, timeout, f"{cmd!r} to succeed")
        return out if isinstance(out, str) else ""

    def wait_for_unit(self, unit: str, timeout: float = 300.0) -> None:
        """Poll until ``unit`` is active; raise :class:`UnitFailed` as soon as it fails."""
        q = shlex.quote(unit)

        def attempt() -> bool:
            rc, out = self.execute(f"systemctl is-active {q}", timeout=60)
            state = out.strip()
            if state == "active":
                return True
            if state == "failed":
                _, status = self.execute(f"systemctl status --no-pager --full {q} 2>&1")
                _, journal = self.execute(f"journalctl --no-pager -b -n 60 -u {q} 2>&1")
                raise UnitFailed(unit, status, journal)
            raise _NotReady(f"{unit} is {state or 'unknown'} (rc {rc})")

        self._poll(attempt, timeout, f"unit {unit}")

    def wait_for_open_port(self, port: int, timeout: float = 120.0) -> None:
        """Poll until something in the guest listens on TCP ``port``."""

        def attempt() -> bool:
            rc, out = self.execute(f"ss -Htln 'sport = :{int(port)}'", timeout=60)
            if rc == 0 and out.strip():
                return True
            raise _NotReady(f"nothing listening on {port} (rc {rc})")

        self._poll(attempt, timeout, f"guest TCP port {port}")
