"""The dashboard app comes from a local tree or a git commit (the production app)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from builder.errors import BuildError
from builder.image import _stage_app
from builder.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def _spec_with_app(tmp_path: Path, app: dict[str, str]) -> Path:
    data = yaml.safe_load((REPO / "hosts" / "aurora.yml").read_text())
    data["dashboard"]["app"] = app
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _origin(tmp_path: Path, monkeypatch) -> Path:
    """A git repository with one commit of app.py, and a private build cache."""
    monkeypatch.setenv("AURORA_CACHE", str(tmp_path / "cache"))
    origin = tmp_path / "origin"
    origin.mkdir()
    _git("init", "-q", "-b", "main", cwd=origin)
    (origin / "app.py").write_text("VERSION = 1\n")
    _git("add", ".", cwd=origin)
    _git("commit", "-qm", "one", cwd=origin)
    return origin


def test_git_app_is_checked_out_at_the_pinned_commit(tmp_path: Path, monkeypatch) -> None:
    origin = _origin(tmp_path, monkeypatch)
    pinned = _git("rev-parse", "HEAD", cwd=origin)
    (origin / "app.py").write_text("VERSION = 2\n")
    _git("commit", "-qam", "two", cwd=origin)

    spec_path = _spec_with_app(tmp_path, {"git": f"file://{origin}", "ref": pinned})
    lock = tmp_path / "requirements.txt"
    lock.write_text("# lock\n")
    stage = tmp_path / "stage"
    _stage_app(load_spec(spec_path), spec_path, stage, lock)
    assert (stage / "app" / "app.py").read_text() == "VERSION = 1\n"
    assert not (stage / "app" / ".git").exists()
    assert (stage / "requirements.txt").read_text() == "# lock\n"


def test_unknown_commit_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    origin = _origin(tmp_path, monkeypatch)
    spec_path = _spec_with_app(tmp_path, {"git": f"file://{origin}", "ref": "0" * 40})
    lock = tmp_path / "requirements.txt"
    lock.write_text("")
    with pytest.raises(BuildError, match=r"spec\.yml: dashboard\.app: git checkout of file://"):
        _stage_app(load_spec(spec_path), spec_path, tmp_path / "stage", lock)


def test_git_app_needs_a_ref(tmp_path: Path) -> None:
    from builder.errors import SpecError

    spec_path = _spec_with_app(tmp_path, {"git": "https://example.org/app.git"})
    with pytest.raises(SpecError, match="needs 'ref'"):
        load_spec(spec_path)
