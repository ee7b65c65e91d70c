"""Errors the CLI reports as one line and an exit status, never a traceback.

One tree, one root::

    AuroraError (exit 1)          a failure the operator can fix
    ├── SpecError (exit 2)        the host spec is invalid; carries every problem
    │   └── yaml_lines.SpecSyntaxError   not well-formed YAML
    ├── BuildError, UnknownTag, StoreError, ...
    └── (each module's own errors subclass AuroraError)

A spec error holds one ``SpecProblem`` per mistake, so a spec with five
mistakes costs one run, not five (`aurora-image validate --json` lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class AuroraError(Exception):
    """A failure the operator can fix; the message says what and how."""

    exit_code = 1


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

    exit_code = 2

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
