"""The config layer: the rendered configuration (and the dashboard app's source) as
a small dm-verity EROFS of its own, laid over the base image's root at boot, so a
config-only or app-only change makes this layer and a new /var and reuses the
base's other partitions (packages, venv, kernel) byte for byte.

mkosi builds the base (packages, app, venv, kernel, static tree) once per base
key (builder.image.base) with empty `aurora-config` slots and a placeholder for
the layer's root hash on the UKI's command line. Here, per tag:

1. `compute`: in a private mount namespace (every mount vanishes with it), an
   overlay with a scratch upper over the base's root and /var; the rendered tree
   is written into it, then the image's own `systemctl preset-all`,
   `systemd-sysusers` and `systemd-tmpfiles` run in it (chroot), as mkosi runs them
   on a whole build, and its `ufw-init start` in a scratch network namespace, whose
   tables are saved for ufw.service to restore at boot (`firewall_lines`). The upper
   is the layer: changed and new files, and overlayfs whiteouts for what the presets
   removed. The merged /var becomes the new /var.
2. `make_partitions`: the layer as EROFS, its dm-verity hash tree (veritysetup,
   salt and UUID from the tag's seed) and /var as ext4, every time and id fixed.
3. `assemble`: a sparse copy of the base disk with those three partitions written
   into their slots and the placeholder in the UKI (in the ESP and the split
   aurora.efi) replaced by the layer's root hash: same length, so nothing moves.

The initrd (mkosi.postinst.d/initrd.chroot) opens both verity devices and mounts
`lowerdir=config:root` read-only as the host's `/`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.image.gpt import Partition, partition
from builder.render.engine import Tree
from builder.render.names import FIREWALL_SAVED

ROOT, CONFIG, CONFIG_VERITY, VAR, ESP = (
    "root-x86-64",
    "aurora-config",
    "aurora-config-verity",
    "aurora-var",
    "esp",
)
HASH_WORD = "aurora.config_hash="
PLACEHOLDER = (HASH_WORD + "0" * 64).encode()
# Only the layer's own records are kept from overlayfs: whiteouts (0:0 character
# devices) and opaque directories. Copy-up bookkeeping would mislead the boot's overlay.
KEEP_XATTRS = ("trusted.overlay.opaque",)
OVERLAY_OPTIONS = "index=off,metacopy=off,redirect_dir=off,xino=off"


@dataclass(frozen=True)
class Layer:
    config: Path  # the EROFS, padded to its slot
    verity: Path  # its hash tree
    root_hash: str
    var: Path  # the var partition's ext4


def derived_uuid(seed: str, purpose: str) -> str:
    return str(uuid.UUID(hashlib.sha256(f"{seed}\0{purpose}".encode()).hexdigest()[:32]))


def _apply_script(tree: Tree, tree_dir: Path, merged: str) -> list[str]:
    """Shell lines writing the rendered tree into the merged view: each entry replaces
    whatever the base has there (a directory where the spec puts a link, say)."""
    lines = []
    for path in sorted(tree):
        entry = tree[path]
        dest = shlex.quote(f"{merged}{path}")
        if entry.directory:
            lines.append(f"[ -d {dest} ] || {{ rm -rf {dest}; mkdir -p {dest}; }}")
            lines.append(f"chmod {entry.mode:04o} {dest}")
        elif entry.link is not None:
            lines.append(f"rm -rf {dest}; ln -s {shlex.quote(entry.link)} {dest}")
        else:
            source = shlex.quote(f"{tree_dir}{path}")
            lines.append(f'rm -rf {dest}; mkdir -p "$(dirname {dest})"')
            lines.append(f"cp {source} {dest}; chmod {entry.mode:04o} {dest}")
    return lines


def layer_script(
    tree: Tree,
    tree_dir: Path,
    disk: Path,
    root: Partition,
    var: Partition,
    work: Path,
    app: tuple[Path, str] | None = None,
) -> str:
    """The namespace script of step 1 (pure: argv building, no side effects). `app` is
    (the staged app tree, where it goes): the dashboard's source is the layer's too, so
    an app-only change reuses the base and its venv."""
    w = shlex.quote(str(work))
    merged = f"{work}/merged"
    m = shlex.quote(merged)
    d = shlex.quote(str(disk))
    sysusers = [p for p in sorted(tree) if p.startswith("/usr/lib/sysusers.d/")]
    tmpfiles = [p for p in sorted(tree) if p.startswith("/usr/lib/tmpfiles.d/")]
    lines = [
        "set -eu",
        f"cd {w}",
        "mkdir -p base basevar up/root up/var wk/root wk/var merged vartree",
        f"mount -t erofs -o ro,loop,offset={root.offset},sizelimit={root.size} {d} base",
        f"mount -t ext4 -o ro,noload,loop,offset={var.offset},sizelimit={var.size} {d} basevar",
        f"mount -t overlay overlay -o lowerdir=base,upperdir=up/root,workdir=wk/root,"
        f"{OVERLAY_OPTIONS} merged",
        f"mount -t overlay overlay -o lowerdir=basevar,upperdir=up/var,workdir=wk/var,"
        f"{OVERLAY_OPTIONS} merged/var",
        *_apply_script(tree, tree_dir, merged),
    ]
    if app is not None:
        source, dest = shlex.quote(f"{app[0]}/."), shlex.quote(f"{merged}{app[1]}")
        lines += [f"mkdir -p {dest}", f"cp -a {source} {dest}/"]
    lines += [
        # The API file systems the tools expect, on mounts of their own (nothing lands
        # in the layer).
        f"mount -t proc proc {m}/proc",
        f"mount -t tmpfs tmpfs {m}/run",
        f"mount -t tmpfs tmpfs {m}/tmp",
        f"mount --rbind /dev {m}/dev",
        f"chroot {m} systemctl --quiet preset-all",
    ]
    if sysusers:
        lines.append(f"chroot {m} systemd-sysusers {' '.join(map(shlex.quote, sysusers))}")
    if tmpfiles:
        lines.append(
            f"chroot {m} systemd-tmpfiles --create --boot " + " ".join(map(shlex.quote, tmpfiles))
        )
    lines += firewall_lines(m)
    lines.append(f"cp -a {m}/var/. vartree/")
    return "\n".join(lines) + "\n"


def firewall_lines(merged: str) -> list[str]:
    """Shell lines saving what the image's own `ufw-init start` loads, from the merged
    tree's ufw files (the spec's rules, its default policy), into FIREWALL_SAVED: the
    image's iptables in a network namespace of their own, on the build host's kernel,
    with /proc/sys read-only so ufw's sysctl settings touch nothing (it ignores their
    failure, as it does at boot). Comment lines (tool version, date) are dropped: the
    same files give the same bytes. ufw.service restores these at boot."""
    saves = "; ".join(
        f"{tool} > /run/saved; sed '/^#/d' /run/saved > {path}"
        for tool, path in zip(("iptables-save", "ip6tables-save"), FIREWALL_SAVED, strict=True)
    )
    inner = f"umask 027; /usr/lib/ufw/ufw-init start quiet; {saves}"
    return [
        f"mount --bind {merged}/proc/sys {merged}/proc/sys",
        f"mount -o remount,bind,ro {merged}/proc/sys",
        f"unshare --net chroot {merged} /bin/sh -ec {shlex.quote(inner)}",
        f"umount {merged}/proc/sys",
    ]


def _normalise(top: Path, epoch: int) -> None:
    """Fixed times, no overlayfs bookkeeping: the same inputs give the same bytes.
    (Neither step changes a directory's mtime, so one pass in any order does.)"""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames, ""]:
            path = Path(dirpath) / name if name else Path(dirpath)
            for attr in os.listxattr(path, follow_symlinks=False):
                if attr.startswith("trusted.overlay.") and attr not in KEEP_XATTRS:
                    os.removexattr(path, attr, follow_symlinks=False)
            os.utime(path, (epoch, epoch), follow_symlinks=False)


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-5:]
        raise BuildError(
            f"config layer: {what} failed (exit {done.returncode}): " + " | ".join(tail)
        )
    return done.stdout


