"""`glance-prune`: delete old images from Glance, never a live one nor its rollback target.

Ready images beyond the `keep` newest go, and unfinished uploads untouched for
STALE_UPLOAD_SECONDS, with their release-metadata images. The live image and
the one live before it are protected on this server and on every other deploy
target sharing this Glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from builder.plan import Plan, Step
from builder.release import meta as release_meta
from builder.release.cloud import Cloud, GlanceImage, Server
from builder.release.errors import ReleaseError
from builder.release.glance import (
    STALE_UPLOAD_SECONDS,
    age_seconds,
    glance_images,
    is_ready,
    ours,
    previous_live,
    tag_of,
)


@dataclass(frozen=True)
class PruneResult:
    removed: list[str]
    kept: list[str]
    protected: dict[str, str]
    plan: Plan | None = None

    def to_json(self) -> dict[str, Any]:
        done = {"removed": self.removed, "kept": self.kept, "protected": self.protected}
        return {**self.plan.to_json(), **done} if self.plan else done


def select_prune(
    images: list[GlanceImage], server: Server, keep: int, others: Sequence[Server] = ()
) -> tuple[list[GlanceImage], dict[str, str]]:
    """Which images go: ready ones beyond the `keep` newest, and stale unfinished uploads.

    Never the live image, nor the one live before it (rollback's target), on this
    server or on any of `others` (the other deploy targets sharing this Glance).
    """
    mine = ours(images)
    protected: dict[str, str] = {}
    for each in (server, *others):
        for image in mine:
            if image.id == each.image_id:
                protected.setdefault(image.id, f"live on {each.name}")
        previous = previous_live(mine, each)
        if previous is not None:
            protected.setdefault(previous.id, f"live before the current image on {each.name}")
    ready = [i for i in mine if is_ready(i)]
    newest = {i.id for i in ready[:keep]}
    doomed = []
    for image in mine:
        if image.id in protected or image.id in newest:
            continue
        if is_ready(image) or age_seconds(image.updated_at) > STALE_UPLOAD_SECONDS:
            doomed.append(image)
    return doomed, protected


def _prune_reason(image: GlanceImage, keep: int) -> str:
    if is_ready(image):
        return f"ready, not among the {keep} newest ready images"
    return f"unfinished upload ({image.status}), untouched since {image.updated_at}"


def stale_companions(
    metas: list[GlanceImage], images: list[GlanceImage], doomed: list[GlanceImage]
) -> list[GlanceImage]:
    """Metadata images that go: those of doomed images, and those no image names
    (left by an interrupted promote) once they are old enough to be nobody's."""
    gone = {i.id for i in doomed}
    named = {i.prop("aurora_meta_image") for i in ours(images) if i.id not in gone}
    tags = {tag_of(i) for i in ours(images) if i.id not in gone}
    return [
        m
        for m in metas
        if m.id not in named
        and (age_seconds(m.updated_at) > STALE_UPLOAD_SECONDS or m.prop("aurora_tag") not in tags)
    ]


def glance_prune(
    cloud: Cloud,
    server_name: str,
    keep: int,
    *,
    dry_run: bool = False,
    others: Sequence[Server] = (),
) -> PruneResult:
    """Delete what `select_prune` picks, with their metadata images (or, with
    `dry_run`, only say so: the result then carries the plan). `others`: the other
    deploy targets' servers using this Glance, whose images are protected alike."""
    if keep < 0:
        raise ReleaseError(f"--keep {keep}: keep must be 0 or more")
    server = cloud.server(server_name)
    images = ours(glance_images(cloud))
    doomed, protected = select_prune(images, server, keep, others)
    metas = stale_companions(release_meta.companions(cloud), images, doomed)
    gone = {i.id for i in doomed}
    names = {i.id: i.name for i in images}
    result = PruneResult(
        removed=[i.name for i in doomed],
        kept=[i.name for i in images if i.id not in gone],
        protected={names[k]: v for k, v in protected.items()},
    )
    if dry_run:
        steps = [
            Step(
                "delete",
                f"{i.name} ({i.id})",
                _prune_reason(i, keep),
                {"image_id": i.id, "size": i.size, "created_at": i.created_at},
            )
            for i in doomed
        ]
        steps += [
            Step(
                "delete",
                f"{m.name} ({m.id})",
                "release metadata of an image that goes, or of none",
                {"image_id": m.id, "size": m.size},
            )
            for m in metas
        ]
        steps += [Step("keep", name, why) for name, why in result.protected.items()]
        plan = Plan(
            command=f"glance-prune --keep {keep}",
            target=f"Glance of cloud {cloud.name} (server {server.name})",
            steps=tuple(steps),
            summary=f"then {len(result.kept)} aurora image(s) are left in Glance",
        )
        return replace(result, plan=plan)
    for image in [*doomed, *metas]:
        cloud.delete_image(image.id)
    return result
