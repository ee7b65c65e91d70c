"""Operator access survives a failed volume (issue 13): an image whose spec bakes
in an operator's public key lets that operator in as root when the server boots
without `/data` (and without `/project`).

The image is the default spec plus `operator_keys`, built in its own store (a
config-only change against the image this run built). The VM gets no ssh key
from the test harness (no SMBIOS credential): the only way in is the key the
image carries on its read-only root, exactly what an operator has when the data
volume is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from builder.image.build import build
from builder.paths import Paths
from builder.spec.model import load_spec
from builder.vm.image import BootImage
from builder.vm.machine import Machine, boot
from tests.paths import REPO_ROOT
from tests.sshd import _keygen


@pytest.fixture(scope="module")
def operator_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(image dir, the operator's private key, its public key line)."""
    paths = Paths.from_env()  # this suite's edge: the operator's caches
    work = paths.build_cache / "operator-access"
    work.mkdir(parents=True, exist_ok=True)
    key = work / "operator_key"
    # One key per build cache: the same spec again, so a rerun reuses the image.
    public = key.with_suffix(".pub").read_text().strip() if key.exists() else _keygen(key, "op")
    overlay = work / "operator-keys.yml"
    overlay.write_text(
        f"# The default spec, with an operator's key baked into the image.\n"
        f"base: {REPO_ROOT / 'hosts' / 'aurora.yml'}\n"
        f"dashboard:\n  app:\n    path: {REPO_ROOT / 'app'}\n"
        f"operator_keys:\n  - {public}\n"
    )
    built = build(load_spec(overlay), replace(paths, images=work / "images"), progress=False)
    return built.path, key, public


@pytest.fixture(scope="module")
def without_data(
    operator_image: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    image_dir, key, _ = operator_image
    vm = boot(
        BootImage.from_dir(image_dir),
        tmp_path_factory.mktemp("no-data"),
        ssh_timeout=900,
        extra_drives=(),  # no aurora-data, no aurora-project volume
        ssh_key=key,
        ssh_key_via_smbios=False,  # the harness lets nobody in: only the image's own key
    )
    try:
        yield vm
    finally:
        vm.shutdown(powerdown=False)  # a throw-away VM: nothing is checked after it stops


def test_the_operator_gets_in_as_root_with_no_data_volume(
    without_data: Machine, operator_image: tuple[Path, Path, str]
) -> None:
    _, _, public = operator_image
    # boot() returned: ssh as root with the operator's key (and only that key) works.
    assert without_data.succeed("id -un").strip() == "root"
    assert without_data.execute("findmnt /data")[0] != 0, "/data is mounted"
    assert without_data.execute("findmnt /project")[0] != 0, "/project is mounted"
    baked = without_data.succeed("cat /etc/ssh/authorized_keys.d/root")
    assert public in baked.splitlines()
    # On the verity-protected root: no service user, nor a failed volume, can change it.
    assert "ro" in without_data.succeed("findmnt -no OPTIONS /").split(",")
    assert without_data.succeed("stat -c '%U %a' /etc/ssh/authorized_keys.d/root").split() == [
        "root",
        "644",
    ]