def compute(
    tree: Tree,
    tree_dir: Path,
    disk: Path,
    work: Path,
    epoch: int,
    app: tuple[Path, str] | None = None,
) -> tuple[Path, Path]:
    """Step 1: (the layer's tree, the merged /var tree) in `work`."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = layer_script(
        tree, tree_dir, disk, partition(disk, ROOT), partition(disk, VAR), work, app
    )
    (work / "layer.sh").write_text(script)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "SYSTEMD_OFFLINE": "1", "LC_ALL": "C"}
    _run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", str(work / "layer.sh")],
        "writing the rendered tree over the base",
        env,
    )
    upper, var = work / "up" / "root", work / "vartree"
    if (upper / "var").exists() and any((upper / "var").iterdir()):
        raise BuildError("config layer: something wrote below /var outside the var partition")
    shutil.rmtree(upper / "var", ignore_errors=True)
    os.chmod(upper, 0o755)
    for top in (upper, var):
        _normalise(top, epoch)
    return upper, var


def veritysetup_format(data: Path, hash_file: Path, seed: str) -> str:
    """dm-verity hash tree of `data` into `hash_file`; returns the root hash."""
    salt = hashlib.sha256(f"{seed}\0config-salt".encode()).hexdigest()
    out = _run(
        [
            "veritysetup", "format", "--data-block-size=4096", "--hash-block-size=4096",
            f"--salt={salt}", f"--uuid={derived_uuid(seed, 'config-verity')}",
            str(data), str(hash_file),
        ],
        "veritysetup format",
    )  # fmt: skip
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Root hash":
            return value.strip()
    raise BuildError(f"config layer: veritysetup printed no root hash: {out.strip()}")


def make_partitions(
    upper: Path, var_tree: Path, disk: Path, work: Path, seed: str, epoch: int, tools: Path
) -> Layer:
    """Step 2: the three partitions' bytes, sized to the base disk's slots."""
    config_slot, verity_slot, var_slot = (
        partition(disk, CONFIG),
        partition(disk, CONFIG_VERITY),
        partition(disk, VAR),
    )
    config = work / "config.erofs"
    _run(
        [
            "mkfs.erofs", "--quiet", f"-T{epoch}", f"-U{derived_uuid(seed, 'config')}",
            str(config), str(upper),
        ],
        "mkfs.erofs",
    )  # fmt: skip
    if config.stat().st_size > config_slot.size:
        raise BuildError(
            f"config layer: {config.stat().st_size} bytes, its slot holds {config_slot.size}; "
            "raise SizeMinBytes/SizeMaxBytes in mkosi.repart/12-config.conf"
        )
    with config.open("r+b") as handle:
        handle.truncate(config_slot.size)
    verity = work / "config.verity"
    root_hash = veritysetup_format(config, verity, seed)
    if verity.stat().st_size > verity_slot.size:
        raise BuildError("config layer: its hash tree outgrew mkosi.repart/13-config-verity.conf")
    var = work / "var.ext4"
    var.unlink(missing_ok=True)
    var_uuid = derived_uuid(seed, "var")
    if not (tools / "usr/sbin/mkfs.ext4").is_file():
        raise BuildError(
            f"config layer: no mkfs.ext4 in the tools tree {tools}; remove the build cache's "
            "tools/ so the next build makes the tools tree again"
        )
    # The tools tree's mke2fs (1.47.2, as mkosi's own partitions): it takes every inode
    # time from SOURCE_DATE_EPOCH; Debian 12's (1.47.0) keeps the files' ctimes.
    mkfs = [
        "mkfs.ext4", "-q", "-F", "-L", VAR, "-U", var_uuid, "-m", "0",
        # Lazy inode tables and journal: ~60 MB fewer bytes written; the kernel
        # zeroes them in the background on first mount.
        "-E", f"hash_seed={derived_uuid(seed, 'var-hash')},root_owner=0:0,"
        "lazy_itable_init=1,lazy_journal_init=1",
        "-d", f"/mnt/{var_tree.relative_to(work)}", "/mnt/var.ext4", f"{var_slot.size // 1024}k",
    ]  # fmt: skip
    script = (
        f"mount --bind {shlex.quote(str(work))} {shlex.quote(str(tools))}/mnt && "
        f"exec chroot {shlex.quote(str(tools))} {shlex.join(mkfs)}"
    )
    _run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
        "mkfs.ext4 of /var",
        {"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)},
    )
    return Layer(config=config, verity=verity, root_hash=root_hash, var=var)


def _write_range(dest: Path, offset: int, size: int, source: Path) -> None:
    """Put `source` at `offset` of `dest`, the slot's rest a hole (sparse both ways)."""
    subprocess.run(
        ["fallocate", "--punch-hole", "--keep-size", "-o", str(offset), "-l", str(size), str(dest)],
        check=True,
    )
    with source.open("rb") as src, dest.open("r+b") as out:
        fd, end = src.fileno(), os.fstat(src.fileno()).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            src.seek(data)
            out.seek(offset + data)
            left = hole - data
            while left:
                chunk = src.read(min(left, 1 << 22))
                out.write(chunk)
                left -= len(chunk)
            pos = hole


