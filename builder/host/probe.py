"""Health probe after a rebuild: is the server really running the image, and well?

Checks, in order, all from the operator's side:
1. ssh answers (polled until the deadline: a rebuilt server boots from scratch);
2. boot has finished (`systemctl is-system-running --wait`);
3. the image's services are healthy (active; a timer's oneshot: its last run
   succeeded), and no failed unit counts against the
   image (builder.host.health: a service or unclassified unit failing always
   counts; a pipeline unit only if it ran without failing, or failed another
   way, before the rebuild, `before`); excused failures are reported;
4. the dashboard answers through nginx: `GET /` on the HTTP port (Host: the
   spec's hostname), following redirects on that host (Panel's / -> /app,
   nginx's http -> https with a certificate valid for that hostname), ends in
   200 from nginx;
5. the host matches the image's manifest (builder.host.audit: unit files, presets,
   packages, no failed unit but pipeline units, which check 3 has judged).

Panel restarts forever when it cannot start (Restart=always), so a broken
dashboard never shows up as a failed unit: while the probe waits for the
dashboard it fails as soon as any service has been restarted RESTART_LOOP
times, and in any case after `dashboard_grace` seconds rather than waiting
out the whole timeout.

Host keys change on every rebuild (they are made at first boot, in /var).
The probe therefore uses a known_hosts file per server that this tool owns
(see `known_hosts_for`): release.py empties it right before its own rebuild,
then `pin_host_keys` trusts only the keys whose fingerprints the server printed
on its console (Nova's console log, which only the cloud account can read), and
the probe connects with StrictHostKeyChecking=yes: a different key is refused.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from builder.errors import AuroraError
from builder.host import health
from builder.host.remote import Remote, RemoteError
from builder.image.manifest import Manifest

DASHBOARD_GRACE = 180.0
RESTART_LOOP = 3
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
HTTP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ProbeReport:
    """Every check that ran; the probe stops at the first failing one."""

    host: str
    checks: tuple[Check, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def summary(self) -> str:
        failed = self.failure
        if failed is None:
            names = ", ".join(c.name for c in self.checks)
            return f"probe of {self.host} passed in {self.seconds:.0f} s ({names})"
        return f"probe of {self.host} failed: {failed.name}: {failed.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class Endpoint:
    """Where the operator reaches the dashboard (through nginx) and as what name."""

    address: str
    hostname: str
    http_port: int = 80
    https_port: int = 443


@dataclass
class _Run:
    remote: Remote
    deadline: float
    checks: list[Check] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aurora-image"


def known_hosts_for(cloud: str, server_id: str) -> Path:
    """The tool's known_hosts for one server (by Nova id: it survives rebuilds)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cloud}-{server_id}")
    return state_dir() / "known_hosts" / safe


_FINGERPRINT = re.compile(r"\b\d+ (SHA256:[A-Za-z0-9+/]{43})\b")


class HostKeyError(AuroraError):
    """The rebuilt server's host key is not one its console printed: not trusted."""


def console_fingerprints(console: str) -> set[str]:
    """The host key fingerprints the server printed on its console at first boot
    (aurora-ssh-hostkeys.service: `ssh-keygen -lf` lines, `256 SHA256:... (ED25519)`)."""
    return set(_FINGERPRINT.findall(console))


