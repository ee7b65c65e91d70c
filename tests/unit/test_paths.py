"""Paths are resolved once, at the edge: builder.paths is the one reader of the environment."""

from __future__ import annotations

import os
import re
from pathlib import Path

from builder.paths import DEFAULT_CACHE, REPO, Paths, prune_cache
from tests.paths import REPO_ROOT


def test_from_env_reads_the_store_and_caches() -> None:
    env = {"AURORA_IMAGES": "/s/images", "AURORA_CACHE": "/c", "SSL_CERT_FILE": "/ca.pem"}
    paths = Paths.from_env(env)
    assert paths == Paths(REPO, Path("/s/images"), Path("/c"), Path("/c"), Path("/ca.pem"))
    assert Paths.from_env({**env, "AURORA_BUILD_CACHE": "/b"}).build_cache == Path("/b")


def test_defaults_are_the_repo_store_and_the_system_cache() -> None:
    paths = Paths.from_env({})
    assert paths.repo == REPO_ROOT and paths.images == REPO_ROOT / "images"
    assert paths.cache == paths.build_cache == DEFAULT_CACHE


def test_scratch_moves_the_store_and_build_cache_and_keeps_the_tools(tmp_path: Path) -> None:
    """What `verify` builds with: an empty build cache, the same tools and downloads."""
    paths = Paths.from_env({"AURORA_CACHE": "/c"})
    scratch = paths.scratch(tmp_path)
    assert (scratch.images, scratch.build_cache) == (tmp_path / "images", tmp_path / "cache")
    assert (scratch.cache, scratch.repo, scratch.ca_bundle) == (
        paths.cache,
        paths.repo,
        paths.ca_bundle,
    )


def test_nothing_else_in_builder_reads_these_variables() -> None:
    """The store and cache variables are read in builder/paths.py only (the edge's
    resolver), so no module deep inside can be redirected by swapping os.environ."""
    names = re.compile(r"AURORA_IMAGES|AURORA_CACHE|AURORA_BUILD_CACHE|SSL_CERT_FILE")
    readers = sorted(
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "builder").rglob("*.py")
        if names.search(path.read_text()) and "environ" in path.read_text()
    )
    assert readers == ["builder/paths.py"]


def test_prune_cache_keeps_the_most_recently_used_entries(tmp_path: Path) -> None:
    """The bases' and tools trees' one pruning rule: newest mtime first (a use touches
    its entry), whatever the names' order; the rest removed with their contents."""
    ages = {"a": 400, "b": 100, "c": 300, "d": 200}  # seconds ago
    for name, age in ages.items():
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "file").write_text(name)
        os.utime(tmp_path / name, (1_700_000_000 - age,) * 2)

    removed = prune_cache(sorted(tmp_path.iterdir()), keep=2)

    assert sorted(p.name for p in removed) == ["a", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "d"]
    assert (tmp_path / "b" / "sub" / "file").read_text() == "b"
    assert prune_cache(list(tmp_path.iterdir()), keep=2) == []
    assert [p.name for p in prune_cache(list(tmp_path.iterdir()), keep=0)] == ["b", "d"]
    assert not any(tmp_path.iterdir())
