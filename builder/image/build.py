"""Build an image from a host spec: render, stage, mkosi, manifest, store.

The image goes into the store (builder.image.store owns `images/<tag>/` and
the names in it) through its partial directory. A tag that is already stored
is not rebuilt: the tag is a digest of the inputs, so the stored image is that
build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

from builder.errors import BuildError
from builder.image import base as base_image
from builder.image import debfetch, debian_lock, debstore, layer, mkosi, tools_tree, uki
from builder.image.app_lock import check_lock
from builder.image.debian import (
    DEBIAN_RELEASE,
    apt_sandbox,
    debian_packages,
    keep_debs,
    locked_repository,
    python_packages,
)
from builder.image.inputs import APP_IGNORE, REPO, Inputs, app_file, collect
from builder.image.manifest import Artifact, Entry, InputsRecord, Manifest
from builder.image.sizes import format_sizes, image_sizes
from builder.image.store import (
    ARTIFACTS,
    BUILD_LOG,
    CMDLINE,
    DISK,
    RENDERED_TAR,
    is_image,
    partial_dir,
    sha256_file,
    write_manifest,
)
from builder.paths import Paths
from builder.render.engine import File, Tree, render
from builder.render.tree import atomic_write, carried_manifest, write_tree
from builder.spec.model import HostSpec

# The UKI mkosi writes next to the split kernel and initrd; its .cmdline (with the
# dm-verity roothash= mkosi adds) is what the image boots with, under UEFI or direct.
UKI = "aurora.efi"
# The running host names the image it was built as here (read by `aurora-image audit`).
IDENTITY = "/usr/lib/aurora/image.json"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    path: Path
    reused: bool
    seconds: float


def rendered_manifest(tree: Tree) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for path, entry in tree.items():
        entries[path] = _entry_manifest(entry)
    return entries


def _entry_manifest(entry: File) -> Entry:
    if entry.link is not None:
        return {"link": entry.link}
    if entry.directory:
        return {"directory": f"{entry.mode:04o}"}
    return {"sha256": hashlib.sha256(entry.content).hexdigest(), "mode": f"{entry.mode:04o}"}


def rendered_tar(tree: Tree) -> bytes:
    """The rendered tree as a tar, byte-identical for the same tree.

    The manifest holds only digests; `aurora-image diff` reads the contents
    from here. Names are sorted and owner and time zeroed so equal trees
    give equal archives.
    """
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree):
            entry = tree[path]
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = entry.mode
            data = None
            if entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
            elif entry.directory:
                info.type = tarfile.DIRTYPE
            else:
                info.size, data = len(entry.content), BytesIO(entry.content)
            tar.addfile(info, data)
    return buffer.getvalue()


def _stage_app(spec: HostSpec, stage: Path, app: Path, lock: Path, paths: Paths) -> None:
    """Put the app's lock where the base's postinst script finds it (the venv is the
    base's, made once per lock), and the app tree where the config layer takes it from
    (the loader has resolved the app tree; `build` has checked it is there)."""
    for path in (stage, app):
        shutil.rmtree(path, ignore_errors=True)
    stage.mkdir(parents=True)
    local = spec.source.app_dir
    if local is not None:
        shutil.copytree(local, app, ignore=shutil.ignore_patterns(*APP_IGNORE))
    else:
        _checkout_git(spec, app, paths.cache)
    shutil.copy2(lock, stage / "requirements.txt")
    # The build host's CA bundle, so the install inside the image trusts the
    # same TLS path to PyPI as the host (proxies with their own CA included).
    # It is used during the build only and never lands in the image.
    if paths.ca_bundle.exists():
        shutil.copy2(paths.ca_bundle, stage / "ca-certificates.crt")


def _checkout_git(spec: HostSpec, dest: Path, cache: Path) -> None:
    url, ref = spec.dashboard.app.git or "", spec.dashboard.app.ref or ""
    mirror = cache / "git" / hashlib.sha256(url.encode()).hexdigest()[:16]

    def git(*args: str, cwd: Path | None = None) -> None:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
        if result.returncode != 0:
            msg = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise BuildError(
                f"{spec.source.path}: dashboard.app: git {args[0]} of {url} failed ({msg}); "
                "check the URL and that 'ref' is a commit in it"
            )

    if not mirror.exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "--mirror", "--quiet", url, str(mirror))
    else:
        git("fetch", "--quiet", "--prune", "origin", cwd=mirror)
    git("clone", "--quiet", "--no-checkout", str(mirror), str(dest))
    git("checkout", "--quiet", ref, cwd=dest)
    # .git and every dotfile (a committed .env, say) stay out of the image.
    for path in sorted(dest.rglob("*"), reverse=True):
        if not app_file(path.relative_to(dest)):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def build(
    spec: HostSpec, paths: Paths, *, progress: bool = True, update_debian: bool = False
) -> BuiltImage:
    """Build the image the spec describes into `paths.images`, or reuse the stored
    one of the same tag. Debian packages come from the Debian lock's own files when
    the store has them (builder.image.debrepo), else from the mirror, checked against
    the lock; `update_debian` takes the mirror's current set instead (a tag of its own)."""
    spec.source.require_files()
    lock = check_lock(spec)
    tree = render(spec)
    inputs = collect(spec, update_debian=update_debian)
    final = paths.images / inputs.tag
    if is_image(final):
        return BuiltImage(inputs.tag, final, reused=True, seconds=0.0)
    with _exclusive(paths.build_cache / "build.lock"):
        if is_image(final):
            return BuiltImage(inputs.tag, final, reused=True, seconds=0.0)
        tree = {**tree, **identity(inputs)}
        return _build(
            spec, lock, tree, inputs, final, paths, progress=progress, update_debian=update_debian
        )


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One mkosi run at a time per build cache: they share its output directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def identity(inputs: Inputs) -> Tree:
    """What the running host says about itself: the tag it was built as (for audits)."""
    data = {"tag": inputs.tag, "release": inputs.release, "inputs_digest": inputs.digest}
    return {IDENTITY: File((json.dumps(data, indent=2) + "\n").encode())}


def _build(
    spec: HostSpec,
    lock: Path,
    tree: Tree,
    inputs: Inputs,
    final: Path,
    paths: Paths,
    *,
    progress: bool,
    update_debian: bool,
) -> BuiltImage:
    store = final.parent
    work = paths.build_cache / "work" / inputs.tag
    tree_dir = write_tree(tree, work / "tree")
    app = work / "app"
    _stage_app(spec, work / "stage", app, lock, paths)
    # mkosi builds the base without the rendered tree; the config layer carries it.
    no_tree = work / "no-tree"
    no_tree.mkdir(parents=True, exist_ok=True)
    locked = debian_lock.read_debian_digests()
    debs_root = debstore.store_dir(paths.cache)
    # The lock's .debs download while the tools tree builds (a fresh machine's two
    # longest waits, network and unpacking, overlap); then the build installs them.
    with ThreadPoolExecutor(1) as pool:
        fetching = None
        if not update_debian:
            fetching = pool.submit(debfetch.fetch_lock, spec, locked, debs_root, DEBIAN_RELEASE)
        tools = tools_tree.ensure(paths.repo, paths.cache, paths.build_cache, progress=progress)
        fetched = fetching.result() if fetching is not None else None
    if fetched and progress:
        print(f"aurora-image: {fetched}", file=sys.stderr)
    mirror = None if update_debian else locked_repository(spec, paths)
    sandbox = apt_sandbox(spec, work / "sandbox", locked=mirror is not None)
    output = paths.build_cache / "out"
    partial = partial_dir(store, inputs.tag)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    job = mkosi.MkosiJob(
        repo=paths.repo,
        extra_tree=no_tree,
        stage=work / "stage",
        output_dir=output,
        packages=tuple(spec.packages),
        environment={
            "AURORA_APP_DIR": spec.dashboard.checkout,
        },
        seed="",
        source_date_epoch=inputs.source_date_epoch,
        cache=paths.cache,
        build_cache=paths.build_cache,
        sandbox_trees=(sandbox,),
        local_mirror=mirror,
        tools_tree=tools,
    )
    key = base_image.base_key(inputs, job, spec.release)
    job = replace(job, seed=base_image.seed_of(key))
    archives = debstore.archives_dir(paths.cache)
    if mirror is None:
        # The lock's .debs the store has go into apt's cache: apt installs those files
        # if the live index still names their versions.
        debstore.seed(locked, archives, debs_root)
    started = time.monotonic()
    base = base_image.ensure(job, key, paths.build_cache / "bases", progress=progress)
    layer_started = time.monotonic()
    layer_work = work / "layer"
    upper, var = layer.compute(
        tree,
        tree_dir,
        base.disk,
        layer_work,
        inputs.source_date_epoch,
        app=(app, spec.dashboard.checkout),
    )
    made = layer.make_partitions(
        upper, var, base.disk, layer_work, inputs.seed, inputs.source_date_epoch, tools
    )
    layer.assemble(base.disk, partial / DISK, made)
    for name in ARTIFACTS:
        if name != DISK:
            _link_or_copy(base.path / name, partial / name)
    uki_file = layer_work / UKI
    atomic_write(uki_file, layer.patch_hash((base.path / UKI).read_bytes(), made.root_hash, UKI))
    atomic_write(partial / CMDLINE, (uki.cmdline(uki_file) + "\n").encode())
    atomic_write(partial / RENDERED_TAR, rendered_tar(tree))
    how = "reused" if base.reused else "built by mkosi"
    layer_seconds = time.monotonic() - layer_started
    log = (base.path / base_image.LOG).read_text(errors="replace")
    log += (
        f"aurora-image: base {key[:16]} {how}; config layer {made.root_hash[:16]} "
        f"made in {layer_seconds:.1f} s\n"
    )
    atomic_write(partial / BUILD_LOG, log.encode())
    if progress:
        print(
            f"aurora-image: base {how}; config layer made in {layer_seconds:.1f} s", file=sys.stderr
        )
    manifest = _manifest(spec, inputs, tree, base, partial, app)
    manifest = replace(manifest, config_hash=made.root_hash, base=key)
    if mirror is None:
        debs = keep_debs(manifest.debian_packages, archives, debs_root)
    else:  # installed from the locked repository: the lock's files, already in the store
        debs = {p: locked[p][1] for p in manifest.debian_packages if p in locked}
    result = debian_lock.compare(manifest.debian_packages, debs=debs)
    manifest = replace(manifest, debian_debs=debs, debian_lock=result)
    if result["pinned"] and not result["matches"] and not update_debian:
        # One tag, one image: the lock is an input of the tag and names exact files.
        changed = list(result["changed"])  # type: ignore[call-overload]
        raise BuildError(
            f"Debian packages differ from locks/debian-packages.txt, which is part of tag "
            f"{inputs.tag} ({'; '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}); "
            "import the store that has the lock's files (`aurora-image debstore import "
            "FILE`, made by `debstore export` where they were built), or take the new set: "
            "`aurora-image build --update-debian`, test it, `aurora-image lock --debian TAG`"
        )
    note = debian_lock.warning(result)
    if note:
        print(f"aurora-image: warning: {note}", file=sys.stderr)
    write_manifest(partial, manifest)
    print(f"aurora-image: {format_sizes(manifest.sizes or {})}", file=sys.stderr)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return BuiltImage(inputs.tag, final, reused=False, seconds=time.monotonic() - started)


def _link_or_copy(source: Path, dest: Path) -> None:
    """The base's kernel and initrd, shared by every image of that base (never
    written in place, so a hard link is as good as a copy)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _spec_ref(spec: HostSpec) -> str:
    """The spec as `verify` finds it again: repo-relative when it lives in the repo."""
    path = spec.source.path.resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def _manifest(
    spec: HostSpec,
    inputs: Inputs,
    tree: Tree,
    base: base_image.Base,
    image_dir: Path,
    app: Path,
) -> Manifest:
    command_line = (image_dir / CMDLINE).read_text().strip()
    return Manifest(
        tag=inputs.tag,
        release=spec.release,
        hostname=spec.hostname,
        spec=_spec_ref(spec),
        inputs=InputsRecord(inputs.digest, inputs.files, inputs.extra),
        source_date_epoch=inputs.source_date_epoch,
        seed=inputs.seed,
        cmdline=command_line,
        root_hash=uki.root_hash(command_line),
        artifacts={
            name: Artifact(sha256_file(image_dir / name), (image_dir / name).stat().st_size)
            for name in ARTIFACTS
        },
        root_partition_sha256=base_image.root_sha256(base),
        rendered=rendered_manifest(tree),
        carried=carried_manifest(tree),
        debian_packages=debian_packages(base.path / "aurora.manifest"),
        python_packages=python_packages(base.path / "python-packages.json"),
        sizes=image_sizes(base.path, image_dir, app),
        python_venv=spec.dashboard.venv,
    )
