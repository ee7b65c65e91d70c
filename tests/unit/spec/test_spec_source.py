"""A loaded spec knows its file and the files it names, resolved once at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.errors import SpecError
from builder.spec.model import HostSpec, load_spec
from tests.paths import REPO_ROOT

HOSTS = REPO_ROOT / "hosts"


def _overlay(tmp_path: Path, text: str) -> Path:
    """An overlay of the shipped spec, in its own directory with a copy of the base."""
    (tmp_path / "aurora.yml").write_text((HOSTS / "aurora.yml").read_text())
    path = tmp_path / "site.yml"
    path.write_text(f"base: aurora.yml\n{text}")
    return path


def test_the_shipped_overlay_knows_its_file_base_app_and_targets() -> None:
    spec = load_spec(HOSTS / "staging.yml")
    assert spec.source.path == HOSTS / "staging.yml"
    assert spec.source.bases == ((HOSTS / "aurora.yml").resolve(),)
    assert spec.source.app_dir == (REPO_ROOT / "app").resolve()
    assert spec.source.targets["staging"] == HOSTS / "staging.yml"
    spec.source.require_files()  # the app tree is there


def test_relative_files_resolve_against_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "extra.gpg").write_bytes(b"key")
    path = _overlay(
        tmp_path,
        "dashboard: {app: {path: ./app}}\n"
        "apt_repositories: [{name: extra, url: 'https://example.org/apt', suite: trixie,"
        " key: keys/extra.gpg}]\n"
        "deploy: {allowed_signers: signers, targets: {stage: {server: s, role: staging,"
        " spec: other.yml}}}\n",
    )
    source = load_spec(path).source
    assert source.app_dir == tmp_path / "app"
    assert source.apt_keys == {"extra": tmp_path / "keys" / "extra.gpg"}
    assert source.allowed_signers == tmp_path / "signers"
    assert source.targets["stage"] == tmp_path / "other.yml"


def test_a_missing_app_tree_and_key_are_named_with_file_line_key_and_fix(tmp_path: Path) -> None:
    path = _overlay(
        tmp_path,
        "apt_repositories:\n"
        "  - name: extra\n"
        "    url: https://example.org/apt\n"
        "    suite: trixie\n"
        "    key: keys/extra.gpg\n",
    )
    spec = load_spec(path)  # loading needs neither: only a build does
    with pytest.raises(SpecError) as caught:
        spec.source.require_files()
    app_line = 1 + (HOSTS / "aurora.yml").read_text().splitlines().index("    path: ../app")
    assert [str(p) for p in caught.value.problems] == [
        f"{(tmp_path / 'aurora.yml').resolve()}:{app_line}: dashboard.app.path: "
        f"{(tmp_path.parent / 'app').resolve()} is not a directory; point it at the app checkout",
        f"{path}:6: apt_repositories[0].key: {tmp_path / 'keys' / 'extra.gpg'} does not exist; "
        "put the extra archive key there",
    ]


def test_a_spec_not_loaded_from_a_file_says_so() -> None:
    data = yaml.safe_load((HOSTS / "aurora.yml").read_text())
    with pytest.raises(SpecError, match="not loaded from a file"):
        HostSpec.model_validate(data).source  # noqa: B018
