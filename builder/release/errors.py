"""The release's errors, by what state they leave the server in.

ReleaseError (and NotAttested): refused or failed before the server changed
(exit 1). ReleaseFailed: the new image failed, the automatic rollback brought
the previous one back healthy (exit 3). ServerBroken: the server is not
healthy after the command; the message says on which image and in which Nova
state (exit 4). The last two carry the Outcome, so the CLI prints the attempts
also when the release failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from builder.errors import EXIT_ROLLED_BACK, EXIT_SERVER_BROKEN, AuroraError

if TYPE_CHECKING:
    from builder.release.target import Outcome


class ReleaseError(AuroraError):
    """A release step was refused or failed before the server was changed."""


class NotAttested(ReleaseError):
    """The image has no passing smoke attestation for its current disk."""


class ReleaseFailed(AuroraError):
    """The new image failed; the previous one was restored and passed its probe."""

    exit_code = EXIT_ROLLED_BACK

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class ServerBroken(AuroraError):
    """The server is not healthy after this command; the message says its state."""

    exit_code = EXIT_SERVER_BROKEN

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome
