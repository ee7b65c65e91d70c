"""Errors the CLI reports as one line and an exit status, never a traceback."""


class AuroraError(Exception):
    """A failure the operator can fix; the message says what and how."""

    exit_code = 1


class SpecError(AuroraError):
    """The host spec is invalid: nothing was rendered or built."""

    exit_code = 2


class BuildError(AuroraError):
    """An external build step (mkosi, uv, pip) failed; its log says why."""


class UnknownTag(AuroraError):
    """The named image is neither a tag in the store nor an image directory."""


class StoreError(AuroraError):
    """A stored image does not match its manifest, so nothing may vouch for it."""
