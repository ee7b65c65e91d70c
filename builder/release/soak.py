"""Soak: after a rebuild passes its probe, keep probing for a window before calling it done.

An image can pass one probe and fail ten minutes later (a timer's first run,
a leak, a restart loop that needs a few rounds to show). For
`deploy.soak_window` (default 30 min; `promote --soak SPAN`, 0 to skip) the
same probe runs every `interval`: ssh, boot, failed units judged by class
against the set that failed before the rebuild (builder.host.health: a pipeline
unit failing as before is the instruments', not the image's), the dashboard
through nginx, the audit; and the host's own verdict (aurora-health.timer,
/run/aurora/health.json), which is handed the same before-rebuild set
(`hand_over_before`). Nova must still say the server runs the image.

The first failure ends the soak: the failing server's journal and console
are kept (builder.release.evidence), the server is rebuilt from the image it ran
before and probed, and the release fails with exit 3 (rolled back, healthy)
or 4 (not healthy). The verdict is written on the image in Glance
(`aurora_soak_{verdict,at,checks,detail}`), where `releases` and the
production policy read it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from builder.host.probe import Check, ProbeReport
from builder.release.cloud import CloudError, GlanceImage, Server
from builder.release.glance import now_iso
from builder.release.probing import run_probe
from builder.release.target import Target

VERDICT = "aurora_soak_verdict"


@dataclass(frozen=True)
class SoakResult:
    """How the soak ended: every probe passed for the window, or the first that failed."""

    ok: bool
    checks: int
    seconds: float
    failure: ProbeReport | None = None

    def summary(self) -> str:
        if self.ok:
            return f"soak passed: {self.checks} probes over {self.seconds:.0f} s"
        detail = self.failure.summary() if self.failure else "no probe ran"
        return f"soak failed after {self.seconds:.0f} s (probe {self.checks}): {detail}"

    def properties(self) -> dict[str, str]:
        return {
            VERDICT: "passed" if self.ok else "failed",
            "aurora_soak_at": now_iso(),
            "aurora_soak_checks": str(self.checks),
            "aurora_soak_detail": self.summary()[:250],
        }


def soak(
    target: Target,
    image: GlanceImage,
    *,
    window: float,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SoakResult:
    """Probe every `interval` until `window` has passed or a probe fails."""
    start = clock()
    since = now_iso()  # host verdicts older than this describe the boot, not the soak
    deadline = start + window
    checks = 0
    while clock() < deadline:
        sleep(max(0.0, min(interval, deadline - clock())))
        checks += 1
        try:
            server = target.cloud.server(target.server)
        except CloudError as exc:
            report = ProbeReport(target.server, (Check("nova", False, str(exc)),))
            return SoakResult(False, checks, clock() - start, report)
        if server.status != "ACTIVE" or server.image_id != image.id:
            now = f"Nova says {server.name} is {server.status} on image {server.image_id}"
            report = ProbeReport(server.name, (Check("nova", False, now),))
            return SoakResult(False, checks, clock() - start, report)
        report = run_probe(target, server, image)
        if report.ok and target.prober is None:
            report = _with_host_verdict(target, server, report, since)
        if not report.ok:
            return SoakResult(False, checks, clock() - start, report)
    return SoakResult(True, checks, clock() - start)


def _with_host_verdict(
    target: Target, server: Server, report: ProbeReport, since: str
) -> ProbeReport:
    """Add the host timer's own verdict as a check: unhealthy there, in a verdict
    written since the soak began (ISO stamps compare as text), fails the soak too."""
    from builder.errors import AuroraError

    try:
        found = host_verdict(target, server)
    except AuroraError:
        found = None
    if found is None:
        check = Check("host-health", True, "no verdict from aurora-health.timer yet")
    elif str(found.get("at", "")) < since:
        check = Check(
            "host-health", True, f"last verdict {found.get('at')} is from before the soak"
        )
    elif found.get("healthy") is True:
        check = Check("host-health", True, f"healthy at {found.get('at')}")
    else:
        against = found.get("against")
        listed = [str(x) for x in against[:3]] if isinstance(against, list) else []
        # The dashboard's line when no unit counts against the host.
        why = "; ".join(listed) or str(found.get("dashboard"))
        check = Check("host-health", False, f"aurora-health at {found.get('at')}: {why}")
    return ProbeReport(report.host, (*report.checks, check), report.seconds)


HOST_VERDICT = "/run/aurora/health.json"  # written by aurora-health.timer on the host
HOST_BEFORE = "/var/lib/aurora-health/before.json"


def hand_over_before(target: Target, server: Server) -> str:
    """Give the host's health timer the failing set recorded before this rebuild, so it
    judges pipeline units as the probe does (builder.host.health); a line for the operator."""
    import base64

    from builder.host.health import load_record
    from builder.host.probe import known_hosts_for
    from builder.release.probing import failing_record, remote_for

    before = load_record(failing_record(target, server))
    if before is None:
        return "no failing set recorded before the rebuild; the host counts every failure"
    data = base64.b64encode(json.dumps(before.to_json(), sort_keys=True).encode()).decode()
    remote, _ = remote_for(target, server, known_hosts_for(target.cloud.name, server.id))
    remote.run(
        f"mkdir -p {HOST_BEFORE.rsplit('/', 1)[0]} && printf %s {data} | base64 -d > "
        f"{HOST_BEFORE}.new && mv {HOST_BEFORE}.new {HOST_BEFORE}",
        timeout=60,
    )
    return f"host health timer given {len(before.failing)} unit(s) failing before the rebuild"


def host_verdict(target: Target, server: Server) -> dict[str, object] | None:
    """The host's own latest verdict (aurora-health.timer), None when it has none yet."""
    from builder.host.probe import known_hosts_for
    from builder.release.probing import remote_for

    remote, _ = remote_for(target, server, known_hosts_for(target.cloud.name, server.id))
    text = remote.run(f"cat {HOST_VERDICT} 2>/dev/null || true", timeout=60, check=False)
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None
