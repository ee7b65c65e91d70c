"""The whole host in the booted image: timers, nginx in full, firewall, mail.
Shares the session's VM with the smoke suite. What needs no booted kernel (unit
files, `systemd-analyze verify`, calendars, configs taken by their programs, mail
through msmtp) is checked in the image's own tree by tests/container, in seconds."""

from __future__ import annotations

import re
import socket
import ssl
import urllib.error
import urllib.request

import pytest

from builder.render.engine import SYSTEM_UNITS, render
from builder.render.names import FIREWALL_SAVED
from builder.spec.model import HostSpec
from builder.vm.session import KeptVm
from tests.firewall_tables import tables, without


def _rendered_units(spec: HostSpec) -> list[str]:
    prefix = SYSTEM_UNITS + "/"
    return sorted(
        p.removeprefix(prefix)
        for p, e in render(spec).items()
        if p.startswith(prefix) and e.link is None and not p.endswith(".conf")
    )


def test_every_timer_loaded_enabled_and_scheduled(booted: KeptVm, spec: HostSpec) -> None:
    timers = [u for u in _rendered_units(spec) if u.endswith(".timer")]
    assert len(timers) == 35
    out = booted.succeed(
        "systemctl show -p Id -p UnitFileState -p ActiveState -p TimersCalendar "
        "-p TimersMonotonic " + " ".join(timers)
    )
    blocks = [b for b in out.strip().split("\n\n") if b.strip()]
    assert len(blocks) == len(timers)
    for block in blocks:
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        assert props["UnitFileState"] == "enabled", block
        assert props["ActiveState"] == "active", block
        assert props.get("TimersCalendar") or props.get("TimersMonotonic"), block
    listed = booted.succeed("systemctl list-timers --all --no-legend --plain 'aurora-*'")
    for line in listed.splitlines():
        unit, service = line.split()[-2:]
        if unit.endswith(".timer") and "source-sync" not in unit and line.startswith("-"):
            # While the service a timer started still runs, systemd shows no next elapse
            # (it computes one when the service stops): wait for that, then ask again.
            booted.wait_until_succeeds(
                f"systemctl show -p ActiveState --value {service}"
                " | grep -qvx -e active -e activating -e deactivating",
                timeout=600,
            )
            again = booted.succeed(f"systemctl list-timers --all --no-legend --plain {unit}")
            assert not again.startswith("-"), f"no next elapse for {unit} after its run: {again}"


def _url(machine: KeptVm, name: str, path: str) -> str:
    scheme = "https" if name == "https" else "http"
    return f"{scheme}://127.0.0.1:{machine.forwarded_port(name)}{path}"


