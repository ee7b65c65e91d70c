"""A built image's root tree as its booted host sees it, mounted read-only, and
programs run in it in a container (systemd-nspawn): what needs no kernel of its own
(unit files, the rendered configs taken by their real programs, the on-host
programs against files) is checked in seconds instead of a QEMU boot.

``image_root`` is THE one way to get an image's tree through mounts: every caller
(tests/container) goes through it, so a change of the image's layout (partitions,
a configuration layer overlaid at boot) is adapted here only. It mounts the root
partition (with the config layer laid over it, as the initrd lays it, when the
image has one), then what the image's own /etc/fstab mounts from the disk (its /var
partition, by PARTLABEL) and binds (/home, /root from /var), each read-only; the
data volumes (LABEL=) are not part of an image and stay empty mount points.
The root is mounted without dm-verity: the tree is read, never trusted for a release.

``Container`` puts a throw-away writable layer (overlayfs, upper on a scratch
directory) over each of those mounts, so a program may write where it writes on
the host while the image's bytes stay untouched, and runs commands in it with
systemd-nspawn (not booted: no init, no units started; the command is PID 2).
Both need root (loop mounts); the build and the tests run as root.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.errors import AuroraError
from builder.image.gpt import Partition, filesystem, partition, partitions
from builder.image.store import DISK

ROOT_LABEL = "root-x86-64"
# The config layer's slot (builder.image.layer); empty in an image without one.
CONFIG_LABEL = "aurora-config"
FSTAB = "etc/fstab"


class ContainerError(AuroraError):
    """An image's tree could not be mounted, or a command could not run in it."""


