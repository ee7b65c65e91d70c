"""Soak: after a rebuild passes its probe, keep probing for a window before calling it done.

An image can pass one probe and fail ten minutes later (a timer's first run,
a leak, a restart loop that needs a few rounds to show). For
`deploy.soak_window` (default 30 min; `promote --soak SPAN`, 0 to skip) the
same probe runs every `interval`: ssh, boot, failed units judged by class
against the set that failed before the rebuild (builder.health: a pipeline
unit failing as before is the instruments', not the image's), the dashboard
through nginx, the audit. Nova must still say the server runs the image.

The first failure ends the soak: the failing server's journal and console
are kept (builder.evidence), the server is rebuilt from the image it ran
before and probed, and the release fails with exit 3 (rolled back, healthy)
or 4 (not healthy). The verdict is written on the image in Glance
(`aurora_soak_{verdict,at,checks,detail}`), where `releases` and the
production policy read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from builder.cloud import CloudError, GlanceImage
from builder.probe import Check, ProbeReport
from builder.release import Target, now_iso, run_probe

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
        if not report.ok:
            return SoakResult(False, checks, clock() - start, report)
    return SoakResult(True, checks, clock() - start)
