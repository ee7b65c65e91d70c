"""Fetch the Debian lock's .debs the package store lacks, straight from the spec's
archives, many at a time, each checked against the lock's sha256.

On a fresh machine the store (builder.image.debstore) is empty, so the build
would resolve against the live mirror and install whatever it has today, and a
mirror that moved on since the lock fails the build's lock check. With the
lock's files fetched first, the build installs from the locked repository
(builder.image.debrepo), the same files as every other machine; the fetch runs
beside the tools tree's build, so the download costs no time of its own.

The archives' indexes only say where each file is: the lock's sha256 decides
what enters the store, so an index is read without its signature.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import lzma
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.image.debstore import blob
from builder.spec.model import HostSpec

ARCH = "amd64"
WORKERS = 8
TIMEOUT = 60
ATTEMPTS = 3


@dataclass(frozen=True)
class Index:
    """One Packages index of an archive: its base URL and where the index is."""

    base: str
    path: str  # dists/<suite>/<component>/binary-<arch>/Packages


def indexes(spec: HostSpec, release: str) -> list[Index]:
    """The indexes apt reads for the image: Debian (or its snapshot) and the extra repositories."""
    main, security = spec.debian.urls()
    found = [
        Index(main, f"dists/{suite}/main/binary-{ARCH}/Packages")
        for suite in (release, f"{release}-updates")
    ]
    found.append(Index(security, f"dists/{release}-security/main/binary-{ARCH}/Packages"))
    for repo in spec.apt_repositories:
        found += [
            Index(repo.url, f"dists/{repo.suite}/{component}/binary-{ARCH}/Packages")
            for component in repo.components
        ]
    return found


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """The fields of each package in a Packages index (continuation lines dropped)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            if fields:
                yield fields
            fields = {}
        elif line[0] not in " \t":
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if fields:
        yield fields


def locations(text: str, base: str) -> dict[str, str]:
    """{sha256: URL} of every .deb an index names."""
    return {
        f["SHA256"]: f"{base.rstrip('/')}/{f['Filename']}"
        for f in stanzas(text)
        if "SHA256" in f and "Filename" in f
    }


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return bytes(response.read())


def read_index(index: Index, get: Callable[[str], bytes] = _get) -> str:
    """An index's text, from the first of its compressed forms the archive serves."""
    url = f"{index.base.rstrip('/')}/{index.path}"
    forms: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
        (".xz", lzma.decompress),
        (".gz", gzip.decompress),
        ("", bytes),
    )
    for suffix, unpack in forms:
        try:
            return unpack(get(url + suffix)).decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, lzma.LZMAError, EOFError):
            continue
    return ""


def fetch_one(url: str, digest: str, store: Path, attempts: int = ATTEMPTS) -> bool:
    """Download one .deb into the store if its sha256 is `digest`; whether it is there.
    A dropped connection is tried again (seen: one of ~430 downloads reset)."""
    return any(_download(url, digest, store) for _ in range(attempts))


def _download(url: str, digest: str, store: Path) -> bool:
    dest = blob(digest, store)
    if dest.is_file():
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.partial")
    h = hashlib.sha256()
    try:
        with _open(url) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        _drop_connections()  # a broken connection is not used again
        partial.unlink(missing_ok=True)
        return False
    if h.hexdigest() != digest:
        partial.unlink(missing_ok=True)
        return False
    os.replace(partial, dest)
    return True


_local = threading.local()


def _connections() -> dict[tuple[str, str], http.client.HTTPConnection]:
    if not hasattr(_local, "connections"):
        _local.connections = {}
    return _local.connections  # type: ignore[no-any-return]


def _drop_connections() -> None:
    for connection in _connections().values():
        connection.close()
    _connections().clear()


@contextmanager
def _open(url: str) -> Iterator[http.client.HTTPResponse]:
    """GET `url` on this thread's kept-alive connection to its host: one name lookup
    per thread, not one per file (this machine's resolver stalls 5 s now and then,
    which across ~430 fresh connections added a minute). Through urllib where a
    proxy is configured or the answer is not a plain 200 (a redirect, say)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.scheme in urllib.request.getproxies():
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            yield response
        return
    key = (parts.scheme, parts.netloc)
    connection = _connections().get(key)
    if connection is None:
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = _connections().setdefault(key, kind(parts.netloc, timeout=TIMEOUT))
    connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
    response = connection.getresponse()
    if response.status != 200:
        response.read()
        with urllib.request.urlopen(url, timeout=TIMEOUT) as redirected:
            yield redirected
        return
    yield response
    if not response.isclosed():
        response.read()  # the rest, so the connection can carry the next request


def absent(locked: Mapping[str, tuple[str, str]], store: Path) -> dict[str, str]:
    """{package: sha256} of each locked .deb ({package: (version, sha256)}) the store lacks."""
    return {p: d for p, (_, d) in locked.items() if not blob(d, store).is_file()}


def fetch(
    wanted: Mapping[str, str],
    store: Path,
    sources: Iterable[Index],
    get: Callable[[str], bytes] = _get,
) -> list[str]:
    """Fetch the .debs `absent` found the store lacks ({package: sha256}); the
    packages still missing (not in any index by their digest, or a failed download)."""
    if not wanted:
        return []
    where: dict[str, str] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for found in pool.map(lambda i: locations(read_index(i, get), i.base), list(sources)):
            where.update(found)
        jobs = {
            p: pool.submit(fetch_one, where[d], d, store) for p, d in wanted.items() if d in where
        }
        return sorted(p for p in wanted if p not in jobs or not jobs[p].result())


def fetch_lock(
    spec: HostSpec, locked: Mapping[str, tuple[str, str]], store: Path, release: str
) -> str | None:
    """`fetch` for a build: what it did as one line for the build's output (None when
    the store had every file). A failure leaves the store as it was: the build then
    resolves against the mirror as without a fetch."""
    wanted = absent(locked, store)
    if not wanted:
        return None
    try:
        missing = fetch(wanted, store, indexes(spec, release))
    except Exception as exc:  # an optimisation: it never fails the build
        return f"fetching the Debian lock's .debs failed ({exc}); installing from the mirror"
    line = f"fetched {len(wanted) - len(missing)} of the Debian lock's .debs"
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        )
        line += f"; not on the archives: {shown} (installing from the mirror)"
    return line
