"""The dashboard app comes from a local tree or a git commit (the production app)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from builder.errors import BuildError
from builder.image.build import _stage_app
from builder.paths import Paths
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT


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


def _origin(tmp_path: Path) -> Path:
    """A git repository with one commit of app.py (its mirror goes to tmp_path/cache)."""
    origin = tmp_path / "origin"
    origin.mkdir()
    _git("init", "-q", "-b", "main", cwd=origin)
    (origin / "app.py").write_text("VERSION = 1\n")
    _git("add", ".", cwd=origin)
    _git("commit", "-qm", "one", cwd=origin)
    return origin


def test_git_app_is_checked_out_at_the_pinned_commit(tmp_path: Path) -> None:
    origin = _origin(tmp_path)
    pinned = _git("rev-parse", "HEAD", cwd=origin)
    (origin / "app.py").write_text("VERSION = 2\n")
    _git("commit", "-qam", "two", cwd=origin)

    spec_path = _spec_with_app(tmp_path, {"git": f"file://{origin}", "ref": pinned})
    lock = tmp_path / "requirements.txt"
    lock.write_text("# lock\n")
    stage = tmp_path / "stage"
    _stage_app(load_spec(spec_path), stage, stage / "app", lock, Paths.under(tmp_path))
    assert (stage / "app" / "app.py").read_text() == "VERSION = 1\n"
    assert not (stage / "app" / ".git").exists()
    assert (stage / "requirements.txt").read_text() == "# lock\n"


def test_unknown_commit_is_a_clear_error(tmp_path: Path) -> None:
    origin = _origin(tmp_path)
    spec_path = _spec_with_app(tmp_path, {"git": f"file://{origin}", "ref": "0" * 40})
    lock = tmp_path / "requirements.txt"
    lock.write_text("")
    with pytest.raises(BuildError, match=r"spec\.yml: dashboard\.app: git checkout of file://"):
        _stage_app(
            load_spec(spec_path),
            tmp_path / "stage",
            tmp_path / "staged",
            lock,
            Paths.under(tmp_path),
        )


def test_git_app_needs_a_ref(tmp_path: Path) -> None:
    from builder.errors import SpecError

    spec_path = _spec_with_app(tmp_path, {"git": "https://example.org/app.git"})
    with pytest.raises(SpecError, match="needs 'ref'"):
        load_spec(spec_path)


def _tree_with_dotfiles(root: Path) -> Path:
    (root / "sub" / ".cache").mkdir(parents=True)
    (root / "app.py").write_text("VERSION = 1\n")
    (root / "sub" / "job.py").write_text("print()\n")
    (root / ".env").write_text("SMTP_PASSWORD=hunter2\n")
    (root / "sub" / ".netrc").write_text("machine x password y\n")
    (root / "sub" / ".cache" / "token").write_text("t\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[remote]\n")
    return root


def test_local_app_is_staged_without_git_and_dotfiles(tmp_path: Path) -> None:
    app = _tree_with_dotfiles(tmp_path / "app")
    spec_path = _spec_with_app(tmp_path, {"path": str(app)})
    lock = tmp_path / "requirements.txt"
    lock.write_text("# lock\n")
    _stage_app(
        load_spec(spec_path), tmp_path / "stage", tmp_path / "staged", lock, Paths.under(tmp_path)
    )
    staged = sorted(
        p.relative_to(tmp_path / "staged").as_posix() for p in (tmp_path / "staged").rglob("*")
    )
    assert staged == ["app.py", "sub", "sub/job.py"]


def test_git_app_drops_committed_dotfiles(tmp_path: Path) -> None:
    origin = _origin(tmp_path)
    (origin / ".env").write_text("TOKEN=x\n")
    _git("add", ".env", cwd=origin)
    _git("commit", "-qm", "env", cwd=origin)
    spec_path = _spec_with_app(
        tmp_path, {"git": f"file://{origin}", "ref": _git("rev-parse", "HEAD", cwd=origin)}
    )
    lock = tmp_path / "requirements.txt"
    lock.write_text("# lock\n")
    _stage_app(
        load_spec(spec_path), tmp_path / "stage", tmp_path / "staged", lock, Paths.under(tmp_path)
    )
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == ["app.py"]


def test_dotfiles_are_not_build_inputs(tmp_path: Path) -> None:
    """A changed .env or .git does not change the tag: it is not in the image."""
    from builder.image.inputs import digest_paths

    app = _tree_with_dotfiles(tmp_path / "app")
    before = digest_paths([("app", app)])
    (app / ".env").write_text("SMTP_PASSWORD=changed\n")
    (app / ".git" / "HEAD").write_text("ref: x\n")
    assert digest_paths([("app", app)]) == before
    assert sorted(before) == ["app/app.py", "app/sub/job.py"]