def patch_hash(data: bytes, root_hash: str, what: str) -> bytes:
    """`data` with the one placeholder replaced by `aurora.config_hash=<root_hash>`."""
    found = data.count(PLACEHOLDER)
    if found != 1:
        raise BuildError(f"{what}: expected one {HASH_WORD} placeholder, found {found}")
    new = (HASH_WORD + root_hash).encode()
    if len(new) != len(PLACEHOLDER):
        raise BuildError(f"config layer: root hash {root_hash!r} is not 64 hex digits")
    return data.replace(PLACEHOLDER, new)


def _patch_esp(disk: Path, root_hash: str) -> None:
    esp = partition(disk, ESP)
    with disk.open("r+b") as handle:
        handle.seek(esp.offset)
        data = handle.read(esp.size)
        patched = patch_hash(data, root_hash, "the ESP's UKI")
        at = data.index(PLACEHOLDER)
        handle.seek(esp.offset + at)
        handle.write(patched[at : at + len(PLACEHOLDER)])


def assemble(base_disk: Path, out: Path, layer: Layer) -> None:
    """Step 3: the image's disk: the base's partitions and this layer's."""
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    subprocess.run(["cp", "--sparse=always", str(base_disk), str(tmp)], check=True)
    for label, source in ((CONFIG, layer.config), (CONFIG_VERITY, layer.verity), (VAR, layer.var)):
        slot = partition(tmp, label)
        _write_range(tmp, slot.offset, slot.size, source)
    _patch_esp(tmp, layer.root_hash)
    tmp.replace(out)
