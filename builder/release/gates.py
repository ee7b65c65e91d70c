"""What must hold before a promote or rollback changes a server, and what it leaves on record.

In order, each refusing in one line with nothing changed: the image's
release signature (builder.release.signing), the production policy (builder.release.policy,
`--force --reason` overrides), the approvals the spec's change categories
ask for (builder.release.categories), then the server's lease (builder.release.lease) for
the whole rebuild. After the release the signature, base tag, override and
approvals are written onto the Glance image, and images no target runs or
would roll back to are hidden (`os_hidden`), never deleted.

The release itself is builder.release.promote's; this module only wraps it, so the
plan/execute split there stays its own. Warnings go through Target.note.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder import progress
from builder.errors import AuroraError
from builder.release import categories, lease, signing
from builder.release.cloud import (
    Cloud,
    CloudError,
    GlanceImage,
    ImageNotFound,
    Server,
    ServerNotFound,
)
from builder.release.convert import check_attested
from builder.release.deploy import roll_back_after
from builder.release.errors import ServerBroken
from builder.release.glance import (
    MARK,
    glance_name,
    is_ready,
    now_iso,
    operator,
    ours,
    previous_live,
)
from builder.release.history import record
from builder.release.policy import (
    BASE_TAG,
    PolicyRefused,
    StagingServer,
    base_tag,
    check_production,
)
from builder.release.promote import fallback_image
from builder.release.target import Outcome, Target


@dataclass(frozen=True)
class Gates:
    """Everything the checks need, resolved by the CLI from the spec and flags."""

    role: str | None = None  # staging | production | None (a single untyped server)
    allowed_signers: Path | None = None
    lease_ttl: float = lease.DEFAULT_TTL
    break_lease: bool = False
    stagings: list[StagingServer] = field(default_factory=list)
    staging_soak: float = 24 * 3600.0
    force_reason: str | None = None
    approvals: tuple[str, ...] = ()
    needs_approval: tuple[str, ...] = ()
    target_spec: Path | None = None  # the spec a staging target's images are built from
    others: list[StagingServer] = field(default_factory=list)  # every other target's server
    # image dir -> category fingerprints (builder.release.categories), from the spec that built it
    fingerprint: Callable[[Path], dict[str, str]] | None = None
    soak_window: float = 0.0  # seconds the probe keeps watching after a promote (0: no soak)
    soak_interval: float = 60.0
    # The soak's time source, passed in so a test runs the window on a virtual clock.
    soak_clock: Callable[[], float] = time.monotonic
    soak_sleep: Callable[[float], None] = time.sleep


def _tell(text: str) -> None:
    """What a gate decided, as a finished step line (`...: done in 0.0 s`) among the
    release's own steps: information, never an error line."""
    with progress.step(text):
        pass


def _verify_local(gates: Gates, image_dir: Path) -> signing.Verified | None:
    if gates.allowed_signers is not None:
        return signing.verify_local(image_dir, gates.allowed_signers)
    if gates.role == "production":
        raise signing.SignatureError(
            f"{image_dir.name}: a production target takes only signed images and the spec "
            "sets no deploy.allowed_signers; add the operators' keys there"
        )
    _tell(f"signature of {image_dir.name} not checked "
         "(no deploy.allowed_signers)")  # fmt: skip
    return None


def _verify_glance(gates: Gates, image: GlanceImage) -> signing.Verified | None:
    if gates.allowed_signers is not None:
        return signing.verify_glance(image.name, image.properties, gates.allowed_signers)
    if gates.role == "production":
        raise signing.SignatureError(
            f"{image.name}: a production target takes only signed images and the spec "
            "sets no deploy.allowed_signers; add the operators' keys there"
        )
    return None


