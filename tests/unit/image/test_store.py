"""The image store: listing, attestations, pruning and the CLI on top of them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.errors import StoreError, UnknownTag
from builder.image.manifest import Attestation
from builder.image.prune import prune
from builder.image.store import (
    ATTESTATION,
    is_attested,
    list_images,
    read_attestation,
    read_manifest,
    resolve_image,
    write_attestation,
)
from tests.fake_images import make_image
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
NOW = time.time()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    monkeypatch.setenv("AURORA_IMAGES", str(root))
    return root


def images(store: Path, count: int) -> list[str]:
    """`count` images, img1 the oldest."""
    tags = [f"2026.11-img{i}" for i in range(1, count + 1)]
    for i, tag in enumerate(tags):
        make_image(store, tag, built_at=NOW - 1000 + i * 10)
    return tags


def attest(path: Path, passed: bool = True) -> Attestation:
    tests = {"tests/vm/test_smoke.py::test_boots": "passed"}
    return write_attestation(path, passed=passed, tests=tests, started=NOW - 60, finished=NOW)


def stale(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.utime(p, (NOW - 7200, NOW - 7200))


# -- list ----------------------------------------------------------------------


def test_list_is_newest_first_and_ignores_dot_dirs(store: Path) -> None:
    make_image(store, "2026.11-aaa", built_at=NOW - 300)
    make_image(store, "2026.11-bbb", built_at=NOW - 100)
    make_image(store, "2026.11-ccc", built_at=NOW - 200)
    make_image(store, ".2026.11-ddd.partial", built_at=NOW)
    (store / "not-an-image").mkdir()
    records = list_images(store)
    assert [r.tag for r in records] == ["2026.11-bbb", "2026.11-ccc", "2026.11-aaa"]
    assert records[0].path == store / "2026.11-bbb"
    assert records[0].built_at == pytest.approx(NOW - 100)
    assert not any(r.attested for r in records)
    assert all(r.attestation is None for r in records)


def test_list_of_a_missing_store_is_empty(tmp_path: Path) -> None:
    assert list_images(tmp_path / "nowhere") == []


def test_size_is_allocated_space_not_apparent_size(store: Path) -> None:
    path = make_image(store, "2026.11-sparse", built_at=NOW)
    with (path / "aurora.raw").open("r+b") as disk:
        disk.truncate(256 << 20)  # a sparse 256 MiB disk, like mkosi's
    (record,) = list_images(store)
    assert record.size_bytes < 1 << 20
    blocks = sum(os.lstat(p).st_blocks * 512 for p in [path, *path.rglob("*")])
    assert record.size_bytes == blocks
    if shutil.which("du"):
        du = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True)
        assert record.size_bytes == int(du.stdout.split()[0])


def test_resolve_finds_tags_and_directories(store: Path, tmp_path: Path) -> None:
    (tag,) = images(store, 1)
    assert resolve_image(tag, store) == store / tag
    assert resolve_image(str(store / tag), store) == store / tag
    with pytest.raises(UnknownTag, match=f"unknown image 'nope'.*it holds {re.escape(tag)}"):
        resolve_image("nope", store)
    with pytest.raises(UnknownTag, match=r"holds no manifest\.json"):
        resolve_image(str(tmp_path), store)


# -- attestation ---------------------------------------------------------------


def test_attestation_records_the_verified_disk_digest(store: Path) -> None:
    (tag,) = images(store, 1)
    path = store / tag
    manifest = read_manifest(path)
    tests = {"t::a": "passed", "t::b": "skipped", "t::c": "passed"}
    record = write_attestation(
        path, passed=True, tests=tests, started=NOW - 90, finished=NOW, accel="tcg"
    )
    assert read_attestation(path) == record
    assert record.tag == tag
    assert record.image_sha256 == manifest.artifacts["aurora.raw"].sha256
    assert record.passed is True
    assert record.counts == {"total": 3, "passed": 2, "skipped": 1}
    assert record.tests == tests
    assert record.started.endswith("+00:00") and record.seconds == 90.0
    assert record.accel == "tcg"
    assert is_attested(path) and is_attested(path, verify=True)
    assert list_images(store)[0].attested
    assert not list(path.glob(f".{ATTESTATION}.*")), "no temp file left behind"


def test_tampered_disk_is_not_attested(store: Path) -> None:
    (tag,) = images(store, 1)
    path = store / tag
    attest(path)
    with (path / "aurora.raw").open("ab") as disk:
        disk.write(b"rootkit")
    assert not is_attested(path)
    assert not list_images(store)[0].attested


def test_same_size_tamper_with_restored_mtime_needs_verify(store: Path) -> None:
    (tag,) = images(store, 1)
    path = store / tag
    record = attest(path)
    disk = path / "aurora.raw"
    disk.write_bytes(b"evil" * 1024)
    assert record.disk is not None
    os.utime(disk, ns=(record.disk.mtime_ns, record.disk.mtime_ns))
    assert is_attested(path)  # the cheap check trusts an unchanged size and mtime
    assert not is_attested(path, verify=True)


def test_touched_but_unchanged_disk_stays_attested(store: Path) -> None:
    (tag,) = images(store, 1)
    path = store / tag
    attest(path)
    os.utime(path / "aurora.raw", (NOW + 5, NOW + 5))
    assert is_attested(path)  # re-hashed, same bytes


def test_disk_changed_before_attesting_is_refused(store: Path) -> None:
    (tag,) = images(store, 1)
    path = store / tag
    (path / "aurora.raw").write_bytes(b"other")
    with pytest.raises(StoreError, match="not the manifest's"):
        attest(path)
    assert read_attestation(path) is None


def test_failed_or_empty_runs_do_not_attest(store: Path) -> None:
    a, b, c = images(store, 3)
    attest(store / a, passed=False)
    write_attestation(store / b, passed=True, tests={"t::x": "failed"}, started=0, finished=1)
    write_attestation(store / c, passed=True, tests={}, started=0, finished=1)
    for tag in (a, b, c):
        assert read_attestation(store / tag).passed is False  # type: ignore[union-attr]
        assert not is_attested(store / tag)


def test_attestation_for_another_digest_does_not_count(store: Path) -> None:
    (tag,) = images(store, 1)
    path = store / tag
    record = replace(attest(path), image_sha256="0" * 64)
    (path / ATTESTATION).write_text(json.dumps(record.to_json()))
    assert not is_attested(path)
    (path / ATTESTATION).write_text("{not json")
    assert read_attestation(path) is None and not is_attested(path)


# -- prune ---------------------------------------------------------------------


def remaining(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir())


def test_prune_keeps_the_newest(store: Path) -> None:
    tags = images(store, 5)
    removed = prune(2, store=store)
    assert sorted(removed) == tags[:3]
    assert remaining(store) == tags[3:]
    assert prune(2, store=store) == []


def test_prune_never_removes_live_or_its_rollback_target(store: Path) -> None:
    i1, i2, i3, i4, i5, i6 = images(store, 6)
    attest(store / i1)  # i2 is untested, so i1 is where a rollback from i3 goes
    removed = prune(1, {i3}, store=store)
    assert sorted(removed) == [i2, i4, i5]
    assert remaining(store) == [i1, i3, i6]


def test_prune_protects_only_the_nearest_attested_predecessor(store: Path) -> None:
    i1, i2, i3, i4 = images(store, 4)
    attest(store / i1)
    attest(store / i2)
    assert sorted(prune(0, {i3}, store=store)) == [i1, i4]
    assert remaining(store) == [i2, i3]


def test_prune_ignores_a_failed_or_tampered_predecessor(store: Path) -> None:
    i1, i2, i3 = images(store, 3)
    attest(store / i1)
    attest(store / i2, passed=False)
    assert sorted(prune(0, {i3}, store=store)) == [i2]
    with (store / i1 / "aurora.raw").open("ab") as disk:
        disk.write(b"x")
    assert prune(0, {i3}, store=store) == [i1]
    assert remaining(store) == [i3]


def test_prune_with_an_unknown_live_tag_removes_nothing(store: Path) -> None:
    tags = images(store, 3)
    with pytest.raises(UnknownTag, match=r"live image 2026\.11-typo is not in"):
        prune(0, {"2026.11-typo"}, store=store)
    assert remaining(store) == tags


def test_prune_removes_stale_partials_only(store: Path) -> None:
    (tag,) = images(store, 1)
    old = store / ".2026.11-old.partial"
    old.mkdir()
    (old / "build.log").write_text("mkosi died\n")
    stale(old)
    fresh = store / ".2026.11-new.partial"
    fresh.mkdir()
    (fresh / "build.log").write_text("mkosi running\n")
    leftover = store / ".2026.11-gone.removing"
    leftover.mkdir()
    assert prune(5, store=store) == [".2026.11-old.partial"]
    assert remaining(store) == [".2026.11-new.partial", tag]


def test_prune_rejects_a_negative_keep(store: Path) -> None:
    with pytest.raises(StoreError, match="keep must be 0 or more"):
        prune(-1, store=store)


# -- CLI -----------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    i1, i2 = images(store, 2)
    attest(store / i1)
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TAG", "BUILT", "(UTC)", "SIZE", "ATTESTED"]
    assert lines[1].startswith(i2) and lines[1].endswith("no (not tested)")
    assert lines[2].startswith(i1) and "yes (1 tests" in lines[2]
    code, out, _ = run(capsys, "list", "--json")
    data = json.loads(out)
    assert code == 0 and data["store"] == str(store)
    assert [i["tag"] for i in data["images"]] == [i2, i1]
    first = data["images"][1]
    assert set(first) == {"tag", "path", "size_bytes", "built_at", "attested", "attestation"}
    assert first["attested"] is True and first["attestation"]["passed"] is True
    assert isinstance(first["size_bytes"], int) and first["built_at"].endswith("+00:00")


def test_cli_list_empty(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "list") == (0, f"no images in {store}\n", "")


def test_cli_prune(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    i1, i2, i3, i4 = images(store, 4)
    code, out, _ = run(capsys, "prune", "--keep", "1", "--live", i2, "--json")
    assert code == 0
    assert json.loads(out) == {"store": str(store), "removed": [i3, i1], "kept": [i4, i2]}
    code, out, _ = run(capsys, "prune", "--keep", "1", "--live", i2)
    assert code == 0 and out == f"kept 2 images in {store}\n"


def test_cli_unknown_tag_is_one_line_and_exit_1(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tag,) = images(store, 1)
    code, out, err = run(capsys, "diff", tag, "2026.11-nope")
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("aurora-image: unknown image '2026.11-nope'")
    assert tag in err
    code, _, err = run(capsys, "prune", "--keep", "0", "--live", "2026.11-nope")
    assert code == 1 and err.count("\n") == 1 and "2026.11-nope" in err
    assert remaining(store) == [tag]


def test_cli_diff_accepts_tags_and_directories(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    i1, i2 = images(store, 2)
    code, out, _ = run(capsys, "diff", i1, str(store / i2))
    assert code == 0 and out.startswith(f"a: {i1}")
    code, out, _ = run(capsys, "diff", "--json", i1, i2)
    assert code == 0 and json.loads(out)["b"]["tag"] == i2


# -- the VM suite's attestation hook --------------------------------------------


def test_vm_conftest_attests_the_image_it_used(store: Path, tmp_path: Path) -> None:
    """The real tests/vm/conftest.py, with tests that need the image but no VM."""
    (tag,) = images(store, 1)
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(REPO / "tests" / "vm" / "conftest.py", suite / "conftest.py")
    (suite / "test_fake.py").write_text(
        textwrap.dedent("""
        import os

        def test_one(image_dir):
            assert image_dir.name

        def test_two(image_dir):
            assert os.environ.get("FAIL") != "1"
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "AURORA_IMAGE": tag}

    def pytest_run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
        return subprocess.run(argv, cwd=suite, env={**env, **extra}, capture_output=True, text=True)

    result = pytest_run(str(suite))
    assert result.returncode == 0, result.stdout + result.stderr
    record = read_attestation(store / tag)
    assert record is not None and record.passed is True
    assert record.counts == {"total": 2, "passed": 2}
    assert sorted(record.tests) == ["test_fake.py::test_one", "test_fake.py::test_two"]
    assert is_attested(store / tag)

    result = pytest_run(str(suite), "-k", "one")  # a partial pass proves nothing
    assert "not written" in result.stdout
    assert read_attestation(store / tag).counts["total"] == 2  # type: ignore[union-attr]

    result = pytest_run(str(suite), FAIL="1")
    assert result.returncode == 1
    record = read_attestation(store / tag)
    assert record is not None
    assert record.passed is False and record.tests["test_fake.py::test_two"] == "failed"
    assert not is_attested(store / tag)

    (store / tag / ATTESTATION).unlink()
    (suite / "test_fake.py").write_text("def test_no_image():\n    pass\n")
    assert pytest_run(str(suite)).returncode == 0
    assert read_attestation(store / tag) is None
