"""Rebuild the Nova server from an image and probe it; on failure go back by itself.

A failed rebuild or probe rebuilds the server from the image it ran before and
probes that; the error then says exactly what state the server is in
(builder.release.errors: ReleaseFailed exit 3, ServerBroken exit 4). A rebuild
Nova refuses leaves the server untouched (ReleaseError).
"""

from __future__ import annotations

from builder import progress
from builder.host.probe import forget_host_keys, known_hosts_for
from builder.release.cloud import Cloud, CloudError, GlanceImage, Server
from builder.release.errors import ReleaseError, ReleaseFailed, ServerBroken
from builder.release.glance import glance_images
from builder.release.history import record, record_late
from builder.release.probing import record_failing, run_probe
from builder.release.target import Attempt, Outcome, Target


def rebuild_and_probe(target: Target, server: Server, image: GlanceImage) -> Attempt:
    """Rebuild `server` from `image`, wait for ACTIVE, probe; never raises for a sick host."""
    cloud = target.cloud
    forget_host_keys(known_hosts_for(cloud.name, server.id))
    with progress.step(f"rebuild {server.name} from {image.name}"):
        try:
            cloud.rebuild(server.id, image.id)
        except CloudError as exc:
            return Attempt(image, False, "rebuild-refused", str(exc), server)
        try:
            after = cloud.wait_rebuilt(server.id, image.id, target.rebuild_timeout)
        except CloudError as exc:
            reason = f"lost contact with Nova during the rebuild: {exc}"
            return Attempt(image, False, "rebuild-failed", reason, server)
    if after.status != "ACTIVE" or after.image_id != image.id:
        on = "the new image" if after.image_id == image.id else f"image {after.image_id}"
        fault = f" (fault: {after.fault})" if after.fault else ""
        reason = f"Nova left {server.name} {after.status} on {on}{fault}"
        return Attempt(image, False, "rebuild-failed", reason, after)
    report = run_probe(target, after, image)
    if report.ok:
        return Attempt(image, True, "live", report.summary(), after, report)
    return Attempt(image, False, "probe-failed", report.summary(), after, report)


def deploy(
    target: Target,
    server: Server,
    image: GlanceImage,
    *,
    action: str,
    outcome: Outcome,
    fallback: GlanceImage | None,
) -> Outcome:
    """Rebuild and probe; on failure go back to `fallback` and say where things stand."""
    cloud = target.cloud
    # Glance must take this first record, or nothing is changed: the server is untouched.
    record(cloud, image.id, server.name, action, "rebuilding")
    record_failing(target, server)
    attempt = rebuild_and_probe(target, server, image)
    outcome.attempts.append(attempt)
    record_late(cloud, image.id, server.name, action, attempt.outcome, target.note)
    if attempt.ok:
        outcome.final_status, outcome.final_image = "ACTIVE", image.name
        outcome.message = f"{server.name} runs {image.name}: {attempt.reason}"
        return outcome
    failed = f"{action} of {image.name} on {server.name} failed: {attempt.reason}"
    if attempt.outcome == "rebuild-refused":
        raise ReleaseError(f"{failed}; the server was not rebuilt and runs what it ran before")
    if fallback is None or fallback.id == image.id:
        return _broken(
            cloud, server, outcome,
            f"{failed}; no previous image to roll back to; "
            "fix the cause, then `aurora-image rollback TAG`",
        )  # fmt: skip
    if target.before_rollback is not None:
        target.before_rollback(target, attempt.server or server, image, attempt.reason)
    return roll_back_after(target, server, fallback, outcome, failed)


def roll_back_after(
    target: Target, server: Server, fallback: GlanceImage, outcome: Outcome, failed: str
) -> Outcome:
    """After `failed`, rebuild from `fallback` by itself (a failed probe, a failed soak).

    Raises ReleaseFailed when the fallback is live and healthy again (exit 3),
    ServerBroken with the server's state when it is not (exit 4).
    """
    cloud = target.cloud
    record_late(cloud, fallback.id, server.name, "auto-rollback", "rebuilding", target.note)
    back = rebuild_and_probe(target, server, fallback)
    outcome.attempts.append(back)
    if back.outcome == "rebuild-refused":
        back.outcome = "rebuild-failed"
    record_late(cloud, fallback.id, server.name, "auto-rollback", back.outcome, target.note)
    if back.ok:
        outcome.final_status, outcome.final_image = "ACTIVE", fallback.name
        outcome.message = (
            f"{failed}; rolled back automatically: {server.name} runs {fallback.name} again "
            "and its probe passed"
        )
        raise ReleaseFailed(outcome.message, outcome)
    return _broken(
        cloud, server, outcome,
        f"{failed}; the automatic rollback to {fallback.name} failed too: {back.reason}",
    )  # fmt: skip


def _broken(cloud: Cloud, server: Server, outcome: Outcome, message: str) -> Outcome:
    try:
        now = cloud.server(server.id)
        names = {i.id: i.name for i in glance_images(cloud)}
        image = names.get(now.image_id or "", now.image_id or "no image")
        state = f"{server.name} is now {now.status} on {image}"
        outcome.final_status, outcome.final_image = now.status, image
    except CloudError as exc:
        state = f"{server.name}'s state is unknown ({exc})"
    outcome.message = f"{message}; {state}"
    raise ServerBroken(outcome.message, outcome)
