"""aurora-ssh-hostkeys.service as the image carries it, its commands run as systemd
would run them at first boot: exactly the two host keys sshd_config names (Ed25519
and ECDSA; no RSA key, whose generation costs seconds of TCG right before sshd),
private keys root's alone, each fingerprint printed for the console (what
builder.host.probe pins a rebuilt server's keys against), and sshd takes them."""

from __future__ import annotations

import re

from builder.host.probe import console_fingerprints
from builder.image.root import Container
from tests.container.conftest import unit_directives

UNIT = "aurora-ssh-hostkeys.service"
KEYS = "/var/lib/aurora/ssh/etc/ssh"


def _as_systemd_runs(command: str) -> str:
    """An ExecStart= line as a shell word list: `$$` is systemd's escape for `$`."""
    return command.replace("$$", "$")


def test_first_boot_makes_the_two_keys_sshd_names(container: Container) -> None:
    unit = unit_directives(container, UNIT)
    made = [f"/var/lib/{d}" for d in unit.get("StateDirectory", [])]
    steps = [f"mkdir -p {' '.join(made)}"] if made else []
    steps += [_as_systemd_runs(c) for c in unit["ExecStart"]]
    # One container run: what the unit writes under /var is read back in the same command.
    script = " && ".join(steps)
    done = container.run(
        f"{script} && echo KEYS && stat -c '%n %a %U' {KEYS}/* "
        "&& mkdir -p /run/sshd && /usr/sbin/sshd -t && /usr/sbin/sshd -T | grep '^hostkey '"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed, listing = done.stdout.split("KEYS\n")
    files = {}
    for line in listing.splitlines():
        if line.startswith(KEYS):
            name, mode, owner = line.rsplit(" ", 2)
            files[name] = (mode, owner)
    assert sorted(files) == [
        f"{KEYS}/ssh_host_ecdsa_key",
        f"{KEYS}/ssh_host_ecdsa_key.pub",
        f"{KEYS}/ssh_host_ed25519_key",
        f"{KEYS}/ssh_host_ed25519_key.pub",
    ], files
    assert files[f"{KEYS}/ssh_host_ed25519_key"] == ("600", "root")
    assert files[f"{KEYS}/ssh_host_ecdsa_key"] == ("600", "root")
    hostkeys = re.findall(r"^hostkey (\S+)$", listing, re.M)
    assert sorted(hostkeys) == [f"{KEYS}/ssh_host_ecdsa_key", f"{KEYS}/ssh_host_ed25519_key"]
    assert len(console_fingerprints(printed)) == 2, printed
    assert "(ED25519)" in printed and "(ECDSA)" in printed, printed
