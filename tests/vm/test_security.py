"""Least privilege on the booted host (issue 13): what each service user can write,
that nothing root trusts is among it, the Panel's own user, and the sandbox scores
`systemd-analyze security` gives every long-running unit."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from builder.spec.model import HostSpec
from builder.vm.process import free_port
from builder.vm.session import KeptVm

# Everything but the kernel's and the per-boot trees; /tmp and /var/tmp are sticky.
SCAN = (
    "find / \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp "
    "-o -path /var/tmp \\) -prune -o ! -type l -writable -print 2>/dev/null; true"
)


def _writable_roots(machine: KeptVm, user: str) -> set[str]:
    """The topmost paths ``user`` can write (a writable path below one is implied)."""
    found = machine.succeed(f"runuser -u {user} -- sh -c {shlex.quote(SCAN)}", timeout=600)
    paths = sorted(set(found.split("\n")) - {""})
    roots: list[str] = []
    for path in paths:
        if not any(path.startswith(root.rstrip("/") + "/") for root in roots):
            roots.append(path)
    return set(roots)


def _allowed(spec: HostSpec) -> dict[str, set[str]]:
    s, home = spec.storage, spec.user.home
    aurora = {
        home,
        f"/var{home}",
        s.log_dir,
        s.state_dir,
        s.raw_root,
        s.product_root,
        spec.mirror_verify.manifest_root,
    }
    if s.state_on_volume:
        aurora.add(s.state_on_volume)
    return {spec.user.name: aurora, spec.dashboard.user: {"/var/cache/aurora-dashboard"}}


def test_each_service_user_writes_only_its_allow_list(booted: KeptVm, spec: HostSpec) -> None:
    booted.wait_for_unit("aurora-dashboard.service", timeout=600)
    for user, allowed in _allowed(spec).items():
        roots = _writable_roots(booted, user)
        assert roots <= allowed, (
            f"{user} can write beyond its allow-list: {sorted(roots - allowed)}"
        )
        assert spec.user.name != user or spec.storage.raw_root in roots, roots


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1)]


def test_nothing_root_trusts_is_writable_by_a_service_user(booted: KeptVm, spec: HostSpec) -> None:
    """The credential store, Let's Encrypt's state, root's keys and the host keys, and
    every directory above them, can be changed by root alone."""
    trusted = [
        spec.credential_store,
        spec.nginx.certificate_dir,
        "/root/.ssh",
        "/var/lib/aurora/ssh",
        "/etc/credstore",
        "/usr/lib/aurora",
    ]
    for path in trusted:
        for each in _ancestors(path):
            if booted.execute(f"test -e {each}")[0] != 0:
                continue
            for user in (spec.user.name, spec.dashboard.user):
                status, _ = booted.execute(f"runuser -u {user} -- test -w {each}")
                assert status != 0, f"{user} can write {each} (above {path})"
            owner = booted.succeed(f"stat -L -c %U {each}").strip()
            assert owner == "root", f"{each} belongs to {owner}"


def test_panel_runs_as_its_own_user_and_reads_no_key(booted: KeptVm, spec: HostSpec) -> None:
    booted.wait_for_unit("aurora-dashboard.service", timeout=600)
    pid = booted.succeed("systemctl show -p MainPID --value aurora-dashboard.service").strip()
    assert booted.succeed(f"ps -o user= -p {pid}").strip() == spec.dashboard.user
    # Inside the unit's own namespaces: /home is not even there for it.
    assert booted.execute(f"nsenter -t {pid} -m -- ls {spec.user.home}")[0] != 0
    for secret in spec.secrets:
        if secret.path:
            status, _ = booted.execute(f"runuser -u {spec.dashboard.user} -- cat {secret.path}")
            assert status != 0, f"Panel's user can read {secret.path}"


def _long_running(machine: KeptVm) -> list[str]:
    listing = machine.succeed(
        "systemctl list-units --type=service --state=running --no-legend --plain"
    )
    return sorted(line.split()[0] for line in listing.splitlines() if line.strip())


def test_systemd_analyze_security_of_every_long_running_unit(
    booted: KeptVm, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reported for every running service (the closing notes quote it); the internet-
    facing Panel must stay at or below 2.0."""
    booted.wait_for_unit("aurora-dashboard.service", timeout=600)
    units = _long_running(booted)
    table = booted.succeed("systemd-analyze security --no-pager " + " ".join(units))
    scores = {}
    for line in table.splitlines():
        match = re.match(r"^(\S+\.service)\s+(\d+\.\d)\s", line)
        if match:
            scores[match.group(1)] = float(match.group(2))
    with capsys.disabled():
        print("\nsystemd-analyze security (exposure, lower is safer):")
        for unit in units:
            print(f"  {unit:<45} {scores.get(unit, float('nan')):4.1f}")
    assert "aurora-dashboard.service" in scores, table
    assert scores["aurora-dashboard.service"] <= 2.0, table


