"""The base image: what mkosi builds (packages, the app's venv, kernel,
initrd, the static tree, the disk with empty config slots), kept in the build
cache by a key of everything mkosi reads, so builds that differ only in the
rendered configuration share it (builder.image.layer makes their config layer).

The key is a digest of mkosi's inputs, never of the spec as a whole: the repo's
mkosi files, the locks (the app's lock included), the builder's image modules, and what the spec
hands mkosi (packages, the app directory, the apt sources, release). A spec
edit that changes none of those (a schedule, a header, a description) reuses
the base byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from builder.image import mkosi
from builder.image.gpt import partition, partition_digest
from builder.image.inputs import Inputs, digest_paths
from builder.image.layer import ROOT
from builder.paths import prune_cache
from builder.render.tree import atomic_write

# Inputs of the tag that never reach mkosi: they shape the config layer only.
LAYER_ONLY = (
    "spec",
    "spec-base/",
    "units/",
    "builder/spec/",
    "builder/render/",
    "builder/image/layer.py",
    "app/",  # the app's source goes into the layer; its venv (the lock) is the base's
)
LAYER_ONLY_EXTRA = ("app.git", "app.ref")
# What mkosi leaves in its output directory that the image is made from.
OUTPUTS = (
    "aurora.raw",
    "aurora.vmlinuz",
    "aurora.initrd",
    "aurora.efi",
    "aurora.manifest",
    "python-packages.json",
    "aurora-sizes.json",
)
LOG = "build.log"
RECORD = "base.json"
# Bases kept in the build cache (each ~1.3 GB allocated): the newest ones.
KEEP = 2


@dataclass(frozen=True)
class Base:
    key: str
    path: Path
    reused: bool

    @property
    def disk(self) -> Path:
        return self.path / "aurora.raw"


def base_key(inputs: Inputs, job: mkosi.MkosiJob, release: str) -> str:
    """Digest of what mkosi reads for this job (the rendered tree excluded)."""
    h = hashlib.sha256()
    for key, value in inputs.files.items():
        if not key.startswith(LAYER_ONLY):
            h.update(f"file\0{key}\0{value}\n".encode())
    for key, value in sorted(inputs.extra.items()):
        if key in LAYER_ONLY_EXTRA:
            continue
        h.update(f"extra\0{key}\0{value}\n".encode())
    trees = [("stage", job.stage), *((f"sandbox{i}", t) for i, t in enumerate(job.sandbox_trees))]
    for key, value in digest_paths(trees).items():
        h.update(f"tree\0{key}\0{value}\n".encode())
    fields = {
        "release": release,
        "packages": list(job.packages),
        "environment": job.environment,
        "source_date_epoch": job.source_date_epoch,
        "locked": job.local_mirror is not None,
    }
    h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()


def seed_of(key: str) -> str:
    """The base's partition seed (systemd-repart): from its key, not the tag."""
    return str(uuid.UUID(key[:32]))


def ensure(job: mkosi.MkosiJob, key: str, bases: Path, *, progress: bool) -> Base:
    """The base of this key: from the cache, or built now (then the oldest pruned)."""
    path = bases / key[:16]
    if (path / RECORD).is_file():
        path.touch()  # newest use first when pruning
        return Base(key, path, reused=True)
    partial = bases / f".{key[:16]}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    mkosi.run(job, partial / LOG, progress=progress)
    for name in OUTPUTS:
        (job.output_dir / name).replace(partial / name)
    atomic_write(partial / RECORD, (json.dumps({"key": key}, indent=2) + "\n").encode())
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    prune_cache((p for p in bases.iterdir() if (p / RECORD).is_file()), KEEP)
    return Base(key, path, reused=False)


def root_sha256(base: Base) -> str:
    """sha256 of the base's root partition (the manifest's root_partition_sha256),
    hashed once per base and kept in its record."""
    record = json.loads((base.path / RECORD).read_text())
    if "root_partition_sha256" not in record:
        record["root_partition_sha256"] = partition_digest(base.disk, partition(base.disk, ROOT))
        atomic_write(base.path / RECORD, (json.dumps(record, indent=2) + "\n").encode())
    return str(record["root_partition_sha256"])
