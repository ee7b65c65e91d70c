"""Where this run keeps its images and caches: resolved once, at the edge.

The CLI, bench and the test fixtures call `Paths.from_env()` (the one place
that reads AURORA_IMAGES, AURORA_CACHE, AURORA_BUILD_CACHE and SSL_CERT_FILE); everything
below takes the Paths, or the one directory it needs, as an argument. So no
module deep inside reads the environment, and `verify` sends a rebuild to a
scratch store and an empty build cache by passing other Paths, not by
swapping os.environ.

The caches that hold one entry per key (bases, tools trees) keep only their most
recently used entries: `prune_cache`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

# The checkout this builder runs from (its units, mkosi config, hosts/, images/).
REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("/var/cache/aurora-image")
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Paths:
    """The directories one run works in."""

    repo: Path
    # The image store: images/<tag>/ (builder.image.store).
    images: Path
    # Tools and downloads (mkosi, uv, packages, wheels, the .deb store, git
    # mirrors, running VMs): addressed by version and hash, so reusing them
    # cannot change an image. Outside the repo, so a fresh clone builds incrementally.
    cache: Path
    # mkosi's incremental cache, workspace and outputs: what `verify` starts empty.
    build_cache: Path
    # The build host's CA bundle (SSL_CERT_FILE): the install inside the image
    # trusts the same TLS path to PyPI as the host; used by the build only.
    ca_bundle: Path = DEFAULT_CA_BUNDLE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if env is None else env
        cache = Path(env.get("AURORA_CACHE") or DEFAULT_CACHE)
        return cls(
            repo=REPO,
            images=Path(env.get("AURORA_IMAGES") or REPO / "images"),
            cache=cache,
            build_cache=Path(env.get("AURORA_BUILD_CACHE") or cache),
            ca_bundle=Path(env.get("SSL_CERT_FILE") or DEFAULT_CA_BUNDLE),
        )

    @classmethod
    def under(cls, root: Path) -> Paths:
        """A store and caches of their own below `root` (a test's tmp_path)."""
        cache = root / "cache"
        return cls(repo=REPO, images=root / "images", cache=cache, build_cache=cache)

    def scratch(self, root: Path) -> Paths:
        """The same tools, with a store and build cache of their own under `root`."""
        return replace(self, images=root / "images", build_cache=root / "cache")


def prune_cache(entries: Iterable[Path], keep: int) -> list[Path]:
    """Remove all but the `keep` newest of a cache's entries (directories; a use
    touches its entry, so newest is most recently used); the ones removed."""
    old = sorted(entries, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old
