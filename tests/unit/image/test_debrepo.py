"""The locked build's repository, read by the real apt: it offers exactly the locked
versions, the files carry the lock's digests, and a store that lacks or garbles a
file is refused before any build starts."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from builder.image.debian import locked_repository
from builder.image.debrepo import write_repo
from builder.image.debstore import DebStoreError, blob, store_dir
from builder.image.inputs import collect
from builder.image.mkosi import MkosiJob
from builder.paths import Paths
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

SUITE = "trixie"


def _deb(workdir: Path, package: str, version: str, depends: str = "") -> Path:
    """A real .deb, built by dpkg-deb."""
    root = workdir / f"{package}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    fields = [f"Package: {package}", f"Version: {version}", "Architecture: all",
              "Maintainer: tests <tests@example.org>", f"Description: {package}"]  # fmt: skip
    if depends:
        fields.append(f"Depends: {depends}")
    (root / "DEBIAN" / "control").write_text("\n".join(fields) + "\n")
    (root / "usr" / "share" / package).mkdir(parents=True)
    (root / "usr" / "share" / package / "version").write_text(version)
    out = workdir / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
                   check=True, capture_output=True)  # fmt: skip
    return out


def _stored(deb: Path, store: Path) -> str:
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    blob(digest, store).parent.mkdir(parents=True, exist_ok=True)
    blob(digest, store).write_bytes(deb.read_bytes())
    return digest


class Apt:
    """apt-get and apt-cache with a private state, sources and cache (no root state touched)."""

    def __init__(self, root: Path, repo: Path) -> None:
        for d in ("state/lists/partial", "cache/archives/partial", "etc/apt.conf.d",
                  "etc/preferences.d", "etc/trusted.gpg.d"):  # fmt: skip
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "status").write_text("")
        (root / "sources.list").write_text(f"deb [trusted=yes] file://{repo} {SUITE} main\n")
        self.options = [
            f"-oDir::State={root / 'state'}", f"-oDir::State::status={root / 'status'}",
            f"-oDir::Cache={root / 'cache'}", f"-oDir::Etc={root / 'etc'}",
            f"-oDir::Etc::sourcelist={root / 'sources.list'}", "-oDir::Etc::sourceparts=-",
            "-oAPT::Architecture=amd64", "-oAPT::Sandbox::User=root",
            "-oDebug::NoLocking=1",
        ]  # fmt: skip

    def __call__(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run([tool, *self.options, *args], capture_output=True, text=True, cwd=cwd)
        assert done.returncode == 0, done.stderr
        return done.stdout


def test_apt_resolves_exactly_the_locked_files(tmp_path: Path) -> None:
    store, work = tmp_path / "store", tmp_path / "debs"
    work.mkdir()
    base = _deb(work, "aurora-base", "1.0")
    app = _deb(work, "aurora-app", "2:3.1-1", depends="aurora-base (>= 1.0)")
    locked = {"aurora-base": ("1.0", _stored(base, store)),
              "aurora-app": ("2:3.1-1", _stored(app, store))}  # fmt: skip

    repo = write_repo(locked, store, tmp_path / "repos", SUITE)

    apt = Apt(tmp_path / "apt", repo)
    apt("apt-get", "update")
    policy = apt("apt-cache", "policy", "aurora-app")
    assert "Candidate: 2:3.1-1" in policy
    plan = apt("apt-get", "--simulate", "install", "aurora-app")
    assert "Inst aurora-base (1.0" in plan and "Inst aurora-app (2:3.1-1" in plan
    # apt fetches the stored files and checks each against the index's SHA256.
    fetched_dir = tmp_path / "fetched"
    fetched_dir.mkdir()
    apt("apt-get", "download", "aurora-app", "aurora-base", cwd=fetched_dir)
    fetched = sorted(fetched_dir.glob("*.deb"))
    assert len(fetched) == 2
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in fetched} == {
        digest for _, digest in locked.values()
    }
    # A pool file that is not what the lock says is refused by apt itself.
    tampered = repo / "pool" / f"{locked['aurora-base'][1]}.deb"
    tampered.unlink()  # a new file: the store's blob (hard-linked) stays as it was
    tampered.write_bytes(app.read_bytes())
    again = tmp_path / "again"
    again.mkdir()
    done = subprocess.run(["apt-get", *apt.options, "download", "aurora-base"],
                          capture_output=True, text=True, cwd=again)  # fmt: skip
    assert done.returncode != 0 and "mismatch" in done.stderr, done.stderr


def test_the_repository_is_a_function_of_the_lock(tmp_path: Path) -> None:
    store, work = tmp_path / "store", tmp_path / "debs"
    work.mkdir()
    locked = {"aurora-base": ("1.0", _stored(_deb(work, "aurora-base", "1.0"), store))}
    first = write_repo(locked, store, tmp_path / "one", SUITE)
    second = write_repo(locked, store, tmp_path / "two", SUITE)
    assert first.name == second.name
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert write_repo(locked, store, tmp_path / "one", SUITE) == first  # reused
    assert not list((tmp_path / "one").glob(".*.partial"))


def test_a_missing_or_damaged_file_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    store, work = tmp_path / "store", tmp_path / "debs"
    work.mkdir()
    digest = _stored(_deb(work, "aurora-base", "1.0"), store)
    locked = {"aurora-base": ("1.0", digest), "aurora-gone": ("1", "0" * 64)}
    with pytest.raises(DebStoreError, match=r"aurora-gone are missing or damaged; import"):
        write_repo(locked, store, tmp_path / "repos", SUITE)
    blob(digest, store).write_bytes(b"not the package")
    with pytest.raises(DebStoreError, match=r"aurora-base are missing or damaged"):
        write_repo({"aurora-base": ("1.0", digest)}, store, tmp_path / "repos", SUITE)
    assert not (tmp_path / "repos").exists()  # refused before anything was written


def test_a_file_that_is_another_version_is_refused(tmp_path: Path) -> None:
    store, work = tmp_path / "store", tmp_path / "debs"
    work.mkdir()
    digest = _stored(_deb(work, "aurora-base", "1.1"), store)
    with pytest.raises(DebStoreError, match=r"is not aurora-base 1.0 \(the lock says it is\)"):
        write_repo({"aurora-base": ("1.0", digest)}, store, tmp_path / "repos", SUITE)
    assert list((tmp_path / "repos").iterdir()) == []  # the half-made repository is gone


def _lock_file(path: Path, entries: dict[str, tuple[str, str | None]]) -> Path:
    lines = ["# aurora-image Debian lock: package version, from image 2026.11-test"]
    lines += [f"{p} {v} {d}" if d else f"{p} {v}" for p, (v, d) in sorted(entries.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_build_installs_from_the_lock_only_when_the_lock_and_the_store_are_complete(
    tmp_path: Path,
) -> None:
    spec = load_spec(REPO_ROOT / "hosts" / "aurora.yml")
    paths = Paths.under(tmp_path)
    store = store_dir(paths.cache)
    work = tmp_path / "debs"
    work.mkdir()
    entries = {p: ("1.0", _stored(_deb(work, p, "1.0"), store)) for p in spec.packages}
    entries["aurora-base"] = ("1.0", _stored(_deb(work, "aurora-base", "1.0"), store))
    lock = _lock_file(tmp_path / "lock.txt", dict(entries))

    repo = locked_repository(spec, paths, lock)
    assert repo is not None and repo.parent == store / "repos"
    (paths.cache / "uvboot" / "bin").mkdir(parents=True)
    (paths.cache / "uvboot" / "bin" / "uv").touch()  # mkosi's argv names it; never run here
    job = MkosiJob(repo=REPO_ROOT, extra_tree=tmp_path, stage=tmp_path, output_dir=tmp_path,
                   packages=(), environment={}, seed="s", source_date_epoch=0,
                   cache=paths.cache, build_cache=paths.build_cache, local_mirror=repo)  # fmt: skip
    argv = job.argv()
    assert argv[argv.index("--local-mirror") + 1] == f"file://{repo}"

    # Any doubt, and the build resolves against the mirror (then checked against the lock):
    unpinned = _lock_file(tmp_path / "unpinned.txt", {**entries, "aurora-base": ("1.0", None)})
    assert locked_repository(spec, paths, unpinned) is None  # a line without its file
    without = {p: e for p, e in entries.items() if p != spec.packages[0]}
    assert locked_repository(spec, paths, _lock_file(tmp_path / "new.txt", without)) is None
    blob(entries["aurora-base"][1], store).unlink()
    assert locked_repository(spec, paths, lock) is None  # the store lacks a file


def test_a_build_from_the_mirror_has_a_tag_of_its_own() -> None:
    spec = load_spec(REPO_ROOT / "hosts" / "aurora.yml")
    assert collect(spec).tag != collect(spec, update_debian=True).tag
    assert collect(spec).tag == collect(spec).tag
