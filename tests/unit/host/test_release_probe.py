"""The health probe's parts against real servers on loopback, and the secrets
check's reading of a host's answer.

The dashboard check talks to a real nginx (the host's) proxying to a real
upstream, to a dead one (502) and redirecting to HTTPS with a self-signed
certificate; the ssh check and its host-key policy run against a real sshd.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.host import health
from builder.host.probe import Endpoint, fetch_dashboard, forget_host_keys, parse_restarts, probe
from builder.host.remote import Remote
from builder.spec.credcheck import MARK, assess
from builder.spec.model import Secret
from builder.vm.process import free_port
from tests.sshd import running_sshd

HOSTNAME = "data.gamb2le.co.uk"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<title>Aurora cloud dashboard</title>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """A real HTTP server standing in for Panel behind nginx."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> Iterator[dict[str, int]]:
    """The host's nginx on loopback: good proxy, dead upstream, and an HTTPS redirect."""
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed; run `make setup`")
    root = tmp_path_factory.mktemp("nginx")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=someone-else.example", "-keyout", str(root / "key.pem"),
         "-out", str(root / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    ports = {name: free_port() for name in ("good", "dead", "redirect", "tls", "panel", "away")}
    up, down = f"http://127.0.0.1:{upstream}", f"http://127.0.0.1:{free_port()}"
    (root / "nginx.conf").write_text(f"""
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  server {{ listen 127.0.0.1:{ports["good"]}; location / {{ proxy_pass {up}; }} }}
  server {{ listen 127.0.0.1:{ports["dead"]}; location / {{ proxy_pass {down}; }} }}
  server {{ listen 127.0.0.1:{ports["redirect"]}; return 301 https://$host$request_uri; }}
  server {{ listen 127.0.0.1:{ports["panel"]}; location = / {{ return 302 /app; }}
           location /app {{ proxy_pass {up}; }} }}
  server {{ listen 127.0.0.1:{ports["away"]}; return 302 https://elsewhere.example/; }}
  server {{ listen 127.0.0.1:{ports["tls"]} ssl; ssl_certificate {root}/cert.pem;
           ssl_certificate_key {root}/key.pem; return 200 "tls"; }}
}}
""")  # fmt: skip
    proc = subprocess.Popen(
        ["nginx", "-e", str(root / "error.log"), "-p", str(root), "-c", str(root / "nginx.conf"),
         "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not fetch_dashboard(Endpoint("127.0.0.1", HOSTNAME, ports["good"]))[0]:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "nginx did not come up"
        time.sleep(0.1)
    yield ports
    proc.terminate()
    proc.wait(10)
    if proc.stderr:
        proc.stderr.close()


def test_dashboard_answering_through_nginx_passes(nginx: dict[str, int]) -> None:
    ok, detail = fetch_dashboard(Endpoint("127.0.0.1", HOSTNAME, nginx["good"]))
    assert ok and "HTTP 200 from nginx" in detail


def test_redirects_on_the_same_host_are_followed_like_a_browser(nginx: dict[str, int]) -> None:
    ok, detail = fetch_dashboard(Endpoint("127.0.0.1", HOSTNAME, nginx["panel"]))
    assert ok and detail.endswith(f"{nginx['panel']}/app: HTTP 200 from nginx")
    ok, detail = fetch_dashboard(Endpoint("127.0.0.1", HOSTNAME, nginx["away"]))
    assert not ok and "HTTP 302 from nginx" in detail


def test_dashboard_down_behind_nginx_fails_with_the_status(nginx: dict[str, int]) -> None:
    ok, detail = fetch_dashboard(Endpoint("127.0.0.1", HOSTNAME, nginx["dead"]))
    assert not ok and "HTTP 502 from nginx" in detail and "dashboard behind it is not up" in detail


def test_an_answer_not_from_nginx_fails(upstream: int) -> None:
    ok, detail = fetch_dashboard(Endpoint("127.0.0.1", HOSTNAME, upstream))
    assert not ok and "not nginx" in detail


def test_https_redirect_checks_the_certificate_for_the_hostname(nginx: dict[str, int]) -> None:
    endpoint = Endpoint("127.0.0.1", HOSTNAME, nginx["redirect"], nginx["tls"])
    ok, detail = fetch_dashboard(endpoint)
    assert not ok and f"certificate not valid for {HOSTNAME}" in detail


def test_nothing_listening_fails_with_the_address() -> None:
    port = free_port()
    ok, detail = fetch_dashboard(Endpoint("127.0.0.1", HOSTNAME, port))
    assert not ok and f"http://127.0.0.1:{port}/" in detail


# -- ssh and host keys ----------------------------------------------------------


def test_probe_pins_the_host_key_after_a_rebuild_and_refuses_a_changed_one(
    tmp_path: Path,
) -> None:
    known_hosts = tmp_path / "state" / "known_hosts"
    with running_sshd(tmp_path / "sshd", count=2) as (server, other):
        remote = Remote(
            host=server.host, user=server.user, port=server.port,
            identity=server.client_key, known_hosts=known_hosts,
            host_key_checking="accept-new",
        )  # fmt: skip
        endpoint = Endpoint("127.0.0.1", HOSTNAME, free_port())
        forget_host_keys(known_hosts)  # what release.py does right before its rebuild
        report = probe(remote, endpoint, None, timeout=20)
        assert report.checks[0].name == "ssh" and report.checks[0].ok, report.summary()
        pinned = server.known_hosts.read_text().split()[1:]
        assert known_hosts.read_text().split()[1:] == pinned
        assert oct(known_hosts.stat().st_mode & 0o777) == "0o600"

        # The same address and port now shows another key, with no rebuild by the tool.
        stranger = other.known_hosts.read_text().split()[1:]
        known_hosts.write_text(f"[{server.host}]:{server.port} {' '.join(stranger)}\n")
        report = probe(remote, endpoint, None, timeout=20)
    assert not report.ok and report.checks[0].name == "ssh"
    assert "changed without a rebuild by this tool" in report.checks[0].detail


def test_probe_without_ssh_fails_at_the_deadline_saying_so(tmp_path: Path) -> None:
    remote = Remote(host="127.0.0.1", port=free_port(), known_hosts=tmp_path / "kh",
                    host_key_checking="accept-new", connect_timeout=2)  # fmt: skip
    start = time.monotonic()
    report = probe(remote, Endpoint("127.0.0.1", HOSTNAME, free_port()), None, timeout=3)
    assert time.monotonic() - start < 30
    assert [c.name for c in report.checks] == ["ssh"]
    assert "no ssh within the probe timeout" in report.summary()


def test_restart_loops_are_read_from_systemctl_show() -> None:
    output = (
        "NRestarts=0\nId=nginx.service\n\n"
        "Id=aurora-dashboard.service\nNRestarts=7\n\n"
        "NRestarts=2\nId=ssh.service\n"
    )
    assert parse_restarts(output) == ["aurora-dashboard.service (7 restarts)"]
    assert parse_restarts(output, limit=2) == [
        "aurora-dashboard.service (7 restarts)",
        "ssh.service (2 restarts)",
    ]


# -- secrets check ----------------------------------------------------------------

SECRETS = [
    Secret(name="ssh.authorized_keys.root", purpose="root's keys"),
    Secret(name="msmtp.relay", purpose="mail"),
    Secret(name="tailscale.authkey", purpose="tailnet"),
    Secret(name="cl61.ssh_key", purpose="CL61"),
]


def answer(store_mode: str = "700 root") -> str:
    return (
        f"{MARK}system\nmsmtp.relay 112\n"
        f"{MARK}dir /run/credstore\n"
        f"{MARK}dir /etc/credstore\nssh.authorized_keys.root 96\ntailscale.authkey 0\n"
        f"{MARK}dir /etc/credstore.encrypted\n"
        f"{MARK}store\n{store_mode}\n"
    )


def test_secrets_check_reports_present_empty_and_missing_without_values() -> None:
    report = assess("root@aurora", SECRETS, answer())
    states = {c.name: (c.state, c.where) for c in report.credentials}
    assert states == {
        "ssh.authorized_keys.root": ("present", ("/etc/credstore",)),
        "msmtp.relay": ("present", ("system credential",)),
        "tailscale.authkey": ("empty", ("/etc/credstore",)),
        "cl61.ssh_key": ("missing", ()),
    }
    assert not report.ok
    assert report.missing == ["tailscale.authkey", "cl61.ssh_key"]
    assert "2 of 4 missing or empty: tailscale.authkey, cl61.ssh_key" in report.summary()
    assert "/etc/credstore/<name>" in report.summary()


def test_secrets_check_flags_a_credential_store_others_can_read() -> None:
    present = [s for s in SECRETS if s.name in ("ssh.authorized_keys.root", "msmtp.relay")]
    assert assess("h", present, answer()).ok
    loose = assess("h", present, answer("755 root"))
    assert not loose.ok and "not root-only: chmod 700" in loose.summary()
    assert loose.to_json()["credstore"] == {"path": "/etc/credstore", "mode": "755 root",
                                            "private": False}  # fmt: skip


# -- failed units: services judge the image, pipeline units the instruments ---------

CLASSES = {
    "service": ["aurora-dashboard.service", "nginx.service", "ssh.service"],
    "pipeline": ["aurora-hatpro-append.service", "aurora-cl61-source-sync.service"],
}
HATPRO, SYNC = "aurora-hatpro-append.service", "aurora-cl61-source-sync.service"
HATPRO_FAILED = f"Id={HATPRO}\nResult=exit-code\nExecMainStatus=1\n"
WAY = "exit-code (status 1)"


class RecordedHost:
    """A host's recorded answers to the probe's systemctl questions (no systemd runs
    on the build host); the VM suite asks a booted image the same questions."""

    name = "root@recorded"

    def __init__(self, failing: str, inactive: tuple[str, ...] = ()) -> None:
        self.failing, self.inactive = failing, inactive

    def execute(self, command: str, *, timeout: float = 60) -> tuple[int, str]:
        if command == "true":
            return 0, ""
        if "is-system-running" in command:
            return 0, "degraded\n" if self.failing else "running\n"
        if command.startswith(health.SERVICES.split("{")[0]):
            units = command.split(" -- ", 1)[1].split()
            return 0, "\n\n".join(
                f"Id={u}\nType={'oneshot' if u == 'ssh.service' else 'notify'}\n"
                f"ActiveState={'failed' if u in self.inactive else 'active'}\nResult=success"
                for u in units
            )
        if health.CLASSES_FILE in command:
            return 0, f"{json.dumps(CLASSES)}\n{health.MARK}\n{self.failing}"
        if command.startswith("systemctl show -p Id -p ExecMainStartTimestampMonotonic -- "):
            return 0, (
                f"Id={HATPRO}\nExecMainStartTimestampMonotonic=91000000\n\n"
                f"ExecMainStartTimestampMonotonic=0\nId={SYNC}\n"
            )
        raise AssertionError(f"unexpected command {command!r}")

    def run(self, command: str, *, timeout: float = 60, check: bool = True) -> str:
        return self.execute(command, timeout=timeout)[1]


def test_failure_ways_are_read_from_systemctl_show() -> None:
    output = (
        HATPRO_FAILED + "\nId=nginx.service\nResult=signal\nExecMainStatus=9\n\n"
        "Id=x.mount\nResult=exit-code\n"
    )
    assert health.parse_failing(output) == {
        HATPRO: WAY,
        "nginx.service": "signal (status 9)",
        "x.mount": "exit-code",
    }
    assert health.parse_failing("") == {}


def test_only_evidence_counts_a_pipeline_failure_against_the_image() -> None:
    classes = health.parse_classes(json.dumps(CLASSES))
    same = health.judge({HATPRO: WAY}, classes, health.Before({HATPRO: WAY}))
    assert same.ok and same.tolerated_units == {HATPRO}
    assert "failed the same way before the rebuild" in same.tolerated[0]
    other = health.judge({HATPRO: WAY}, classes, health.Before({HATPRO: "timeout"}))
    assert not other.ok and "before the rebuild: timeout" in other.against[0]
    worked = health.judge({SYNC: WAY}, classes, health.Before({HATPRO: WAY}))
    assert not worked.ok and "ran without failing before the rebuild" in worked.against[0]
    unrun = health.judge({SYNC: WAY}, classes, health.Before({}, frozenset({SYNC})))
    assert unrun.ok and "had not run before the rebuild" in unrun.tolerated[0]
    unknown_before = health.judge({HATPRO: WAY}, classes, None)
    assert unknown_before.ok and "nothing recorded" in unknown_before.tolerated[0]
    service = health.judge({"nginx.service": WAY}, classes, health.Before({"nginx.service": WAY}))
    assert not service.ok and "a service" in service.against[0]
    odd = health.judge({"odd.service": WAY}, classes, None)
    assert not odd.ok and "not classified" in odd.against[0]
    assert health.parse_classes("not json") == {}


def test_probe_passes_with_the_old_pipeline_failure_reported(nginx: dict[str, int]) -> None:
    endpoint = Endpoint("127.0.0.1", HOSTNAME, nginx["good"])
    before = health.Before({HATPRO: WAY})
    report = probe(RecordedHost(HATPRO_FAILED), endpoint, None, timeout=20, before=before)  # type: ignore[arg-type]
    assert report.ok, report.summary()
    failed = next(c for c in report.checks if c.name == "failed-units")
    assert f"excused: {HATPRO} {WAY} (failed the same way before the rebuild)" in failed.detail

    fresh = probe(RecordedHost(HATPRO_FAILED), endpoint, None, timeout=20, before=health.Before())  # type: ignore[arg-type]
    assert not fresh.ok and fresh.failure is not None and fresh.failure.name == "failed-units"
    assert f"{HATPRO} {WAY} (ran without failing before the rebuild)" in fresh.summary()


def test_probe_fails_when_a_service_is_not_active(nginx: dict[str, int]) -> None:
    endpoint = Endpoint("127.0.0.1", HOSTNAME, nginx["good"])
    host = RecordedHost("", inactive=("nginx.service",))
    report = probe(host, endpoint, None, timeout=20, before=health.Before())  # type: ignore[arg-type]
    assert not report.ok
    assert (
        report.summary()
        == f"probe of {host.name} failed: services: not healthy: nginx.service failed"
    )


def test_a_oneshot_service_is_healthy_after_a_successful_run() -> None:
    shown = (
        "Id=aurora-health.service\nType=oneshot\nActiveState=inactive\nResult=success\n\n"
        "Id=aurora-credentials.service\nType=oneshot\nActiveState=inactive\nResult=exit-code\n\n"
        "Id=nginx.service\nType=forking\nActiveState=inactive\nResult=success\n"
    )
    units = ["aurora-credentials.service", "aurora-health.service", "nginx.service", "x.service"]
    assert health.unhealthy(units, shown) == [
        "aurora-credentials.service inactive",
        "nginx.service inactive",
        "x.service unknown",
    ]


def test_a_timer_run_oneshot_is_healthy_while_it_runs() -> None:
    """CI caught a probe landing in aurora-health's 5-minute run ("activating")."""
    shown = (
        "Id=aurora-health.service\nType=oneshot\nActiveState=activating\nResult=success\n"
        "TriggeredBy=aurora-health.timer\n\n"
        "Id=aurora-credentials.service\nType=oneshot\nActiveState=activating\nResult=success\n"
        "TriggeredBy=\n\n"
        "Id=nginx.service\nType=notify\nActiveState=activating\nResult=success\n"
    )
    units = ["aurora-credentials.service", "aurora-health.service", "nginx.service"]
    assert health.unhealthy(units, shown) == [
        "aurora-credentials.service activating",
        "nginx.service activating",
    ]


def test_a_service_waiting_to_restart_is_left_to_the_restart_loop_rule() -> None:
    """CI run 14: a probe landing between two of a broken Panel's restarts called it
    'activating' in the services check, where another landing saw it 'active'; its
    restart loop is the dashboard step's to judge, by counting restarts."""
    shown = (
        "Id=aurora-dashboard.service\nType=simple\nActiveState=activating\n"
        "SubState=auto-restart\nResult=exit-code\n\n"
        "Id=nginx.service\nType=notify\nActiveState=activating\nSubState=start\n"
        "Result=success\n"
    )
    units = ["aurora-dashboard.service", "nginx.service"]
    assert health.unhealthy(units, shown) == ["nginx.service activating"]


def test_the_release_records_what_fails_before_it_rebuilds(tmp_path: Path) -> None:
    path = health.record_path(tmp_path, "jasmin", "a/b")
    assert path.parent == tmp_path / "failing-before-rebuild" and "/" not in path.name
    assert health.load_record(path) is None
    line = health.record_before(RecordedHost(HATPRO_FAILED), path)  # type: ignore[arg-type]
    assert line == f"failing before the rebuild: {HATPRO} {WAY} (1 not run yet)"
    assert health.load_record(path) == health.Before({HATPRO: WAY}, frozenset({SYNC}))
    gone = Remote(host="127.0.0.1", port=free_port(), known_hosts=tmp_path / "kh",
                  host_key_checking="accept-new", connect_timeout=2)  # fmt: skip
    line = health.record_before(gone, path)
    assert line.startswith("not recorded (") and "only reported" in line
    assert health.load_record(path) is None
