"""Evidence kept before a rollback: the failing server's journal and console log.

A rollback rebuild replaces the root disk, and with it the journal (volatile
state lives in /var on the root) and the console of the failed boot; after
it nobody can find out why the image failed. So before any rollback rebuild
(automatic after a failed probe or soak, or an operator's `rollback`) this
module takes the journal of the current boot over ssh and Nova's console log,
and keeps them with the release record: a gzip'd tar uploaded as a hidden
companion Glance image `aurora-<tag>-evidence-<UTC stamp>` (tag
`aurora-evidence`, like the release metadata of builder.release.meta), named
on the failing image (`aurora_evidence_image`), and a copy in the local
state directory. Taking evidence never blocks the rollback: what could not
be read is said inside the bundle and on stderr.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from builder.errors import AuroraError
from builder.release.cloud import Cloud, CloudError, GlanceImage, Server

MARK = "aurora-evidence"
JOURNAL = "journalctl -b --no-pager -o short-iso-precise | tail -n 20000"
CONSOLE_LINES = 5000
SETTLE_SECONDS = 120.0


@dataclass(frozen=True)
class Evidence:
    """Where a failed image's journal and console were kept, and why they were taken."""

    local: Path
    glance: GlanceImage | None
    sha256: str
    reason: str

    def describe(self) -> str:
        where = f"Glance {self.glance.name} ({self.glance.id}), " if self.glance else ""
        return f"evidence kept: {where}{self.local}"


def bundle(files: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def keep(
    cloud: Cloud,
    server: Server,
    image: GlanceImage,
    reason: str,
    *,
    journal: Callable[[], str],
    state: Path,
    note: Callable[[str], None],
) -> Evidence:
    """Take the journal (`journal()`, an ssh read) and console log; keep them locally
    and in Glance; name them on `image`. Never raises for a missing part."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = image.prop("aurora_tag") or image.name
    files = {"reason.txt": f"{stamp} {server.name} on {image.name}: {reason}\n"}
    try:
        files["journal.txt"] = journal()
    except (AuroraError, OSError) as exc:
        files["journal.txt"] = f"(journal not read: {exc})\n"
    try:
        files["console.txt"] = cloud.console_output(server.id, CONSOLE_LINES)
    except CloudError as exc:
        files["console.txt"] = f"(console log not read: {exc})\n"
    data = bundle(files)
    digest = hashlib.sha256(data).hexdigest()
    local = state / "evidence" / server.name / f"{stamp}-{tag}.tar.gz"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    uploaded = None
    try:
        uploaded = _upload(cloud, f"aurora-{tag}-evidence-{stamp}", tag, server, digest, data)
        cloud.set_properties(image.id, aurora_evidence_image=uploaded.name,
                             aurora_evidence_sha256=digest)  # fmt: skip
    except (CloudError, AuroraError) as exc:
        note(f"evidence not uploaded to Glance ({exc}); kept in {local}")
    found = Evidence(local, uploaded, digest, reason)
    note(found.describe())
    return found


def _upload(
    cloud: Cloud, name: str, tag: str, server: Server, digest: str, data: bytes
) -> GlanceImage:
    created = cloud.create_image(
        name,
        disk_format="raw",
        tags=[MARK, tag],
        properties={
            "aurora_tag": tag,
            "aurora_kind": "evidence",
            "aurora_server": server.name,
            "aurora_evidence_sha256": digest,
        },
        hidden=True,
    )
    with tempfile.TemporaryDirectory(prefix="aurora-evidence-") as scratch:
        path = Path(scratch) / f"{name}.tar.gz"
        path.write_bytes(data)
        cloud.upload(created.id, path, lambda _n: None)
    return cloud.wait_image(created.id, SETTLE_SECONDS)


def unpack(data: bytes) -> dict[str, str]:
    """A bundle's files by name (for reading evidence back)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                out[member.name] = handle.read().decode(errors="replace")
    return out
