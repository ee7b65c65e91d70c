"""The build's tools tree: the Debian trixie programs mkosi runs (apt, systemd-repart,
ukify, bootctl, mkfs.*) and the config layer's mke2fs, built once per digest of its
configuration (mkosi.tools-tree/, its apt sources in mkosi.tools-sandbox/) into the
build cache and handed to every mkosi run of the base (--tools-tree).

mkosi 25.3's own default tools tree (ToolsTree=default) installs ~430 packages (QEMU,
dnf, zypper, pacman, grub, perf: 283 MB to download, 1.6 GB unpacked), over two
minutes of a cold build, and has no setting that leaves any of them out.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from builder.image import mkosi
from builder.image.inputs import digest_paths
from builder.paths import prune_cache
from builder.tools import MKOSI_VERSION

CONFIG = "mkosi.tools-tree"
SANDBOX = "mkosi.tools-sandbox"
# Where the trees live in the build cache (`verify` starts without them).
DIRECTORY = "tools"
# A program the layer runs from the tree; its presence is the tree's completeness
# check beside the atomic rename.
MKE2FS = "usr/sbin/mkfs.ext4"
KEEP = 2


def tools_key(repo: Path) -> str:
    """Digest of what the tools tree is made from: its config, its apt sources, mkosi."""
    h = hashlib.sha256(f"mkosi {MKOSI_VERSION}\n".encode())
    for name, digest in digest_paths([(CONFIG, repo / CONFIG), (SANDBOX, repo / SANDBOX)]).items():
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def argv(repo: Path, cache: Path, build_cache: Path, output: Path) -> list[str]:
    """mkosi's arguments for the tools tree (built by the host's apt, as mkosi's own is)."""
    return [
        "--directory", str(repo / CONFIG),
        "--sandbox-tree", str(repo / SANDBOX),
        "--package-cache-dir", str(cache / "mkosi-pkgs"),
        "--workspace-directory", str(build_cache / "workspace"),
        "--output-directory", str(output),
        "--force", "build",
    ]  # fmt: skip


def ensure(repo: Path, cache: Path, build_cache: Path, *, progress: bool) -> Path:
    """The tools tree of this checkout's config: from the build cache, or built now."""
    trees = build_cache / DIRECTORY
    path = trees / tools_key(repo)[:16]
    if (path / MKE2FS).is_file():
        path.touch()  # newest use first when pruning
        return path
    partial = trees / f".{path.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (build_cache / "workspace").mkdir(parents=True, exist_ok=True)
    mkosi.run_argv(
        argv(repo, cache, build_cache, partial),
        trees / f"{path.name}.log",
        cache,
        progress=progress,
    )
    shutil.rmtree(path, ignore_errors=True)
    (partial / "tools").rename(path)
    shutil.rmtree(partial, ignore_errors=True)
    done = (p for p in trees.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in prune_cache(done, KEEP):
        old.with_name(f"{old.name}.log").unlink(missing_ok=True)
    return path
