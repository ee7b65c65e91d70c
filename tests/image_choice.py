"""Which image the QEMU smoke suite and the release suite test: the one this run
built, never "the newest in the store".

`make image` records the tag it built in build/last-tag (`aurora-image build
--tag-file`, written atomically); `make test` reads it once and hands it to both
suites as AURORA_IMAGE, with AURORA_ATTESTED_SINCE set to when its smoke run
started. A newer build in the store (another checkout's, an untested one) changes
nothing, and the release suite refuses an image the smoke run did not attest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from builder.errors import UnknownTag
from builder.image.inputs import REPO
from builder.image.store import is_attested, iso, read_attestation, resolve_image
from builder.paths import Paths

IMAGE_ENV = "AURORA_IMAGE"
SINCE_ENV = "AURORA_ATTESTED_SINCE"
LAST_TAG = REPO / "build" / "last-tag"


def chosen_image(
    env: Mapping[str, str] = os.environ, last_tag: Path = LAST_TAG, store: Path | None = None
) -> Path:
    """AURORA_IMAGE (a tag or an image directory), else the tag `make image` recorded,
    in `store` (default: the store the CLI would use; the suites' edge resolves it)."""
    ref = env.get(IMAGE_ENV, "").strip()
    if not ref:
        try:
            ref = last_tag.read_text().strip()
        except FileNotFoundError:
            ref = ""
    if not ref:
        raise UnknownTag(
            f"no image to test: set {IMAGE_ENV}=<tag or directory>, or run `make image` "
            f"(it records the tag it built in {last_tag})"
        )
    return resolve_image(ref, store or Paths.from_env().images)


def attestation_problem(image_dir: Path, env: Mapping[str, str] = os.environ) -> str | None:
    """Why the release suite must not take this image (None: it may)."""
    name = image_dir.name
    if not is_attested(image_dir):
        return (
            f"{name} has no passing smoke attestation for its disk: run the smoke suite "
            f"on it first (`make test`, or `make smoke TAG={name}` then `pytest tests/release`)"
        )
    since = env.get(SINCE_ENV, "").strip()
    if not since:
        return None
    record = read_attestation(image_dir)
    started = record.started if record else None
    if datetime.fromisoformat(started or "1970-01-01T00:00:00+00:00").timestamp() < int(
        float(since)
    ):
        return (
            f"{name}: its attestation is from a smoke run started {started}, "
            f"before this run ({iso(float(since))}); this run's smoke suite did not vouch for it"
        )
    return None