def test_wxcam_media_served_with_byte_ranges(booted: KeptVm, spec: HostSpec) -> None:
    root = spec.nginx.wxcam_media.root
    booted.succeed(
        f"head -c 100000 /dev/urandom > {root}/clip.mp4 && chown aurora: {root}/clip.mp4"
    )
    expected = booted.succeed(
        f"dd if={root}/clip.mp4 bs=1 skip=1000 count=500 2>/dev/null | sha256sum"
    )
    request = urllib.request.Request(
        _url(booted, "http", "/wxcam-media/clip.mp4"),
        headers={"Host": spec.hostname, "Range": "bytes=1000-1499"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        assert response.status == 206
        assert response.headers["Content-Range"] == "bytes 1000-1499/100000"
        assert response.headers["Content-Type"] == "video/mp4"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    import hashlib

    assert hashlib.sha256(body).hexdigest() == expected.split()[0]


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def test_firewall_from_outside(booted: KeptVm) -> None:
    ip = booted.succeed("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1").strip()
    for port in (8080, 5006, 9100):
        booted.succeed(f"systemd-run --unit=probe{port} python3 -m http.server {port} --bind {ip}")
    booted.wait_for_open_port(9100)
    try:
        assert _reachable(booted.forwarded_port("probe9100")), "9100 (node_exporter) must be open"
        assert not _reachable(booted.forwarded_port("probe8080")), "default deny let 8080 in"
        assert not _reachable(booted.forwarded_port("probe5006")), "5006 must be denied"
    finally:
        booted.execute("systemctl stop probe8080 probe5006 probe9100")
    status = booted.succeed("ufw status verbose")
    assert "Status: active" in status and "Default: deny (incoming)" in status
    assert re.search(r"5006/tcp\s+DENY IN", status), status


def test_the_booted_tables_are_what_ufw_loads(booted: KeptVm) -> None:
    """On the image's own kernel: the host's tables are the ones saved at build (and
    fail2ban's own chains), and the image's ufw-init in a fresh network namespace loads
    the same."""
    both = "iptables-save; echo @@; ip6tables-save"
    saved = [tables(booted.succeed(f"cat {path}")) for path in FIREWALL_SAVED]
    live = [without(tables(t), "f2b-") for t in booted.succeed(both).split("@@\n")]
    assert live == saved
    fresh = booted.succeed(f"unshare --net sh -c '/usr/lib/ufw/ufw-init start quiet; {both}'")
    assert [tables(t) for t in fresh.split("@@\n")] == saved
    assert booted.succeed("test -e /run/aurora-firewall.restored && echo restored").strip()


def test_fail2ban_guards_ssh(booted: KeptVm) -> None:
    booted.wait_for_unit("fail2ban.service")
    assert "sshd" in booted.succeed("fail2ban-client status")


def test_secrets_installed_from_credentials(booted: KeptVm, spec: HostSpec) -> None:
    rc = booted.succeed(f"stat -c '%a %U' {spec.user.home}/.msmtprc").split()
    assert rc == ["600", "aurora"]
    assert "host 10.0.2.2" in booted.succeed(f"cat {spec.user.home}/.msmtprc")
    booted.fail(f"test -e {spec.user.home}/.ssh/id_rsa_jasmin_20200514")
    assert booted.succeed(
        "systemctl show -p ActiveState --value aurora-gws-rsync-raw.service"
    ).strip() in {"inactive", "active"}


def test_alert_readiness_follows_the_msmtp_config(booted: KeptVm, spec: HostSpec) -> None:
    check = (
        "cd /opt/aurora-cloud-dashboard && runuser -u aurora -- env HOME=/home/aurora "
        "venv/bin/python send_ops_alerts.py --check-transport"
    )
    assert '"ready": true' in booted.succeed(check)
    rc_file = f"{spec.user.home}/.msmtprc"
    booted.succeed(f"mv {rc_file} {rc_file}.away")
    try:
        assert '"ready": false' in booted.succeed(check)
        booted.succeed("systemctl start aurora-ops-monitor-alerts.service")
        result = booted.succeed("systemctl show -p Result --value aurora-ops-monitor-alerts")
        assert result.strip() == "success"
    finally:
        booted.succeed(f"mv {rc_file}.away {rc_file}")


def _wait_for_status(machine: KeptVm, host: str, code: int) -> None:
    """nginx reloads asynchronously: wait until its new workers answer."""
    machine.wait_until_succeeds(
        f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: {host}' http://127.0.0.1/app"
        f" | grep -qx {code}",
        timeout=60,
    )


def test_tls_once_a_certificate_exists(booted: KeptVm, spec: HostSpec) -> None:
    live = f"{spec.nginx.certificate_dir}/live/{spec.hostname}"
    booted.succeed(
        f"mkdir -p {live} && openssl req -x509 -newkey rsa:2048 -nodes -days 2 "
        f"-subj /CN={spec.hostname} -keyout {live}/privkey.pem -out {live}/fullchain.pem "
        "2>/dev/null && systemctl restart aurora-nginx-tls && systemctl reload nginx"
    )
    try:
        _wait_for_status(booted, spec.hostname, 301)
        request = urllib.request.Request(
            _url(booted, "http", "/app"), headers={"Host": spec.hostname}
        )
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(request, timeout=60)
        assert info.value.code == 301
        assert info.value.headers["Location"] == f"https://{spec.hostname}/app"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        secure = urllib.request.Request(
            _url(booted, "https", "/app"), headers={"Host": spec.hostname}
        )
        with urllib.request.urlopen(secure, timeout=120, context=context) as response:
            assert response.status == 200
            assert "Strict-Transport-Security" in response.headers
            assert "<title>Aurora cloud dashboard</title>" in response.read().decode()
    finally:
        booted.succeed(
            f"rm -rf {spec.nginx.certificate_dir}/live && systemctl restart aurora-nginx-tls "
            "&& systemctl reload nginx"
        )
    _wait_for_status(booted, spec.hostname, 200)
    plain = urllib.request.Request(_url(booted, "http", "/app"), headers={"Host": spec.hostname})
    with urllib.request.urlopen(plain, timeout=60) as response:
        assert response.status == 200


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
