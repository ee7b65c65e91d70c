"""The base image's key: what mkosi reads, nothing else. A config-only spec change
must keep it (the base is reused byte for byte); anything mkosi sees must change it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from builder.image import base
from builder.image.inputs import Inputs
from builder.image.mkosi import MkosiJob


@pytest.fixture
def job(tmp_path: Path) -> MkosiJob:
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "requirements.txt").write_text("panel==1.4.0 --hash=sha256:00\n")
    sandbox = tmp_path / "sandbox"
    (sandbox / "etc/apt").mkdir(parents=True)
    (sandbox / "etc/apt/sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    return MkosiJob(
        repo=tmp_path, extra_tree=tmp_path / "none", stage=stage, output_dir=tmp_path / "out",
        packages=("nginx",), environment={"AURORA_APP_DIR": "/opt/app"}, seed="",
        source_date_epoch=1761955200, cache=tmp_path, build_cache=tmp_path,
        sandbox_trees=(sandbox,),
    )  # fmt: skip


FILES = {
    "spec": "1",
    "units/timer.j2": "2",
    "builder/render/engine.py": "3",
    "builder/image/layer.py": "4",
    "mkosi.conf": "5",
    "builder/image/mkosi.py": "6",
    "locks/debian-packages.txt": "7",
}


def key(job: MkosiJob, files: dict[str, str] = FILES, release: str = "2026.11") -> str:
    return base.base_key(Inputs(release, files, {}), job, release)


@pytest.mark.parametrize(
    "name", ["spec", "units/timer.j2", "builder/render/engine.py", "builder/image/layer.py"]
)
def test_what_only_the_config_layer_reads_keeps_the_base(job: MkosiJob, name: str) -> None:
    assert key(job, {**FILES, name: "changed"}) == key(job)


@pytest.mark.parametrize(
    "name", ["mkosi.conf", "builder/image/mkosi.py", "locks/debian-packages.txt"]
)
def test_what_mkosi_reads_makes_another_base(job: MkosiJob, name: str) -> None:
    assert key(job, {**FILES, name: "changed"}) != key(job)


def test_the_spec_parts_mkosi_sees_make_another_base(job: MkosiJob, tmp_path: Path) -> None:
    assert key(replace(job, packages=("nginx", "rsync"))) != key(job)
    assert key(replace(job, environment={"AURORA_APP_DIR": "/srv/app"})) != key(job)
    assert key(job, release="2026.12") != key(job)
    before = key(job)
    (job.sandbox_trees[0] / "etc/apt/sources.list").write_text("deb http://other trixie main\n")
    assert key(job) != before


def test_the_seed_is_a_uuid_of_the_key() -> None:
    k = "0123456789abcdef" * 4
    assert base.seed_of(k) == "01234567-89ab-cdef-0123-456789abcdef"


def test_an_app_change_keeps_the_base_its_lock_does_not(job: MkosiJob) -> None:
    """The app's source goes into the config layer; the venv (from the lock) is the base's."""
    files = {**FILES, "app/app.py": "1"}
    assert key(job, {**files, "app/app.py": "2"}) == key(job, files)
    git = base.base_key(Inputs("2026.11", FILES, {"app.git": "u", "app.ref": "a"}), job, "2026.11")
    other = base.base_key(
        Inputs("2026.11", FILES, {"app.git": "u", "app.ref": "b"}), job, "2026.11"
    )
    assert git == other
    before = key(job)
    (job.stage / "requirements.txt").write_text("panel==1.5.0 --hash=sha256:00\n")
    assert key(job) != before