def key_fingerprint(known_hosts_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a `host type base64` line (as `ssh-keygen -l`)."""
    blob = base64.b64decode(known_hosts_line.split()[2])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def pin_host_keys(
    known_hosts: Path, host: str, port: int, console: str, *, timeout: float = 20.0
) -> int:
    """Trust the server's host keys only if its console vouches for them: scan the
    keys sshd offers (`ssh-keyscan`), keep those whose fingerprint the console
    printed, write them as the tool's known_hosts; the probe then connects with
    StrictHostKeyChecking=yes. Returns how many keys were pinned; raises
    HostKeyError when the console names keys and none offered matches."""
    printed = console_fingerprints(console)
    scan = subprocess.run(
        ["ssh-keyscan", "-T", str(int(timeout)), "-p", str(port), host],
        capture_output=True, text=True, timeout=timeout + 10, check=False,
    )  # fmt: skip
    offered = [line for line in scan.stdout.splitlines() if line and not line.startswith("#")]
    vouched = [line for line in offered if key_fingerprint(line) in printed]
    if offered and printed and not vouched:
        raise HostKeyError(
            f"{host}:{port} offers host keys {sorted(key_fingerprint(k) for k in offered)} "
            f"but its console printed {sorted(printed)}: not trusting it; check the server "
            "(`openstack console log show`) before anything logs in"
        )
    if vouched:
        known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        known_hosts.write_text("".join(f"{line}\n" for line in vouched))
        known_hosts.chmod(0o600)
    return len(vouched)


def forget_host_keys(path: Path) -> None:
    """Called just before this tool rebuilds the server: its keys are about to change."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text("")
    path.chmod(0o600)


def probe(
    remote: Remote,
    endpoint: Endpoint,
    manifest: Manifest | None,
    *,
    timeout: float,
    dashboard_grace: float = DASHBOARD_GRACE,
    audit: Callable[..., Any] | None = None,
    before: health.Before | None = None,
) -> ProbeReport:
    """Run the checks against a freshly rebuilt host; never raises for an unhealthy host.

    `before` is what was failing, and how, before the rebuild (builder.host.health);
    None when nothing was recorded: pipeline failures are then reported only.
    """
    start = time.monotonic()
    run = _Run(remote, start + timeout)
    _ = (
        _ssh(run)
        and _booted(run)
        and _failed_units(run, before)
        and _dashboard(run, endpoint, dashboard_grace)
        and _audit(run, manifest, audit)
    )
    return ProbeReport(remote.name, tuple(run.checks), time.monotonic() - start)


def _ssh(run: _Run) -> bool:
    last = "no answer"
    while True:
        try:
            rc, _ = run.remote.execute("true", timeout=max(5.0, min(30.0, run.left())))
            if rc == 0:
                return run.add("ssh", True, f"{run.remote.name} answers")
            last = f"'true' exited {rc}"
        except RemoteError as exc:
            last = str(exc)
            if "host key verification failed" in last.lower():
                return run.add(
                    "ssh", False,
                    f"{last}; the host key changed without a rebuild by this tool: "
                    "check the server before trusting it",
                )  # fmt: skip
        if run.left() <= 0:
            return run.add("ssh", False, f"no ssh within the probe timeout; last: {last}")
        time.sleep(min(5.0, max(run.left(), 0.1)))


def _booted(run: _Run) -> bool:
    wait = max(10.0, run.left())
    command = f"timeout {wait:.0f} systemctl is-system-running --wait; true"
    try:
        state = run.remote.run(command, timeout=wait + 15).strip().splitlines()
    except RemoteError as exc:
        return run.add("boot", False, str(exc))
    found = state[-1] if state else "unknown"
    if found in ("running", "degraded"):
        return run.add("boot", True, f"system {found}")
    return run.add("boot", False, f"boot did not finish within the probe timeout ({found})")


def _failed_units(run: _Run, before: health.Before | None) -> bool:
    try:
        classes, failing = health.observe(run.remote, timeout=60)
        services = sorted(u for u, c in classes.items() if c == health.SERVICE)
        shown = run.remote.run(health.SERVICES.format(units=" ".join(services)), timeout=60)
    except RemoteError as exc:
        return run.add("failed-units", False, str(exc))
    down = health.unhealthy(services, shown) if services else []
    if not run.add(
        "services",
        not down,
        f"not healthy: {', '.join(down)}" if down else f"{len(services)} healthy",
    ):
        return False
    verdict = health.judge(failing, classes, before)
    excused = f"; excused: {'; '.join(verdict.tolerated)}" if verdict.tolerated else ""
    if not verdict.ok:
        return run.add("failed-units", False, f"failed: {'; '.join(verdict.against)}{excused}")
    return run.add("failed-units", True, f"none against the image{excused}" if excused else "none")


def _dashboard(run: _Run, endpoint: Endpoint, grace: float) -> bool:
    deadline = min(run.deadline, time.monotonic() + grace)
    last = "no answer"
    while True:
        ok, last = fetch_dashboard(endpoint)
        if ok:
            return run.add("dashboard", True, last)
        looping = restart_loops(run.remote)
        if looping:
            return run.add("dashboard", False, f"{last}; restart loop: {', '.join(looping)}")
        if time.monotonic() >= deadline:
            waited = f"{grace:.0f} s after boot" if deadline < run.deadline else "probe timeout"
            return run.add("dashboard", False, f"{last} (still so {waited})")
        time.sleep(3)


def restart_loops(remote: Remote, limit: int = RESTART_LOOP) -> list[str]:
    """Services systemd has restarted `limit` times or more since boot ("name (N restarts)").

    A service with Restart=always that cannot start never enters `failed`;
    this is how such a service shows.
    """
    command = (
        "systemctl show -p Id -p NRestarts -- $(systemctl list-units --type=service --all "
        "--plain --no-legend --no-pager | awk '{print $1}')"
    )
    try:
        return parse_restarts(remote.run(command, timeout=60, check=False), limit)
    except RemoteError:
        return []


def parse_restarts(output: str, limit: int = RESTART_LOOP) -> list[str]:
    """`systemctl show -p Id -p NRestarts` output -> units restarted `limit` times or more."""
    found = []
    for block in output.split("\n\n"):  # one block per unit, properties in systemd's order
        props = dict(line.partition("=")[::2] for line in block.splitlines())
        restarts = props.get("NRestarts", "0")
        if restarts.isdigit() and int(restarts) >= limit:
            found.append(f"{props.get('Id', '?')} ({restarts} restarts)")
    return found


def fetch_dashboard(endpoint: Endpoint) -> tuple[bool, str]:
    """GET / through nginx as a browser would (following redirects on this host, e.g.
    Panel's / -> /app, or nginx's http -> https); (answered 200 from nginx, what happened)."""
    path, tls = "/", False
    for _ in range(MAX_REDIRECTS + 1):
        where = _url(endpoint, path, tls)
        try:
            status, headers = _get(endpoint, path, tls=tls)
        except ssl.SSLCertVerificationError as exc:
            return False, f"{where}: certificate not valid for {endpoint.hostname} ({exc})"
        except (OSError, http.client.HTTPException) as exc:
            return False, f"{where}: {exc or type(exc).__name__}"
        server = headers.get("server", "")
        if not server.startswith("nginx"):
            return False, f"{where}: HTTP {status} from {server or 'an unnamed server'}, not nginx"
        location = urlsplit(urljoin(path, headers.get("location", "")))
        if status not in REDIRECTS or location.netloc.split(":")[0] not in ("", endpoint.hostname):
            break
        tls = location.scheme == "https" if location.scheme else tls
        path = (location.path or "/") + (f"?{location.query}" if location.query else "")
    if status != 200:
        return False, f"{where}: HTTP {status} from nginx (the dashboard behind it is not up)"
    return True, f"{where}: HTTP 200 from nginx"


def _url(endpoint: Endpoint, path: str, tls: bool) -> str:
    if tls:
        return f"https://{endpoint.hostname}{path} at {endpoint.address}:{endpoint.https_port}"
    return f"http://{endpoint.address}:{endpoint.http_port}{path}"


def _get(endpoint: Endpoint, path: str, *, tls: bool) -> tuple[int, dict[str, str]]:
    conn: http.client.HTTPConnection
    if tls:
        conn = _SNIConnection(endpoint, ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(
            endpoint.address, endpoint.http_port, timeout=HTTP_TIMEOUT
        )
    try:
        conn.request("GET", path, headers={"Host": endpoint.hostname, "User-Agent": "aurora-probe"})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with SNI and certificate checks for the public hostname."""

    def __init__(self, endpoint: Endpoint, context: ssl.SSLContext) -> None:
        super().__init__(endpoint.address, endpoint.https_port, timeout=HTTP_TIMEOUT)
        self._hostname = endpoint.hostname
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._hostname)


def _audit(run: _Run, manifest: Manifest | None, audit: Callable[..., Any] | None) -> bool:
    if manifest is None:
        return run.add("audit", True, "skipped: no local manifest for this image")
    if audit is None:
        from builder.host.audit import audit
    try:
        report = audit(run.remote, manifest, timeout=max(60.0, run.left()))
    except AuroraError as exc:
        return run.add("audit", False, str(exc))
    # The audit tolerates failed pipeline units itself; `_failed_units` judged them
    # against `before` already.
    return run.add("audit", bool(report.ok), report.summary())
