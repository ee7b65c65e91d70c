"""The on-host health timer's program (aurora-health): run here against a fake systemctl
and a real HTTP listener playing nginx, and held to the release probe's judgement
(builder.host.health.judge) on the same inputs, since the host cannot import the builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from builder.host import health
from builder.image.inputs import REPO
from builder.render.engine import UNIT_CLASSES_FILE, render
from builder.spec.model import load_spec

PROGRAM = REPO / "mkosi.extra" / "usr" / "lib" / "aurora" / "aurora-health"
SYNC = "aurora-cl61-source-sync.service"


def fake_systemctl(bin_dir: Path, failed: dict[str, tuple[str, str]]) -> None:
    """`systemctl list-units --failed` and `systemctl show -p ...` for these units."""
    listing = "".join(f"{u} loaded failed failed x\n" for u in failed)
    blocks = "\n".join(f"Id={u}\nResult={r}\nExecMainStatus={s}\n" for u, (r, s) in failed.items())
    script = bin_dir / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = list-units ]; then printf %b {json.dumps(listing)}; exit 0; fi\n'
        f'if [ "$1" = show ]; then printf %b {json.dumps(blocks)}; exit 0; fi\n'
        "exit 1\n"
    )
    script.chmod(0o755)


@pytest.fixture
def nginx() -> Iterator[tuple[int, list[int]]]:
    """An HTTP listener answering as nginx with the status the test sets."""
    status = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/":  # Panel's / -> /app, absolute, as nginx passes it on
                self.send_response(302)
                self.send_header("Location", f"http://{self.headers['Host']}/app")
            else:
                self.send_response(status[0])
            self.send_header("Server", "nginx/1.26.3")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

        def version_string(self) -> str:
            return "nginx/1.26.3"

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], status
    httpd.shutdown()
    httpd.server_close()


def run(tmp_path: Path, port: int, failed: dict[str, tuple[str, str]],
        before: dict[str, str] | None) -> dict:  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_systemctl(bin_dir, failed)
    classes = tmp_path / "unit-classes.json"
    classes.write_bytes(render(load_spec(REPO / "hosts" / "aurora.yml"))[UNIT_CLASSES_FILE].content)
    (tmp_path / "hostname").write_text("data.gamb2le.co.uk\n")
    if before is not None:
        (tmp_path / "before.json").write_text(json.dumps(before))
    out = tmp_path / "run" / "health.json"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AURORA_HEALTH_CLASSES": str(classes),
        "AURORA_HEALTH_BEFORE": str(tmp_path / "before.json"),
        "AURORA_HEALTH_OUT": str(out),
        "AURORA_HEALTH_HOSTNAME_FILE": str(tmp_path / "hostname"),
        "AURORA_HEALTH_HTTP_PORT": str(port),
    }
    done = subprocess.run([sys.executable, str(PROGRAM)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr  # never a failed unit
    return json.loads(out.read_text())


def test_healthy_host_with_a_pipeline_failing_as_before(
    tmp_path: Path, nginx: tuple[int, list[int]]
) -> None:
    port, _ = nginx
    failed = {SYNC: ("exit-code", "255")}
    verdict = run(tmp_path, port, failed, before={"failing": {SYNC: "exit-code (status 255)"},
                                                  "not_run": []})  # fmt: skip
    assert verdict["healthy"] and verdict["against"] == []
    assert verdict["tolerated"] == [f"{SYNC} exit-code (status 255) (failed the same way "
                                    "before the rebuild)"]  # fmt: skip
    assert verdict["dashboard"] == {"ok": True, "detail": "/app: HTTP 200 from nginx"}


def test_a_failed_service_or_a_502_is_not_healthy(
    tmp_path: Path, nginx: tuple[int, list[int]]
) -> None:
    port, status = nginx
    empty = {"failing": {}, "not_run": []}
    verdict = run(tmp_path, port, {"aurora-dashboard.service": ("exit-code", "1")}, before=empty)
    assert not verdict["healthy"]
    assert verdict["against"] == ["aurora-dashboard.service exit-code (status 1) (a service)"]
    status[0] = 502
    verdict = run(tmp_path, port, {}, before=None)
    assert not verdict["healthy"] and verdict["dashboard"]["detail"] == "/app: HTTP 502 from nginx"


def test_the_host_judges_as_the_probe_does() -> None:
    host = SourceFileLoader("aurora_health", str(PROGRAM)).load_module()
    classes_json = render(load_spec(REPO / "hosts" / "aurora.yml"))[UNIT_CLASSES_FILE].content
    classes = json.loads(classes_json)
    failing = {
        SYNC: "exit-code (status 255)",
        "aurora-dashboard.service": "signal",
        "aurora-gws-rsync-raw.service": "exit-code (status 23)",
        "odd.service": "timeout",
    }
    befores = [
        None,
        health.Before(),
        health.Before({SYNC: "exit-code (status 255)"}),
        health.Before({SYNC: "timeout"}),
        health.Before({}, frozenset({"aurora-gws-rsync-raw.service"})),
    ]
    for before in befores:
        probe = health.judge(failing, health.parse_classes(classes_json.decode()), before)
        handed = None if before is None else json.loads(json.dumps(before.to_json()))
        host_before = host.load_before_data(handed) if handed is not None else None
        against, tolerated = host.judge(failing, classes, host_before)
        assert (tuple(against), tuple(tolerated)) == (probe.against, probe.tolerated), before


def test_the_soak_counts_the_hosts_own_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    from builder.host.probe import Check, ProbeReport
    from builder.release import soak

    passed = ProbeReport("h", (Check("dashboard", True, "ok"),))
    verdicts = iter([
        None,
        {"healthy": False, "at": "2026-11-29T10:00:00Z", "against": ["boot-time 502"]},
        {"healthy": True, "at": "2026-11-29T12:01:00Z"},
        {"healthy": False, "at": "2026-11-29T12:02:00Z",
         "against": ["aurora-dashboard.service signal (a service)"]},
    ])  # fmt: skip
    since = "2026-11-29T12:00:00Z"
    monkeypatch.setattr(soak, "host_verdict", lambda target, server: next(verdicts))
    first = soak._with_host_verdict(None, None, passed, since)  # type: ignore[arg-type]
    assert first.ok and first.checks[-1].detail == "no verdict from aurora-health.timer yet"
    stale = soak._with_host_verdict(None, None, passed, since)  # type: ignore[arg-type]
    assert stale.ok and "is from before the soak" in stale.checks[-1].detail
    assert soak._with_host_verdict(None, None, passed, since).ok  # type: ignore[arg-type]
    last = soak._with_host_verdict(None, None, passed, since)  # type: ignore[arg-type]
    assert not last.ok and last.failure is not None
    assert last.failure.detail == (
        "aurora-health at 2026-11-29T12:02:00Z: aurora-dashboard.service signal (a service)"
    )
