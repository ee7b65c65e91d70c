"""The release probe trusts a rebuilt server's host key only when the server printed
its fingerprint on the console (a real sshd, real ssh-keyscan and ssh-keygen)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.host.probe import HostKeyError, console_fingerprints, key_fingerprint, pin_host_keys
from tests.sshd import start_sshd


@pytest.fixture
def sshd(tmp_path: Path):
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.stop()


def _console_line(key: Path) -> str:
    """What aurora-ssh-hostkeys.service prints for a key (ssh-keygen -lf)."""
    return subprocess.run(
        ["ssh-keygen", "-lf", str(key)], capture_output=True, text=True, check=True
    ).stdout


def test_fingerprint_is_the_one_ssh_keygen_prints(sshd, tmp_path: Path) -> None:
    pub = (sshd.workdir / "host_key.pub").read_text().split()
    ours = key_fingerprint(f"host {pub[0]} {pub[1]}")
    assert console_fingerprints(_console_line(sshd.workdir / "host_key.pub")) == {ours}


def test_keys_the_console_vouches_for_are_pinned(sshd, tmp_path: Path) -> None:
    console = "Booting...\n" + _console_line(sshd.workdir / "host_key.pub") + "login:\n"
    known = tmp_path / "known_hosts"
    assert pin_host_keys(known, sshd.host, sshd.port, console) == 1
    # The pinned file lets ssh in with strict checking.
    cmd = ["ssh", "-F", "/dev/null", "-p", str(sshd.port), "-i", str(sshd.client_key),
           "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
           "-o", "BatchMode=yes", f"{sshd.user}@{sshd.host}", "true"]  # fmt: skip
    assert subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def test_a_key_the_console_did_not_print_is_refused(sshd, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError, match="not trusting it"):
        pin_host_keys(known, sshd.host, sshd.port, _console_line(other.with_suffix(".pub")))
    assert not known.exists()


def test_a_console_without_fingerprints_pins_nothing(sshd, tmp_path: Path) -> None:
    assert pin_host_keys(tmp_path / "kh", sshd.host, sshd.port, "no keys yet\n") == 0
