"""Release history, kept in Glance so a second operator sees it, and `releases`.

Each deployment of an image sets `aurora_last_{action,outcome,at,by,server}` on
it and appends to `aurora_history` (JSON, the last HISTORY_LENGTH events); a
promote sets `aurora_promoted_{at,by}`; a passing probe sets
`aurora_live_{at,server}`. An image deployed to several servers keeps only its
latest server in these properties. `releases` joins the local store, Glance
and Nova into one row per tag.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.image.store import is_attested, list_images
from builder.release.cloud import Cloud, CloudError, Server
from builder.release.glance import glance_images, is_ready, now_iso, operator, ours, tag_of
from builder.release.lease import from_metadata as lease_from_metadata

HISTORY_LENGTH = 10


def record(cloud: Cloud, image_id: str, server: str, action: str, outcome: str) -> None:
    """Write one deployment event into the image's Glance properties (ours only)."""
    current = cloud.image(image_id)
    if not current.prop("aurora_tag"):
        return
    stamp, who = now_iso(), operator()
    props = {
        "aurora_last_action": action,
        "aurora_last_outcome": outcome,
        "aurora_last_at": stamp,
        "aurora_last_by": who,
        "aurora_last_server": server,
    }
    if outcome != "rebuilding":
        try:
            history = json.loads(current.prop("aurora_history") or "[]")
        except ValueError:
            history = []
        history = [*history, [stamp, server, action, outcome, who]][-HISTORY_LENGTH:]
        props["aurora_history"] = json.dumps(history, separators=(",", ":"))
    if action == "promote" and outcome == "rebuilding":
        props |= {"aurora_promoted_at": stamp, "aurora_promoted_by": who}
    if outcome == "live":
        props |= {"aurora_live_at": stamp, "aurora_live_server": server}
    cloud.set_properties(image_id, **props)


def record_late(
    cloud: Cloud, image_id: str, server: str, action: str, outcome: str,
    note: Callable[[str], None],
) -> None:  # fmt: skip
    """Once the server has changed, a history write that fails must not hide its state:
    the failure becomes a warning through `note`."""
    try:
        record(cloud, image_id, server, action, outcome)
    except CloudError as exc:
        note(f"aurora-image: warning: history not recorded in Glance ({action} {outcome}): {exc}")


@dataclass
class Release:
    """One tag as `releases` shows it: local store, Glance and the server."""

    tag: str
    local: bool = False
    attested: bool | None = None
    glance_id: str | None = None
    glance_state: str = "absent"  # ready | unfinished (<status>) | absent
    live: bool = False
    last_good: bool = False
    created: str = ""
    properties: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        p = self.properties
        history = []
        try:
            history = [
                dict(zip(("at", "server", "action", "outcome", "by"), event, strict=False))
                for event in json.loads(p.get("aurora_history") or "[]")
            ]
        except (ValueError, TypeError):
            history = []
        return {
            "tag": self.tag,
            "local": self.local,
            "attested": self.attested,
            "glance_id": self.glance_id,
            "glance": self.glance_state,
            "live": self.live,
            "last_good": self.last_good,
            "uploaded_at": p.get("aurora_uploaded_at"),
            "uploaded_by": p.get("aurora_uploaded_by"),
            "promoted_at": p.get("aurora_promoted_at"),
            "promoted_by": p.get("aurora_promoted_by"),
            "last": {
                k: p.get(f"aurora_last_{k}") for k in ("action", "outcome", "at", "by", "server")
            },
            "live_at": p.get("aurora_live_at"),
            "glance_attestation": p.get("aurora_attestation"),
            # The release gates' records (release.gates, release.soak, release.evidence).
            "signed_by": p.get("aurora_signed_by"),
            "soak": p.get("aurora_soak_verdict"),
            "soak_detail": p.get("aurora_soak_detail"),
            "forced": {k: p.get(f"aurora_forced_{k}") for k in ("by", "at", "reason")}
            if p.get("aurora_forced_by")
            else None,
            "approved": p.get("aurora_approved"),
            "evidence_image": p.get("aurora_evidence_image"),
            "history": history,
        }


@dataclass
class Releases:
    server: Server
    releases: list[Release]
    server_image: str
    lease: str | None = None  # who holds the server's release lease (builder.release.lease)

    def to_json(self) -> dict[str, Any]:
        return {
            "server": {
                "name": self.server.name,
                "id": self.server.id,
                "status": self.server.status,
                "image_id": self.server.image_id,
                "image": self.server_image,
                "lease": self.lease,
            },
            "releases": [r.to_json() for r in self.releases],
        }


def releases(cloud: Cloud, server_name: str, store: Path) -> Releases:
    """Local and Glance tags, what is live (Nova), who promoted what when."""
    server = cloud.server(server_name)
    images = ours(glance_images(cloud))
    by_tag: dict[str, Release] = {}
    last_good = max(
        (i for i in images if i.prop("aurora_live_server") == server.name and is_ready(i)),
        key=lambda i: i.prop("aurora_live_at") or "",
        default=None,
    )
    for image in images:  # newest first; an older duplicate of a tag never shadows a newer one
        tag = tag_of(image)
        if tag in by_tag:
            continue
        state = "ready" if is_ready(image) else f"unfinished ({image.status})"
        by_tag[tag] = Release(
            tag=tag,
            glance_id=image.id,
            glance_state=state,
            live=image.id == server.image_id,
            last_good=last_good is not None and image.id == last_good.id,
            created=image.created_at,
            properties=dict(image.properties),
        )
    for record_ in list_images(store):
        entry = by_tag.setdefault(record_.tag, Release(tag=record_.tag))
        entry.local = True
        entry.attested = is_attested(record_.path)
        if not entry.created:
            entry.created = datetime.fromtimestamp(record_.built_at, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
    rows = sorted(by_tag.values(), key=lambda r: (r.created, r.tag), reverse=True)
    names = {i.id: i.name for i in images}
    running = names.get(server.image_id or "", f"image {server.image_id} (not an aurora image)")
    held = lease_from_metadata(cloud.server_metadata(server.id))
    return Releases(server, rows, running, held.describe() if held else None)
