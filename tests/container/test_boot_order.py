"""The boot's order as the image's own systemd reads it (drop-ins included): what
issue 14's goal 3 cut from the path to ssh, and what must never move with it. The
firewall is loaded before any interface is configured and before sshd starts; sshd
starts once (no `sshd -t` before it) after its first-boot host keys; the netfilter
modules ufw needs are loaded ahead of it by systemd-modules-load, each one a module
of the image's own kernel (a name it lacks would fail that unit at every boot)."""

from __future__ import annotations

from pathlib import Path

from builder.image.root import Container
from tests.container.conftest import unit_directives

FIREWALL_MODULES = "/etc/modules-load.d/aurora-firewall.conf"


def _words(unit: dict[str, list[str]], key: str) -> set[str]:
    return {word for value in unit.get(key, []) for word in value.split()}


def _effective(values: list[str]) -> list[str]:
    """A list setting's values after its last reset (an empty assignment)."""
    cut = max((i for i, v in enumerate(values) if not v.strip()), default=-1)
    return values[cut + 1 :]


def test_the_firewall_is_up_before_the_network_and_sshd(container: Container) -> None:
    ufw = unit_directives(container, "ufw.service")
    assert ufw["DefaultDependencies"] == ["no"], ufw
    assert "network-pre.target" in _words(ufw, "Before") & _words(ufw, "Wants"), ufw
    assert "systemd-modules-load.service" in _words(ufw, "After"), ufw
    # networkd (the package's unit) configures no interface before network-pre.target,
    # and sshd starts after networkd (network.target).
    networkd = unit_directives(container, "systemd-networkd.service")
    assert "network-pre.target" in _words(networkd, "After"), networkd
    assert "network.target" in _words(networkd, "Before"), networkd
    ssh = unit_directives(container, "ssh.service")
    assert "network.target" in _words(ssh, "After"), ssh
    shown = container.run(["systemctl", "is-enabled", "ufw.service", "systemd-networkd.service"])
    assert shown.stdout.split() == ["enabled", "enabled"], shown.stdout + shown.stderr


def test_sshd_starts_once_after_its_host_keys(container: Container) -> None:
    ssh = unit_directives(container, "ssh.service")
    assert "aurora-ssh-hostkeys.service" in _words(ssh, "After") & _words(ssh, "Wants"), ssh
    assert ssh.get("ExecStartPre"), ssh  # the package's `sshd -t` is there to be reset
    assert _effective(ssh["ExecStartPre"]) == [], ssh
    assert _effective(ssh["ExecStart"]) == ["/usr/sbin/sshd -D $SSHD_OPTS"], ssh
    assert "/usr/sbin/sshd -t" in ssh["ExecReload"], ssh
    assert container.run(["systemctl", "is-enabled", "ssh.service"]).stdout.split() == ["enabled"]


def test_ufw_modules_are_the_image_kernels_own(root: Path, container: Container) -> None:
    names = [
        line.strip()
        for line in (root / FIREWALL_MODULES.lstrip("/")).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {"nf_tables", "nft_compat", "xt_conntrack", "xt_LOG"} <= set(names), names
    (kernel,) = [p.name for p in (root / "usr/lib/modules").iterdir()]
    done = container.run(["modinfo", "-k", kernel, "-F", "name", *names])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == names, done.stdout
    # The check can fail: a name the kernel lacks is refused.
    assert container.run(["modinfo", "-k", kernel, "-F", "name", "xt_nosuch"]).returncode != 0
