"""Fetching the Debian lock's .debs on a fresh machine: from a real HTTP archive on
loopback, exactly the locked files enter the store (by the lock's sha256, whatever
the index or the server says), and then the build installs from the locked repository."""

from __future__ import annotations

import functools
import hashlib
import http.server
import lzma
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.image import debfetch
from builder.image.debian import locked_repository
from builder.image.debstore import blob, store_dir
from builder.paths import Paths
from builder.spec.model import HostSpec, load_spec
from tests.paths import REPO_ROOT
from tests.unit.image.test_debstore import make_deb

SUITE = "trixie"


class Archive:
    """A Debian-style archive served over HTTP/1.1 (connections kept alive) from a
    directory, with a log of requests and of connections; paths under `moved/` answer
    with a redirect to the same path without it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.connections = 0
        archive = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                archive.connections += 1  # one handler per connection, many requests
                super().setup()

            def do_GET(self) -> None:
                archive.requests.append(self.path)
                if "/moved/" in self.path:
                    self.send_response(302)
                    self.send_header("Location", self.path.replace("/moved/", "/", 1))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/debian"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def publish(self, suite: str, debs: list[Path], compress: str = ".xz") -> None:
        """Put the .debs in the pool and an index naming them under dists/<suite>."""
        stanzas = []
        for deb in debs:
            pool = self.root / "debian/pool/main" / deb.name
            pool.parent.mkdir(parents=True, exist_ok=True)
            pool.write_bytes(deb.read_bytes())
            package, version = deb.name.split("_")[:2]
            digest = hashlib.sha256(deb.read_bytes()).hexdigest()
            stanzas.append(
                f"Package: {package}\nVersion: {version}\nDescription: test\n continued\n"
                f"Filename: pool/main/{deb.name}\nSHA256: {digest}\n"
            )
        index = self.root / f"debian/dists/{suite}/main/binary-amd64/Packages{compress}"
        index.parent.mkdir(parents=True, exist_ok=True)
        data = "\n".join(stanzas).encode()
        index.write_bytes(lzma.compress(data) if compress == ".xz" else data)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    served = Archive(tmp_path / "www")
    yield served
    served.close()


def digest(deb: Path) -> str:
    return hashlib.sha256(deb.read_bytes()).hexdigest()


def put(deb: Path, store: Path) -> None:
    """The .deb in the store already, by its digest."""
    blob(digest(deb), store).parent.mkdir(parents=True, exist_ok=True)
    blob(digest(deb), store).write_bytes(deb.read_bytes())


def test_the_locked_files_enter_the_store_by_their_digest(tmp_path: Path, archive: Archive) -> None:
    debs = [make_deb(tmp_path, name, "1.0") for name in ("alpha", "beta", "gamma")]
    archive.publish(SUITE, debs[:2])
    archive.publish(f"{SUITE}-security", debs[2:], compress="")  # no .xz: the plain index
    locked = {d.name.split("_")[0]: ("1.0", digest(d)) for d in debs}
    store = tmp_path / "store"
    sources = [debfetch.Index(archive.url, f"dists/{s}/main/binary-amd64/Packages")
               for s in (SUITE, f"{SUITE}-security")]  # fmt: skip

    assert debfetch.fetch(debfetch.absent(locked, store), store, sources) == []

    for deb in debs:
        assert blob(digest(deb), store).read_bytes() == deb.read_bytes()
    assert sorted(p.name for p in (store / "sha256").iterdir()) == sorted(
        f"{digest(d)}.deb" for d in debs
    )


def test_a_file_that_is_not_the_locked_one_stays_out(tmp_path: Path, archive: Archive) -> None:
    """The index and the server agree on a newer beta; the lock names the old one's digest."""
    old = make_deb(tmp_path / "old", "beta", "1.0")
    new = make_deb(tmp_path / "new", "beta", "1.0", arch="all")
    assert digest(old) != digest(new)  # same package and version, other bytes
    archive.publish(SUITE, [new])
    store = tmp_path / "store"
    index = debfetch.Index(archive.url, f"dists/{SUITE}/main/binary-amd64/Packages")

    assert debfetch.fetch({"beta": digest(old)}, store, [index]) == ["beta"]
    assert not (store / "sha256").exists() or not any((store / "sha256").iterdir())

    # A server that sends other bytes than its index promised: refused by the lock's digest.
    (archive.root / "debian/pool/main" / new.name).write_bytes(old.read_bytes() + b"tampered")
    assert debfetch.fetch({"beta": digest(new)}, store, [index]) == ["beta"]
    assert not blob(digest(new), store).exists()
    assert not [p for p in store.rglob("*") if p.is_file()]  # no partial file left behind


def test_nothing_is_asked_when_the_store_has_every_file(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "alpha", "1.0")
    store = tmp_path / "store"
    put(deb, store)
    spec = load_spec(REPO_ROOT / "hosts/aurora.yml")

    def refuse(url: str) -> bytes:
        raise AssertionError(f"asked for {url}")

    assert debfetch.absent({"alpha": ("1.0", digest(deb))}, store) == {}
    assert debfetch.fetch({}, store, [], get=refuse) == []
    assert debfetch.fetch_lock(spec, {"alpha": ("1.0", digest(deb))}, store, SUITE) is None


