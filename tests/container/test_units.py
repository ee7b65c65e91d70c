"""The image's unit files, checked by the image's own systemd in a container:
every rendered file is in the image as rendered, `systemd-analyze verify` takes
every unit, the timers are enabled with the spec's schedules, and the Panel's unit
carries its session settings. What needs a running systemd (active timers, next
elapses, failed units) stays in tests/vm."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from builder.image.root import Container
from builder.render.engine import SYSTEM_UNITS
from builder.render.tree import Tree
from builder.spec.model import HostSpec


def rendered_units(rendered: Tree) -> list[str]:
    """The unit files render made (not drop-ins, not enablement links)."""
    prefix = SYSTEM_UNITS + "/"
    return sorted(
        p.removeprefix(prefix)
        for p, e in rendered.items()
        if p.startswith(prefix) and e.link is None and not e.directory and not p.endswith(".conf")
    )


def test_every_rendered_file_is_in_the_image_as_rendered(root: Path, rendered: Tree) -> None:
    """Bytes, mode and owner (root) at the destination, links to the same target:
    the image carries this checkout's render, not an older or hand-made one."""
    wrong = []
    for path, entry in rendered.items():
        there = root / path.lstrip("/")
        info = os.lstat(there) if os.path.lexists(there) else None
        if info is None:
            wrong.append(f"{path}: missing")
        elif entry.link is not None:
            if not stat.S_ISLNK(info.st_mode) or os.readlink(there) != entry.link:
                wrong.append(f"{path}: not a link to {entry.link}")
        elif entry.directory:
            if not stat.S_ISDIR(info.st_mode):
                wrong.append(f"{path}: not a directory")
        elif not stat.S_ISREG(info.st_mode) or there.read_bytes() != entry.content:
            wrong.append(f"{path}: content differs from the render")
        elif stat.S_IMODE(info.st_mode) != entry.mode or info.st_uid != 0:
            wrong.append(f"{path}: mode {stat.S_IMODE(info.st_mode):o} uid {info.st_uid}")
    assert len(rendered) > 100
    assert wrong == [], "\n".join(wrong)


def test_systemd_analyze_verify_is_clean(container: Container, rendered: Tree) -> None:
    units = rendered_units(rendered)
    assert len(units) > 60, units
    done = container.run(["systemd-analyze", "verify", *(f"{SYSTEM_UNITS}/{u}" for u in units)])
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
    # The image's systemd inside this container does reject a broken unit (the check can fail).
    broken = f"{SYSTEM_UNITS}/aurora-broken.service"
    container.succeed(f"printf '[Service]\\nExecStart=relative/path\\n' > {broken}")
    refused = container.run(["systemd-analyze", "verify", broken])
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "relative/path" in refused.stdout + refused.stderr, refused.stdout + refused.stderr


def test_every_timer_is_enabled(container: Container, rendered: Tree) -> None:
    timers = [u for u in rendered_units(rendered) if u.endswith(".timer")]
    assert len(timers) == 35
    shown = container.run(["systemctl", "is-enabled", *timers]).stdout.split()
    assert dict(zip(timers, shown, strict=True)) == dict.fromkeys(timers, "enabled")


def _normalized(container: Container, expressions: list[str]) -> list[str]:
    out = container.succeed(["systemd-analyze", "calendar", *expressions])
    return re.findall(r"Normalized form: (.*)", out)


def test_calendar_timers_carry_the_spec_schedule(
    container: Container, root: Path, spec: HostSpec
) -> None:
    """Each calendar job's timer in the image fires when the spec says, as the
    image's systemd reads both (normalized forms equal)."""
    jobs = [job for job in spec.jobs if job.schedule.calendar]
    assert jobs
    in_image = []
    for job in jobs:
        unit = (root / SYSTEM_UNITS.lstrip("/") / f"aurora-{job.name}.timer").read_text()
        found = re.findall(r"^OnCalendar=(.+)$", unit, re.MULTILINE)
        assert len(found) == 1, (job.name, found)
        in_image.append(found[0])
    wanted = _normalized(container, [job.schedule.calendar for job in jobs])
    assert _normalized(container, in_image) == wanted
    assert len(wanted) == len(jobs)


def test_panel_unit_carries_the_session_settings(container: Container) -> None:
    # cat-config: the unit with its drop-ins, as systemd merges them (paths under /etc).
    unit = container.succeed(
        ["systemd-analyze", "cat-config", "systemd/system/aurora-dashboard.service"]
    )
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1, unit
    for flag in (
        "--address=127.0.0.1",
        "--port=5006",
        "--keep-alive=15000",
        "--unused-session-lifetime=3600000",
        "--session-token-expiration=86400",
        "--allow-websocket-origin=data.gamb2le.co.uk",
    ):
        assert flag in exec_start[0], exec_start
