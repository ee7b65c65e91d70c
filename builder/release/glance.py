"""Our images in Glance: names, the readiness rule, and which image was live before.

An image is ours when it is tagged `aurora`, named `aurora-<tag>` and has the
`aurora_tag` property. It is created `aurora_state=uploading` and only marked
`ready` once Glance reports it active with the size and hash of the local
qcow2 (`aurora_upload_size` / `aurora_upload_hash`): `is_ready` is the only
kind of image anything deploys. What is live is always Nova's answer (the
server's image id); the image "live before the current one" is the other
ready image with the latest `aurora_live_at` on that server.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import UTC, datetime

from builder.release.cloud import Cloud, GlanceImage, Server

MARK = "aurora"
PREFIX = "aurora-"
STATE, UPLOADING, READY = "aurora_state", "uploading", "ready"
# An unfinished upload untouched this long has no promote behind it any more.
STALE_UPLOAD_SECONDS = 3600.0


def glance_name(tag: str) -> str:
    return f"{PREFIX}{tag}"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def operator() -> str:
    """Who is releasing: `AURORA_OPERATOR`, else user@host of this machine."""
    return os.environ.get("AURORA_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def is_ready(image: GlanceImage) -> bool:
    """Uploaded completely and checked: the only kind of image anything deploys."""
    return (
        image.status == "active"
        and image.prop(STATE) == READY
        and image.size is not None
        and str(image.size) == image.prop("aurora_upload_size")
        and image.hash_value is not None
        and image.hash_value == image.prop("aurora_upload_hash")
    )


def glance_images(cloud: Cloud) -> list[GlanceImage]:
    """Every image tagged `aurora`, hidden ones (`os_hidden`) included, newest first."""
    found = {i.id: i for i in [*cloud.images(MARK), *cloud.images(MARK, hidden=True)]}
    return sorted(found.values(), key=lambda i: (i.created_at, i.id), reverse=True)


def ours(images: list[GlanceImage]) -> list[GlanceImage]:
    """Images this tool made (tag `aurora`, our name and tag property), newest first."""
    return [i for i in images if i.name.startswith(PREFIX) and i.prop("aurora_tag")]


def tag_of(image: GlanceImage) -> str:
    """The image's tag: its `aurora_tag` property, else its name without the prefix."""
    return image.prop("aurora_tag") or image.name.removeprefix(PREFIX)


def age_seconds(stamp: str) -> float:
    """Seconds since a Glance timestamp (0 when it is not one: never stale by accident)."""
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - then).total_seconds()


def previous_live(images: list[GlanceImage], server: Server) -> GlanceImage | None:
    """The ready image other than the current one that was last live on `server`."""
    candidates = [
        i
        for i in ours(images)
        if i.id != server.image_id
        and is_ready(i)
        and i.prop("aurora_live_server") == server.name
        and i.prop("aurora_live_at")
    ]
    return max(candidates, key=lambda i: i.prop("aurora_live_at") or "", default=None)
