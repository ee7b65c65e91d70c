"""The carried table: every file the image gets from this project is declared
once, render records each row on the files it makes, and the readers (audit,
the preset, docs/reference/carried.md) take what they need from that record."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from builder.host import observation
from builder.image.manifest import Manifest
from builder.render import carried, carried_reference
from builder.render.engine import render
from builder.render.tree import carried_manifest
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

SPECS = [REPO_ROOT / "hosts" / name for name in ("aurora.yml", "aurora-jasmin.yml")]


def _pattern(path: str) -> str:
    return re.sub(r"<[^>]+>", "*", path).rstrip("/")


def test_every_static_file_is_declared_once() -> None:
    extra = REPO_ROOT / "mkosi.extra"
    files = sorted(
        "/" + p.relative_to(extra).as_posix()
        for p in extra.rglob("*")
        if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts
    )
    static = [r.path for r in carried.TABLE if r.kind == "static"]
    for path in files:
        rows = [s for s in static if fnmatch.fnmatch(path, s)]
        assert len(rows) == 1, (
            f"{path}: declared by {rows or 'no row'} of builder/render/carried.py"
        )
    for row in static:
        assert fnmatch.filter(files, row), f"{row}: no such file in mkosi.extra"


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.name)
def test_every_rendered_file_comes_from_its_row(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    tree = render(spec)
    by_producer: dict[str, list[carried.Carried]] = {}
    for row in carried.RENDERED:
        by_producer.setdefault(row.producer, []).append(row)
    for path, entry in tree.items():
        record = entry.provenance
        assert record is not None, path
        rows = [
            r
            for r in by_producer[record.producer]
            if fnmatch.fnmatch(path, _pattern(r.path)) or r.path.startswith("<")
        ]
        assert rows, f"{path} matches no row of {record.producer}"
        for key in record.keys:
            carried.lookup(spec, key)  # every recorded key names a value of this spec
    assert len(tree) == sum(len(list(r.items(spec))) for r in carried.RENDERED)


def test_preset_and_audit_read_the_record() -> None:
    spec = load_spec(SPECS[0])
    tree = render(spec)
    preset = tree["/usr/lib/systemd/system-preset/00-aurora.preset"].content.decode()
    enabled = [line.split(" ", 1)[1] for line in preset.splitlines() if line.startswith("enable ")]
    assert enabled == carried.enabled_units(spec)
    # Static units the table enables, and the packages' units, are in it too.
    assert {"aurora-health.timer", "aurora-nginx-tls.service", "ufw.service"} <= set(enabled)
    units = observation.rendered_units(Manifest(tag="t", carried=carried_manifest(tree)))
    assert units == sorted(e.provenance.unit for e in tree.values() if e.provenance.unit)
    assert "aurora-dashboard.service" in units and "aurora-cl61-source-sync.timer" in units
    # Drop-ins are not units of their own.
    assert not [u for u in units if ".d/" in u or u.endswith(".conf")]


def test_postinst_renders_nothing_render_makes() -> None:
    """Mount points and the two links come from render; the shell only installs the
    app and asks ufw for its rules."""
    postinst = (REPO_ROOT / "mkosi.postinst.chroot").read_text()
    for name in ("AURORA_MOUNT_POINTS", "AURORA_CERT_DIR", "AURORA_CREDENTIAL_STORE", "ln -s"):
        assert name not in postinst, name
    spec = load_spec(SPECS[0])
    tree = render(spec)
    assert all(tree[m.where].directory for m in spec.mounts)
    assert tree["/etc/letsencrypt"].link == spec.nginx.certificate_dir
    assert tree["/etc/credstore"].link == spec.credential_store


def test_docs_table_is_generated_from_the_table() -> None:
    page = carried_reference.PAGE
    assert page.read_text() == carried_reference.render_page(), (
        "docs/reference/carried.md is stale: run `python -m builder.render.carried_reference`"
    )
    for row in carried.TABLE:
        assert f"`{row.path}`" in page.read_text()
