"""The rendered configs taken by the real programs that read them, inside the image:
nginx (plain HTTP, then TLS once a certificate exists), sshd, the secrets the
credentials program installs and msmtp delivering through them, the service user.
Serving, logging in and the firewall need a booted host and stay in tests/vm."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from builder.image.root import Container
from builder.spec.model import HostSpec
from tests.mailbox import Mailbox

HOSTKEYS = "/var/lib/aurora/ssh/etc/ssh"
DASHBOARD = "/opt/aurora-cloud-dashboard"


def test_nginx_takes_the_rendered_config_without_a_certificate(
    container: Container, spec: HostSpec
) -> None:
    full = container.succeed("/usr/lib/aurora/aurora-nginx-tls && nginx -t 2>&1 && nginx -T")
    assert "serving plain HTTP" in full and "test is successful" in full
    assert f"server_name {spec.hostname}" in full
    assert "listen 443" not in full


def test_nginx_takes_the_tls_config_once_a_certificate_exists(
    container: Container, spec: HostSpec
) -> None:
    live = f"{spec.nginx.certificate_dir}/live/{spec.hostname}"
    # The certificate directory is on the data volume on the host: a scratch one here.
    container.succeed(
        f"mkdir -p $(readlink -m {live}) && openssl req -x509 -newkey rsa:2048 -nodes -days 2 "
        f"-subj /CN={spec.hostname} -keyout {live}/privkey.pem -out {live}/fullchain.pem "
        "2>/dev/null"
    )
    # One command: the program writes under /run, which each container run gets afresh.
    full = container.succeed("/usr/lib/aurora/aurora-nginx-tls && nginx -t 2>&1 && nginx -T")
    assert "TLS on" in full and "test is successful" in full
    assert "listen 443 ssl" in full and "Strict-Transport-Security" in full
    assert "return 301 https://$host$request_uri" in full


def test_sshd_takes_its_config_with_first_boot_host_keys(container: Container) -> None:
    """The image carries no host key; the first-boot unit's commands make them on /var,
    and sshd then accepts its config: keys only, root by key only."""
    assert container.run(f"ls {HOSTKEYS}/ssh_host_* /etc/ssh/ssh_host_*").stdout == ""
    container.succeed(f"mkdir -p {HOSTKEYS} && ssh-keygen -A -f /var/lib/aurora/ssh")
    # /run/sshd: ssh.service's RuntimeDirectory=, made afresh in each container run.
    tested = container.run("mkdir -p /run/sshd && /usr/sbin/sshd -t")
    assert tested.returncode == 0, tested.stderr
    shown = container.succeed("mkdir -p /run/sshd && /usr/sbin/sshd -T")
    effective = dict(line.split(" ", 1) for line in shown.splitlines())
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["permitrootlogin"] == "without-password"
    assert "/etc/ssh/authorized_keys.d/%u" in effective["authorizedkeysfile"]
    assert effective["hostkey"].startswith(HOSTKEYS)


def test_service_user(root: Path, container: Container, spec: HostSpec) -> None:
    entry = container.succeed(["getent", "passwd", spec.user.name]).strip().split(":")
    uid, gid, home, shell = int(entry[2]), int(entry[3]), entry[5], entry[6]
    assert (uid, gid, home, shell) == (
        spec.user.uid,
        spec.user.uid,
        spec.user.home,
        spec.user.shell,
    )
    there = os.stat(root / home.lstrip("/"))
    assert stat.S_ISDIR(there.st_mode) and there.st_uid == spec.user.uid


def _relay(port: int) -> str:
    return json.dumps(
        {"host": "127.0.0.1", "port": port, "from": "aurora@data.gamb2le.co.uk", "tls": "off"}
    )


def test_credentials_install_the_relay_and_mail_reaches_it(
    container: Container, spec: HostSpec, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    """aurora-credentials writes ~/.msmtprc from the relay credential as its unit does
    (the credentials directory systemd would give it); the image's mailx and msmtp then
    deliver to a real SMTP server (this host's loopback: the container shares its network)."""
    box, port = mailbox
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "msmtp.relay").write_text(_relay(port))
    rc = f"{spec.user.home}/.msmtprc"
    script = (
        "/usr/lib/aurora/aurora-credentials && "
        f"stat -c '%a %U' {rc} && grep -x 'host 127.0.0.1' {rc} && "
        "readlink -f $(command -v sendmail) && "
        "echo 'aurora container body' | "
        "runuser -u aurora -- mailx -s 'aurora container' ops@example.org"
    )
    before = len(box.messages)
    out = container.succeed(script, env={"CREDENTIALS_DIRECTORY": "/run/test-credentials"},
                            binds={creds: "/run/test-credentials"})  # fmt: skip
    lines = out.splitlines()
    assert f"msmtp.relay: installed {rc}" in lines and f"600 {spec.user.name}" in lines, out
    assert lines[-1].endswith("/msmtp"), out
    deadline = time.monotonic() + 30
    while len(box.messages) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(box.messages) > before, "no message reached the relay"
    message = box.messages[-1]
    assert message.rcpt_tos == ["ops@example.org"]
    assert b"aurora container body" in message.content


def test_alert_readiness_follows_the_msmtp_config(
    container: Container, spec: HostSpec, tmp_path: Path
) -> None:
    check = (
        f"cd {DASHBOARD} && runuser -u aurora -- env HOME={spec.user.home} "
        "venv/bin/python send_ops_alerts.py --check-transport"
    )
    assert '"ready": false' in container.succeed(check)  # no relay credential: no .msmtprc
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "msmtp.relay").write_text(_relay(25))
    container.succeed("/usr/lib/aurora/aurora-credentials",
                      env={"CREDENTIALS_DIRECTORY": "/run/test-credentials"},
                      binds={creds: "/run/test-credentials"})  # fmt: skip
    assert '"ready": true' in container.succeed(check)
