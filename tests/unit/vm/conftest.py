"""Fixtures of the VM harness's unit tests (no built image, no guest boot)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fake_image_dir(tmp_path: Path) -> Path:
    """``tmp_path`` holding stand-ins for an image directory's split artifacts."""
    for name in ("aurora.raw", "aurora.vmlinuz", "aurora.initrd"):
        (tmp_path / name).write_bytes(b"not really " + name.encode())
    return tmp_path
