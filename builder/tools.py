"""Where the external tools live on the build machine (inside the cache).

The Makefile's setup step puts uv and mkosi into the cache (builder.paths.Paths.cache);
these helpers only find them there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.errors import BuildError

MKOSI_VERSION = "25.3"


def uv_binary(cache: Path) -> Path:
    candidates = [cache / "uvboot/bin/uv"]
    found = shutil.which("uv")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.exists():
            return path
    raise BuildError("uv not found; run `make setup` to install it into the cache")


def uv_command(cache: Path) -> list[str]:
    return [str(uv_binary(cache))]


def mkosi_command(cache: Path) -> tuple[list[str], dict[str, str]]:
    """mkosi runs with Debian's /usr/bin/python3 from an unpacked .deb."""
    site = cache / f"mkosi-{MKOSI_VERSION}/usr/lib/python3/dist-packages"
    if not (site / "mkosi").is_dir():
        raise BuildError(f"mkosi {MKOSI_VERSION} not found in {site}; run `make setup`")
    return ["/usr/bin/python3", "-m", "mkosi"], {"PYTHONPATH": str(site)}