def _approve(
    gates: Gates, cloud: Cloud, server: Server, image_dir: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """(records, {category: approver}): the change's categories against what the server
    runs now, and the approvals production needs for them."""
    if gates.fingerprint is None:
        return {}, {}
    prints = gates.fingerprint(image_dir)
    records = {categories.PROPERTY: categories.encode(prints)} if prints else {}
    if gates.role != "production" or not gates.needs_approval:
        return records, {}
    if not prints:
        raise PolicyRefused(
            f"{image_dir.name}: production needs approvals by change category, and the spec "
            "does not build this tag now, so what it changes cannot be told; promote from the "
            "checkout that built it (--spec)"
        )
    live = None
    if server.image_id:
        try:
            live = cloud.image(server.image_id)
        except ImageNotFound:
            live = None
    before = categories.decode(live.prop(categories.PROPERTY) if live else None)
    changed = categories.changed(before, prints)
    missing = [c for c in changed if c in gates.needs_approval and c not in gates.approvals]
    tag = image_dir.name
    if missing:
        flags = " ".join(f"--approve {c}" for c in missing)
        against = live.name if live is not None and before else "an image without categories"
        raise PolicyRefused(
            f"{tag}: changes {', '.join(changed) or 'nothing'} against {against}; production "
            f"needs approval for {', '.join(missing)} (deploy.approval_required): review "
            f"`aurora-image diff`, then pass {flags}"
        )
    who = operator()
    approved = {c: who for c in changed if c in gates.needs_approval}
    if approved:
        records["aurora_approved"] = json.dumps(approved, separators=(",", ":"))[:250]
        records["aurora_approved_at"] = now_iso()
    return records, approved


def _policy(gates: Gates, tag: str) -> dict[str, str]:
    if gates.role != "production":
        return {}
    if gates.force_reason is not None:
        if not gates.force_reason.strip():
            raise PolicyRefused('--force needs --reason "why": the override is recorded')
        _tell(f"production policy overridden by {operator()}: {gates.force_reason}")
        return {"aurora_forced_by": operator(), "aurora_forced_at": now_iso(),
                "aurora_forced_reason": gates.force_reason[:250]}  # fmt: skip
    found = check_production(tag, gates.stagings, gates.staging_soak)
    _tell(f"{found.staging} has run {found.image.name} healthy for "
         f"{found.hours:.1f} h")  # fmt: skip
    return {"aurora_staged_as": found.image.name, "aurora_staged_hours": f"{found.hours:.1f}"}


def _image_for(cloud: Cloud, tag: str) -> GlanceImage | None:
    for image in ours(cloud.images(MARK) + cloud.images(MARK, hidden=True)):
        if image.name == glance_name(tag) and is_ready(image):
            return image
    return None


def guarded_promote(target: Target, ref: str, gates: Gates, run: Callable[[], Outcome]) -> Outcome:
    """Signature, policy, approvals, lease; then `run` (builder.release.promote's plan and execute,
    planned under the lease so the plan is not stale); then the records."""
    image_dir = check_attested(ref, target.store)
    tag = image_dir.name
    verified = _verify_local(gates, image_dir)
    records = _policy(gates, tag)
    cloud = target.cloud
    server = cloud.server(target.server)
    records |= _approve(gates, cloud, server, image_dir)[0]
    if gates.role == "staging" and gates.target_spec is not None:
        tags = base_tag(gates.target_spec)
        if tags is not None and tags[0] == tag:
            records[BASE_TAG] = tags[1]
        elif tags is not None:
            target.note(
                f"aurora-image: warning: {gates.target_spec} gives {tags[0]} now, not {tag}: "
                "its production tag is not recorded, so production cannot count this soak"
            )
    if verified is not None:
        records |= {"aurora_signed_by": verified.signer, **signing.glance_properties(image_dir)}
    fallback = fallback_image(cloud, server)
    with lease.held(cloud, server.id, server.name, holder=operator(), action=f"promote {tag}",
                    ttl=gates.lease_ttl, break_lease=gates.break_lease, note=_tell):  # fmt: skip
        try:
            outcome = run()
            if gates.soak_window > 0:
                _soak(target, tag, outcome, fallback, gates)
            return outcome
        finally:
            _after(target, tag, records, gates)


def guarded_rollback(
    target: Target, tag: str | None, gates: Gates, run: Callable[[], Outcome]
) -> Outcome:
    """The rollback target's signature (from Glance) and the lease; then `run`."""
    cloud = target.cloud
    server = cloud.server(target.server)
    images = ours(cloud.images(MARK) + cloud.images(MARK, hidden=True))
    chosen = (
        next((i for i in images if i.name == glance_name(tag) and is_ready(i)), None)
        if tag
        else previous_live(images, server)
    )
    if chosen is not None:
        _verify_glance(gates, chosen)
        if chosen.hidden:
            cloud.set_hidden(chosen.id, False)
    if tag and chosen is None:  # said before any lease is taken
        ready = ", ".join(sorted({i.prop("aurora_tag") or i.name for i in images if is_ready(i)}))
        raise ImageNotFound(
            f"cloud {cloud.name}: Glance has no ready image {glance_name(tag)} "
            f"(ready tags: {ready or 'none'}); promote it first"
        )
    # (no image live before: release.rollback says why, in its words)
    if chosen is not None and server.image_id and server.image_id != chosen.id:
        try:
            current = cloud.image(server.image_id)
        except ImageNotFound:
            current = None
        if current is not None and current.prop("aurora_tag"):
            keep_evidence(target, server, current, f"operator rollback to {chosen.name}")
    action = f"rollback {chosen.prop('aurora_tag') if chosen else tag or ''}".strip()
    with lease.held(cloud, server.id, server.name, holder=operator(), action=action,
                    ttl=gates.lease_ttl, break_lease=gates.break_lease, note=_tell):  # fmt: skip
        try:
            return run()
        finally:
            _after(target, None, {}, gates)


def _after(target: Target, tag: str | None, records: dict[str, str], gates: Gates) -> None:
    """Records on the image and hiding of superseded images; never hides the outcome."""
    cloud = target.cloud
    try:
        if tag is not None and records:
            image = _image_for(cloud, tag)
            if image is not None:
                cloud.set_properties(image.id, **records)
        hide_superseded(
            cloud, [target.server, *(o.server for o in gates.others if o.cloud.name == cloud.name)]
        )
    except (CloudError, AuroraError) as exc:
        target.note(f"aurora-image: warning: release records not written to Glance: {exc}")


def hide_superseded(cloud: Cloud, servers: list[str]) -> list[str]:
    """Hide images that were live and are superseded (no server runs them, none would roll
    back to them); show those that are. Nothing is deleted (glance-prune does that, and
    keeps rollback targets)."""
    images = ours(cloud.images(MARK) + cloud.images(MARK, hidden=True))
    keep: set[str] = set()
    for name in servers:
        try:
            server = cloud.server(name)
        except ServerNotFound:  # hiding is reversible: a target Nova lacks protects nothing
            continue
        keep.add(server.image_id or "")
        before = previous_live(images, server)
        if before is not None:
            keep.add(before.id)
    hidden = []
    for image in images:
        if not is_ready(image):
            continue
        # Superseded: was live once and is neither live nor rollback's target. An upload
        # that never went live is left as it is (a promote may be about to use it).
        want = image.id not in keep and bool(image.prop("aurora_live_at"))
        if image.hidden != want:
            cloud.set_hidden(image.id, want)
        if want:
            hidden.append(image.name)
    return hidden


def keep_evidence(target: Target, server: Server, image: GlanceImage, reason: str) -> None:
    """Before a rollback rebuild: the failing server's journal and console, kept
    (builder.release.evidence). Wired as Target.before_rollback for builder.release.deploy's own."""
    from builder.host.probe import known_hosts_for, state_dir
    from builder.release.evidence import JOURNAL, keep
    from builder.release.probing import remote_for

    def journal() -> str:
        remote, _ = remote_for(target, server, known_hosts_for(target.cloud.name, server.id))
        return remote.run(JOURNAL, timeout=120, check=False)

    try:
        keep(target.cloud, server, image, reason, journal=journal, state=state_dir(), note=_tell)
    except (AuroraError, OSError) as exc:  # evidence must never stop a rollback
        target.note(f"aurora-image: warning: evidence not kept ({exc})")


def _soak(
    target: Target, tag: str, outcome: Outcome, fallback: GlanceImage | None, gates: Gates
) -> None:
    """Keep probing; on a failure keep the evidence and go back to `fallback` by itself."""
    from builder.release.soak import hand_over_before, soak

    cloud = target.cloud
    image = _image_for(cloud, tag)
    if image is None or outcome.final_image != image.name:
        return
    if target.prober is None:
        with progress.step("hand the host's health timer the failing set before the rebuild"):
            try:
                hand_over_before(target, cloud.server(target.server))
            except AuroraError as exc:
                target.note(f"aurora-image: warning: host health timer not given the set: {exc}")
    with progress.step(f"soak {image.name} for {gates.soak_window:.0f} s"):
        result = soak(
            target, image, window=gates.soak_window, interval=gates.soak_interval,
            clock=gates.soak_clock, sleep=gates.soak_sleep,
        )  # fmt: skip
    try:
        cloud.set_properties(image.id, **result.properties())
    except CloudError as exc:
        target.note(f"aurora-image: warning: soak verdict not recorded in Glance: {exc}")
    if result.ok:
        outcome.message = f"{outcome.message}; {result.summary()}"
        return
    server = cloud.server(target.server)
    failed = f"promote of {image.name} on {server.name}: {result.summary()}"
    keep_evidence(target, server, image, result.summary())
    # Not a rollback target any more: it failed while live.
    record(cloud, image.id, server.name, "soak", "soak-failed")
    cloud.set_properties(image.id, aurora_live_server="")
    if fallback is None or fallback.id == image.id:
        outcome.message = (
            f"{failed}; no previous image to roll back to; fix the cause, then "
            "`aurora-image rollback TAG`"
        )
        raise ServerBroken(outcome.message, outcome)
    roll_back_after(target, server, fallback, outcome, failed)
