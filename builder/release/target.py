"""What a release is aimed at (Target) and what it reports (Attempt, Outcome).

Target carries the adapters a release runs through: the cloud, the probe (a
test injects a stub), the hook before a rollback, and `note`, where the
release tells the operator what it decided (the CLI prints those lines to
stderr; silent otherwise). Outcome is what the CLI prints as text or JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.host.probe import ProbeReport
from builder.release.cloud import Cloud, GlanceImage, Server


def silent(text: str) -> None:
    """The default `note`: a library caller that wants the lines passes its own."""


@dataclass(frozen=True)
class Target:
    """The server a release goes to, how the probe reaches it, and the local image store."""

    cloud: Cloud
    server: str
    hostname: str
    # images/<tag>/ as the CLI resolved it (Paths.images): promote's image, the probe's manifest.
    store: Path
    address: str | None = None
    ssh_user: str = "root"
    ssh_port: int = 22
    http_port: int = 80
    https_port: int = 443
    identity: Path | None = None
    ssh_config: Path | None = None
    probe_timeout: float = 600.0
    dashboard_grace: float = 180.0
    rebuild_timeout: float = 1800.0
    # The probe to run instead of builder.host.probe's (a typed adapter: tests inject a stub;
    # the soak's repeated checks go through it too).
    prober: Callable[[Target, Server, GlanceImage], ProbeReport] | None = None
    # Called before any rollback rebuild with the failing image and why (builder.release.gates
    # keeps the journal and console there: the rebuild destroys them).
    before_rollback: Callable[[Target, Server, GlanceImage, str], None] | None = None
    # Where the release tells the operator what it decided and warns (a history write
    # that failed, a reused upload): the CLI passes a stderr writer.
    note: Callable[[str], None] = silent


@dataclass
class Attempt:
    """One rebuild and probe of the server from one image."""

    image: GlanceImage
    ok: bool
    outcome: str  # live | rebuild-refused (server untouched) | rebuild-failed | probe-failed
    reason: str
    server: Server | None = None
    probe: ProbeReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image.name,
            "image_id": self.image.id,
            "ok": self.ok,
            "outcome": self.outcome,
            "reason": self.reason,
            "server_status": self.server.status if self.server else None,
            "probe": self.probe.to_json() if self.probe else None,
        }


@dataclass
class Outcome:
    """What a promote or rollback did, for the CLI's text and JSON output."""

    action: str
    tag: str | None
    server: str
    upload_reused: bool | None = None
    attempts: list[Attempt] = field(default_factory=list)
    final_status: str | None = None
    final_image: str | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "tag": self.tag,
            "server": self.server,
            "upload_reused": self.upload_reused,
            "attempts": [a.to_json() for a in self.attempts],
            "server_status": self.final_status,
            "server_image": self.final_image,
            "ok": bool(self.attempts) and self.attempts[0].ok,
            "message": self.message,
        }
