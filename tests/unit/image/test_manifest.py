"""The typed image records: a manifest and an attestation read and written by one owner.

The audit fixture (tests/data/audit/manifest.json) is a manifest a real build
wrote (re-indented), so the round trip is checked against every field the builder produced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.errors import StoreError
from builder.image.manifest import Attestation, Manifest
from builder.image.store import (
    DISK,
    MANIFEST,
    manifest_bytes,
    newest_image,
    partial_dir,
    read_attestation,
    read_manifest,
    write_attestation,
)
from tests.fake_images import make_image
from tests.paths import REPO_ROOT

BUILT = REPO_ROOT / "tests" / "data" / "audit" / MANIFEST
# The key order every build has written (a manifest diffed by eye reads the same).
MANIFEST_ORDER = (
    "tag", "release", "hostname", "spec", "inputs", "source_date_epoch", "seed", "cmdline",
    "root_hash", "artifacts", "root_partition_sha256", "rendered", "carried",
    "debian_packages", "python_packages", "sizes", "python_venv", "debian_debs", "debian_lock",
)  # fmt: skip


def test_a_built_manifest_round_trips_field_for_field() -> None:
    manifest = read_manifest(BUILT.parent)
    data = json.loads(BUILT.read_text())
    assert manifest.to_json() == data
    assert json.loads(manifest_bytes(manifest)) == data
    assert list(manifest.to_json()) == [k for k in MANIFEST_ORDER if k in data]
    assert manifest.tag == data["tag"]
    assert manifest.rendered and manifest.carried and manifest.debian_packages


def test_an_older_manifest_keeps_its_shape() -> None:
    """Fields a later builder added parse as None or empty and are not written back."""
    old = {"tag": "2025.01-aaaa", "release": "2025.01", "artifacts": {}}
    manifest = Manifest.from_json(old)
    assert manifest.sizes is None and manifest.root_hash is None and manifest.rendered == {}
    assert manifest.disk_sha256(DISK) is None
    empty = {"rendered": {}, "debian_packages": {}, "python_packages": {}}
    assert manifest.to_json() == {"tag": old["tag"], "release": old["release"], **empty}


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "not a JSON object"), ('{"release": "x"}', "no 'tag'"), ("{nope", "cannot read")],
)
def test_a_bad_manifest_is_one_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(StoreError, match=re.escape(message)) as caught:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST) in str(caught.value)


def test_attestation_round_trips_and_only_literal_true_passes(tmp_path: Path) -> None:
    image = make_image(tmp_path, "2026.11-aaaa", built_at=1.0)
    record = write_attestation(image, passed=True, tests={"t::a": "passed"}, started=0, finished=9)
    written = (image / "attestation.json").read_text()
    assert (json.dumps(record.to_json(), indent=2) + "\n") == written
    assert read_attestation(image) == record
    assert Attestation.from_json(json.loads(written)) == record
    assert not Attestation.from_json({**json.loads(written), "passed": "yes"}).passed


def test_newest_image_never_picks_a_partial_build(tmp_path: Path) -> None:
    """A partial build holding a manifest (written just before its rename) is not an image."""
    make_image(tmp_path, "2026.11-aaaa", built_at=100.0)
    partial = partial_dir(tmp_path, "2026.11-bbbb")
    make_image(tmp_path, partial.name, built_at=200.0)
    assert (partial / MANIFEST).is_file()
    assert newest_image(tmp_path) == tmp_path / "2026.11-aaaa"


def test_no_manifest_or_attestation_is_parsed_outside_the_store() -> None:
    """builder/, bench/ and tests/ read the records through builder.image.store."""
    owner = REPO_ROOT / "builder" / "image" / "store.py"
    files = [p for d in ("builder", "bench", "tests") for p in (REPO_ROOT / d).rglob("*.py")]
    pattern = re.compile(r"json\.loads?\(.*(MANIFEST|ATTESTATION|manifest\.json|attestation\.json)")
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in files
        if path != owner
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
