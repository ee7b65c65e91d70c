"""The dashboard app's Python lock: pinned versions with wheel hashes.

The spec names the top-level pins; `aurora-image lock` resolves them for the
image's Python (Debian trixie: CPython 3.13, manylinux x86-64) into
`locks/app-requirements.txt`, with a header recording which pins it was made
from. A build with a lock that no longer matches the spec stops and says so,
so a build never floats.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from builder.errors import BuildError
from builder.image.inputs import REPO
from builder.spec.model import HostSpec
from builder.tools import uv_command

LOCK_FILE = REPO / "locks" / "app-requirements.txt"
TARGET_PYTHON = "3.13"
TARGET_PLATFORM = "x86_64-manylinux_2_28"
_HEADER = "# aurora-image lock; requirements digest: "


def requirements_digest(spec: HostSpec) -> str:
    text = "\n".join(sorted(spec.dashboard.requirements))
    return hashlib.sha256(f"{TARGET_PYTHON} {TARGET_PLATFORM}\n{text}".encode()).hexdigest()


def check_lock(spec: HostSpec, lock: Path = LOCK_FILE) -> Path:
    """Return the lock file if it matches the spec, else explain how to refresh it."""
    if not lock.exists():
        raise BuildError(f"{lock}: missing; run `aurora-image lock` to create it")
    first = lock.read_text().splitlines()[0] if lock.stat().st_size else ""
    if first != _HEADER + requirements_digest(spec):
        raise BuildError(
            f"{lock}: stale, dashboard.requirements changed in the spec; "
            "run `aurora-image lock` and commit the result"
        )
    return lock


def write_lock(spec: HostSpec, cache: Path, lock: Path = LOCK_FILE) -> Path:
    """Resolve the spec's pins with hashes for the image's Python and platform
    (with the uv that `make setup` put into `cache`)."""
    with tempfile.TemporaryDirectory() as tmp:
        req_in = Path(tmp) / "requirements.in"
        req_in.write_text("\n".join(spec.dashboard.requirements) + "\n")
        out = Path(tmp) / "requirements.txt"
        cmd = [
            *uv_command(cache),
            "pip",
            "compile",
            "--quiet",
            "--no-header",
            "--generate-hashes",
            "--only-binary",
            ":all:",
            "--python-version",
            TARGET_PYTHON,
            "--python-platform",
            TARGET_PLATFORM,
            str(req_in),
            "-o",
            str(out),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise BuildError(f"uv pip compile failed: {tail[0]}")
        body = out.read_text()
    lock.parent.mkdir(parents=True, exist_ok=True)
    tmp_lock = lock.with_suffix(".tmp")
    tmp_lock.write_text(f"{_HEADER}{requirements_digest(spec)}\n{body}")
    tmp_lock.replace(lock)
    return lock