def unreachable_spec() -> HostSpec:
    """The host's spec with its Debian archives on a loopback port nothing listens on."""
    spec = load_spec(REPO_ROOT / "hosts/aurora.yml")
    return spec.model_copy(
        update={"debian": spec.debian.model_copy(update={"mirror": "http://127.0.0.1:9/debian",
                                                         "security_mirror": "http://127.0.0.1:9/s"})}
    )  # fmt: skip


def test_an_unreachable_archive_leaves_the_build_to_the_mirror(tmp_path: Path) -> None:
    spec = unreachable_spec()
    line = debfetch.fetch_lock(spec, {"alpha": ("1.0", "0" * 64)}, tmp_path / "store", SUITE)
    assert line is not None and "fetched 0 of" in line and "alpha" in line


def test_a_build_looks_each_locked_file_up_in_the_store_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetch_lock finds what the store lacks once and fetches just that: the count in
    its line and the fetch come from the same look-up (the lock has ~430 files)."""
    deb = make_deb(tmp_path, "alpha", "1.0")
    store = tmp_path / "store"
    put(deb, store)
    locked = {"alpha": ("1.0", digest(deb)), "beta": ("1.0", "0" * 64)}
    spec = unreachable_spec()
    looked_up: list[str] = []

    def counted(sha256: str, root: Path) -> Path:
        looked_up.append(sha256)
        return blob(sha256, root)

    monkeypatch.setattr(debfetch, "blob", counted)
    line = debfetch.fetch_lock(spec, locked, store, SUITE)

    assert line is not None and line.startswith("fetched 0 of") and "beta" in line
    assert sorted(looked_up) == sorted(d for _, d in locked.values())


def test_the_indexes_are_the_ones_apt_reads_for_the_image() -> None:
    spec = load_spec(REPO_ROOT / "hosts/aurora.yml")
    main, security = spec.debian.urls()
    found = {(i.base, i.path) for i in debfetch.indexes(spec, SUITE)}
    assert {
        (main, "dists/trixie/main/binary-amd64/Packages"),
        (main, "dists/trixie-updates/main/binary-amd64/Packages"),
        (security, "dists/trixie-security/main/binary-amd64/Packages"),
    } <= found
    assert len(found) == 3 + sum(len(r.components) for r in spec.apt_repositories)


def test_after_the_fetch_the_build_installs_from_the_locked_repository(
    tmp_path: Path, archive: Archive
) -> None:
    """The fresh machine's path: an empty store, a lock with digests, the archive has
    the files: the build gets the locked repository (apt sees only the lock's files)."""
    spec = load_spec(REPO_ROOT / "hosts/aurora.yml")
    names = sorted(spec.packages)[:2]
    debs = [make_deb(tmp_path, name, "1.0") for name in names]
    lock = tmp_path / "debian-packages.txt"
    lock.write_text("# lock\n" + "".join(f"{d.name.split('_')[0]} 1.0 {digest(d)}\n" for d in debs))
    archive.publish(SUITE, debs)
    spec = spec.model_copy(update={"packages": names})
    paths = Paths.under(tmp_path)
    assert locked_repository(spec, paths, lock) is None  # the store is empty

    locked = {d.name.split("_")[0]: ("1.0", digest(d)) for d in debs}
    index = debfetch.Index(archive.url, f"dists/{SUITE}/main/binary-amd64/Packages")
    store = store_dir(paths.cache)
    assert debfetch.fetch(debfetch.absent(locked, store), store, [index]) == []

    repo = locked_repository(spec, paths, lock)
    assert repo is not None
    packages = (repo / f"dists/{SUITE}/main/binary-amd64/Packages").read_text()
    assert sorted(
        line.split()[1] for line in packages.splitlines() if line.startswith("SHA256:")
    ) == sorted(digest(d) for d in debs)


def test_one_connection_per_worker_and_redirects_followed(tmp_path: Path, archive: Archive) -> None:
    """Files come over kept-alive connections (a name lookup per connection, not per
    file: the resolver here stalls 5 s now and then, which cost a minute over ~430 files),
    and an archive that redirects still serves them."""
    debs = [make_deb(tmp_path, f"pkg{i:02d}", "1.0") for i in range(3 * debfetch.WORKERS)]
    archive.publish(SUITE, debs)
    locked = {d.name.split("_")[0]: ("1.0", digest(d)) for d in debs}
    index = debfetch.Index(archive.url, f"dists/{SUITE}/main/binary-amd64/Packages")
    store = tmp_path / "store"
    assert debfetch.fetch(debfetch.absent(locked, store), store, [index]) == []
    assert len(archive.requests) == 1 + len(debs)
    assert archive.connections <= 1 + debfetch.WORKERS < len(debs)

    moved = debfetch.Index(archive.url + "/moved", index.path)
    wanted = debfetch.absent(locked, tmp_path / "store2")
    assert debfetch.fetch(wanted, tmp_path / "store2", [moved]) == []
    assert any("/moved/pool/" in r for r in archive.requests)
    for deb in debs:
        assert blob(digest(deb), tmp_path / "store2").read_bytes() == deb.read_bytes()
