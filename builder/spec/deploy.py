"""Where releases of the image go (JASMIN Cloud servers, targets, gates): read by the
release commands only, never by the image.

Part of the model (builder.spec.model composes HostSpec from these); each field's
docstring is its line in docs/reference/spec.md.
"""

# Mutable defaults are safe here: pydantic copies them per instance (ruff cannot
# see across modules that Model is a pydantic model).
# ruff: noqa: RUF012

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from builder.spec.validators import Host, Model, Name, TimeSpan, UserName, Word

ChangeCategory = Literal[
    "source-sync", "gws", "nginx-tls", "firewall", "credentials", "alerting", "app", "packages"
]


class DeployTarget(Model):
    """One server a release goes to (e.g. `staging`, `production`)."""

    server: Word
    """Name (or id) of the Nova server this target rebuilds."""
    role: Literal["staging", "production"]
    """`staging` takes any attested image; `production` only one whose inputs ran healthy on
    staging for `deploy.staging_soak`, and with the approvals `deploy.approval_required` asks."""
    cloud: Word | None = None
    """Its `clouds.yaml` entry; unset: `deploy.cloud`."""
    spec: str | None = None
    """The spec this target's image is built from, relative to this spec (e.g. `staging.yml`, an
    overlay of it); unset: this spec."""
    address: Host | None = None
    """Address the health probe uses; unset: the server's address from Nova."""


class Deploy(Model):
    """Where releases of this image go on JASMIN Cloud, and how the probe reaches it.

    Not part of the image's behaviour: the release tooling reads it, and every
    field can be overridden on the command line.
    """

    cloud: Word | None = None
    """The default `clouds.yaml` entry; `--cloud`, `OS_CLOUD` or `OS_AUTH_URL` (the `OS_*`
    variables) take precedence, as with the openstack CLI."""
    server: Word = "aurora"
    """Name (or id) of the Nova server releases rebuild."""
    address: Host | None = None
    """Address the health probe uses; unset: the server's address from Nova."""
    ssh_user: UserName = "root"
    """User the probe, `audit` and `secrets check` log in as."""
    ssh_port: Annotated[int, Field(ge=1, le=65535)] = 22
    """SSH port the probe uses."""
    http_port: Annotated[int, Field(ge=1, le=65535)] = 80
    """HTTP port the probe checks the dashboard on."""
    https_port: Annotated[int, Field(ge=1, le=65535)] = 443
    """HTTPS port the probe checks the dashboard on."""
    probe_timeout: TimeSpan = "10min"
    """How long the probe waits for the rebuilt server to answer."""
    keep_images: Annotated[int, Field(ge=2)] = 3
    """Images kept in Glance by the prune; never fewer than the live one and the one before it."""
    targets: dict[Name, DeployTarget] = {}
    """Named release targets (`promote --target NAME`); unset: the one server above."""
    allowed_signers: str | None = None
    """OpenSSH allowed_signers file (relative to this spec) whose keys may sign releases; set, every
    promote and rollback verifies the image's signature first. A production target needs it."""
    lease_ttl: TimeSpan = "3h"
    """How long a promote or rollback holds the server's lease (one operator at a time) before
    another operator may take it over."""
    staging_soak: TimeSpan = "24h"
    """How long the same inputs must have run healthy on a staging target before a production
    target accepts them (`--force --reason` overrides, recorded)."""
    soak_window: TimeSpan = "30min"
    """How long the probe keeps watching a rebuilt server before the release counts as done; a
    failure within it rolls back by itself."""
    approval_required: list[ChangeCategory] = []
    """Change categories a production promote needs `--approve CATEGORY` for."""
