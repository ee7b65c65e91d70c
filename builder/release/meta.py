"""What travels with a release: its manifest, rendered files and attestation, in Glance.

`audit`, `diff` and `render --diff` need an image's manifest.json and
rendered.tar. So that any operator with cloud access can run them, not only
the machine that built the image, `promote` uploads these files beside the
disk as a small companion Glance image, `aurora-<tag>-meta`: a gzip'd tar,
private and hidden (`os_hidden`, so `openstack image list` shows it only with
`--hidden`), tagged `aurora-release-meta` and the image tag. The disk image
names it in `aurora_meta_image` and records its sha256 in `aurora_meta_sha256`
(beside the existing `aurora_manifest_sha256`), so what is fetched is checked
against the release it belongs to. Glance properties hold 255 characters
each, too little for a manifest; an image holds any size, has a checksum and
is deleted with its release by `glance-prune`.

Not inside the disk: the manifest records the disk's own digest and the
packages installed into it, so it cannot be part of those bytes, and a
fetch from Glance works while the host is down.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tempfile
from pathlib import Path

from builder.errors import AuroraError
from builder.image.store import ATTESTATION, MANIFEST, RENDERED_TAR, read_manifest, sha256_file
from builder.release.cloud import Cloud, GlanceImage

META_MARK = "aurora-release-meta"
KIND = "release-metadata"
FILES = (MANIFEST, RENDERED_TAR, ATTESTATION)
SETTLE_SECONDS = 120.0
# A manifest and its rendered tree are kilobytes; anything this big is not ours.
MAX_BYTES = 64 << 20


class MetadataError(AuroraError):
    """A release's metadata in Glance is missing or does not match the release."""


def meta_name(tag: str) -> str:
    return f"aurora-{tag}-meta"


def bundle(image_dir: Path) -> bytes:
    """The files as a gzip'd tar, byte-identical for the same files (no times, owners)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in FILES:
            path = image_dir / name
            if not path.is_file():
                continue  # rendered.tar / attestation.json of older or untested images
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def unpack(data: bytes, dest: Path) -> list[str]:
    """Write the bundle's known files into `dest`; any other member is ignored."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if member.name in FILES and handle is not None:
                (dest / member.name).write_bytes(handle.read())
                written.append(member.name)
    return written


def companions(cloud: Cloud, tag: str | None = None) -> list[GlanceImage]:
    """Metadata images in Glance (of one tag, or all), newest first."""
    found = cloud.images(META_MARK, hidden=True)
    return [i for i in found if tag is None or i.prop("aurora_tag") == tag]


def upload(cloud: Cloud, image_dir: Path, tag: str) -> tuple[GlanceImage, str]:
    """Upload the bundle as a hidden companion image; return it and its sha256."""
    data = bundle(image_dir)
    digest = hashlib.sha256(data).hexdigest()
    created = cloud.create_image(
        meta_name(tag),
        disk_format="raw",
        tags=[META_MARK, tag],
        properties={
            "aurora_tag": tag,
            "aurora_kind": KIND,
            "aurora_meta_sha256": digest,
            "aurora_manifest_sha256": sha256_file(image_dir / MANIFEST),
        },
        hidden=True,
    )
    with tempfile.TemporaryDirectory(prefix="aurora-meta-") as scratch:
        path = Path(scratch) / f"{meta_name(tag)}.tar.gz"
        path.write_bytes(data)
        cloud.upload(created.id, path, lambda _n: None)
    image = cloud.wait_image(created.id, SETTLE_SECONDS)
    if image.status != "active" or image.size != len(data):
        cloud.delete_image(image.id)
        raise MetadataError(
            f"Glance kept {image.name} as {image.status}, {image.size} bytes, not the "
            f"{len(data)} bytes sent; it was deleted, promote again"
        )
    return image, digest


def fetch(cloud: Cloud, release: GlanceImage, dest: Path) -> Path:
    """The release's manifest.json, rendered.tar and attestation.json, checked, in `dest`.

    `dest` then reads like an image directory without the disk: what diff,
    render --diff and audit need.
    """
    tag = release.prop("aurora_tag") or release.name
    meta_id = release.prop("aurora_meta_image")
    if not meta_id:
        raise MetadataError(
            f"{release.name} ({release.id}) in Glance carries no release metadata "
            "(uploaded before it did); run this where the image was built, or "
            f"`aurora-image promote {tag}` there once to attach it"
        )
    meta = cloud.image(meta_id)
    if meta.size is not None and meta.size > MAX_BYTES:
        raise MetadataError(f"{meta.name} ({meta_id}) is {meta.size} bytes, not release metadata")
    data = cloud.download(meta_id)
    digest = hashlib.sha256(data).hexdigest()
    if digest != release.prop("aurora_meta_sha256"):
        raise MetadataError(
            f"{meta.name} ({meta_id}) has sha256 {digest[:16]}, but {release.name} records "
            f"{(release.prop('aurora_meta_sha256') or '?')[:16]}; it is not this release's "
            f"metadata: promote {tag} again from where it was built"
        )
    try:
        unpack(data, dest)
    except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile) as exc:
        raise MetadataError(f"{meta.name} ({meta_id}): cannot unpack it ({exc})") from None
    manifest = dest / MANIFEST
    if not manifest.is_file() or sha256_file(manifest) != release.prop("aurora_manifest_sha256"):
        raise MetadataError(
            f"{meta.name} ({meta_id}): its {MANIFEST} is not the one {release.name} records"
        )
    return dest


def describe(image_dir: Path) -> dict[str, object]:
    """For a dry run: the companion's name, size and the files in it."""
    data = bundle(image_dir)
    names = [n for n in FILES if (image_dir / n).is_file()]
    return {"name": meta_name(read_manifest(image_dir).tag), "size": len(data), "files": names}
