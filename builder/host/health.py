"""Whether a failed unit counts against an image: services judge the image,
pipeline units judge the instruments and the data.

The production app's processing jobs exit 1 when their inputs are empty, and a
sync fails while its instrument is down, so on a real host `systemctl --failed`
is rarely empty. The spec classifies every unit it renders (builder.render.engine
writes the classes into the image, CLASSES_FILE): a *service* (dashboard,
nginx, sshd, credentials, storage) must be healthy; a *pipeline* unit (syncs,
jobs, pushes, mirror verification) that fails counts against a new image only
if it did not fail the same way before the rebuild. Before rebuilding, the
release records which units were failing and how (systemd's Result and exit
status), and which pipeline units had not run yet; the probe compares. Only
evidence counts against an image: a pipeline unit that ran fine before, or failed
another way. Where there is none (no record: the old server did not answer; or
the unit had not run before the rebuild) the failure is reported, not counted.
A unit the image does not classify counts like a service: unknown failures are
never excused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from builder.errors import AuroraError
from builder.render.engine import UNIT_CLASSES_FILE as CLASSES_FILE
from builder.render.tree import atomic_write

SERVICE, PIPELINE = "service", "pipeline"
MARK = "@@aurora-health@@"
# The service-class units' states, one `systemctl show` block each.
SERVICES = (
    "systemctl show -p Id -p Type -p ActiveState -p SubState -p Result -p TriggeredBy -- {units}"
)
# Failed units with how they failed, one `systemctl show` block each.
FAILING = (
    "units=$(systemctl list-units --failed --all --plain --no-legend --no-pager "
    "| awk '{print $1}'); "
    'if [ -n "$units" ]; then systemctl show -p Id -p Result -p ExecMainStatus -- $units; fi'
)


class Runner(Protocol):
    """What this module needs of :class:`builder.host.remote.Remote`."""

    @property
    def name(self) -> str: ...

    def run(self, command: str, *, timeout: float = 60, check: bool = True) -> str: ...


@dataclass(frozen=True)
class Before:
    """What the server showed before the rebuild: failing units and how, and the
    pipeline units that had not run yet (no evidence either way)."""

    failing: Mapping[str, str] = field(default_factory=dict)
    not_run: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, object]:
        return {"failing": dict(sorted(self.failing.items())), "not_run": sorted(self.not_run)}


@dataclass(frozen=True)
class Verdict:
    """Failed units sorted into those that count against the image and those excused."""

    against: tuple[str, ...] = ()
    tolerated: tuple[str, ...] = ()
    tolerated_units: frozenset[str] = field(default_factory=frozenset)

    @property
    def ok(self) -> bool:
        return not self.against


def parse_failing(output: str) -> dict[str, str]:
    """`systemctl show -p Id -p Result -p ExecMainStatus` blocks -> {unit: how it failed}."""
    found = {}
    for block in output.split("\n\n"):
        props = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        unit = props.get("Id")
        if not unit:
            continue
        result = props.get("Result") or "failed"
        status = props.get("ExecMainStatus", "0")
        found[unit] = f"{result} (status {status})" if status not in ("", "0") else result
    return found


def unhealthy(services: list[str], shown: str) -> list[str]:
    """Services not healthy ("unit state"): a service must be active, except a oneshot
    run by its timer, which is healthy while inactive after a successful run and while
    its timer has it running (aurora-health every 5 minutes: a probe that lands in its
    run must not call the host unhealthy; a run that then fails is a failed unit).
    A service systemd is about to restart (`auto-restart`) is left to the probe's
    restart-loop rule, which counts restarts over time: judged here, a unit that
    crashes and restarts (Panel with a broken entry, Restart=always) would fail
    this check or pass it by the instant it was looked at."""
    states = {}
    for block in shown.split("\n\n"):
        props = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            states[props["Id"]] = props
    down = []
    for unit in services:
        props = states.get(unit, {})
        state = props.get("ActiveState", "unknown")
        oneshot = props.get("Type") == "oneshot"
        oneshot_ok = oneshot and props.get("Result") == "success"
        timed = oneshot and ".timer" in props.get("TriggeredBy", "")
        if state == "activating" and (timed or props.get("SubState") == "auto-restart"):
            continue
        if state != "active" and not (state == "inactive" and oneshot_ok):
            down.append(f"{unit} {state}")
    return down


def parse_classes(text: str) -> dict[str, str]:
    """CLASSES_FILE's JSON -> {unit: class}; empty (all count) when missing or unreadable."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        unit: cls
        for cls in (SERVICE, PIPELINE)
        for unit in data.get(cls, [])
        if isinstance(unit, str)
    }


