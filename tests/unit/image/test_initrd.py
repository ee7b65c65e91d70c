"""The image's own initrd (mkosi.postinst.d/initrd.chroot): module order, cpio, /init."""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "mkosi.postinst.d" / "initrd.chroot"


def load() -> types.ModuleType:
    """The script as a module, compiled in memory: an import would leave a
    __pycache__ in mkosi.postinst.d, which mkosi then runs as a postinst script."""
    module = types.ModuleType("aurora_initrd")
    module.__file__ = str(SCRIPT)
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), module.__dict__)
    return module


def test_modules_come_after_their_dependencies(tmp_path: Path) -> None:
    initrd = load()
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz"
        " kernel/drivers/md/dm-mod.ko.xz\n"
        "kernel/drivers/md/dm-bufio.ko.xz: kernel/drivers/md/dm-mod.ko.xz\n"
        "kernel/drivers/md/dm-mod.ko.xz:\n"
        "kernel/drivers/block/virtio_blk.ko.xz:\n"
    )
    order = initrd.module_order(tmp_path, ("dm_verity", "virtio_blk"))
    assert [name for name, _ in order] == ["dm_mod", "dm_bufio", "dm_verity", "virtio_blk"]
    assert order[0][1] == tmp_path / "kernel/drivers/md/dm-mod.ko.xz"
    with pytest.raises(SystemExit, match="erofs not found"):
        initrd.module_order(tmp_path, ("erofs",))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio missing")
def test_archive_is_a_cpio_the_kernel_can_unpack(tmp_path: Path) -> None:
    initrd = load()
    entries = {
        "usr": (0o040755, b"", (0, 0)),
        "usr/bin": (0o040755, b"", (0, 0)),
        "usr/bin/sh": (0o100755, b"#!fake\n", (0, 0)),
        "bin": (0o120777, b"usr/bin", (0, 0)),
        "dev": (0o040755, b"", (0, 0)),
        "dev/console": (0o020600, b"", (5, 1)),
    }
    archive = initrd.newc(entries, 1761955200)
    assert archive == initrd.newc(dict(reversed(entries.items())), 1761955200)
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    lines = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line
        for line in listing.splitlines()
    }
    assert sorted(lines) == sorted(entries)
    assert lines["usr/bin/sh"].startswith("-rwxr-xr-x")
    assert lines["bin"].startswith("lrwxrwxrwx") and lines["bin"].endswith("-> usr/bin")
    assert lines["dev/console"].startswith("crw-------")
    assert "5,   1" in lines["dev/console"]
    (tmp_path / "out").mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "usr/bin/sh"], input=archive, cwd=tmp_path / "out", check=True
    )
    assert (tmp_path / "out/usr/bin/sh").read_bytes() == b"#!fake\n"


def test_init_is_valid_shell_naming_every_module() -> None:
    initrd = load()
    init = initrd.INIT.replace("@MODULES@", " ".join(initrd.MODULES))
    subprocess.run(["sh", "-n"], input=init.encode(), check=True)
    assert "@MODULES@" in initrd.INIT
    assert "veritysetup open" in init and "switch_root /sysroot /sbin/init" in init
