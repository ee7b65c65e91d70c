"""Where the external tools and caches live on the build machine.

Caches stay outside the repository (AURORA_CACHE, default
/var/cache/aurora-image) so a fresh clone rebuilds incrementally. The
Makefile's setup step puts uv and mkosi there; these helpers only find them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from builder.errors import BuildError

MKOSI_VERSION = "25.3"


def cache_dir() -> Path:
    return Path(os.environ.get("AURORA_CACHE", "/var/cache/aurora-image"))


def build_cache_dir() -> Path:
    """mkosi's incremental cache, workspace and outputs: what `verify` starts empty.

    Tools (mkosi, uv) and downloads (packages, wheels) stay in cache_dir(): they
    are addressed by version and hash, so reusing them cannot change an image.
    """
    return Path(os.environ.get("AURORA_BUILD_CACHE", cache_dir()))


def uv_binary() -> Path:
    candidates = [cache_dir() / "uvboot/bin/uv"]
    found = shutil.which("uv")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.exists():
            return path
    raise BuildError("uv not found; run `make setup` to install it into the cache")


def uv_command() -> list[str]:
    return [str(uv_binary())]


def mkosi_command() -> tuple[list[str], dict[str, str]]:
    """mkosi runs with Debian's /usr/bin/python3 from an unpacked .deb."""
    site = cache_dir() / f"mkosi-{MKOSI_VERSION}/usr/lib/python3/dist-packages"
    if not (site / "mkosi").is_dir():
        raise BuildError(f"mkosi {MKOSI_VERSION} not found in {site}; run `make setup`")
    return ["/usr/bin/python3", "-m", "mkosi"], {"PYTHONPATH": str(site)}
