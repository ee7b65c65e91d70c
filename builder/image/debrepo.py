"""A Debian repository made from the package store: what a locked build installs from.

The Debian lock names every package of an image with its version and .deb
sha256; the store (builder.image.debstore) keeps those files. A build that
installs from the live mirror gets whatever the mirror has today; a build of
a locked image must get exactly the locked files, even after the mirror moved
on. So the build hands mkosi a repository that holds only the locked .debs
(`--local-mirror file://...`): apt resolves the same versions because there
are no others, and checks each file against the SHA256 this index gives it,
which is the lock's.

The repository is plain files (pool/ and dists/<suite>/), written once per
lock into a directory named after the lock's digest and renamed into place,
so a half-written one is never used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from builder.image.debstore import DebStoreError, blob, verify

COMPONENT = "main"
ARCH = "amd64"


def lock_digest(locked: Mapping[str, tuple[str, str]]) -> str:
    """A name for the repository of this lock: same lock, same repository."""
    text = "".join(f"{p} {v} {d}\n" for p, (v, d) in sorted(locked.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _control(deb: Path) -> str:
    """The package's control stanza, as dpkg-deb reads it from the .deb."""
    done = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True)
    if done.returncode != 0:
        raise DebStoreError(f"{deb}: not a readable .deb ({done.stderr.strip()})")
    return done.stdout.rstrip("\n")


def _stanza(deb: Path, filename: str, digest: str) -> str:
    return f"{_control(deb)}\nFilename: {filename}\nSize: {deb.stat().st_size}\nSHA256: {digest}\n"


def _release(suite: str, index: bytes, date: str) -> str:
    path = f"{COMPONENT}/binary-{ARCH}/Packages"
    return (
        f"Origin: aurora-image\nLabel: aurora-image locked packages\nSuite: {suite}\n"
        f"Codename: {suite}\nDate: {date}\nArchitectures: {ARCH} all\n"
        f"Components: {COMPONENT}\nSHA256:\n"
        f" {hashlib.sha256(index).hexdigest()} {len(index)} {path}\n"
    )


def written(locked: Mapping[str, tuple[str, str]], parent: Path, suite: str) -> Path | None:
    """The repository of this lock if it was made already (it is only ever renamed
    into place whole). Its files need no hashing again: apt checks each one against
    the index, which carries the lock's SHA256."""
    dest = parent / lock_digest(locked)
    return dest if (dest / "dists" / suite / "Release").is_file() else None


def write_repo(
    locked: Mapping[str, tuple[str, str]], store: Path, parent: Path, suite: str
) -> Path:
    """The repository of these locked packages ({package: (version, sha256)}), made
    from the store once and reused; refused if the store lacks or garbles a file."""
    done = written(locked, parent, suite)
    if done is not None:
        return done
    dest = parent / lock_digest(locked)
    bad = verify({p: d for p, (_, d) in locked.items()}, store)
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise DebStoreError(
            f"{store}: the Debian lock's .debs for {shown} are missing or damaged; import "
            "them (`aurora-image debstore import FILE`) or update the lock "
            "(`aurora-image build --update-debian`, then `aurora-image lock --debian`)"
        )
    partial = parent / f".{dest.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _fill(partial, locked, store, suite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return dest


def _fill(partial: Path, locked: Mapping[str, tuple[str, str]], store: Path, suite: str) -> None:
    pool = partial / "pool"
    pool.mkdir(parents=True)
    stanzas = []
    for package, (version, digest) in sorted(locked.items()):
        source = blob(digest, store)
        name = f"pool/{digest}.deb"
        try:  # the store never rewrites a blob, so a hard link is as safe as a copy
            os.link(source, partial / name)
        except OSError:
            shutil.copyfile(source, partial / name)
        stanza = _stanza(partial / name, name, digest)
        if f"\nVersion: {version}\n" not in f"\n{stanza}":
            raise DebStoreError(f"{source}: is not {package} {version} (the lock says it is)")
        stanzas.append(stanza)
    index = "\n".join(stanzas).encode()
    dists = partial / "dists" / suite
    (dists / COMPONENT / f"binary-{ARCH}").mkdir(parents=True)
    (dists / COMPONENT / f"binary-{ARCH}" / "Packages").write_bytes(index)
    # A fixed date: the repository is a function of the lock, not of when it was made.
    (dists / "Release").write_text(_release(suite, index, "Thu, 01 Jan 1970 00:00:00 UTC"))
