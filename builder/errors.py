"""The one error tree of builder/ and the exit statuses `aurora-image` ends with.

Every error a command can meet is an ``AuroraError``: the CLI (builder.cli.main)
prints it as one line, ``aurora-image: <what failed and the fix>``, never a
traceback (``--debug`` shows one), and exits with the class's ``exit_code``.
A module raises its own subclass; adding one means adding it here too (a
test, tests/unit/cli/test_errors.py, compares this drawing with the classes;
``(TimeoutError)`` names a second base, ``[exit N]`` an exit code of its own)::

    AuroraError [exit 1]                    builder/errors.py
    ├── SpecError [exit 2]                  builder/errors.py
    │   └── SpecSyntaxError                 builder/spec/yaml_lines.py
    ├── ReferenceError                      builder/spec/reference.py
    ├── ExplainError                        builder/render/explain.py
    ├── BuildError                          builder/errors.py
    ├── UnknownTag                          builder/errors.py
    ├── StoreError                          builder/errors.py
    ├── DebStoreError                       builder/image/debstore.py
    ├── ContainerError                      builder/image/root.py
    ├── RetryTimeout (TimeoutError)         builder/retry.py
    ├── MachineError                        builder/vm/errors.py
    │   ├── QemuExited                      builder/vm/errors.py
    │   ├── GuestPanic                      builder/vm/errors.py
    │   ├── BootTimeout (TimeoutError)      builder/vm/errors.py
    │   ├── CommandTimeout (TimeoutError)   builder/vm/errors.py
    │   ├── CommandFailed                   builder/vm/errors.py
    │   └── UnitFailed                      builder/vm/errors.py
    ├── VmError                             builder/vm/session.py
    ├── ConsoleError                        builder/vm/console.py
    ├── RemoteError                         builder/host/remote.py
    │   └── RemoteTimeout (TimeoutError)    builder/host/remote.py
    ├── AuditError                          builder/host/audit.py
    ├── HostKeyError                        builder/host/probe.py
    ├── CloudError                          builder/release/cloud.py
    │   ├── CloudUnreachable                builder/release/cloud.py
    │   ├── ImageNotFound                   builder/release/cloud.py
    │   └── ServerNotFound                  builder/release/cloud.py
    ├── MetadataError                       builder/release/meta.py
    ├── LiveError                           builder/release/live.py
    ├── OverlayError                        builder/release/overlay.py
    ├── SignatureError                      builder/release/signing.py
    ├── ReleaseError                        builder/release/errors.py
    │   └── NotAttested                     builder/release/errors.py
    ├── PolicyRefused [exit 6]              builder/release/policy.py
    ├── LeaseHeld [exit 5]                  builder/release/lease.py
    ├── ReleaseFailed [exit 3]              builder/release/errors.py
    └── ServerBroken [exit 4]               builder/release/errors.py

The exit statuses are named below (``EXIT_*``; ``EXIT_STATUS`` says what each
means, and docs/reference/commands.md shows it). A spec error holds one
``SpecProblem`` per mistake, so a spec with five mistakes costs one run, not
five (`aurora-image validate --json` lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SPEC = 2
EXIT_ROLLED_BACK = 3
EXIT_SERVER_BROKEN = 4
EXIT_LEASE_HELD = 5
EXIT_POLICY_REFUSED = 6
EXIT_INTERRUPTED = 130

EXIT_STATUS: dict[int, str] = {
    EXIT_OK: "done (for a check: nothing differs, nothing is missing)",
    EXIT_FAILED: "an error the message explains (`AuroraError`), or a check found something: "
    "`audit` drift, `diff --overlay` keys outside the overlay, `verify` a differing disk, "
    "`render --diff --exit-code` changed files, `status` an unreadable server, "
    "`secrets check` a missing credential",
    EXIT_SPEC: "the spec or the command line is wrong (`SpecError`, or a usage error): "
    "nothing was done",
    EXIT_ROLLED_BACK: "the release failed; the automatic rollback brought the previous image "
    "back healthy (`ReleaseFailed`)",
    EXIT_SERVER_BROKEN: "the server is not healthy; the message says on which image and in "
    "which Nova state (`ServerBroken`)",
    EXIT_LEASE_HELD: "another operator holds the server's lease (`LeaseHeld`; "
    "`--break-lease` if their run is dead)",
    EXIT_POLICY_REFUSED: "the release policy refused the image for this target "
    "(`PolicyRefused`: staging soak, approvals)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
"""Every exit status of `aurora-image`, with what it means."""


class AuroraError(Exception):
    """A failure the operator can fix; the message says what and how."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class SpecProblem:
    """One mistake in a spec: where it is, which key, what is wrong and the fix."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        return where + (f"{self.key}: {self.message}" if self.key else self.message)

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "key": self.key, "message": self.message}


class SpecError(AuroraError):
    """The host spec is invalid: nothing was rendered or built.

    ``problems`` lists every mistake found (one line each in ``str``); an error
    raised with only a message (a missing file, a bad flag) has none.
    """

    exit_code = EXIT_SPEC

    def __init__(self, message: str = "", problems: Sequence[SpecProblem] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message or "\n".join(str(p) for p in self.problems))

    def to_json(self) -> dict[str, object]:
        errors = [p.to_json() for p in self.problems] or [{"message": str(self)}]
        return {"valid": False, "errors": errors}


class BuildError(AuroraError):
    """An external build step (mkosi, uv, pip) failed; its log says why."""


class UnknownTag(AuroraError):
    """The named image is neither a tag in the store nor an image directory."""


class StoreError(AuroraError):
    """A stored image does not match its manifest, so nothing may vouch for it."""
