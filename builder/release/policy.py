"""Promotion policy: production takes only inputs that ran healthy on staging long enough.

A staging target builds from an overlay of the production spec (writers off,
a banner), so its images have their own tags. What production must have seen
on staging is the same *inputs less the overlay*: the tag the overlay's base
spec gives from the same repository. A promote to a staging target records
that tag on the staging image in Glance (`aurora_base_tag`), after checking
that the repository really produces the image being promoted.

Production accepts tag T when a staging server runs, right now (Nova's
answer), an image whose base tag is T (or T itself), that went live there at
least `staging_soak` ago (`aurora_live_at`) and whose last recorded outcome
is still healthy (`aurora_last_outcome` live, and no failed soak verdict).
`--force --reason` overrides; the override is recorded on the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from builder.errors import EXIT_POLICY_REFUSED, AuroraError
from builder.release.cloud import Cloud, GlanceImage
from builder.release.glance import MARK, is_ready, ours

BASE_TAG = "aurora_base_tag"
SOAK_VERDICT = "aurora_soak_verdict"


class PolicyRefused(AuroraError):
    """Production does not take this tag yet; nothing was changed."""

    exit_code = EXIT_POLICY_REFUSED


@dataclass(frozen=True)
class StagingServer:
    """A staging target as the policy reads it: where its history is."""

    name: str
    cloud: Cloud
    server: str


def base_tag(spec_path: Path) -> tuple[str, str] | None:
    """(this spec's tag, its base spec's tag) from the repository as it is now;
    None when the spec names no `base:` (it is its own base)."""
    from builder.image.inputs import collect
    from builder.spec.model import load_spec

    spec = load_spec(spec_path)
    if not spec.source.bases:
        return None
    return collect(spec).tag, collect(load_spec(spec.source.bases[0])).tag


def _age_hours(stamp: str | None, now: datetime) -> float | None:
    if not stamp:
        return None
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds() / 3600


@dataclass(frozen=True)
class Evidence:
    """What a staging server shows for the tag: the image, how long it has run healthy."""

    staging: str
    image: GlanceImage
    hours: float
    healthy: bool


def evidence(staging: StagingServer, tag: str, now: datetime) -> Evidence | None:
    """The image with these inputs that the staging server runs now, if any."""
    server = staging.cloud.server(staging.server)
    images = ours(staging.cloud.images(MARK) + staging.cloud.images(MARK, hidden=True))
    for image in images:
        if image.id != server.image_id or not is_ready(image):
            continue
        if tag not in (image.prop(BASE_TAG), image.prop("aurora_tag")):
            continue
        hours = _age_hours(image.prop("aurora_live_at"), now)
        healthy = (
            server.status == "ACTIVE"
            and image.prop("aurora_live_server") == server.name
            and image.prop("aurora_last_outcome") == "live"
            and image.prop(SOAK_VERDICT) != "failed"
        )
        return Evidence(staging.name, image, hours or 0.0, healthy and hours is not None)
    return None


def check_production(
    tag: str,
    stagings: list[StagingServer],
    soak_seconds: float,
    *,
    now: datetime | None = None,
) -> Evidence:
    """The staging evidence that lets production take `tag`, or PolicyRefused (one line)."""
    now = now or datetime.now(UTC)
    need = soak_seconds / 3600
    if not stagings:
        raise PolicyRefused(
            f"{tag}: production takes only what ran on staging, and the spec names no "
            "staging target (deploy.targets with role: staging); add one, or pass "
            '--force --reason "..."'
        )
    seen = []
    for staging in stagings:
        found = evidence(staging, tag, now)
        if found is None:
            seen.append(f"{staging.name} does not run it")
            continue
        if found.healthy and found.hours >= need:
            return found
        state = "healthy" if found.healthy else "not healthy"
        seen.append(f"{staging.name} runs it as {found.image.name}, {state}, for "
                    f"{found.hours:.1f} h")  # fmt: skip
    raise PolicyRefused(
        f"{tag}: production needs these inputs live and healthy on staging for {need:g} h "
        f'(deploy.staging_soak): {"; ".join(seen)}; wait, or pass --force --reason "..."'
    )
