"""Upload to Glance, safely: decide first (UploadPlan), then carry it out.

An upload is created `aurora_state=uploading` and marked `ready` only once
Glance reports it active with the local qcow2's size and hash and its release
metadata (builder.release.meta) is in Glance. Nothing deploys an image that is
not ready, so an interrupted upload is never used: the next promote of that
tag deletes it and uploads again. A ready upload of the same disk digest is
reused without converting again; a ready upload of another disk under the
same name is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder import progress
from builder.image.store import disk_digest, file_digest
from builder.release import meta as release_meta
from builder.release.cloud import Cloud, GlanceImage
from builder.release.convert import convert, image_properties
from builder.release.errors import ReleaseError
from builder.release.glance import (
    MARK,
    READY,
    STATE,
    UPLOADING,
    glance_images,
    glance_name,
    is_ready,
)
from builder.release.target import silent

UPLOAD_SETTLE_SECONDS = 600.0


@dataclass(frozen=True)
class Upload:
    image: GlanceImage
    reused: bool


@dataclass(frozen=True)
class UploadPlan:
    """What promote does in Glance for one image directory, decided before doing it."""

    image_dir: Path
    name: str
    reuse: GlanceImage | None  # a ready upload of this very disk
    delete: tuple[GlanceImage, ...]  # unfinished uploads of this name: never used
    stale_meta: tuple[GlanceImage, ...]  # metadata images of this tag no ready upload names
    attach_meta: bool  # upload the release metadata (new upload, or a reused one without it)


def plan_upload(cloud: Cloud, image_dir: Path, images: list[GlanceImage]) -> UploadPlan:
    """Reuse, replace or upload; refuse a ready upload of another disk under this name."""
    tag = image_dir.name
    name = glance_name(tag)
    digest = disk_digest(image_dir)
    same = [i for i in images if i.name == name]
    reuse = next((i for i in same if is_ready(i) and i.prop("aurora_image_sha256") == digest), None)
    if reuse is None:
        for image in same:
            if is_ready(image):
                theirs = (image.prop("aurora_image_sha256") or "?")[:16]
                raise ReleaseError(
                    f"Glance already holds {name} ({image.id}) for another disk ({theirs}, "
                    f"here {(digest or '?')[:16]}); if it is not live, delete it "
                    f"(`openstack image delete {image.id}`) and promote again"
                )
    metas = release_meta.companions(cloud, tag)
    kept_meta = reuse.prop("aurora_meta_image") if reuse else None
    has_meta = kept_meta is not None and any(m.id == kept_meta for m in metas)
    return UploadPlan(
        image_dir=image_dir,
        name=name,
        reuse=reuse,
        delete=tuple(i for i in same if reuse is None),
        stale_meta=tuple(m for m in metas if m.id != kept_meta),
        attach_meta=not has_meta,
    )


def ensure_upload(cloud: Cloud, image_dir: Path, *, note: Callable[[str], None] = silent) -> Upload:
    """A ready Glance image of this disk: reused if there is one, else uploaded now."""
    return execute_upload(cloud, plan_upload(cloud, image_dir, glance_images(cloud)), note=note)


def execute_upload(
    cloud: Cloud, plan: UploadPlan, *, note: Callable[[str], None] = silent
) -> Upload:
    """Carry out an UploadPlan; the upload is marked ready only once Glance's size and
    hash are the local file's and its release metadata is in Glance."""
    image_dir, name = plan.image_dir, plan.name
    for image in plan.delete:
        note(f"deleting unfinished upload {name} ({image.id}, {image.status}): never used")
        cloud.delete_image(image.id)
    for meta in plan.stale_meta:
        cloud.delete_image(meta.id)
    if plan.reuse is not None:
        ready = plan.reuse
        if plan.attach_meta:
            meta, meta_digest = release_meta.upload(cloud, image_dir, image_dir.name)
            ready = cloud.set_properties(
                ready.id, aurora_meta_image=meta.id, aurora_meta_sha256=meta_digest
            )
        return Upload(ready, reused=True)
    qcow = convert(image_dir)
    properties = {**image_properties(image_dir), STATE: UPLOADING}
    created = cloud.create_image(
        name, disk_format="qcow2", tags=[MARK, image_dir.name], properties=properties
    )
    with progress.step(f"upload {name}", total=qcow.size) as step:
        cloud.upload(created.id, qcow.path, step.advance)
        image = cloud.wait_image(created.id, UPLOAD_SETTLE_SECONDS)
    local_hash = file_digest(qcow.path, image.hash_algo or "sha512")
    if image.status != "active" or image.size != qcow.size or image.hash_value != local_hash:
        cloud.delete_image(image.id)
        raise ReleaseError(
            f"Glance kept {name} as {image.status}, {image.size} bytes, {image.hash_algo} "
            f"{(image.hash_value or '?')[:16]}, but {qcow.path} is {qcow.size} bytes, "
            f"{local_hash[:16]}; the upload was deleted, promote again"
        )
    meta, meta_digest = release_meta.upload(cloud, image_dir, image_dir.name)
    ready = cloud.set_properties(
        image.id,
        **{
            STATE: READY,
            "aurora_upload_size": str(image.size),
            "aurora_upload_hash": local_hash,
            "aurora_meta_image": meta.id,
            "aurora_meta_sha256": meta_digest,
        },
    )
    return Upload(ready, reused=False)
