"""Promote and rollback: a plan read from the store, Glance and Nova, then carried out.

Promote: refuse an image the smoke suite has not passed; upload it to Glance
as `aurora-<tag>` (builder.release.upload); rebuild the server from it (root
disk replaced, volumes and addresses kept); probe it (builder.release.deploy).
Rollback: the same rebuild from a ready image, by default the one live before
the current one. Nova and Glance are both asked while planning, before
anything changes, so an unreachable service leaves the server untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.release.cloud import Cloud, GlanceImage, ImageNotFound, Server
from builder.release.convert import check_attested
from builder.release.deploy import deploy
from builder.release.errors import ReleaseError, ServerBroken
from builder.release.glance import (
    glance_images,
    glance_name,
    is_ready,
    ours,
    previous_live,
    tag_of,
)
from builder.release.history import record
from builder.release.probing import probe_address, run_probe
from builder.release.target import Attempt, Outcome, Target
from builder.release.upload import UploadPlan, execute_upload, plan_upload


def fallback_image(cloud: Cloud, server: Server) -> GlanceImage | None:
    """What the server runs now, if it is healthy enough to go back to."""
    if server.status != "ACTIVE" or not server.image_id:
        return None
    try:
        return cloud.image(server.image_id)
    except ImageNotFound:
        return None


@dataclass(frozen=True)
class ReleasePlan:
    """What a promote or rollback will do, computed from the store, Glance and Nova
    before anything changes: `--dry-run` prints it (see `preview`), `execute` does it.
    Checks that must see a release before it happens take this plan too."""

    action: str  # promote | rollback
    tag: str
    cloud: str
    server: Server
    image_name: str
    image: GlanceImage | None  # None when `upload` creates it
    upload: UploadPlan | None  # promote: what happens in Glance first
    rebuild: bool  # False: the server already runs the image and is only probed
    fallback: GlanceImage | None  # what a failed rebuild or probe goes back to
    current: str  # what the server runs now (image name, or id when not ours)
    reason: str  # why this image
    address: str  # where the probe looks


def _running(images: list[GlanceImage], server: Server) -> str:
    names = {i.id: i.name for i in images}
    return names.get(server.image_id or "", server.image_id or "no image")


def plan_promote(target: Target, ref: str) -> ReleasePlan:
    """Read-only: refuse what promote would refuse, decide what it would do."""
    image_dir = check_attested(ref, target.store)
    cloud = target.cloud
    server = cloud.server(target.server)
    images = glance_images(cloud)  # Glance answers before anything is converted or changed
    upload = plan_upload(cloud, image_dir, images)
    runs_it = (
        upload.reuse is not None
        and server.image_id == upload.reuse.id
        and server.status == "ACTIVE"
    )
    return ReleasePlan(
        action="promote",
        tag=image_dir.name,
        cloud=cloud.name,
        server=server,
        image_name=upload.name,
        image=upload.reuse,
        upload=upload,
        rebuild=not runs_it,
        fallback=fallback_image(cloud, server),
        current=_running(images, server),
        reason=f"attested image {image_dir}",
        address=probe_address(target, server),
    )


def plan_rollback(target: Target, tag: str | None = None) -> ReleasePlan:
    """Read-only: the ready image of `tag`, or the one live before the current one."""
    cloud = target.cloud
    server = cloud.server(target.server)
    images = ours(glance_images(cloud))
    current = _running(images, server)
    if tag:
        found = [i for i in images if i.name == glance_name(tag) and is_ready(i)]
        if not found:
            ready = ", ".join(sorted({tag_of(i) for i in images if is_ready(i)})) or "none"
            raise ImageNotFound(
                f"cloud {cloud.name}: Glance has no ready image {glance_name(tag)} "
                f"(ready tags: {ready}); promote it first"
            )
        image, reason = found[0], "named on the command line"
    else:
        previous = previous_live(images, server)
        if previous is None:
            raise ReleaseError(
                f"no image was live on {server.name} before {current} according to Glance; "
                "name one: `aurora-image rollback TAG` (see `aurora-image releases`)"
            )
        image = previous
        reason = f"live on {server.name} before {current} (until {previous.prop('aurora_live_at')})"
    return ReleasePlan(
        action="rollback",
        tag=tag_of(image),
        cloud=cloud.name,
        server=server,
        image_name=image.name,
        image=image,
        upload=None,
        rebuild=True,
        fallback=fallback_image(cloud, server),
        current=current,
        reason=reason,
        address=probe_address(target, server),
    )


def execute(target: Target, plan: ReleasePlan) -> Outcome:
    """Carry out a plan: upload (promote), rebuild, probe, roll back on failure."""
    cloud, server = target.cloud, plan.server
    outcome = Outcome(plan.action, plan.tag, server.name)
    image = plan.image
    if plan.upload is not None:
        upload = execute_upload(cloud, plan.upload, note=target.note)
        outcome.upload_reused = upload.reused
        if upload.reused:
            target.note(f"{upload.image.name}: already in Glance ({upload.image.id}), reused")
        image = upload.image
    if image is None:
        raise ReleaseError(f"{plan.action} {plan.tag}: the plan names no image")
    if not plan.rebuild:
        return _probe_only(target, server, image, outcome)
    return deploy(
        target, server, image, action=plan.action, outcome=outcome, fallback=plan.fallback
    )


def _probe_only(target: Target, server: Server, image: GlanceImage, outcome: Outcome) -> Outcome:
    """The server already runs the image (e.g. a promote interrupted during its probe):
    probe it and record what the probe says now."""
    report = run_probe(target, server, image)
    attempt = Attempt(
        image, report.ok, "live" if report.ok else "probe-failed", report.summary(), server, report
    )
    outcome.attempts.append(attempt)
    outcome.final_status, outcome.final_image = server.status, image.name
    record(target.cloud, image.id, server.name, outcome.action, attempt.outcome)
    if not report.ok:
        outcome.message = (
            f"{server.name} already runs {image.name} (not rebuilt) and its probe "
            f"failed: {report.summary()}; `aurora-image rollback` goes back"
        )
        raise ServerBroken(outcome.message, outcome)
    outcome.message = f"{server.name} already runs {image.name}: {report.summary()}"
    return outcome


def promote(target: Target, ref: str) -> Outcome:
    """Attested image -> Glance -> rebuild -> probe (-> automatic rollback)."""
    return execute(target, plan_promote(target, ref))


def rollback(target: Target, tag: str | None = None) -> Outcome:
    """Rebuild from `tag`'s ready image, or the image live before the current one."""
    return execute(target, plan_rollback(target, tag))
