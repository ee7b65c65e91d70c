"""`aurora-image render --diff`: what a spec change does to the rendered files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.image.build import IDENTITY
from builder.render import diff as render_diff
from builder.render.engine import File, render
from builder.render.tree import write_tree
from builder.spec.model import load_spec
from tests.fake_images import BASE_TREE, UNIT, make_image
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
SPEC = REPO / "hosts" / "aurora.yml"
DASHBOARD = "/etc/systemd/system/aurora-dashboard.service"


@pytest.fixture(scope="module")
def tree() -> dict[str, File]:
    return render(load_spec(SPEC))


def overlay(tmp_path: Path, text: str) -> Path:
    shutil.copy(SPEC, tmp_path / "aurora.yml")
    path = tmp_path / "site.yml"
    path.write_text("base: aurora.yml\n" + text)
    return path


def test_same_spec_against_its_render_dir_is_empty(tree: dict, tmp_path: Path) -> None:
    base = render_diff.directory_base(write_tree(tree, tmp_path / "render"))
    diff = render_diff.diff_tree(tree, base)
    assert diff.empty and diff.unchanged == len(tree)
    assert render_diff.format_text(diff).startswith("no changes against directory ")


def test_changed_value_shows_a_unified_diff(tree: dict, tmp_path: Path) -> None:
    base = render_diff.directory_base(write_tree(tree, tmp_path / "render"))
    changed = render(load_spec(overlay(tmp_path, "dashboard:\n  port: 5123\n")))
    diff = render_diff.diff_tree(changed, base)
    paths = [c.path for c in diff.changed]
    assert DASHBOARD in paths
    text = next(c.diff for c in diff.changed if c.path == DASHBOARD)
    assert text is not None
    assert any(line.startswith("-") and "--port=5006" in line for line in text.splitlines())
    assert any(line.startswith("+") and "--port=5123" in line for line in text.splitlines())
    assert not diff.added and not diff.removed


def test_added_and_removed_paths(tree: dict, tmp_path: Path) -> None:
    root = write_tree(tree, tmp_path / "render")
    (root / "etc" / "stale.conf").write_text("old\n")
    (root / "etc" / "hostname").unlink()
    diff = render_diff.diff_tree(tree, render_diff.directory_base(root))
    assert diff.removed == ["/etc/stale.conf"]
    assert diff.added == ["/etc/hostname"]
    summary = render_diff.format_text(diff).splitlines()[-1]
    assert summary.startswith(f"against directory {root}: 1 added, 1 removed, 0 changed")


def test_against_an_image_reads_its_rendered_tar(tmp_path: Path) -> None:
    image = make_image(tmp_path / "store", "2026.11-aaaaaaaaaaaa", built_at=1.0)
    new = {**BASE_TREE, UNIT: File(BASE_TREE[UNIT].content.replace(b"serve", b"serve --dev"))}
    diff = render_diff.diff_tree(new, render_diff.image_base(image))
    [change] = diff.changed
    assert (
        change.path == UNIT and change.diff and "+ExecStart=/opt/panel serve --dev" in change.diff
    )
    assert diff.to_json()["modified"][0]["path"] == UNIT


def test_the_build_time_identity_file_is_not_a_change(tmp_path: Path) -> None:
    tree = {**BASE_TREE, IDENTITY: File(b'{"tag": "x"}\n')}
    image = make_image(tmp_path / "store", "2026.11-bbbbbbbbbbbb", built_at=1.0, tree=tree)
    assert render_diff.diff_tree(BASE_TREE, render_diff.image_base(image)).empty


def test_cli_json_writes_nothing(tree: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tree, tmp_path / "render")
    out = tmp_path / "untouched"
    spec = overlay(tmp_path, "dashboard:\n  port: 5123\n")
    argv = ["render", "--spec", str(spec), "--diff", "--against", str(root), "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["changed"] is True
    assert DASHBOARD in [m["path"] for m in data["modified"]]
    assert not out.exists()
