"""A build's Debian packages: where apt takes them from, and what was installed.

Where from: the Debian lock's own files when the lock and the package store are
complete (the locked repository, builder.image.debrepo), else the spec's mirror
or snapshot and its extra repositories (the apt sandbox). What was installed:
mkosi's package manifest, and the .debs kept into the store afterwards.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from builder.image import debian_lock, debrepo, debstore
from builder.paths import Paths
from builder.spec.model import HostSpec

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# mkosi.conf's Release=: the suite the locked repository names.
DEBIAN_RELEASE = "trixie"


def apt_sandbox(spec: HostSpec, dest: Path, *, locked: bool = False) -> Path:
    """The package manager's view for the image: Debian (mirror or snapshot) and
    the spec's extra repositories. Replaces mkosi's own list (whose debug
    repository the mirrors here refuse). A locked build lists nothing here:
    mkosi's list then names only the locked repository."""
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "etc/apt/sources.list.d").mkdir(parents=True)
    (dest / "usr/share/keyrings").mkdir(parents=True)
    if locked:
        return dest
    main, security = spec.debian.urls()
    valid = "Check-Valid-Until: no\n" if spec.debian.snapshot else ""
    (dest / "etc/apt/sources.list.d/mkosi.sources").write_text(
        f"Types: deb\nURIs: {main}\nSuites: trixie trixie-updates\nComponents: main\n"
        f"Signed-By: {DEBIAN_KEYRING}\n{valid}\n"
        f"Types: deb\nURIs: {security}\nSuites: trixie-security\nComponents: main\n"
        f"Signed-By: {DEBIAN_KEYRING}\n{valid}"
    )
    for repo in spec.apt_repositories:
        key = spec.source.apt_keys[repo.name]  # checked by SpecSource.require_files
        keyring = f"/usr/share/keyrings/aurora-{repo.name}.gpg"
        shutil.copy2(key, dest / keyring.lstrip("/"))
        (dest / f"etc/apt/sources.list.d/{repo.name}.sources").write_text(
            f"Types: deb\nURIs: {repo.url}\nSuites: {repo.suite}\n"
            f"Components: {' '.join(repo.components)}\nSigned-By: {keyring}\n"
        )
    return dest


def locked_repository(spec: HostSpec, paths: Paths, lock: Path | None = None) -> Path | None:
    """The repository of the Debian lock's exact files, when the lock names a file for
    every package and the store holds them all: then the build installs those files
    whatever the mirror has today (one tag, one image). Otherwise None: the build
    resolves against the mirror and the lock is checked afterwards."""
    lock = lock or debian_lock.DEBIAN_LOCK
    locked, versions = debian_lock.read_debian_digests(lock), debian_lock.read_debian_lock(lock)
    if not locked or versions is None or set(locked) != set(versions):
        return None
    if any(package not in locked for package in spec.packages):
        return None  # a package the lock does not know: resolve it, the check says what moved
    store = debstore.store_dir(paths.cache)
    # Beside the store: the pool is hard links into it (same file system, no copies).
    repos = store / "repos"
    if any(not debstore.blob(digest, store).is_file() for _, digest in locked.values()):
        return None
    made = debrepo.written(locked, repos, DEBIAN_RELEASE)
    if made is not None:
        return made  # made before from checked files: no hashing the store on every build
    if debstore.verify({p: d for p, (_, d) in locked.items()}, store):
        return None
    return debrepo.write_repo(locked, store, repos, DEBIAN_RELEASE)


def _read_json(path: Path) -> object:
    return json.loads(path.read_text()) if path.exists() else None


def debian_packages(mkosi_manifest: Path) -> dict[str, str]:
    data = _read_json(mkosi_manifest) or {}
    packages = data.get("packages", []) if isinstance(data, dict) else []
    return {p["name"]: p["version"] for p in sorted(packages, key=lambda p: p["name"])}


def python_packages(listing: Path) -> dict[str, str]:
    data = _read_json(listing) or []
    return {p["name"]: p["version"] for p in sorted(data, key=lambda p: p["name"].lower())}


def keep_debs(packages: dict[str, str], archives: Path, root: Path) -> dict[str, str] | None:
    """The installed .debs into the content-addressed store; {package: sha256}."""
    try:
        return debstore.keep(packages, archives, root).digests
    except debstore.DebStoreError as exc:
        print(f"aurora-image: warning: .debs not kept: {exc}", file=sys.stderr)
        return None
