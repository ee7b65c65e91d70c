"""The config layer's parts that need no base image: the UKI patch, the namespace
script, the dm-verity tree (checked by the real veritysetup) and sparse slot writes.
The whole layer is booted by the VM suites and read by tests/container."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.image import layer
from builder.image.gpt import Partition
from builder.render.engine import File

HASH = "ab" * 32


def test_the_placeholder_is_replaced_in_place() -> None:
    uki = b"MZ...root=/dev/mapper/root " + layer.PLACEHOLDER + b" ro\0pad"
    patched = layer.patch_hash(uki, HASH, "aurora.efi")
    assert len(patched) == len(uki)
    assert f"aurora.config_hash={HASH} ro".encode() in patched


@pytest.mark.parametrize("count", [0, 2])
def test_a_uki_without_exactly_one_placeholder_is_refused(count: int) -> None:
    with pytest.raises(
        BuildError, match=f"expected one aurora.config_hash= placeholder, found {count}"
    ):
        layer.patch_hash(b"x" + layer.PLACEHOLDER * count, HASH, "aurora.efi")


def test_a_hash_of_another_length_is_refused() -> None:
    with pytest.raises(BuildError, match="not 64 hex digits"):
        layer.patch_hash(layer.PLACEHOLDER, "ab" * 16, "aurora.efi")


def test_the_script_quotes_every_spec_value(tmp_path: Path) -> None:
    """A rendered name or link target cannot run shell in the build's namespace."""
    tree = {
        "/etc/a dir": File(b"", mode=0o755, directory=True),
        "/etc/x$(touch /pwned)": File(b"data", mode=0o640),
        "/etc/link": File(b"", link="/data/`id`;rm -rf /"),
    }
    part = Partition("root-x86-64", "t", "p", 1048576, 4096)
    script = layer.layer_script(tree, tmp_path / "tree", tmp_path / "disk", part, part, tmp_path)
    assert f"'{tmp_path}/merged/etc/x$(touch /pwned)'" in script
    assert "ln -s '/data/`id`;rm -rf /'" in script
    assert "chmod 0640" in script
    # the rendered sysusers/tmpfiles files are the only ones applied; none here
    assert "systemd-sysusers" not in script and "systemd-tmpfiles" not in script
    assert "systemctl --quiet preset-all" in script


def test_sysusers_and_tmpfiles_run_for_the_rendered_files_only(tmp_path: Path) -> None:
    tree = {
        "/usr/lib/sysusers.d/aurora.conf": File(b"g aurora 1000\n"),
        "/usr/lib/tmpfiles.d/aurora.conf": File(b"d /var/x 0755 root root -\n"),
    }
    part = Partition("p", "t", "p", 0, 4096)
    script = layer.layer_script(tree, tmp_path, tmp_path / "disk", part, part, tmp_path)
    assert "systemd-sysusers /usr/lib/sysusers.d/aurora.conf" in script
    assert "systemd-tmpfiles --create --boot /usr/lib/tmpfiles.d/aurora.conf" in script


def test_the_verity_tree_is_reproducible_and_veritysetup_accepts_it(tmp_path: Path) -> None:
    data = tmp_path / "config.erofs"
    data.write_bytes(os.urandom(4096 * 37) + bytes(4096 * 27))
    first = layer.veritysetup_format(data, tmp_path / "a.verity", "seed-1")
    again = layer.veritysetup_format(data, tmp_path / "b.verity", "seed-1")
    other = layer.veritysetup_format(data, tmp_path / "c.verity", "seed-2")
    assert first == again and first != other and len(first) == 64
    assert (tmp_path / "a.verity").read_bytes() == (tmp_path / "b.verity").read_bytes()
    verify = ["veritysetup", "verify", str(data), str(tmp_path / "a.verity")]
    assert subprocess.run([*verify, first], capture_output=True).returncode == 0
    with data.open("r+b") as handle:  # one changed byte: the tree no longer matches
        handle.seek(4096 * 3)
        handle.write(b"\xff")
    assert subprocess.run([*verify, first], capture_output=True).returncode != 0


def test_a_slot_is_rewritten_whole_and_stays_sparse(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"A" * 4096 + b"B" * 8 * 4096 + b"C" * 4096)
    source = tmp_path / "part"
    with source.open("wb") as handle:
        handle.write(b"N" * 4096)
        handle.truncate(4 * 4096)  # the rest of the source is a hole
    layer._write_range(disk, 4096, 8 * 4096, source)
    data = disk.read_bytes()
    assert data[:4096] == b"A" * 4096 and data[-4096:] == b"C" * 4096
    assert data[4096 : 2 * 4096] == b"N" * 4096
    assert data[2 * 4096 : 9 * 4096] == bytes(7 * 4096)  # the old bytes are gone
    assert os.stat(disk).st_blocks * 512 <= 3 * 4096  # and take no space


def test_derived_ids_differ_by_purpose_and_repeat() -> None:
    assert layer.derived_uuid("s", "var") == layer.derived_uuid("s", "var")
    assert layer.derived_uuid("s", "var") != layer.derived_uuid("s", "config")


def test_the_app_tree_goes_into_the_layer_at_its_checkout(tmp_path: Path) -> None:
    part = Partition("p", "t", "p", 0, 4096)
    app = (tmp_path / "stage app", "/opt/aurora cloud")
    script = layer.layer_script({}, tmp_path, tmp_path / "disk", part, part, tmp_path, app)
    assert f"cp -a '{tmp_path}/stage app/.' '{tmp_path}/merged/opt/aurora cloud'/" in script


def test_the_firewall_is_saved_from_the_merged_tree_with_proc_sys_read_only(
    tmp_path: Path,
) -> None:
    """ufw-init runs on the rendered rules (after the tree is written), in a network
    namespace of its own, and cannot set the build host's sysctls."""
    tree = {"/etc/ufw/user.rules": File(b"*filter\nCOMMIT\n", mode=0o640)}
    part = Partition("p", "t", "p", 0, 4096)
    lines = layer.layer_script(tree, tmp_path, tmp_path / "disk", part, part, tmp_path).splitlines()
    merged = f"{tmp_path}/merged"
    ufw = next(i for i, line in enumerate(lines) if "ufw-init start" in line)
    assert lines[ufw].startswith(f"unshare --net chroot {merged} /bin/sh -ec ")
    written = next(i for i, line in enumerate(lines) if line.startswith(f"cp {tmp_path}/etc/ufw"))
    read_only = lines.index(f"mount -o remount,bind,ro {merged}/proc/sys")
    assert written < read_only < ufw
    assert lines.index(f"mount -t proc proc {merged}/proc") < read_only
    for path in ("/etc/ufw/aurora-boot.rules", "/etc/ufw/aurora-boot6.rules"):
        assert f"> {path}" in lines[ufw]
