"""Throwaway OpenSSH servers on loopback for tests that need a real ssh endpoint.

Each server gets its own directory with a fresh host key, client key,
authorized_keys and known_hosts, so several independent endpoints can run at
once (the source-sync tests use one; the GWS push tests use three). Nothing
here is a secret: every key is generated at test time and discarded.

    with running_sshd(tmp_path, count=3) as servers:
        subprocess.run([*servers[0].ssh_command(), "true"], check=True)
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"  # sshd refuses to re-exec unless started by absolute path
HOST = "127.0.0.1"
READY_TIMEOUT = 10.0
PORT_ATTEMPTS = 5


def missing_tools() -> list[str]:
    """Binaries these fixtures need; tests skip with this list when it is non-empty."""
    needed = [SSHD, "ssh", "ssh-keygen", "rsync"]
    return [tool for tool in needed if shutil.which(tool) is None]


@dataclass
class SshServer:
    """One running sshd and everything a client needs to reach it."""

    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    workdir: Path
    process: subprocess.Popen[bytes]

    def ssh_options(self) -> list[str]:
        """``-o`` values pinning this server's host key and disabling prompts."""
        return [
            f"UserKnownHostsFile={self.known_hosts}",
            "StrictHostKeyChecking=yes",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ]

    def ssh_command(self) -> list[str]:
        """Full ssh argv up to (and including) ``user@host``."""
        cmd = ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.client_key)]
        for option in self.ssh_options():
            cmd += ["-o", option]
        return [*cmd, f"{self.user}@{self.host}"]

    @property
    def log(self) -> str:
        return (self.workdir / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout=5)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """Terminate a test daemon, killing it if it has not left within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _keygen(path: Path, comment: str) -> str:
    """Create an ed25519 key pair; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    """A loopback port nothing listens on right now (also handy for "unreachable" tests)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _write_config(workdir: Path, port: int, user: str) -> Path:
    config = workdir / "sshd_config"
    config.write_text(
        f"""\
Port {port}
ListenAddress {HOST}
HostKey {workdir / "host_key"}
PidFile {workdir / "sshd.pid"}
AuthorizedKeysFile {workdir / "authorized_keys"}
AllowUsers {user}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PrintMotd no
# Classic curve25519 instead of the post-quantum hybrid default: same code path,
# a fraction of the handshake CPU, which matters for tests that ssh dozens of times.
KexAlgorithms curve25519-sha256
LogLevel VERBOSE
"""
    )
    return config


def _wait_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    """Poll until sshd accepts TCP connections; False if it exited first."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return True
        time.sleep(0.02)
    raise TimeoutError(f"sshd on port {port} not ready after {READY_TIMEOUT}s")


def start_sshd(workdir: Path) -> SshServer:
    """Start one foreground sshd on a free loopback port, with fresh keys in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    _keygen(workdir / "host_key", "aurora-test-host")
    client_pub = _keygen(workdir / "client_key", "aurora-test-client")
    (workdir / "authorized_keys").write_text(client_pub + "\n")
    host_pub = (workdir / "host_key.pub").read_text().split()
    if os.geteuid() == 0:
        # Root sshd needs its privilege-separation dir; distro units create it at boot.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    for _ in range(PORT_ATTEMPTS):  # another process may grab the port between probe and bind
        port = free_port()
        config = _write_config(workdir, port, user)
        with (workdir / "sshd.log").open("wb") as log:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if _wait_ready(process, port):
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text(f"[{HOST}]:{port} {host_pub[0]} {host_pub[1]}\n")
            return SshServer(
                host=HOST,
                port=port,
                user=user,
                client_key=workdir / "client_key",
                known_hosts=known_hosts,
                workdir=workdir,
                process=process,
            )
    log_text = (workdir / "sshd.log").read_text(errors="replace")
    raise RuntimeError(f"sshd failed to start after {PORT_ATTEMPTS} attempts:\n{log_text}")


@contextlib.contextmanager
def running_sshd(base: Path, count: int = 1) -> Iterator[list[SshServer]]:
    """Run ``count`` independent sshd servers under ``base``; stop them all on exit."""
    servers: list[SshServer] = []
    try:
        for index in range(count):
            servers.append(start_sshd(base / f"sshd-{index}"))
        yield servers
    finally:
        for server in servers:
            server.stop()
