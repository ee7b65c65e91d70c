"""Smoke suite: what only a booted image can show (what the image's files show
without a kernel is in tests/container)."""

from __future__ import annotations

import base64
import os
import re
import socket
import urllib.request

import pytest
from testinfra.host import Host

from builder.host import health
from builder.render.engine import sync_unit
from builder.spec.model import HostSpec
from builder.vm.session import KeptVm


@pytest.fixture(scope="module")
def dashboard(booted: KeptVm, spec: HostSpec) -> KeptVm:
    booted.wait_for_unit("aurora-dashboard.service", timeout=600)
    booted.wait_for_open_port(spec.dashboard.port, timeout=600)
    return booted


def test_no_failed_units(booted: KeptVm) -> None:
    """No service fails. A pipeline unit may (builder.host.health): on these empty volumes
    the sample HATPRO append fails as production's jobs do on empty inputs."""
    state = booted.execute("systemctl is-system-running")[1].strip()
    classes, failing = health.observe(booted.remote())  # after: a failed unit stays failed
    assert classes, f"{health.CLASSES_FILE} is missing from the image"
    against = {u: how for u, how in failing.items() if classes.get(u) != health.PIPELINE}
    assert against == {}, f"failed units:\n{against}"
    assert state == "running" or (state == "degraded" and failing), (state, failing)


def test_panel_listens_on_loopback_only(dashboard: KeptVm, spec: HostSpec) -> None:
    port = spec.dashboard.port
    listening = dashboard.succeed(f"ss -Htln 'sport = :{port}'").split("\n")
    local = [line.split()[3] for line in listening if line.strip()]
    assert local, f"nothing listens on {port}"
    assert all(addr == f"127.0.0.1:{port}" for addr in local), local


def _get(machine: KeptVm, path: str, host: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{machine.forwarded_port('http')}{path}"
    request = urllib.request.Request(url, headers={"Host": host})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, response.read().decode(errors="replace")


def test_nginx_serves_the_panel_page(dashboard: KeptVm, spec: HostSpec) -> None:
    status, body = _get(dashboard, "/", spec.hostname)
    assert status == 200
    assert "<title>Aurora cloud dashboard</title>" in body
    assert "bokeh" in body.lower()


def test_nginx_upgrades_the_panel_websocket(dashboard: KeptVm, spec: HostSpec) -> None:
    _, body = _get(dashboard, "/app", spec.hostname)
    token = re.search(r'"token":\s*"([^"]+)"', body)
    assert token, "no session token in the Panel page"
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /app/ws HTTP/1.1\r\n"
        f"Host: {spec.hostname}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: bokeh, {token.group(1)}\r\n"
        f"Origin: http://{spec.hostname}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", dashboard.forwarded_port("http")), 60) as sock:
        sock.sendall(request.encode())
        reply = sock.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 101"), reply


def test_sync_timers_enabled_with_contract_schedule(booted: KeptVm, spec: HostSpec) -> None:
    for stream in spec.source_sync.streams:
        timer = f"{sync_unit(stream)}.timer"
        assert booted.succeed(f"systemctl is-enabled {timer}").strip() == "enabled"
        assert booted.succeed(f"systemctl is-active {timer}").strip() == "active"
        shown = booted.succeed(
            f"systemctl show {timer} -p TimersMonotonic -p RandomizedDelayUSec -p Persistent"
        )
        assert "OnBootUSec=2min" in shown.replace(" ", "").replace("{", "")
        assert "OnUnitActiveUSec=2min" in shown.replace(" ", "")
        assert "RandomizedDelayUSec=30s" in shown
        assert "Persistent=yes" in shown


def test_storage_layout_on_the_volumes(booted: KeptVm, host: Host, spec: HostSpec) -> None:
    s = spec.storage
    dirs = [f"{s.raw_root}/{d}" for d in s.raw_dirs] + [
        f"{s.product_root}/{d}" for d in s.product_dirs
    ]
    for path in dirs:
        f = host.file(path)
        assert f.is_directory, path
        assert (f.user, f.group, f.mode) == ("aurora", "aurora", int(s.mode, 8)), path
    assert host.mount_point("/data").filesystem == "ext4"
    assert host.mount_point("/project").filesystem == "ext4"


def test_root_file_system_is_read_only(booted: KeptVm) -> None:
    out = booted.fail("touch /usr/aurora-write-test 2>&1")
    assert "Read-only file system" in out
    booted.succeed("touch /var/tmp/aurora-write-test")


def test_ssh_host_keys_made_at_first_boot(booted: KeptVm) -> None:
    """Made on /var by the first boot (tests/container: the image carries none)."""
    booted.succeed("test -s /var/lib/aurora/ssh/etc/ssh/ssh_host_ed25519_key")
    assert booted.succeed("ls /etc/ssh/ | grep -c ssh_host_ || true").strip() == "0"