# ----------------------------------------------------------------- the Panel page in a browser


class _WebDriver:
    """A few W3C WebDriver calls to a local chromedriver (urllib only): enough to
    load a page, run a script in it and read the browser console."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"{}").get("value")

    def start(self, args: list[str]) -> None:
        options = {"binary": shutil.which("chromium"), "args": args}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options,
                        "goog:loggingPrefs": {"browser": "ALL"}}  # fmt: skip
        value = self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{value['sessionId']}"  # type: ignore[index]

    def script(self, source: str) -> object:
        return self.call("POST", f"{self.session}/execute/sync", {"script": source, "args": []})


@pytest.fixture
def browser() -> Iterator[_WebDriver]:
    driver = shutil.which("chromedriver")
    if driver is None or shutil.which("chromium") is None:
        pytest.fail("chromium and chromium-driver are needed (make setup installs them)")
    port = free_port()
    process = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    web = _WebDriver(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                web.call("GET", "/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield web
    finally:
        if web.session:
            with contextlib.suppress(OSError):
                web.call("DELETE", web.session)
        process.terminate()
        process.wait(timeout=30)


def test_panel_page_works_under_its_content_security_policy(
    dashboard_up: KeptVm, spec: HostSpec, browser: _WebDriver
) -> None:
    """Chromium loads the page through nginx as a visitor would (the public name
    mapped to the forwarded port, since Panel accepts only its own websocket origin):
    the CSP is sent, Bokeh builds the document over the websocket, and the console
    shows no CSP violation."""
    port = dashboard_up.forwarded_port("http")
    status, headers = _head(port, spec.hostname)
    assert status == 200 and "default-src 'self'" in headers.get("content-security-policy", "")
    # server_tokens off (Debian's nginx.conf sets it): no version to look up exploits for.
    assert headers.get("server") == "nginx", headers.get("server")
    browser.start([
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--no-first-run", "--disable-extensions",
        f"--host-resolver-rules=MAP {spec.hostname}:80 127.0.0.1:{port}",
    ])  # fmt: skip
    browser.call("POST", f"{browser.session}/url", {"url": f"http://{spec.hostname}/"})
    deadline, roots = time.monotonic() + 180, 0
    while time.monotonic() < deadline and not roots:
        roots = browser.script(  # type: ignore[assignment]
            "return (window.Bokeh && Bokeh.documents.length) ?"
            " Bokeh.documents[0].roots().length : 0"
        )
        time.sleep(2)
    console = browser.call("POST", f"{browser.session}/se/log", {"type": "browser"}) or []
    messages = [str(entry.get("message", "")) for entry in console]  # type: ignore[union-attr]
    violations = [m for m in messages if "Content Security Policy" in m]
    assert not violations, violations
    assert roots, f"Bokeh built no document in the browser; console: {messages[-10:]}"


def _head(port: int, hostname: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": hostname})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}


@pytest.fixture
def dashboard_up(booted: KeptVm, spec: HostSpec) -> KeptVm:
    booted.wait_for_unit("aurora-dashboard.service", timeout=600)
    booted.wait_for_open_port(spec.dashboard.port, timeout=600)
    return booted


def test_wxcam_media_serves_only_media(dashboard_up: KeptVm, spec: HostSpec) -> None:
    root, location = spec.nginx.wxcam_media.root, spec.nginx.wxcam_media.location
    dashboard_up.succeed(
        f"mkdir -p {root} && echo jpeg > {root}/h6.jpg && echo db > {root}/h6.sqlite"
    )
    port = dashboard_up.forwarded_port("http")
    try:
        for name, expected in (("h6.jpg", 200), ("h6.sqlite", 404)):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{location}{name}", headers={"Host": spec.hostname}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == expected, (name, status)
    finally:
        dashboard_up.succeed(f"rm -f {root}/h6.jpg {root}/h6.sqlite")
