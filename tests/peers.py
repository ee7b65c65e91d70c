"""The booted image's peers on the build host: instrument hosts and GWS transfer hosts.

Each peer is a real OpenSSH server (with the host's real rsync and find behind
it) started in a private mount namespace whose root shows the paths of the
machine it stands for: `/home/aurora/data/...` on an instrument,
`/gws/ssde/j25b/gamb2le` on a transfer host. Those directories are test
directories bound in, so the guest's programs reach exactly the paths the
rendered spec names, and the test reads what arrived. The namespace's
`/etc/passwd` adds the remote accounts (`aurora`, `rrniii`) as unprivileged
users; nothing on the build host itself is changed, and every mount goes away
with the sshd.

Authentication is what production has: the CL61 host and the transfer hosts
take a per-run key (given to the guest as a credential); the Tailscale SSH
hosts (`identity:` unset in the spec) let tailnet members in without a key,
which here is sshd's empty-password `none` method for an account without a
password, on loopback only. A `refuse` peer is a real sshd that authorises no
key, as a transfer host refusing logins does.

The guest reaches a peer at 10.0.2.2:<port> (QEMU user networking maps that to
the host's loopback); `guest_redirect_script` makes the production addresses
and names lead there.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshd import SSHD, _keygen, _wait_ready, free_port, stop_process

# Remote accounts live in the peer's own passwd; ids far from any real user's.
UIDS = {"aurora": 61001, "rrniii": 61002}
PORT_ATTEMPTS = 5


@dataclass
class Peer:
    """One sandboxed sshd standing for a remote host."""

    name: str  # the address or hostname the guest uses (the spec's value)
    user: str
    port: int
    host_key_line: str  # "ssh-ed25519 AAAA..." of this peer's host key
    dirs: dict[str, Path]  # path on the remote machine -> test directory bound there
    workdir: Path
    process: subprocess.Popen[bytes]

    @property
    def uid(self) -> int:
        return UIDS[self.user]

    def local(self, remote_path: str) -> Path:
        """The test directory that holds `remote_path` on this peer."""
        for where, here in sorted(self.dirs.items(), key=lambda kv: -len(kv[0])):
            if remote_path == where or remote_path.startswith(where.rstrip("/") + "/"):
                return here / remote_path[len(where) :].lstrip("/")
        raise KeyError(f"{remote_path} is not under any directory of peer {self.name}")

    @property
    def log(self) -> str:
        return (self.workdir / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def _passwd_files(workdir: Path) -> dict[str, Path]:
    """The host's passwd/group/shadow plus the remote accounts (empty password,
    absent from shadow, so only a peer that permits it lets them in without a key)."""
    out = {}
    extra = {
        "passwd": [f"{u}::{i}:{i}:{u}:/home/{u}:/bin/sh" for u, i in UIDS.items()],
        "group": [f"{u}:x:{i}:" for u, i in UIDS.items()],
        "shadow": [],
    }
    for name, lines in extra.items():
        host = [
            line
            for line in Path(f"/etc/{name}").read_text().splitlines()
            if line.split(":", 1)[0] not in UIDS
        ]
        path = workdir / name
        path.write_text("\n".join([*host, *lines]) + "\n")
        path.chmod(0o600 if name == "shadow" else 0o644)
        out[name] = path
    return out


def _config(workdir: Path, port: int, user: str, *, keys: str | None, keyless: bool) -> Path:
    (workdir / "authorized_keys").write_text(keys or "")
    config = workdir / "sshd_config"
    config.write_text(
        f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {workdir / "host_key"}
PidFile none
AuthorizedKeysFile {workdir / "authorized_keys"}
AllowUsers {user}
StrictModes no
UsePAM no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication {"yes" if keyless else "no"}
PermitEmptyPasswords {"yes" if keyless else "no"}
KbdInteractiveAuthentication no
PrintMotd no
KexAlgorithms curve25519-sha256
LogLevel VERBOSE
"""
    )
    return config


def _sandbox_script(
    root: Path, workdir: Path, binds: Mapping[str, Path], config: Path, user: str
) -> str:
    """Shell run in a fresh mount namespace: a tmpfs root showing the host's /usr and
    /etc (read-only, accounts replaced), the test directories at the remote paths."""
    q = shlex.quote
    lines = [
        "set -eu",
        f"R={q(str(root))}",
        'mount -t tmpfs -o mode=0755 peer-root "$R"',
        'mkdir -p "$R/usr" "$R/etc" "$R/dev" "$R/proc" "$R/run/sshd" "$R/tmp"',
        'chmod 1777 "$R/tmp"',
        'mount --rbind /usr "$R/usr" && mount -o remount,bind,ro "$R/usr"',
        'mount --rbind /etc "$R/etc" && mount -o remount,bind,ro "$R/etc"',
        'mount --rbind /dev "$R/dev"',
        'mount -t proc proc "$R/proc"',
        'for d in bin sbin lib lib64; do [ -L "/$d" ] && ln -s "$(readlink "/$d")" "$R/$d"; done',
    ]
    for name in ("passwd", "group", "shadow"):
        lines.append(f'mount --bind {q(str(workdir / name))} "$R/etc/{name}"')
    lines.append(
        f'mkdir -p "$R"{q(str(workdir))} && mount --bind {q(str(workdir))} "$R"{q(str(workdir))}'
    )
    for where, here in binds.items():
        lines.append(f'mkdir -p "$R"{q(where)} && mount --bind {q(str(here))} "$R"{q(where)}')
    home = f"/home/{user}"
    lines.append(f'mkdir -p "$R{home}" && chown {UIDS[user]}:{UIDS[user]} "$R{home}"')
    lines.append(f'exec chroot "$R" {SSHD} -D -e -f {q(str(config))}')
    return "\n".join(lines) + "\n"


