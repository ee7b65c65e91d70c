"""Releases on JASMIN Cloud: promote a tested image, roll back, list, prune Glance.

A release is: refuse an image the smoke suite has not passed; convert it to
compressed qcow2 (cached beside the image as `aurora.qcow2`); upload it to
Glance as `aurora-<tag>`; rebuild the Nova server from it (root disk
replaced, volumes and addresses kept); probe it (builder.host.probe). A failed
rebuild or probe rebuilds the server from the image it ran before and probes
that; the error then says exactly what state the server is in. Nova and
Glance are both asked before anything changes, so an unreachable service
leaves the server untouched.

Upload safety: an image is created with `aurora_state=uploading` and only
marked `ready` once Glance reports it active with the size and hash of the
local qcow2 (recorded as `aurora_upload_size` / `aurora_upload_hash`).
Nothing ever deploys an image that is not ready, so an interrupted upload is
never used; the next promote of that tag deletes it and uploads again. A
ready upload of the same disk digest is reused without converting again.

History lives in Glance, so a second operator sees it: each deployment of an
image sets `aurora_last_{action,outcome,at,by,server}` on it and appends to
`aurora_history` (JSON, the last HISTORY_LENGTH events); a promote sets
`aurora_promoted_{at,by}`; a passing probe sets `aurora_live_{at,server}`.
What is live is always Nova's answer (the server's image id); the image
"live before the current one" (rollback's default, and what glance-prune
protects besides the live image) is the other image with the latest
`aurora_live_at` on that server. An image deployed to several servers keeps
only its latest server in these properties.

Exit codes: 3 when the release failed but the automatic rollback brought the
previous image back healthy; 4 when the server is not healthy (the message
says on which image and in which Nova state).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from builder import progress
from builder.errors import AuroraError
from builder.host import health
from builder.host.probe import (
    Check,
    Endpoint,
    HostKeyError,
    ProbeReport,
    forget_host_keys,
    known_hosts_for,
    pin_host_keys,
    probe,
    state_dir,
)
from builder.host.remote import Remote
from builder.image.build import file_digest, sha256_file
from builder.image.gpt import partitions
from builder.image.store import (
    DISK,
    MANIFEST,
    disk_digest,
    human_size,
    is_attested,
    list_images,
    read_attestation,
    resolve_image,
)
from builder.plan import Plan, Step
from builder.release import meta as release_meta
from builder.release.cloud import Cloud, CloudError, GlanceImage, ImageNotFound, Server
from builder.release.lease import from_metadata as lease_from_metadata
from builder.render.tree import atomic_write

MARK = "aurora"
PREFIX = "aurora-"
STATE, UPLOADING, READY = "aurora_state", "uploading", "ready"
QCOW = "aurora.qcow2"
QCOW_META = "aurora.qcow2.json"
HISTORY_LENGTH = 10
# An unfinished upload untouched this long has no promote behind it any more.
STALE_UPLOAD_SECONDS = 3600.0
UPLOAD_SETTLE_SECONDS = 600.0
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
# The STFC Cloud's recommended properties for a q35/UEFI guest on virtio-scsi.
STFC_PROPERTIES = {
    "hw_machine_type": "q35",
    "hw_disk_bus": "scsi",
    "hw_scsi_model": "virtio-scsi",
    "hw_qemu_guest_agent": "yes",
    "os_distro": "debian",
    "os_type": "linux",
}


class ReleaseError(AuroraError):
    """A release step was refused or failed before the server was changed."""


class NotAttested(ReleaseError):
    """The image has no passing smoke attestation for its current disk."""


class ReleaseFailed(AuroraError):
    """The new image failed; the previous one was restored and passed its probe."""

    exit_code = 3

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class ServerBroken(AuroraError):
    """The server is not healthy after this command; the message says its state."""

    exit_code = 4

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Target:
    """The server a release goes to, and how the probe reaches it."""

    cloud: Cloud
    server: str
    hostname: str
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


# -- small helpers -------------------------------------------------------------


def glance_name(tag: str) -> str:
    return f"{PREFIX}{tag}"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def operator() -> str:
    """Who is releasing: `AURORA_OPERATOR`, else user@host of this machine."""
    return os.environ.get("AURORA_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def builder_version() -> str:
    try:
        return metadata.version("aurora-image")
    except metadata.PackageNotFoundError:
        return "unknown"


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


def _tag(image: GlanceImage) -> str:
    return image.prop("aurora_tag") or image.name.removeprefix(PREFIX)


def _age_seconds(stamp: str) -> float:
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


# -- local checks and conversion -------------------------------------------------


def check_attested(ref: str, store: Path | None = None) -> Path:
    """The image directory for `ref`, if the smoke suite passed on exactly its disk."""
    path = resolve_image(ref, store)
    record = read_attestation(path)
    tag = path.name
    if record is None:
        raise NotAttested(
            f"{tag}: not tested: no smoke-suite attestation in {path}; "
            f"run `make smoke AURORA_IMAGE={tag}` first"
        )
    if record.get("passed") is not True:
        raise NotAttested(
            f"{tag}: the smoke suite failed on it ({record.get('finished')}); "
            "fix the failures and rebuild, then run `make smoke` again"
        )
    if not is_attested(path, verify=True):
        tested = str(record.get("image_sha256", "?"))[:16]
        current = (disk_digest(path) or "?")[:16]
        raise NotAttested(
            f"{tag}: the attestation is for disk {tested} but {DISK} is now {current} "
            f"(manifest) or was changed since; run `make smoke AURORA_IMAGE={tag}` again"
        )
    return path


def is_uefi(disk: Path) -> bool:
    """An ESP means systemd-boot is on the disk, so the guest wants UEFI firmware."""
    try:
        return any(p.type_uuid == ESP_TYPE for p in partitions(disk))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Qcow:
    path: Path
    size: int


def cached_qcow(image_dir: Path) -> Qcow | None:
    """The cached conversion, trusted only while its record names the manifest's disk
    digest and the file still has the recorded size."""
    qcow, meta_path = image_dir / QCOW, image_dir / QCOW_META
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("raw_sha256") == disk_digest(image_dir) and qcow.stat().st_size == meta.get(
            "size"
        ):
            return Qcow(qcow, qcow.stat().st_size)
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _qemu_convert(image_dir: Path, dest: Path, purpose: str = "") -> None:
    """`qemu-img convert -c -O qcow2` of the image's disk into `dest` (via a partial file)."""
    partial = dest.with_name(f".{dest.name}.partial")
    argv = ["qemu-img", "convert", "-c", "-m", "4", "-W", "-O", "qcow2"]
    with progress.step(f"convert {image_dir.name} to compressed qcow2{purpose}"):
        try:
            done = subprocess.run(
                [*argv, str(image_dir / DISK), str(partial)],
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            raise ReleaseError("qemu-img is not installed; run `make setup`") from None
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ReleaseError(
                f"{image_dir / DISK}: qemu-img convert failed ({reason}); "
                f"check free space in {dest.parent}"
            )
        os.replace(partial, dest)


def convert(image_dir: Path) -> Qcow:
    """The compressed qcow2 of the image, cached beside it and written atomically."""
    cached = cached_qcow(image_dir)
    if cached is not None:
        return cached
    (image_dir / QCOW_META).unlink(missing_ok=True)
    _qemu_convert(image_dir, image_dir / QCOW)
    size = (image_dir / QCOW).stat().st_size
    record = {"raw_sha256": disk_digest(image_dir), "size": size}
    atomic_write(image_dir / QCOW_META, (json.dumps(record) + "\n").encode())
    return Qcow(image_dir / QCOW, size)


def measure_qcow(image_dir: Path) -> int:
    """The size the upload will have, for a dry run: the cached conversion's, else a
    conversion into a temporary directory (deleted again; the store is not touched)."""
    cached = cached_qcow(image_dir)
    if cached is not None:
        return cached.size
    with tempfile.TemporaryDirectory(prefix="aurora-dry-run-") as scratch:
        dest = Path(scratch) / QCOW
        _qemu_convert(image_dir, dest, " (temporary, to know the upload's size)")
        return dest.stat().st_size


def image_properties(image_dir: Path) -> dict[str, str]:
    """What Glance records about an upload besides its bytes (all strings)."""
    manifest = json.loads((image_dir / MANIFEST).read_text())
    attestation = read_attestation(image_dir) or {}
    counts = attestation.get("counts", {})
    summary = (
        f"passed {counts.get('total', '?')} smoke tests, finished {attestation.get('finished')}"
        + (f" ({attestation['accel']})" if attestation.get("accel") else "")
    )
    props = {
        "aurora_tag": str(manifest.get("tag", image_dir.name)),
        "aurora_release": str(manifest.get("release", "")),
        "aurora_image_sha256": disk_digest(image_dir) or "",
        "aurora_manifest_sha256": sha256_file(image_dir / MANIFEST),
        "aurora_attestation": summary,
        "aurora_builder_version": builder_version(),
        "aurora_uploaded_at": now_iso(),
        "aurora_uploaded_by": operator(),
        **STFC_PROPERTIES,
    }
    if manifest.get("root_partition_sha256"):
        props["aurora_root_sha256"] = str(manifest["root_partition_sha256"])
    if is_uefi(image_dir / DISK):
        props["hw_firmware_type"] = "uefi"
    return props


# -- Glance --------------------------------------------------------------------


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


def ensure_upload(cloud: Cloud, image_dir: Path, *, note: Callable[[str], None] = print) -> Upload:
    """A ready Glance image of this disk: reused if there is one, else uploaded now."""
    return execute_upload(cloud, plan_upload(cloud, image_dir, glance_images(cloud)), note=note)


def execute_upload(
    cloud: Cloud, plan: UploadPlan, *, note: Callable[[str], None] = print
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


# -- Nova: rebuild, probe, roll back ----------------------------------------------


def release_manifest(cloud: Cloud, image: GlanceImage) -> dict[str, Any] | None:
    """The image's manifest for the probe's audit: the local store's, else the one
    that travelled with the release in Glance (a rollback from any clone)."""
    tag = image.prop("aurora_tag")
    if not tag:
        return None
    try:
        return json.loads((resolve_image(tag) / MANIFEST).read_text())
    except (AuroraError, OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory(prefix="aurora-meta-") as scratch:
        try:
            fetched = release_meta.fetch(cloud, image, Path(scratch))
            return json.loads((fetched / MANIFEST).read_text())
        except (AuroraError, OSError, ValueError):
            return None


def probe_address(target: Target, server: Server) -> str:
    """Where the probe looks: --address / deploy.address, else Nova's first IPv4."""
    address = target.address or (server.addresses[0] if server.addresses else None)
    if address is None:
        raise ReleaseError(
            f"server {server.name} has no IPv4 address in Nova; "
            "set deploy.address in the spec or pass --address"
        )
    return address


def _remote(
    target: Target, server: Server, known_hosts: Path, checking: str = "accept-new"
) -> tuple[Remote, Endpoint]:
    address = probe_address(target, server)
    remote = Remote(
        host=address,
        user=target.ssh_user,
        port=target.ssh_port,
        identity=target.identity,
        ssh_config=target.ssh_config,
        known_hosts=known_hosts,
        host_key_checking=checking,
    )
    endpoint = Endpoint(address, target.hostname, target.http_port, target.https_port)
    return remote, endpoint


def run_probe(target: Target, server: Server, image: GlanceImage) -> ProbeReport:
    if target.prober is not None:
        return target.prober(target, server, image)
    known_hosts = known_hosts_for(target.cloud.name, server.id)
    remote, endpoint = _remote(target, server, known_hosts, checking="yes")
    try:
        _pin_from_console(target, server, remote, known_hosts)
    except HostKeyError as exc:
        return ProbeReport(remote.name, (Check("host key", False, str(exc)),))
    manifest = release_manifest(target.cloud, image)
    with progress.step(f"probe {server.name} on {image.name}") as step:
        step.note(f"ssh {remote.name}, http {endpoint.address}:{endpoint.http_port}")
        return probe(
            remote,
            endpoint,
            manifest,
            timeout=target.probe_timeout,
            dashboard_grace=target.dashboard_grace,
            before=health.load_record(_failing_record(target, server)),
        )


def _pin_from_console(target: Target, server: Server, remote: Remote, known_hosts: Path) -> None:
    """Known hosts, not first use: wait until sshd answers with a key whose fingerprint
    the server printed on its console (read through Nova), and trust only that."""
    deadline = time.monotonic() + target.probe_timeout
    with progress.step(f"host keys of {server.name} from its console") as step:
        while True:
            console = target.cloud.console_output(server.id)
            pinned = pin_host_keys(known_hosts, remote.host, remote.port or 22, console)
            if pinned:
                step.note(f"{pinned} key(s) vouched for by the console")
                return
            if time.monotonic() > deadline:
                raise HostKeyError(
                    f"no host key of {remote.host}:{remote.port} matched a fingerprint on "
                    "its console within the probe timeout: check the server before trusting it"
                )
            time.sleep(5)


def _failing_record(target: Target, server: Server) -> Path:
    return health.record_path(state_dir(), target.cloud.name, server.id)


def record_failing(target: Target, server: Server) -> None:
    """Before the first rebuild of a release: what fails on the server now, and how.
    The probe excuses a pipeline unit failing the same way afterwards (builder.host.health)."""
    with progress.step(f"record failing units on {server.name}") as step:
        try:
            remote, _ = _remote(target, server, known_hosts_for(target.cloud.name, server.id))
        except ReleaseError as exc:
            _failing_record(target, server).unlink(missing_ok=True)
            step.note(f"not recorded ({exc})")
            return
        step.note(health.record_before(remote, _failing_record(target, server)))


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
    _record_late(cloud, image.id, server.name, action, attempt.outcome)
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
    _record_late(cloud, fallback.id, server.name, "auto-rollback", "rebuilding")
    back = rebuild_and_probe(target, server, fallback)
    outcome.attempts.append(back)
    if back.outcome == "rebuild-refused":
        back.outcome = "rebuild-failed"
    _record_late(cloud, fallback.id, server.name, "auto-rollback", back.outcome)
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


def _record_late(cloud: Cloud, image_id: str, server: str, action: str, outcome: str) -> None:
    """Once the server has changed, a history write that fails must not hide its state."""
    try:
        record(cloud, image_id, server, action, outcome)
    except CloudError as exc:
        _say(f"aurora-image: warning: history not recorded in Glance ({action} {outcome}): {exc}")


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


def _fallback(cloud: Cloud, server: Server) -> GlanceImage | None:
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


def plan_promote(target: Target, ref: str, *, store: Path | None = None) -> ReleasePlan:
    """Read-only: refuse what promote would refuse, decide what it would do."""
    image_dir = check_attested(ref, store)
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
        fallback=_fallback(cloud, server),
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
            ready = ", ".join(sorted({_tag(i) for i in images if is_ready(i)})) or "none"
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
        tag=_tag(image),
        cloud=cloud.name,
        server=server,
        image_name=image.name,
        image=image,
        upload=None,
        rebuild=True,
        fallback=_fallback(cloud, server),
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
        upload = execute_upload(cloud, plan.upload, note=_say)
        outcome.upload_reused = upload.reused
        if upload.reused:
            _say(f"{upload.image.name}: already in Glance ({upload.image.id}), reused")
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


def promote(target: Target, ref: str, *, store: Path | None = None) -> Outcome:
    """Attested image -> Glance -> rebuild -> probe (-> automatic rollback)."""
    return execute(target, plan_promote(target, ref, store=store))


def rollback(target: Target, tag: str | None = None) -> Outcome:
    """Rebuild from `tag`'s ready image, or the image live before the current one."""
    return execute(target, plan_rollback(target, tag))


def preview(target: Target, plan: ReleasePlan) -> Plan:
    """The plan as `--dry-run` prints it: every write to Glance and Nova, in order,
    with the exact name, size and properties of an upload. Reads only; a conversion
    needed to know the size goes to a temporary directory."""
    server = plan.server
    steps: list[Step] = []
    if plan.upload is not None:
        steps += _upload_steps(plan.upload)
    image_id = plan.image.id if plan.image else None
    if plan.rebuild:
        steps.append(
            Step(
                "record",
                plan.image_name,
                f"history in its Glance properties: {plan.action} rebuilding, then the outcome",
                {"image_id": image_id},
            )
        )
        steps.append(
            Step(
                "rebuild",
                f"server {server.name} ({server.id}, {server.status})",
                f"from {plan.current} to {plan.image_name} ({plan.reason}); root disk "
                "replaced, volumes and addresses kept",
                {
                    "server": server.name,
                    "server_id": server.id,
                    "server_status": server.status,
                    "from_image": plan.current,
                    "from_image_id": server.image_id,
                    "to_image": plan.image_name,
                    "to_image_id": image_id,
                },
            )
        )
    else:
        steps.append(
            Step(
                "record",
                plan.image_name,
                f"{server.name} already runs it: not rebuilt; the probe's outcome goes "
                "into its Glance history",
                {"image_id": image_id},
            )
        )
    port = "" if target.ssh_port == 22 else f":{target.ssh_port}"
    steps.append(
        Step(
            "probe",
            f"{target.ssh_user}@{plan.address}{port}",
            f"ssh, boot finished, no failed units, dashboard on http :{target.http_port} "
            f"(https :{target.https_port}), no drift; within {target.probe_timeout:.0f} s",
            {
                "address": plan.address,
                "ssh_port": target.ssh_port,
                "http_port": target.http_port,
                "https_port": target.https_port,
                "timeout_seconds": target.probe_timeout,
            },
        )
    )
    if plan.rebuild:
        if plan.fallback is not None and plan.fallback.id != image_id:
            steps.append(
                Step(
                    "on-failure",
                    f"rebuild {server.name} from {plan.fallback.name}",
                    "automatic rollback to what it runs now, then probe that",
                    {"image": plan.fallback.name, "image_id": plan.fallback.id},
                )
            )
        else:
            steps.append(
                Step(
                    "on-failure",
                    "no automatic rollback",
                    f"{server.name} runs no image to go back to ({server.status} on "
                    f"{plan.current})",
                )
            )
    verb = "is rebuilt" if plan.rebuild else "stays"
    return Plan(
        command=f"{plan.action} {plan.tag}",
        target=f"server {server.name} on cloud {plan.cloud}",
        steps=tuple(steps),
        summary=f"then {server.name} {verb} on {plan.image_name} (now on {plan.current})",
    )


def _upload_steps(upload: UploadPlan) -> list[Step]:
    image_dir, tag = upload.image_dir, upload.image_dir.name
    steps = [
        Step(
            "delete",
            f"{i.name} ({i.id})",
            f"unfinished upload ({i.status}), never used",
            {"image_id": i.id, "status": i.status},
        )
        for i in upload.delete
    ]
    steps += [
        Step(
            "delete",
            f"{m.name} ({m.id})",
            "release metadata no ready upload names",
            {"image_id": m.id},
        )
        for m in upload.stale_meta
    ]
    meta = release_meta.describe(image_dir)
    meta_step = Step(
        "upload",
        str(meta["name"]),
        f"release metadata ({', '.join(meta['files'])}), {meta['size']} bytes, "  # type: ignore[arg-type]
        f"private and hidden, tags {release_meta.META_MARK} {tag}",
        {"name": meta["name"], "size": meta["size"], "files": meta["files"], "hidden": True},
    )
    if upload.reuse is not None:
        steps.append(
            Step(
                "reuse",
                f"{upload.reuse.name} ({upload.reuse.id})",
                "ready in Glance with this disk's digest: not converted or uploaded again",
                {"image_id": upload.reuse.id, "size": upload.reuse.size},
            )
        )
        return [*steps, meta_step] if upload.attach_meta else steps
    cached = cached_qcow(image_dir)
    if cached is None:
        steps.append(
            Step(
                "convert",
                str(image_dir / DISK),
                f"to compressed qcow2 {image_dir / QCOW} (kept as the cache)",
            )
        )
    size = cached.size if cached else measure_qcow(image_dir)
    properties = {**image_properties(image_dir), STATE: UPLOADING}
    steps.append(
        Step(
            "upload",
            upload.name,
            f"qcow2, {human_size(size)} ({size} bytes), private, tags {MARK} {tag}; "
            f"{STATE} becomes {READY} once Glance's size and hash match",
            {
                "name": upload.name,
                "size": size,
                "disk_format": "qcow2",
                "visibility": "private",
                "tags": [MARK, tag],
                "properties": properties,
            },
            tuple(f"{k}={v}" for k, v in sorted(properties.items())),
        )
    )
    return [*steps, meta_step]


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr)


# -- releases and prune -----------------------------------------------------------


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


def releases(cloud: Cloud, server_name: str, *, store: Path | None = None) -> Releases:
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
        tag = _tag(image)
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
        if is_ready(image) or _age_seconds(image.updated_at) > STALE_UPLOAD_SECONDS:
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
    tags = {_tag(i) for i in ours(images) if i.id not in gone}
    return [
        m
        for m in metas
        if m.id not in named
        and (_age_seconds(m.updated_at) > STALE_UPLOAD_SECONDS or m.prop("aurora_tag") not in tags)
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
