"""The content-addressed .deb store and the lock that names exact files: real .debs
(made with dpkg-deb), apt's archive-cache names, export/import between two stores."""

from __future__ import annotations

import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.image import debian_lock, debstore
from builder.image.store import read_manifest, write_manifest
from tests.fake_images import make_image


def make_deb(where: Path, package: str, version: str, arch: str = "amd64") -> Path:
    root = where / f"{package}-{version}-build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "share" / package).mkdir(parents=True)
    (root / "usr" / "share" / package / "v").write_text(version)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: test <t@example.org>\nDescription: test package\n"
    )
    out = where / debstore.deb_name(package, version, arch)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return out


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """apt's archive cache after a build: three packages, one with an epoch, one arch all."""
    where = tmp_path / "archives"
    where.mkdir()
    make_deb(where, "nginx", "1.26.3-1")
    make_deb(where, "tzdata", "2025b-4", "all")
    make_deb(where, "libfoo", "2:1.0-1")
    return where


PACKAGES = {"nginx": "1.26.3-1", "tzdata": "2025b-4", "libfoo": "2:1.0-1"}


def test_keep_seed_export_import(archives: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    kept = debstore.keep(PACKAGES, archives, store)
    assert set(kept.digests) == set(PACKAGES)
    assert kept.names["libfoo"] == "libfoo_2%3a1.0-1_amd64.deb"
    for package, digest in kept.digests.items():
        assert debstore.blob(digest, store).read_bytes() == (archives / kept.names[package]
                                                            ).read_bytes()  # fmt: skip
    # Another machine: an empty store and an empty apt cache.
    tar = tmp_path / "debs.tar"
    assert debstore.export(kept.digests, tar, store) == 3
    other, cache = tmp_path / "other-store", tmp_path / "other-cache"
    assert debstore.import_(tar, other) == 3 and debstore.import_(tar, other) == 0
    locked = {p: (PACKAGES[p], d) for p, d in kept.digests.items()}
    assert debstore.seed(locked, cache, other) == []
    assert sorted(p.name for p in cache.iterdir()) == sorted(kept.names.values())
    assert debstore.verify(kept.digests, other) == []


def test_damage_is_found(archives: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    kept = debstore.keep(PACKAGES, archives, store)
    victim = debstore.blob(kept.digests["nginx"], store)
    victim.write_bytes(victim.read_bytes() + b"x")
    assert debstore.verify(kept.digests, store) == ["nginx"]
    with pytest.raises(debstore.DebStoreError, match="does not match its name"):
        debstore.seed({"nginx": ("1.26.3-1", kept.digests["nginx"])}, tmp_path / "c", store)
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w") as tar:
        tar.add(victim, arcname=f"sha256/{kept.digests['nginx']}.deb")
    with pytest.raises(debstore.DebStoreError, match="does not have the digest in its name"):
        debstore.import_(forged, tmp_path / "third")


def test_a_package_apt_did_not_keep_is_said(archives: Path, tmp_path: Path) -> None:
    with pytest.raises(debstore.DebStoreError, match=r"no downloaded .deb for curl 8.14.1-2"):
        debstore.keep(PACKAGES | {"curl": "8.14.1-2"}, archives, tmp_path / "store")


def test_lock_with_digests_pins_files(tmp_path: Path, archives: Path) -> None:
    store = tmp_path / "store"
    kept = debstore.keep(PACKAGES, archives, store)
    image = make_image(tmp_path / "images", "2026.11-aaaa", built_at=1.0, debian=PACKAGES)
    write_manifest(image, replace(read_manifest(image), debian_debs=kept.digests))
    lock = tmp_path / "debian-packages.txt"
    debian_lock.write_debian_lock(image, lock)
    assert debian_lock.read_debian_lock(lock) == PACKAGES
    assert debian_lock.read_debian_digests(lock)["tzdata"] == ("2025b-4", kept.digests["tzdata"])
    same = debian_lock.compare(PACKAGES, lock, debs=kept.digests)
    assert same["pinned"] and same["matches"]
    rebuilt = kept.digests | {"nginx": "0" * 64}  # same version, other bytes: another image
    moved = debian_lock.compare(PACKAGES, lock, debs=rebuilt)
    assert not moved["matches"] and moved["changed"] == [
        f"nginx 1.26.3-1: .deb {kept.digests['nginx'][:12]} -> {'0' * 12}"
    ]


def test_cli_export_and_verify(
    tmp_path: Path, archives: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("AURORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AURORA_IMAGES", str(tmp_path / "images"))
    root = debstore.store_dir(tmp_path / "cache")  # where the CLI looks, AURORA_CACHE being that
    kept = debstore.keep(PACKAGES, archives, root)
    image = make_image(tmp_path / "images", "2026.11-aaaa", built_at=1.0, debian=PACKAGES)
    write_manifest(image, replace(read_manifest(image), debian_debs=kept.digests))
    assert main(["debstore", "verify", "2026.11-aaaa"]) == 0
    tar = tmp_path / "out.tar"
    assert main(["debstore", "export", "2026.11-aaaa", "--to", str(tar), "--json"]) == 0
    assert '"debs": 3' in capsys.readouterr().out
    debstore.blob(kept.digests["libfoo"], root).unlink()
    assert main(["debstore", "verify", "2026.11-aaaa"]) == 1
    assert "libfoo" in capsys.readouterr().err
    assert main(["debstore", "import", str(tar)]) == 0
    assert main(["debstore", "verify", "2026.11-aaaa"]) == 0
