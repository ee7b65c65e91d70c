"""builder.vm.disks: scratch volumes the guest mounts by label, seeded at mkfs time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.vm.disks import scratch_volumes


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs missing")
@pytest.mark.skipif(shutil.which("debugfs") is None, reason="e2fsprogs missing")
def test_scratch_volume_populated_from_directory(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    store = seed / "aurora" / "credstore"
    store.mkdir(parents=True)
    store.chmod(0o700)
    (store / "ssh.authorized_keys.root").write_text("ssh-ed25519 AAAA k\n")
    (store / "ssh.authorized_keys.root").chmod(0o600)
    (data,) = scratch_volumes(["aurora-data"], tmp_path, size="16M", contents={"aurora-data": seed})
    out = subprocess.run(
        ["debugfs", "-R", "stat /aurora/credstore/ssh.authorized_keys.root", str(data)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Mode:  0600" in out
    cat = subprocess.run(
        ["debugfs", "-R", "cat /aurora/credstore/ssh.authorized_keys.root", str(data)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert cat == "ssh-ed25519 AAAA k\n"
    label = subprocess.run(["e2label", str(data)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "aurora-data"