def _run(argv: Sequence[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ContainerError(f"{what}: {' '.join(argv)}: {done.stderr.strip()}")


def _mount_partition(disk: Path, part: Partition, target: Path) -> None:
    fs = filesystem(disk, part)
    if fs is None:
        raise ContainerError(f"{disk}: partition {part.label} holds no ext4 or EROFS")
    # noload: never replay an ext4 journal, so the image's bytes stay as built.
    options = f"ro,loop,offset={part.offset},sizelimit={part.size}" + (
        ",noload" if fs == "ext4" else ""
    )
    _run(["mount", "-t", fs, "-o", options, str(disk), str(target)], f"mounting {part.label}")


@dataclass(frozen=True)
class FstabMount:
    """One line of the image's /etc/fstab that mounts something the disk holds."""

    source: str  # a partition label (PARTLABEL=) or, for a bind, a path in the tree
    target: str
    bind: bool


def disk_mounts(fstab: str) -> list[FstabMount]:
    """The fstab lines whose source is in the image itself (PARTLABEL= or a bind), in
    file order (systemd orders them the same way: each bind names the mount it needs)."""
    found = []
    for line in fstab.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 4:
            continue
        source, target, _, options = fields[:4]
        if "bind" in options.split(","):
            found.append(FstabMount(source, target, bind=True))
        elif source.startswith("PARTLABEL="):
            found.append(FstabMount(source.removeprefix("PARTLABEL="), target, bind=False))
    return found


def _inside(root: Path, path: str) -> Path:
    inner = (root / path.lstrip("/")).resolve()
    if not inner.is_relative_to(root.resolve()):
        raise ContainerError(f"{FSTAB} names {path}, outside the image's tree")
    return inner


def _unmount_all(mounted: list[Path]) -> bool:
    """Unmount in reverse order; True when every one came off."""
    ok = True
    for target in reversed(mounted):
        ok &= subprocess.run(["umount", str(target)], capture_output=True).returncode == 0
    return ok


@contextmanager
def image_root(image_dir: Path) -> Iterator[Path]:
    """The image's tree, read-only, at a scratch directory (unmounted on exit).

    An image with a config layer (a filesystem in its ``aurora-config`` partition,
    builder.image.layer) gets it laid over the root as its initrd lays it
    (overlayfs, ``lowerdir=config:root``, read-only); an empty slot is skipped."""
    disk = image_dir / DISK
    if not disk.is_file():
        raise ContainerError(f"{image_dir} holds no {DISK}: build it first (make image)")
    if shutil.which("mount") is None:
        raise ContainerError("mount is missing (util-linux)")
    scratch = Path(tempfile.mkdtemp(prefix=f"aurora-root-{image_dir.name}-"))
    top = scratch / "tree"
    mounted: list[Path] = []
    try:
        try:
            root_part = partition(disk, ROOT_LABEL)
        except KeyError as exc:
            raise ContainerError(str(exc).strip("'\"")) from None
        config = next((p for p in partitions(disk) if p.label == CONFIG_LABEL), None)
        top.mkdir()
        if config is not None and filesystem(disk, config) is not None:
            base, layer = scratch / "base", scratch / "config"
            for where, part in ((base, root_part), (layer, config)):
                where.mkdir()
                _mount_partition(disk, part, where)
                mounted.append(where)
            _run(["mount", "-t", "overlay", "-o", f"ro,lowerdir={layer}:{base}", "overlay",
                  str(top)], "laying the config layer over the root")  # fmt: skip
        else:
            _mount_partition(disk, root_part, top)
        mounted.append(top)
        fstab = top / FSTAB
        for entry in disk_mounts(fstab.read_text() if fstab.is_file() else ""):
            target = _inside(top, entry.target)
            if entry.bind:
                source = _inside(top, entry.source)
                _run(["mount", "--bind", "-o", "ro", str(source), str(target)], "binding")
            else:
                try:
                    part = partition(disk, entry.source)
                except KeyError:
                    raise ContainerError(
                        f"{FSTAB} mounts PARTLABEL={entry.source} on {entry.target}, "
                        f"but {disk} has no such partition"
                    ) from None
                _mount_partition(disk, part, target)
            mounted.append(target)
        yield top
    finally:
        # A mount that would not come off keeps its directory (never delete through it).
        if _unmount_all(mounted):
            shutil.rmtree(scratch, ignore_errors=True)


def mounts_under(root: Path, mountinfo: str | None = None) -> list[Path]:
    """The mount points at or below ``root``, parents first (/proc/self/mountinfo order)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    base = root.resolve()
    found: list[Path] = []
    for line in text.splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if (point == base or point.is_relative_to(base)) and point not in found:
            found.append(point)
    return found


class Container:
    """Commands in the image's tree under systemd-nspawn, over a writable scratch layer.

    The layer lives as long as the ``with`` block: commands run in one block see each
    other's writes, the next block starts from the image again. /run and /tmp are
    nspawn's own tmpfs, fresh for each command: what a program leaves there is read
    in the same command."""

    def __init__(self, root: Path, *, network: bool = True) -> None:
        self.root = root
        self.network = network
        self._stack = ExitStack()
        self.tree: Path | None = None

    def __enter__(self) -> Container:
        scratch = Path(tempfile.mkdtemp(prefix="aurora-container-"))
        self._stack.callback(shutil.rmtree, scratch, True)
        tree = scratch / "tree"
        tree.mkdir()
        for index, lower in enumerate(mounts_under(self.root)):
            upper, work = scratch / f"upper{index}", scratch / f"work{index}"
            upper.mkdir()
            work.mkdir()
            target = tree / lower.relative_to(self.root.resolve())
            options = f"lowerdir={lower},upperdir={upper},workdir={work}"
            _run(["mount", "-t", "overlay", "-o", options, "overlay", str(target)], "overlay")
            self._stack.callback(subprocess.run, ["umount", str(target)], capture_output=True)
        self.tree = tree
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.tree = None

    def argv(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        binds: Mapping[Path, str] | None = None,
    ) -> list[str]:
        """systemd-nspawn's command line (pure but for the layer's path)."""
        if self.tree is None:
            raise ContainerError("Container used outside its with-block")
        argv = [
            "systemd-nspawn", "--quiet", "--directory", str(self.tree), "--register=no",
            "--keep-unit", "--as-pid2", "--console=pipe", "--hostname=aurora",
        ]  # fmt: skip
        if not self.network:
            argv.append("--private-network")
        for name, value in (env or {}).items():
            argv.append(f"--setenv={name}={value}")
        for source, dest in (binds or {}).items():
            argv.append(f"--bind-ro={source}:{dest}")
        return [*argv, "--", *command]

    def run(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        binds: Mapping[Path, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (argv, or a string for /bin/sh -c) in the container."""
        if isinstance(command, str):
            command = ["/bin/sh", "-c", command]
        if shutil.which("systemd-nspawn") is None:
            raise ContainerError("systemd-nspawn is missing: make setup (systemd-container)")
        return subprocess.run(
            self.argv(command, env=env, binds=binds),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def succeed(self, command: Sequence[str] | str, **kwargs) -> str:
        """stdout of a command that must exit 0 (else the error says what it printed)."""
        done = self.run(command, **kwargs)
        if done.returncode != 0:
            shown = command if isinstance(command, str) else shlex.join(command)
            raise ContainerError(
                f"{shown} exited {done.returncode} in the container:\n{done.stdout}{done.stderr}"
            )
        return done.stdout
