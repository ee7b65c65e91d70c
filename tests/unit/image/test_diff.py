"""`aurora-image diff`: manifests plus rendered.tar, compared."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from builder.image.build import rendered_tar
from builder.image.diff import diff_images, format_text, to_json
from builder.image.store import RENDERED_TAR
from builder.render.engine import File
from tests.fake_images import BASE_DEBIAN, BASE_PYTHON, BASE_TREE, UNIT, make_image

NOW = time.time()
NEW_UNIT = "/etc/systemd/system/aurora-wxcam-catalog.timer"
CONFIG = "/etc/aurora/source-sync/cl61.json"


def candidate_tree() -> dict[str, File]:
    tree = dict(BASE_TREE)
    old = BASE_TREE[UNIT].content
    tree[UNIT] = File(old.replace(b"panel serve", b"panel serve --port 5006"))
    tree[NEW_UNIT] = File(b"[Timer]\nOnCalendar=hourly\n")
    del tree[CONFIG]
    tree["/etc/aurora/gws/raw.json"] = File(b"{}\n", mode=0o600)
    tree["/etc/nginx/sites-enabled/aurora.conf"] = File(link="../sites-available/tls.conf")
    tree["/data"] = File(mode=0o2775, directory=True)
    return tree


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a = make_image(tmp_path, "2026.11-aaaa", built_at=NOW - 100)
    b = make_image(
        tmp_path,
        "2026.11-bbbb",
        built_at=NOW,
        tree=candidate_tree(),
        debian={"nginx": "1.26.3-2", "systemd": BASE_DEBIAN["systemd"], "tailscale": "1.90.0"},
        python={**BASE_PYTHON, "panel": "1.6.0"},
        disk=b"disk-bigger",
    )
    return a, b


def test_changed_unit_is_a_unified_diff(pair: tuple[Path, Path]) -> None:
    diff = diff_images(*pair)
    (change,) = diff.units.changed
    assert change.path == UNIT
    assert change.diff is not None
    lines = change.diff.splitlines()
    assert lines[0] == f"--- 2026.11-aaaa:{UNIT}"
    assert lines[1] == f"+++ 2026.11-bbbb:{UNIT}"
    assert "-ExecStart=/opt/panel serve" in lines
    assert "+ExecStart=/opt/panel serve --port 5006" in lines
    assert change.notes() == []


def test_units_and_other_files_added_removed_changed(pair: tuple[Path, Path]) -> None:
    diff = diff_images(*pair)
    assert list(diff.units.added) == [NEW_UNIT] and not diff.units.removed
    assert list(diff.files.added) == ["/etc/aurora/gws/raw.json"]
    assert list(diff.files.removed) == [CONFIG]
    changed = {c.path: c for c in diff.files.changed}
    assert changed["/data"].notes() == ["mode 0755 → 2775"]
    link = changed["/etc/nginx/sites-enabled/aurora.conf"]
    assert link.notes() == ["link ../sites-available/aurora.conf → ../sites-available/tls.conf"]
    assert link.diff is None


def test_package_changes(pair: tuple[Path, Path]) -> None:
    diff = diff_images(*pair)
    assert diff.debian_packages.added == {"tailscale": "1.90.0"}
    assert diff.debian_packages.removed == {"rsync": "3.4.1-1"}
    assert diff.debian_packages.changed == {"nginx": ("1.26.3-1", "1.26.3-2")}
    assert diff.python_packages.changed == {"panel": ("1.5.0", "1.6.0")}
    assert not diff.python_packages.added and not diff.python_packages.removed


def test_sizes_and_inputs(pair: tuple[Path, Path]) -> None:
    diff = diff_images(*pair)
    assert diff.artifacts["aurora.raw"] == (4 * 1024, 11 * 1024)
    assert diff.artifacts["aurora.vmlinuz"] == (6, 6)
    assert diff.inputs_digest == ("aaaa" * 5, "bbbb" * 5)
    assert diff.input_files.changed == {"spec": ("2026.11-aaaa", "2026.11-bbbb")}
    assert not diff.identical


def test_text_output(pair: tuple[Path, Path]) -> None:
    text = format_text(diff_images(*pair))
    assert text.startswith("a: 2026.11-aaaa")
    assert "units: 1 added, 0 removed, 1 changed" in text
    assert f"  + {NEW_UNIT}" in text
    assert f"  ~ {UNIT}" in text
    assert "      +ExecStart=/opt/panel serve --port 5006" in text
    assert f"  - {CONFIG}" in text
    assert "  ~ nginx 1.26.3-1 → 1.26.3-2" in text
    assert "  + tailscale 1.90.0" in text and "  - rsync 3.4.1-1" in text
    assert "  ~ panel 1.5.0 → 1.6.0" in text
    assert "aurora.raw      4.0 KiB → 11.0 KiB (+7.0 KiB)" in text
    assert "aurora.vmlinuz  6 B (same)" in text


def test_json_output(pair: tuple[Path, Path]) -> None:
    data = to_json(diff_images(*pair))
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {
        "a", "b", "identical", "fields", "inputs", "artifacts", "units", "files",
        "debian_packages", "python_packages",
    }  # fmt: skip
    assert data["a"]["tag"] == "2026.11-aaaa" and data["identical"] is False
    assert data["inputs"]["changed"] is True
    assert data["artifacts"]["aurora.raw"] == {"a": 4096, "b": 11264, "delta": 7168}
    assert data["units"]["added"] == [NEW_UNIT]
    (unit,) = data["units"]["changed"]
    assert set(unit) == {"path", "a", "b", "diff", "notes"}
    assert "+ExecStart=/opt/panel serve --port 5006" in unit["diff"]
    assert data["debian_packages"]["changed"] == {"nginx": {"a": "1.26.3-1", "b": "1.26.3-2"}}
    assert data["debian_packages"]["added"] == {"tailscale": "1.90.0"}
    assert data["python_packages"]["removed"] == {}


def test_without_rendered_tar_only_digests_change(tmp_path: Path) -> None:
    a = make_image(tmp_path, "2026.11-aaaa", built_at=NOW, with_tar=False)
    b = make_image(tmp_path, "2026.11-bbbb", built_at=NOW, tree=candidate_tree())
    (change,) = diff_images(a, b).units.changed
    assert change.diff is None
    (note,) = change.notes()
    assert note.startswith("content sha256 ") and "rendered.tar missing" in note


def test_a_stale_rendered_tar_is_not_trusted(tmp_path: Path) -> None:
    a = make_image(tmp_path, "2026.11-aaaa", built_at=NOW)
    b = make_image(tmp_path, "2026.11-bbbb", built_at=NOW, tree=candidate_tree())
    lying = dict(candidate_tree())
    lying[UNIT] = File(b"[Service]\nExecStart=/bin/something-else\n")
    (b / RENDERED_TAR).write_bytes(rendered_tar(lying))
    (change,) = diff_images(a, b).units.changed
    assert change.diff is None


def test_identical_images(tmp_path: Path) -> None:
    a = make_image(tmp_path, "2026.11-aaaa", built_at=NOW)
    diff = diff_images(a, a)
    assert diff.identical
    assert format_text(diff).endswith("identical: same inputs, same contents\n")
    assert to_json(diff)["identical"] is True


def test_rendered_tar_is_deterministic_and_faithful() -> None:
    tree = candidate_tree()
    data = rendered_tar(tree)
    assert data == rendered_tar(dict(reversed(list(tree.items()))))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(p.lstrip("/") for p in tree)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        by_name = {m.name: m for m in members}
        assert by_name["etc/aurora/gws/raw.json"].mode == 0o600
        assert by_name["data"].isdir() and by_name["data"].mode == 0o2775
        link = by_name["etc/nginx/sites-enabled/aurora.conf"]
        assert link.issym() and link.linkname == "../sites-available/tls.conf"
        handle = tar.extractfile(by_name[UNIT.lstrip("/")])
        assert handle is not None and handle.read() == tree[UNIT].content
