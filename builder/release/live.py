"""An image's manifest and rendered files from any clone: the local store, else Glance.

`audit`, `diff` and `render --diff` name an image by tag, by directory, or as
`live`: the image Nova says the deploy server runs. A tag the local store
does not hold is looked up in Glance, whose upload carries the release's
manifest and rendered files (builder.release.meta), checked against the
digests on the image; they are unpacked into a scratch directory that reads
like an image directory without the disk. So an operator with cloud access
and an empty `images/` sees what the build machine sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import AuroraError, UnknownTag
from builder.image.store import MANIFEST, resolve_image, sha256_file
from builder.release import meta as release_meta
from builder.release.cloud import Cloud, CloudError, GlanceImage, ImageNotFound, Server
from builder.release.glance import glance_images, glance_name, is_ready

LIVE = "live"


class LiveError(AuroraError):
    """What is live could not be found out (no server, or not an image we released)."""


@dataclass(frozen=True)
class Found:
    """A resolved image: a directory with its manifest (and rendered.tar), and where from."""

    path: Path
    tag: str
    origin: str  # e.g. "images/2026.11-…", "Glance image aurora-… (id)"


@dataclass
class ImageFinder:
    """Resolves image references; connects to the cloud only when a reference needs it."""

    scratch: Path
    store: Path  # the local image store, asked first
    connect: Callable[[], Cloud] | None = None  # None: the local store only
    server: Callable[[], str] | None = None  # the deploy server's name, asked for `live`
    _cloud: Cloud | None = field(default=None, repr=False)

    def cloud(self) -> Cloud:
        if self._cloud is None:
            if self.connect is None:
                raise LiveError("no cloud to ask: pass --os-cloud or set deploy.cloud")
            self._cloud = self.connect()
        return self._cloud

    def live(self) -> tuple[Server, GlanceImage]:
        """The deploy server and the Glance image it runs (Nova's answer)."""
        cloud = self.cloud()
        if self.server is None:
            raise LiveError("no server to ask what is live: pass --server or set deploy.server")
        server = cloud.server(self.server())
        if not server.image_id:
            raise LiveError(f"server {server.name} runs no image ({server.status})")
        try:
            image = cloud.image(server.image_id)
        except ImageNotFound:
            raise LiveError(
                f"server {server.name} runs image {server.image_id}, which Glance no longer "
                "holds; name the tag instead of `live`"
            ) from None
        if not image.prop("aurora_tag"):
            raise LiveError(
                f"server {server.name} runs {image.name or image.id}, not an image "
                "aurora-image released; name a tag instead of `live`"
            )
        return server, image

    def resolve(self, ref: str) -> Found:
        """A tag or directory from the local store, else the release's files from Glance."""
        if ref == LIVE:
            server, image = self.live()
            found = self._from_glance(image)
            return Found(found.path, found.tag, f"live on {server.name}, {found.origin}")
        try:
            path = resolve_image(ref, self.store)
            return Found(path, path.name, str(path))
        except UnknownTag as exc:
            if self.connect is None or "/" in ref:
                raise
            missing = exc
        try:
            ready = [i for i in glance_images(self.cloud()) if i.name == glance_name(ref)]
        except CloudError as exc:
            raise UnknownTag(f"{missing}; Glance could not be asked either: {exc}") from None
        ready = [i for i in ready if is_ready(i)]
        if not ready:
            raise UnknownTag(
                f"{missing}; Glance of cloud {self.cloud().name} has no ready "
                f"{glance_name(ref)} either"
            )
        return self._from_glance(ready[0])

    def _from_glance(self, image: GlanceImage) -> Found:
        """The release's files: the local store's copy when it is the same manifest
        (no download), else the metadata that travelled with the upload."""
        tag = image.prop("aurora_tag") or image.name
        local: Path | None = None
        with contextlib.suppress(UnknownTag):
            local = resolve_image(tag, self.store)
        if local is not None and sha256_file(local / MANIFEST) == image.prop(
            "aurora_manifest_sha256"
        ):
            return Found(local, tag, str(local))
        dest = self.scratch / tag
        if not (dest / MANIFEST).is_file():
            try:
                release_meta.fetch(self.cloud(), image, dest)
            except release_meta.MetadataError:
                if local is None:
                    raise
                return Found(local, tag, str(local))  # an upload from before metadata
        return Found(dest, tag, f"Glance image {image.name} ({image.id})")
