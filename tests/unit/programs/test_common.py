"""aurora_common: the one module the on-host programs share, and no copies of it left.

The programs once carried ~150 lines each of the same config checking, ssh
options, locking and messages, already drifting apart; these tests hold them to
the one module the image carries beside them (/usr/lib/aurora/aurora_common.py).
"""

from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.programs import PROGRAMS, load_program

COMMON = PROGRAMS / "aurora_common.py"
# The programs that read a rendered config or write state: each imports the module.
USERS = ("aurora-source-sync", "aurora-gws-push", "aurora-mirror-verify", "aurora-credentials")
# What only aurora_common may spell: the ssh client's options and the lock call.
MARKERS = ("BatchMode=", "ConnectTimeout=", "fcntl", "IdentitiesOnly")
# Names the programs' copies used to define (the old spellings of today's shared ones).
OLD_COPIES = {"_Checker", "_kind_name", "parse_ssh", "parse_timeouts", "split_host", "fail"}


def python_programs() -> list[Path]:
    """Every Python program the image carries in /usr/lib/aurora."""
    return sorted(
        path
        for path in PROGRAMS.iterdir()
        if path.is_file() and path.read_text(errors="replace").startswith("#!/usr/bin/python3")
    )


def common() -> ModuleType:
    return load_program("aurora-source-sync").common


def top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("name", USERS)
def test_each_program_uses_the_shared_module_beside_it(name: str) -> None:
    program = load_program(name)
    assert Path(program.common.__file__) == COMMON
    assert program.common is sys.modules["aurora_common"]


def test_the_programs_keep_no_copy_of_the_shared_code() -> None:
    shared = {
        name for name in top_level_names(ast.parse(COMMON.read_text())) if not name.startswith("__")
    }
    programs = python_programs()
    assert {p.name for p in programs} >= set(USERS)
    for path in programs:
        source = path.read_text()
        defined = top_level_names(ast.parse(source))
        assert not defined & (shared | OLD_COPIES), f"{path.name} redefines {defined & shared}"
        assert not [m for m in MARKERS if m in source], f"{path.name} spells ssh/lock itself"
    assert all(marker in COMMON.read_text() for marker in MARKERS)


