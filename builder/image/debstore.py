"""Debian packages by content: the .deb files each image was built from, kept by sha256.

One tag must name one image. A tag's inputs include the Debian lock
(locks/debian-packages.txt), and this store keeps the exact .deb files an
image installed, addressed by their sha256 (`<cache>/debstore/sha256/<hex>.deb`),
so they outlive the Debian mirror moving on:

- after a build, `keep` copies every installed package's .deb out of apt's
  archive cache (mkosi's package cache) into the store and returns
  {package: sha256}, which the manifest records (`debian_debs`) and
  `aurora-image lock --debian` writes into the lock beside each version;
- a build whose lock names a file for every package installs from a
  repository made of those files (builder.image.debrepo), so a rebuild of an
  old tag gets the same packages after the mirror moved on;
- otherwise, before a build, `seed` puts the locked .debs the store has into
  apt's archive cache, so apt installs those very files where the live index
  still names their versions;
- `export`/`import_` carry the store to another machine as one tar.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.errors import AuroraError

ARCHES = ("amd64", "all")


class DebStoreError(AuroraError):
    """A package is missing from the store or does not have its recorded digest."""


def store_dir(cache: Path) -> Path:
    """The store inside the build machine's cache (builder.paths.Paths.cache)."""
    return cache / "debstore"


def archives_dir(cache: Path) -> Path:
    """apt's archive cache inside mkosi's package cache (see builder.image.mkosi)."""
    return cache / "mkosi-pkgs" / "cache" / "apt" / "archives"


def deb_name(package: str, version: str, arch: str) -> str:
    """The file name apt gives a downloaded package (an epoch's ':' is written %3a)."""
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def blob(digest: str, root: Path) -> Path:
    return root / "sha256" / f"{digest}.deb"


def _put(source: Path, digest: str, root: Path) -> None:
    dest = blob(digest, root)
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    try:  # apt never rewrites a downloaded file, so a hard link is as safe as a copy
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, dest)


@dataclass(frozen=True)
class Kept:
    """The store entries of one build: {package: sha256} and the file name apt used."""

    digests: dict[str, str]
    names: dict[str, str]


def keep(packages: Mapping[str, str], archives: Path, root: Path) -> Kept:
    """Copy each installed package's .deb from apt's cache into the store."""
    digests, names, missing = {}, {}, []
    for package, version in sorted(packages.items()):
        found = next(
            (archives / deb_name(package, version, a) for a in ARCHES
             if (archives / deb_name(package, version, a)).is_file()),
            None,
        )  # fmt: skip
        if found is None:
            missing.append(f"{package} {version}")
            continue
        digest = _sha256(found)
        _put(found, digest, root)
        digests[package], names[package] = digest, found.name
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        )
        raise DebStoreError(
            f"{archives}: no downloaded .deb for {shown}; the package cache was cleaned "
            "during the build? build again"
        )
    return Kept(digests, names)


def seed(locked: Mapping[str, tuple[str, str]], archives: Path, root: Path) -> list[str]:
    """Put locked .debs ({package: (version, sha256)}) into apt's archive cache, checked;
    the packages the store lacks (to be downloaded, then checked by the lock)."""
    archives.mkdir(parents=True, exist_ok=True)
    absent = []
    for package, (version, digest) in sorted(locked.items()):
        if any((archives / deb_name(package, version, a)).exists() for a in ARCHES):
            continue  # already in apt's cache; apt checks it against the index's hash
        source = blob(digest, root)
        if not source.is_file():
            absent.append(package)
            continue
        if _sha256(source) != digest:
            raise DebStoreError(
                f"{source}: content does not match its name (sha256 {digest[:16]}); "
                "delete it and build again to fetch it"
            )
        arch = "all" if _is_arch_all(source) else "amd64"
        dest = archives / deb_name(package, version, arch)
        if not dest.exists():
            shutil.copyfile(source, dest)
    return absent


def _is_arch_all(deb: Path) -> bool:
    """Whether a .deb is `Architecture: all` (apt names its file after that)."""
    import subprocess

    done = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Architecture"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() == "all"


def verify(digests: Mapping[str, str], root: Path) -> list[str]:
    """Packages whose .deb is missing from the store or has another digest."""
    bad = []
    for package, digest in sorted(digests.items()):
        path = blob(digest, root)
        if not path.is_file() or _sha256(path) != digest:
            bad.append(package)
    return bad


def export(digests: Mapping[str, str], dest: Path, root: Path) -> int:
    """The store's .debs for these digests as one tar (sha256/<hex>.deb); how many."""
    bad = verify(digests, root)
    if bad:
        raise DebStoreError(f"{root}: missing or damaged .debs for {', '.join(bad[:5])}")
    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for digest in sorted(set(digests.values())):
            tar.add(blob(digest, root), arcname=f"sha256/{digest}.deb")
    os.replace(partial, dest)
    return len(set(digests.values()))


def import_(source: Path, root: Path) -> int:
    """Add a tar made by `export`; each member is checked against its name."""
    added = 0
    with tarfile.open(source, "r") as tar:
        for member in tar:
            name = member.name
            digest = name.removeprefix("sha256/").removesuffix(".deb")
            if not (member.isfile() and name == f"sha256/{digest}.deb" and len(digest) == 64):
                raise DebStoreError(f"{source}: {name!r} is not a store entry (sha256/<hex>.deb)")
            handle = tar.extractfile(member)
            assert handle is not None
            data = handle.read()
            if hashlib.sha256(data).hexdigest() != digest:
                raise DebStoreError(f"{source}: {name} does not have the digest in its name")
            dest = blob(digest, root)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                partial = dest.with_suffix(".partial")
                partial.write_bytes(data)
                os.replace(partial, dest)
                added += 1
    return added
