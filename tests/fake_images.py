"""Small fake images for the store and diff tests: real layout, tiny disks.

The manifest's rendered digests and rendered.tar come from builder.image.build's
own functions, so the tests read exactly what a build writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.image.build import rendered_manifest, rendered_tar
from builder.image.manifest import Artifact, InputsRecord, Manifest
from builder.image.store import (
    ARTIFACTS,
    BUILD_LOG,
    CMDLINE,
    DISK,
    MANIFEST,
    RENDERED_TAR,
    sha256_file,
    write_manifest,
)
from builder.render.engine import File, Tree

UNIT = "/etc/systemd/system/aurora-dashboard.service"
BASE_TREE: Tree = {
    UNIT: File(b"[Unit]\nDescription=Aurora dashboard\n\n[Service]\nExecStart=/opt/panel serve\n"),
    "/etc/aurora/source-sync/cl61.json": File(b'{"stream": "cl61"}\n'),
    "/etc/nginx/sites-enabled/aurora.conf": File(link="../sites-available/aurora.conf"),
    "/data": File(mode=0o755, directory=True),
}
BASE_DEBIAN = {"nginx": "1.26.3-1", "rsync": "3.4.1-1", "systemd": "257.8-1"}
BASE_PYTHON = {"panel": "1.5.0", "bokeh": "3.8.0"}


def make_image(
    store: Path,
    tag: str,
    *,
    built_at: float,
    tree: Tree | None = None,
    debian: dict[str, str] | None = None,
    python: dict[str, str] | None = None,
    disk: bytes = b"disk",
    with_tar: bool = True,
) -> Path:
    """An image directory as builder.image.build.build leaves it, built at `built_at`."""
    tree = BASE_TREE if tree is None else tree
    path = store / tag
    path.mkdir(parents=True)
    kernel, initrd = ARTIFACTS[1:]
    (path / DISK).write_bytes(disk * 1024)
    (path / kernel).write_bytes(b"kernel")
    (path / initrd).write_bytes(b"initrd")
    (path / CMDLINE).write_text("root=PARTLABEL=root-x86-64 ro\n")
    (path / BUILD_LOG).write_text("built\n")
    if with_tar:
        (path / RENDERED_TAR).write_bytes(rendered_tar(tree))
    manifest = Manifest(
        tag=tag,
        release=tag.split("-")[0],
        hostname="data.gamb2le.co.uk",
        inputs=InputsRecord(tag.split("-")[-1] * 5, {"spec": tag}, {}),
        source_date_epoch=1700000000,
        seed="00000000-0000-0000-0000-000000000000",
        cmdline="root=PARTLABEL=root-x86-64 ro",
        artifacts={
            name: Artifact(sha256_file(path / name), (path / name).stat().st_size)
            for name in ARTIFACTS
        },
        rendered=rendered_manifest(tree),
        debian_packages=BASE_DEBIAN if debian is None else debian,
        python_packages=BASE_PYTHON if python is None else python,
    )
    write_manifest(path, manifest)
    os.utime(path / MANIFEST, (built_at, built_at))
    return path
