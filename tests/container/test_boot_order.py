"""The boot's order as the image's own systemd reads it (drop-ins included): what
issue 14's goal 3 cut from the path to ssh, and what must never move with it. The
firewall is loaded before any interface is configured and before sshd starts; sshd
starts once (no `sshd -t` before it) after its first-boot host keys; the netfilter
modules ufw needs are loaded by its own start, not in sysinit.target, each one a module
of the image's own kernel (a name it lacks would fail the firewall at every boot);
PID 1 runs only the generators this host needs."""

from __future__ import annotations

from pathlib import Path

from builder.image.root import Container
from tests.container.conftest import unit_directives

FIREWALL_MODULES = "/usr/lib/aurora/firewall-modules"
GENERATORS = "usr/lib/systemd/system-generators"
MASKED_GENERATORS = "etc/systemd/system-generators"
# What the boot needs: fstab (/var, /home, /root, /data, /project), getty (the serial
# console's login, for when sshd is what broke), debug (systemd.mask=, .wants= and
# .debug_shell on the kernel command line, an operator's way in).
KEPT_GENERATORS = {"systemd-fstab-generator", "systemd-getty-generator", "systemd-debug-generator"}


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
    # ufw's tables, saved at build, restored at boot (tests/container/test_firewall.py)
    assert ufw["ExecStart"] == ["/usr/lib/aurora/aurora-firewall"], ufw
    assert ufw["ExecStop"] == ["/usr/lib/ufw/ufw-init stop"], ufw
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
    assert ssh["StartupCPUWeight"] == ["1000"], ssh  # its share while the host boots
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


def test_pid1_runs_only_the_generators_this_host_needs(root: Path, container: Container) -> None:
    """Every other generator is masked (each is an exec under TCG before any unit
    starts); one a package update adds fails this test until someone decides."""
    shipped = {path.name for path in (root / GENERATORS).iterdir()}
    masked = {
        path.name
        for path in (root / MASKED_GENERATORS).iterdir()
        if path.is_symlink() and str(path.readlink()) == "/dev/null"
    }
    assert shipped >= KEPT_GENERATORS, shipped
    assert masked == shipped - KEPT_GENERATORS, (masked, shipped)
    # the sysv generator has nothing to do: every init script has a native unit
    scripts = [p.name for p in (root / "etc/init.d").iterdir()]
    units = container.succeed(["systemctl", "list-unit-files", "--no-legend", "--type=service"])
    native = {line.split()[0].removesuffix(".service") for line in units.splitlines() if line}
    assert set(scripts) <= native, set(scripts) - native
