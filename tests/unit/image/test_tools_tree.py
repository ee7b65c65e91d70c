"""The build's own tools tree: made from mkosi.tools-tree/ once per digest of its
config and apt sources, reused after that, handed to mkosi as --tools-tree, and
kept to what the build runs (mkosi's default tree is five times the packages)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from builder.image import mkosi, tools_tree
from builder.image.mkosi import MkosiJob
from tests.paths import REPO_ROOT


def config_packages(text: str) -> list[str]:
    """The Packages= list of an mkosi config (comment lines skipped)."""
    block = text.split("Packages=", 1)[1]
    names = []
    for line in block.splitlines()[1:]:
        if not line.startswith((" ", "\t")):
            break
        if line.strip() and not line.strip().startswith("#"):
            names.append(line.strip())
    return names


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name in (tools_tree.CONFIG, tools_tree.SANDBOX):
        shutil.copytree(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def test_the_key_follows_the_config_and_its_apt_sources(repo: Path) -> None:
    before = tools_tree.tools_key(repo)
    assert tools_tree.tools_key(repo) == before
    conf = repo / tools_tree.CONFIG / "mkosi.conf"
    conf.write_text(conf.read_text() + "        strace\n")
    assert tools_tree.tools_key(repo) != before
    conf.write_text(conf.read_text().removesuffix("        strace\n"))
    assert tools_tree.tools_key(repo) == before
    sources = next((repo / tools_tree.SANDBOX).rglob("*.sources"))
    sources.write_text(sources.read_text().replace("deb.debian.org", "mirror.example.org"))
    assert tools_tree.tools_key(repo) != before


def test_argv_builds_the_tools_config_with_its_apt_sources(repo: Path, tmp_path: Path) -> None:
    argv = tools_tree.argv(repo, tmp_path / "cache", tmp_path / "build", tmp_path / "out")
    assert argv[argv.index("--directory") + 1] == str(repo / tools_tree.CONFIG)
    assert argv[argv.index("--sandbox-tree") + 1] == str(repo / tools_tree.SANDBOX)
    assert argv[argv.index("--package-cache-dir") + 1] == str(tmp_path / "cache/mkosi-pkgs")
    assert argv[argv.index("--output-directory") + 1] == str(tmp_path / "out")
    assert argv[-2:] == ["--force", "build"]


def test_a_built_tree_is_reused_and_a_new_one_built_by_mkosi(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[list[str]] = []

    def fake_mkosi(argv: list[str], log: Path, cache: Path, *, progress: bool) -> float:
        """Stands in for mkosi (tested by the image builds): writes what it would."""
        runs.append(argv)
        out = Path(argv[argv.index("--output-directory") + 1]) / "tools"
        (out / "usr/sbin").mkdir(parents=True)
        (out / tools_tree.MKE2FS).write_text("mke2fs")
        return 0.0

    monkeypatch.setattr(mkosi, "run_argv", fake_mkosi)
    cache, build = tmp_path / "cache", tmp_path / "build"
    first = tools_tree.ensure(repo, cache, build, progress=False)
    assert (first / tools_tree.MKE2FS).is_file() and len(runs) == 1
    assert first.parent == build / tools_tree.DIRECTORY
    assert tools_tree.ensure(repo, cache, build, progress=False) == first and len(runs) == 1
    assert not list(first.parent.glob(".*.partial"))

    # Another config: another tree; the two newest stay, older ones go.
    conf = repo / tools_tree.CONFIG / "mkosi.conf"
    trees = [first]
    for extra in ("strace", "socat"):
        conf.write_text(conf.read_text() + f"        {extra}\n")
        trees.append(tools_tree.ensure(repo, cache, build, progress=False))
    assert len(runs) == 3 and len(set(trees)) == 3
    kept = sorted(p for p in first.parent.iterdir() if p.is_dir())
    assert kept == sorted(trees[1:])


def test_mkosi_gets_the_tools_tree_and_the_image_config_builds_none_of_its_own(
    tmp_path: Path,
) -> None:
    (tmp_path / "uvboot/bin").mkdir(parents=True)
    (tmp_path / "uvboot/bin/uv").touch()  # the argv names uv's directory as a build source
    job = MkosiJob(
        repo=tmp_path, extra_tree=tmp_path, stage=tmp_path, output_dir=tmp_path / "out",
        packages=(), environment={}, seed="", source_date_epoch=0, cache=tmp_path,
        build_cache=tmp_path, tools_tree=tmp_path / "tools/abc",
    )  # fmt: skip
    argv = job.argv()
    assert argv[argv.index("--tools-tree") + 1] == str(tmp_path / "tools/abc")
    conf = (REPO_ROOT / "mkosi.conf").read_text()
    assert not re.search(r"^ToolsTree", conf, re.MULTILINE)  # no default tree built beside ours


def test_the_tools_tree_holds_what_the_build_runs_and_not_mkosis_whole_default() -> None:
    """What the build runs: apt, systemd-repart (EROFS, verity, vfat, ext4), ukify and
    bootctl, and the layer's mke2fs. QEMU, other distributions' package managers and
    the like are what made the default tree two minutes of a cold build."""
    text = (REPO_ROOT / tools_tree.CONFIG / "mkosi.conf").read_text()
    packages = config_packages(text)
    needed = {"apt", "debian-archive-keyring", "systemd", "udev", "systemd-repart", "systemd-ukify",
              "systemd-boot", "erofs-utils", "e2fsprogs", "dosfstools", "mtools",
              "libcryptsetup12"}  # fmt: skip
    assert needed <= set(packages)
    assert not {"qemu-system", "dnf", "zypper", "pacman-package-manager", "linux-perf",
                "ovmf", "btrfs-progs", "grub-common"} & set(packages)  # fmt: skip
    assert len(packages) <= 25
    assert "Format=directory" in text and "Output=tools" in text