def judge(failing: Mapping[str, str], classes: Mapping[str, str], before: Before | None) -> Verdict:
    """Which failures are the image's: services and unknown units always; a pipeline
    unit when it ran fine before the rebuild or failed another way (`before`, None
    when nothing was recorded)."""
    against, tolerated, excused = [], [], set()
    for unit, how in sorted(failing.items()):
        cls = classes.get(unit)
        why = None
        if cls != PIPELINE:
            against.append(f"{unit} {how} ({'a service' if cls == SERVICE else 'not classified'})")
        elif before is None:
            why = "nothing recorded before the rebuild"
        elif before.failing.get(unit) == how:
            why = "failed the same way before the rebuild"
        elif unit in before.not_run:
            why = "had not run before the rebuild"
        elif unit in before.failing:
            against.append(f"{unit} {how} (before the rebuild: {before.failing[unit]})")
        else:
            against.append(f"{unit} {how} (ran without failing before the rebuild)")
        if why:
            tolerated.append(f"{unit} {how} ({why})")
            excused.add(unit)
    return Verdict(tuple(against), tuple(tolerated), frozenset(excused))


def observe(remote: Runner, *, timeout: float = 60) -> tuple[dict[str, str], dict[str, str]]:
    """(unit classes the host's image declares, failing units and how) in one ssh call."""
    command = f"cat {CLASSES_FILE} 2>/dev/null; echo {MARK}; {FAILING}"
    classes, _, failing = remote.run(command, timeout=timeout).partition(f"{MARK}\n")
    return parse_classes(classes), parse_failing(failing)


def record_path(state: Path, cloud: str, server_id: str) -> Path:
    """Where the failing set recorded before a rebuild of one server is kept."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cloud}-{server_id}")
    return state / "failing-before-rebuild" / f"{safe}.json"


def save_record(path: Path, before: Before) -> None:
    atomic_write(path, (json.dumps(before.to_json(), indent=2) + "\n").encode())


def load_record(path: Path) -> Before | None:
    """The recorded state, or None when none was recorded (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
        failing, not_run = data["failing"], data["not_run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(failing, dict) or not isinstance(not_run, list):
        return None
    return Before({str(k): str(v) for k, v in failing.items()}, frozenset(map(str, not_run)))


def observe_before(remote: Runner, *, timeout: float = 60) -> Before:
    """The host's failing units and the pipeline units that have not run yet."""
    classes, failing = observe(remote, timeout=timeout)
    pipeline = sorted(u for u, c in classes.items() if c == PIPELINE)
    if not pipeline:
        return Before(failing)
    shown = remote.run(
        "systemctl show -p Id -p ExecMainStartTimestampMonotonic -- " + " ".join(pipeline),
        timeout=timeout,
    )
    return Before(failing, parse_not_run(shown))


def parse_not_run(output: str) -> frozenset[str]:
    """Units whose main process never started since boot (not run, or skipped by a
    condition), from `systemctl show -p Id -p ExecMainStartTimestampMonotonic`."""
    found = set()
    for block in output.split("\n\n"):
        props = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        if props.get("Id") and props.get("ExecMainStartTimestampMonotonic", "0") == "0":
            found.add(props["Id"])
    return frozenset(found)


def record_before(remote: Runner, path: Path) -> str:
    """Record what fails on the host now, before a rebuild; a line for the operator.

    An unreachable host records nothing (and drops an older record): pipeline
    failures after the rebuild are then reported, not counted.
    """
    try:
        before = observe_before(remote, timeout=60)
    except AuroraError as exc:
        path.unlink(missing_ok=True)
        return f"not recorded ({exc}); pipeline failures after the rebuild are only reported"
    save_record(path, before)
    listed = ", ".join(f"{unit} {how}" for unit, how in sorted(before.failing.items()))
    return f"failing before the rebuild: {listed or 'none'} ({len(before.not_run)} not run yet)"
