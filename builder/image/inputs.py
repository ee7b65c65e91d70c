"""What goes into an image, and the tag derived from it.

A tag is the spec's release plus a digest of every input: the spec, the unit
templates, the mkosi configuration and extra tree, the locks, the app source
and the builder itself. Same inputs, same tag; any change, a new tag. The
build's clock (SOURCE_DATE_EPOCH) and partition seed come from the same
inputs, never from the wall clock.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from builder.spec.model import HostSpec

REPO = Path(__file__).resolve().parents[2]

# Paths below the repository that are inputs of every image.
REPO_INPUTS = (
    "mkosi.conf",
    "mkosi.repart",
    "mkosi.tools-sandbox",
    "mkosi.tools-tree",
    "mkosi.extra",
    "mkosi.postinst.chroot",
    "mkosi.prepare.chroot",
    "mkosi.postinst.d",
    "units",
    "locks",
    "pyproject.toml",
)

# The builder modules that decide an image's bytes (the CLI, the QEMU harness
# and the release tooling do not, so changing them does not force a rebuild).
BUILDER_INPUTS = (
    "spec/model.py",
    "spec/validators.py",
    "spec/host.py",
    "spec/flows.py",
    "spec/deploy.py",
    "spec/yaml_lines.py",
    "spec/systemd_values.py",
    "render/carried.py",
    "render/configs.py",
    "render/engine.py",
    "render/layout.py",
    "render/names.py",
    "render/produce.py",
    "render/tree.py",
    "render/unitfile.py",
    "image/inputs.py",
    "image/app_lock.py",
    "image/mkosi.py",
    "image/build.py",
    "image/base.py",
    "image/layer.py",
    "image/tools_tree.py",
    "image/debian.py",
    "image/debrepo.py",
    "image/sizes.py",
    "image/uki.py",
)

# The modules the build imports that are not inputs, each with why it cannot change
# an image's bytes (tests/unit/image/test_tag_inputs.py: every module the build
# imports is in one of the two tables).
NOT_BUILDER_INPUTS = {
    "errors.py": "error messages and exit statuses",
    "paths.py": "where images and caches live",
    "progress.py": "progress output",
    "tools.py": "where the build tools live (mkosi's version is pinned in scripts/setup-host.sh)",
    "host/remote.py": "ssh to a running host (secrets check), not used by a build",
    "spec/credcheck.py": "refuses secrets in a spec; never changes a value",
    "spec/errors.py": "how spec mistakes are reported",
    "image/debian_lock.py": "reads and compares the Debian lock, itself an input (locks/)",
    "image/debfetch.py": "fetches the lock's .debs, each taken only with the lock's sha256",
    "image/debstore.py": ".debs by sha256: a file is used only if it has the digest the lock names",
    "image/gpt.py": "reads a built disk's partition table",
    "image/manifest.py": "the record that describes an image, not the image",
    "image/store.py": "where a built image is kept",
}

# Never part of the app in the image: VCS metadata and dotfiles (.git, .env, editor
# state) may hold credentials, and caches are not source.
APP_IGNORE = ("__pycache__", ".*")


def app_file(relative: Path) -> bool:
    """Whether a file of the app tree goes into the image (see APP_IGNORE)."""
    return not any(part == "__pycache__" or part.startswith(".") for part in relative.parts)


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts
    )


def digest_paths(paths: list[tuple[str, Path]]) -> dict[str, str]:
    """sha256 of each file (a symlink hashes its target text), keyed by name."""
    digests: dict[str, str] = {}
    for name, root in paths:
        for path in _files(root):
            if name == "app" and not app_file(path.relative_to(root)):
                continue
            key = name if path == root else f"{name}/{path.relative_to(root).as_posix()}"
            data = f"symlink:{path.readlink()}".encode() if path.is_symlink() else path.read_bytes()
            mode = "x" if path.is_file() and path.stat().st_mode & 0o111 else "-"
            digests[key] = hashlib.sha256(mode.encode() + data).hexdigest()
    return dict(sorted(digests.items()))


@dataclass(frozen=True)
class Inputs:
    """Every input of one build with its digest, and what follows from them."""

    release: str
    files: dict[str, str]
    extra: dict[str, str]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for key, value in [*self.files.items(), *sorted(self.extra.items())]:
            h.update(f"{key}\0{value}\n".encode())
        return h.hexdigest()

    @property
    def tag(self) -> str:
        return f"{self.release}-{self.digest[:12]}"

    @property
    def seed(self) -> str:
        """Partition UUID seed for systemd-repart."""
        return str(uuid.UUID(self.digest[:32]))

    @property
    def source_date_epoch(self) -> int:
        """The first day of the spec's release (YYYY.MM[.DD]), in UTC."""
        parts = [int(p) for p in self.release.split(".")[:3] if p.isdigit()]
        year, month, day = [*parts, 1, 1][:3]
        return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def collect(spec: HostSpec, *, update_debian: bool = False) -> Inputs:
    """Digest the spec (the files it was loaded from), the repo's build inputs and the
    app source. A build that takes the mirror's Debian packages instead of the lock's
    files (`update_debian`) gets a tag of its own: it is not the image the lock names."""
    source = spec.source
    paths = [("spec", source.path)]
    # An overlay's bytes depend on its base too (staging.yml on aurora.yml).
    paths += [(f"spec-base/{n}", p) for n, p in enumerate(source.bases, 1)]
    paths += [(name, REPO / name) for name in REPO_INPUTS if (REPO / name).exists()]
    paths += [(f"builder/{name}", REPO / "builder" / name) for name in BUILDER_INPUTS]
    if source.app_dir is not None:
        paths.append(("app", source.app_dir))
    for repo in spec.apt_repositories:
        key = source.apt_keys[repo.name]
        if key.is_file():
            paths.append((f"apt-key/{repo.name}", key))
    extra = {}
    if spec.dashboard.app.git is not None:
        extra = {"app.git": spec.dashboard.app.git, "app.ref": spec.dashboard.app.ref or ""}
    if update_debian:
        extra["debian"] = "resolved from the mirror, not the lock"
    return Inputs(release=spec.release, files=digest_paths(paths), extra=extra)
