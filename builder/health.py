"""Whether a failed unit counts against an image: services judge the image,
pipeline units judge the instruments and the data.

The production app's processing jobs exit 1 when their inputs are empty, and a
sync fails while its instrument is down, so on a real host `systemctl --failed`
is rarely empty. The spec classifies every unit it renders (builder.render
writes the classes into the image, CLASSES_FILE): a *service* (dashboard,
nginx, sshd, credentials, storage) must be healthy; a *pipeline* unit (syncs,
jobs, pushes, mirror verification) that fails counts against a new image only
if it did not fail the same way before the rebuild. Before rebuilding, the
release records which units were failing and how (systemd's Result and exit
status); the probe compares. A unit the image does not classify counts like a
service: unknown failures are never excused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from builder.errors import AuroraError
from builder.render import UNIT_CLASSES_FILE as CLASSES_FILE
from builder.tree import atomic_write

SERVICE, PIPELINE = "service", "pipeline"
MARK = "@@aurora-health@@"
# Failed units with how they failed, one `systemctl show` block each.
FAILING = (
    "units=$(systemctl list-units --failed --all --plain --no-legend --no-pager "
    "| awk '{print $1}'); "
    'if [ -n "$units" ]; then systemctl show -p Id -p Result -p ExecMainStatus -- $units; fi'
)


class Runner(Protocol):
    """What this module needs of :class:`builder.remote.Remote`."""

    @property
    def name(self) -> str: ...

    def run(self, command: str, *, timeout: float = 60, check: bool = True) -> str: ...


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


def judge(
    failing: Mapping[str, str],
    classes: Mapping[str, str],
    before: Mapping[str, str] | None,
) -> Verdict:
    """Which failures are the image's: services and unknown units always; pipeline
    units unless `before` (the failing set recorded before the rebuild) has them
    failing the same way. `before` None means nothing was recorded."""
    against, tolerated, excused = [], [], set()
    for unit, how in sorted(failing.items()):
        cls = classes.get(unit)
        if cls != PIPELINE:
            kind = "a service" if cls == SERVICE else "not a pipeline unit"
            against.append(f"{unit} {how} ({kind})")
        elif before is None:
            against.append(f"{unit} {how} (nothing recorded before the rebuild to compare)")
        elif before.get(unit) == how:
            tolerated.append(f"{unit} {how} (failed the same way before the rebuild)")
            excused.add(unit)
        elif unit in before:
            against.append(f"{unit} {how} (before the rebuild: {before[unit]})")
        else:
            against.append(f"{unit} {how} (not failing before the rebuild)")
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


def save_record(path: Path, failing: Mapping[str, str]) -> None:
    atomic_write(path, (json.dumps(dict(sorted(failing.items())), indent=2) + "\n").encode())


def load_record(path: Path) -> dict[str, str] | None:
    """The recorded failing set, or None when none was recorded (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): str(v) for k, v in data.items()}


def record_before(remote: Runner, path: Path) -> str:
    """Record what fails on the host now, before a rebuild; a line for the operator.

    An unreachable host records nothing (and drops an older record), so every
    pipeline failure after the rebuild counts.
    """
    try:
        _, failing = observe(remote, timeout=60)
    except AuroraError as exc:
        path.unlink(missing_ok=True)
        return f"not recorded ({exc}); every pipeline failure after the rebuild counts"
    save_record(path, failing)
    listed = ", ".join(f"{unit} {how}" for unit, how in sorted(failing.items()))
    return f"failing before the rebuild: {listed or 'none'}"
