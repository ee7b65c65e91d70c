"""The VM suite's peers (tests/peers.py) behave like the hosts they stand for:
the remote paths exist in their own root, the Tailscale SSH stand-in lets the
account in without a key, a keyed host takes only its key, a refusing host
takes none, and nothing is left mounted on the build host afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.retry import retry
from tests.peers import Peers, give_to, guest_redirect_script, start_peer
from tests.sshd import _keygen


def _ssh(peer, key: Path | None, command: str) -> subprocess.CompletedProcess[str]:
    known = peer.workdir / "client_known_hosts"
    known.write_text(f"[127.0.0.1]:{peer.port} {peer.host_key_line}\n")
    argv = ["ssh", "-F", "/dev/null", "-p", str(peer.port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]  # fmt: skip
    argv += ["-i", str(key)] if key else ["-o", "IdentityFile=none"]
    return subprocess.run(
        [*argv, f"{peer.user}@127.0.0.1", command], capture_output=True, text=True, timeout=30
    )


def test_an_instrument_shows_its_files_at_the_remote_path(tmp_path: Path) -> None:
    data = tmp_path / "cl61"
    (data).mkdir()
    (data / "a.nc").write_bytes(b"cl61\n")
    peer = start_peer("100.124.55.22", tmp_path / "peer", user="aurora",
                      dirs={"/home/aurora/data/cl61": data}, keyless=True)  # fmt: skip
    try:
        give_to(peer, data)
        result = _ssh(peer, None, "id -un; cat /home/aurora/data/cl61/a.nc; date +%s")
        assert result.returncode == 0, result.stderr
        user, content, epoch = result.stdout.splitlines()
        assert (user, content) == ("aurora", "cl61") and epoch.isdigit()
        assert peer.local("/home/aurora/data/cl61/a.nc") == data / "a.nc"
    finally:
        peer.stop()
    assert str(tmp_path) not in Path("/proc/mounts").read_text()


def test_a_keyed_host_takes_its_key_only_and_a_refusing_host_none(tmp_path: Path) -> None:
    public = _keygen(tmp_path / "key", "test")
    gws = tmp_path / "gws"
    good = start_peer("xfer-vm-01.jasmin.ac.uk", tmp_path / "good", user="rrniii",
                      dirs={"/gws/ssde/j25b/gamb2le": gws}, client_keys=public + "\n")  # fmt: skip
    bad = start_peer("xfer-vm-03.jasmin.ac.uk", tmp_path / "bad", user="rrniii",
                     dirs={"/gws/ssde/j25b/gamb2le": gws})  # fmt: skip
    try:
        give_to(good, gws)
        assert _ssh(good, None, "true").returncode == 255
        made = _ssh(good, tmp_path / "key", "mkdir -p /gws/ssde/j25b/gamb2le/data/raw")
        assert made.returncode == 0, made.stderr
        assert (gws / "data" / "raw").is_dir()
        refused = _ssh(bad, tmp_path / "key", "true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
        # sshd writes that line after the client has gone: wait for it, bounded.
        closed = "Connection closed by authenticating user rrniii"
        retry(lambda: closed in bad.log, timeout=10, interval=0.1, what="sshd's log line")
    finally:
        good.stop()
        bad.stop()


def test_the_guest_routes_lead_to_the_peers_ports() -> None:
    peers = Peers()
    peers.instruments["100.117.101.84"] = _fake("100.117.101.84", 4001)
    peers.gws = [_fake("xfer-vm-03.jasmin.ac.uk", 4003), _fake("xfer-vm-01.jasmin.ac.uk", 4004)]
    script = guest_redirect_script(peers, "10.0.2.2")
    assert "-d 100.117.101.84/32 -p tcp --dport 22 -j DNAT --to-destination 10.0.2.2:4001" in script
    assert "echo '192.0.2.1 xfer-vm-03.jasmin.ac.uk' >> /run/aurora-peers.hosts" in script
    assert "-d 192.0.2.2/32 -p tcp --dport 22 -j DNAT --to-destination 10.0.2.2:4004" in script
    assert peers.known_hosts().splitlines()[0] == "100.117.101.84 ssh-ed25519 AAAA"


def _fake(name: str, port: int):
    from tests.peers import Peer

    return Peer(name, "aurora", port, "ssh-ed25519 AAAA", {}, Path("/nonexistent"), None)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _tools() -> None:
    from tests.sshd import missing_tools

    missing = missing_tools()
    if missing:
        pytest.fail(f"missing {missing}; run `make setup`")