def test_the_shared_module_is_stdlib_only() -> None:
    """The host runs the programs on its system python3, without the builder's venv."""
    imported = set()
    for node in ast.walk(ast.parse(COMMON.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names | {"__future__"}, imported


def test_programs_run_from_a_copy_of_the_tree_write_no_bytecode(tmp_path: Path) -> None:
    """mkosi copies mkosi.extra as it is: a __pycache__ left there by a test or a
    developer's run would be carried into the next image."""
    copy = tmp_path / "aurora"
    shutil.copytree(PROGRAMS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    unset = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    for name in ("aurora-source-sync", "aurora-gws-push", "aurora-mirror-verify"):
        result = subprocess.run(
            ["/usr/bin/python3", str(copy / name), "--help"],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert not (copy / "__pycache__").exists()


def test_a_link_name_finds_the_module_through_the_link(tmp_path: Path) -> None:
    """The image runs the programs through /usr/local/bin links: Python resolves the
    link, so the module is found beside the program, not beside the link."""
    link = tmp_path / "aurora-gws-rsync-raw"
    link.symlink_to(PROGRAMS / "aurora-gws-push")
    result = subprocess.run(
        [str(link), "--config-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr == f"aurora-gws-push: {tmp_path}/raw.json: cannot read: " + (
        "No such file or directory\n"
    )


# --------------------------------------------------------------------------
# The shared pieces
# --------------------------------------------------------------------------


def test_ssh_command_shape() -> None:
    c = common()
    ssh = c.SshConfig(identity="/home/aurora/.ssh/id", port=22, options=["A=b"], known_hosts="/k")
    timeouts = c.Timeouts(connect=15, alive_interval=15, alive_count=4, io=600)
    alive = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
             "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]  # fmt: skip
    assert c.ssh_command(ssh, timeouts, 2222) == [
        "ssh", "-p", "2222", *alive,
        "-i", "/home/aurora/.ssh/id", "-o", "IdentitiesOnly=yes",
        "-o", "UserKnownHostsFile=/k", "-o", "A=b",
    ]  # fmt: skip
    bare = c.SshConfig(identity=None, port=22, options=[], known_hosts=None)
    assert c.ssh_command(bare, timeouts) == ["ssh", "-p", "22", *alive]


@pytest.mark.parametrize(
    ("entry", "name", "port", "rsync_name"),
    [
        ("xfer-vm-03.jasmin.ac.uk", "xfer-vm-03.jasmin.ac.uk", None, "xfer-vm-03.jasmin.ac.uk"),
        ("127.0.0.1:2222", "127.0.0.1", 2222, "127.0.0.1"),
        ("2001:db8::5", "2001:db8::5", None, "[2001:db8::5]"),
        ("[::1]:2222", "::1", 2222, "[::1]"),
    ],
)
def test_host_entries(entry: str, name: str, port: int | None, rsync_name: str) -> None:
    endpoint = common().Endpoint.parse(entry)
    assert (endpoint.entry, endpoint.name, endpoint.port) == (entry, name, port)
    assert endpoint.rsync_name == rsync_name


@pytest.mark.parametrize(
    "entry",
    ["", "xfer:0", "xfer:65536", "xfer:ssh", "-oProxyCommand=x", "a b", "u@xfer", "[x]:22", ":22"],
)
def test_host_entries_ssh_could_misread_are_refused(entry: str) -> None:
    assert common().Endpoint.parse(entry) is None


def test_checker_names_file_and_full_key(tmp_path: Path) -> None:
    c = common()
    path = tmp_path / "job.json"
    checker = c.Checker({"streams": [{"ssh": {"port": True}}]}, path)
    ssh = checker.children("streams")[0].child("ssh")
    with pytest.raises(c.ConfigError) as raised:
        ssh.integer("port", 1, 65535)
    assert (
        str(raised.value)
        == f"{path}: key 'streams[0].ssh.port': expected an integer, got a boolean"
    )
    with pytest.raises(c.ConfigError, match=r"'streams\[0\]': expected a JSON object"):
        c.Checker([], path, "streams[0].")


def test_atomic_write_sets_mode_before_the_data_appears(tmp_path: Path) -> None:
    c = common()
    target = tmp_path / "state" / "cl61.last"
    c.atomic_write(target, b"1\n")
    c.atomic_write(target, b"2\n", mode=0o600)
    assert target.read_bytes() == b"2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["cl61.last"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    c = common()
    target = tmp_path / "cl61.last"
    target.write_bytes(b"1\n")
    with pytest.raises(TypeError):
        c.atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cl61.last"]


def test_lock_is_exclusive_per_file(tmp_path: Path) -> None:
    c = common()
    lock = tmp_path / "run" / "job.lock"
    held = c.take_lock(lock)
    try:
        assert held is not None
        assert c.take_lock(lock) is None
    finally:
        os.close(held)
    again = c.take_lock(lock)
    assert again is not None
    os.close(again)


def test_tail_keeps_the_last_lines_on_one_line() -> None:
    c = common()
    assert c.tail(b"one\n\ntwo\nthree\n", lines=2) == "two | three"
    assert c.tail("", lines=3) == "no message"


@pytest.mark.parametrize(
    ("name", "what"), [("aurora-source-sync", "cl61"), ("aurora-gws-push", "raw")]
)
def test_a_negative_max_delete_is_refused_before_the_config_is_read(
    tmp_path: Path, name: str, what: str
) -> None:
    result = subprocess.run(
        [str(PROGRAMS / name), "--config-dir", str(tmp_path), "--max-delete", "-1", what],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"{name}: --max-delete must be >= 0\n"
    assert list(tmp_path.iterdir()) == []
