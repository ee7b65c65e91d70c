"""The manifest's sizes say what the image carries: the app's bytes are the
dashboard's source as the booted host sees it (it lives in the config layer, so
the base's own count has none), not a figure from somewhere else."""

from __future__ import annotations

from pathlib import Path

from builder.image.sizes import tree_bytes
from builder.image.store import read_manifest
from builder.spec.model import HostSpec


def test_the_app_size_is_the_source_the_host_carries(
    root: Path, image_dir: Path, spec: HostSpec
) -> None:
    sizes = read_manifest(image_dir).sizes or {}
    parts = sizes["root_files"]
    checkout = root / spec.dashboard.checkout.lstrip("/")
    venv = root / spec.dashboard.venv.lstrip("/")
    assert venv.is_relative_to(checkout)  # the venv is the base's, beside the source
    source = tree_bytes(checkout) - tree_bytes(venv)
    assert source > 0
    assert parts["app"] == source
    assert parts["venv"] > 100 * source  # a different tree, counted apart