def start_peer(
    name: str,
    workdir: Path,
    *,
    user: str,
    dirs: Mapping[str, Path],
    client_keys: str | None = None,
    keyless: bool = False,
) -> Peer:
    """Start one sandboxed sshd for `name`; `client_keys` are the authorised public keys
    (None: none, the peer refuses every key), `keyless` lets `user` in without a key."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "root").mkdir(exist_ok=True)
    host_pub = _keygen(workdir / "host_key", f"peer-{name}").split()
    _passwd_files(workdir)
    for here in dirs.values():
        here.mkdir(parents=True, exist_ok=True)
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        config = _config(workdir, port, user, keys=client_keys, keyless=keyless)
        script = _sandbox_script(workdir / "root", workdir, dirs, config, user)
        with (workdir / "sshd.log").open("wb") as log:
            process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if _wait_ready(process, port):
            return Peer(name, user, port, " ".join(host_pub[:2]), dict(dirs), workdir, process)
        if attempt == PORT_ATTEMPTS - 1:
            break
    raise RuntimeError(f"peer {name}: sshd did not start:\n{(workdir / 'sshd.log').read_text()}")


def give_to(peer: Peer, path: Path) -> None:
    """Make a test directory tree belong to the peer's remote account, as on that host."""
    for entry in [path, *path.rglob("*")]:
        os.lchown(entry, peer.uid, peer.uid)


@dataclass
class Peers:
    """Every peer of one run, and the client key material the guest gets."""

    instruments: dict[str, Peer] = field(default_factory=dict)  # by address
    gws: list[Peer] = field(default_factory=list)  # in the spec's order
    keys: dict[str, Path] = field(default_factory=dict)  # credential name -> private key

    def all(self) -> list[Peer]:
        return [*self.instruments.values(), *self.gws]

    def known_hosts(self) -> str:
        """known_hosts for the guest: each peer's key under the name the guest dials."""
        return "".join(f"{p.name} {p.host_key_line}\n" for p in self.all())

    def stop(self) -> None:
        for peer in self.all():
            peer.stop()


def guest_redirect_script(peers: Peers, host_from_guest: str, chain: str = "AURORA_PEERS") -> str:
    """Root shell for the guest: the production addresses (port 22) lead to the peers.

    Instrument addresses are DNAT'ed; transfer host names resolve through a bind-mounted
    /etc/hosts to TEST-NET-1 addresses that are DNAT'ed the same way. Undone by
    `guest_unredirect_script`.
    """
    lines = [
        "set -e",
        f"iptables -t nat -N {chain} 2>/dev/null || iptables -t nat -F {chain}",
        f"iptables -t nat -C OUTPUT -j {chain} 2>/dev/null || iptables -t nat -A OUTPUT -j {chain}",
        "if mountpoint -q /etc/hosts; then umount /etc/hosts; fi",
        "cp /etc/hosts /run/aurora-peers.hosts",
    ]
    for address, peer in peers.instruments.items():
        lines.append(
            f"iptables -t nat -A {chain} -d {address}/32 -p tcp --dport 22 "
            f"-j DNAT --to-destination {host_from_guest}:{peer.port}"
        )
    for index, peer in enumerate(peers.gws, start=1):
        fake = f"192.0.2.{index}"
        lines.append(f"echo '{fake} {peer.name}' >> /run/aurora-peers.hosts")
        lines.append(
            f"iptables -t nat -A {chain} -d {fake}/32 -p tcp --dport 22 "
            f"-j DNAT --to-destination {host_from_guest}:{peer.port}"
        )
    lines.append("mount --bind /run/aurora-peers.hosts /etc/hosts")
    return "\n".join(lines) + "\n"


def guest_unredirect_script(chain: str = "AURORA_PEERS") -> str:
    return (
        f"iptables -t nat -D OUTPUT -j {chain}; iptables -t nat -F {chain}; "
        f"iptables -t nat -X {chain}; umount /etc/hosts; rm -f /run/aurora-peers.hosts; true"
    )


@contextlib.contextmanager
def running(peers: Peers) -> Iterator[Peers]:
    try:
        yield peers
    finally:
        peers.stop()
