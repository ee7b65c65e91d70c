"""aurora-credentials: installs what was given, removes what was revoked, and keeps
installed files when the credential store itself is missing (a failed /data)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

from tests.programs import program_path

ME = pwd.getpwuid(os.getuid()).pw_name


def _run(tmp_path: Path, given: dict[str, str], store: bool) -> subprocess.CompletedProcess:
    target = tmp_path / "root" / ".ssh" / "authorized_keys"
    config = tmp_path / "credentials.json"
    entry = {"name": "ssh.authorized_keys.root", "path": str(target), "mode": "0600"}
    config.write_text(json.dumps([{**entry, "owner": ME, "format": "raw"}]))
    creds = tmp_path / "creds"
    creds.mkdir(exist_ok=True)
    for old in creds.iterdir():
        old.unlink()
    for name, value in given.items():
        (creds / name).write_text(value)
    store_dir = tmp_path / "credstore"
    if store:
        store_dir.mkdir(exist_ok=True)
    elif store_dir.exists():
        store_dir.rmdir()
    env = {
        **os.environ,
        "AURORA_CREDENTIALS_CONFIG": str(config),
        "CREDENTIALS_DIRECTORY": str(creds),
        "AURORA_CREDENTIAL_STORE": str(store_dir),
    }
    return subprocess.run(
        [sys.executable, str(program_path("aurora-credentials"))],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip


def test_revoked_credential_is_removed_while_the_store_is_there(tmp_path: Path) -> None:
    key = tmp_path / "root" / ".ssh" / "authorized_keys"
    _run(tmp_path, {"ssh.authorized_keys.root": "ssh-ed25519 AAAA op\n"}, store=True)
    assert key.read_text() == "ssh-ed25519 AAAA op\n" and key.stat().st_mode & 0o777 == 0o600
    out = _run(tmp_path, {}, store=True).stdout
    assert not key.exists() and "removed" in out


def test_a_missing_store_keeps_the_installed_keys(tmp_path: Path) -> None:
    key = tmp_path / "root" / ".ssh" / "authorized_keys"
    _run(tmp_path, {"ssh.authorized_keys.root": "ssh-ed25519 AAAA op\n"}, store=True)
    out = _run(tmp_path, {}, store=False).stdout
    assert key.read_text() == "ssh-ed25519 AAAA op\n"
    assert "unavailable; kept" in out


def test_a_malformed_entry_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    key = tmp_path / "root" / ".ssh" / "authorized_keys"
    _run(tmp_path, {"ssh.authorized_keys.root": "ssh-ed25519 AAAA op\n"}, store=True)
    config = tmp_path / "credentials.json"
    entry = json.loads(config.read_text())[0]
    config.write_text(json.dumps([{**entry, "path": "root/.ssh/authorized_keys"}]))
    (tmp_path / "creds" / "ssh.authorized_keys.root").write_text("ssh-ed25519 BBBB new\n")
    env = {
        **os.environ,
        "AURORA_CREDENTIALS_CONFIG": str(config),
        "CREDENTIALS_DIRECTORY": str(tmp_path / "creds"),
        "AURORA_CREDENTIAL_STORE": str(tmp_path / "credstore"),
    }

    result = subprocess.run(
        [sys.executable, str(program_path("aurora-credentials"))],
        env=env, capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr == (
        f"aurora-credentials: {config}: key '[0].path': must be an absolute path\n"
    )
    # Run from tmp_path, the relative path names the installed key: it is untouched.
    assert key.read_text() == "ssh-ed25519 AAAA op\n"
