"""The staging overlay: writers off and a banner, and the proof that a staging image
differs from production only in the overlay's keys (`diff --overlay`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.image.inputs import REPO, collect
from builder.image.store import read_manifest, write_manifest
from builder.release.overlay import OverlayError, prove
from builder.render.engine import enabled_units, render
from builder.spec.model import load_spec
from tests.fake_images import make_image

STAGING = REPO / "hosts" / "staging.yml"
PRODUCTION = REPO / "hosts" / "aurora.yml"


def test_staging_differs_from_production_only_in_its_keys() -> None:
    proof = prove(STAGING)
    assert proof.ok, proof.format_text()
    assert proof.keys == ["environment.AURORA_BANNER", "gws.enabled"]
    assert proof.differing == proof.keys
    assert proof.rendered == [
        "/etc/aurora-dashboard.env",
        "/usr/lib/systemd/system-preset/00-aurora.preset",
    ]


def test_staging_writers_are_off_and_the_banner_is_in_the_environment() -> None:
    staging, production = load_spec(STAGING), load_spec(PRODUCTION)
    pushes = {u for u in enabled_units(production) if u.startswith("aurora-gws-")}
    assert pushes and not pushes & set(enabled_units(staging))
    env = render(staging)["/etc/aurora-dashboard.env"].content.decode()
    assert "AURORA_BANNER=" in env and "Staging copy" in env
    assert "AURORA_BANNER" not in render(production)["/etc/aurora-dashboard.env"].content.decode()
    # The units themselves are the same files: only whether their timers start differs.
    gws = [{p for p in render(spec) if "gws" in p} for spec in (staging, production)]
    assert gws[0] == gws[1]


def test_an_overlay_tag_follows_its_base(tmp_path: Path) -> None:
    base = tmp_path / "aurora.yml"
    shutil.copy(PRODUCTION, base)
    overlay = tmp_path / "staging.yml"
    overlay.write_text(STAGING.read_text())
    before = collect(load_spec(overlay)).tag
    base.write_text(base.read_text().replace("keep_images: 3", "keep_images: 4"))
    assert collect(load_spec(overlay)).tag != before


def test_not_an_overlay_is_said(tmp_path: Path) -> None:
    with pytest.raises(OverlayError, match="not an overlay"):
        prove(PRODUCTION)


def _image(store: Path, tag: str, files: dict[str, str]) -> Path:
    path = make_image(store, tag, built_at=1.0)
    manifest = read_manifest(path)
    write_manifest(path, replace(manifest, inputs=replace(manifest.inputs, files=files)))
    return path


def test_diff_overlay_passes_and_fails_on_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "images"
    monkeypatch.setenv("AURORA_IMAGES", str(store))
    same = {"units/a.j2": "1", "mkosi.conf": "2"}
    a = _image(store, "2026.11-aaaa", {"spec": "p", **same})
    b = _image(store, "2026.11-bbbb", {"spec": "s", "spec-base/1": "p", **same})
    code = main(["diff", str(a), str(b), "--overlay", str(STAGING), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["overlay"]["ok"] and out["overlay"]["inputs_outside_spec"] == []
    assert "categories" in out
    c = _image(store, "2026.11-cccc", {"spec": "s", "spec-base/1": "p", **same, "units/a.j2": "9"})
    code = main(["diff", str(a), str(c), "--overlay", str(STAGING)])
    text, err = capsys.readouterr()
    assert code == 1, err
    assert "overlay staging.yml: NOT only its keys differ: also inputs units/a.j2" in text
