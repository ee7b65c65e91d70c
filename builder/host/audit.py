"""Drift audit: does a running host still match the manifest of its image?

Observe only. One ssh round trip runs the script of builder.host.observation
on the host and parses what it printed; everything after that is pure
(:func:`compare`), so the rules are unit-tested on recorded output. On a
dm-verity image the kernel's roothash= and aurora.config_hash= are compared too:
with them matching, every block of the root and of the config layer is the image's.

What counts as drift: a rendered file changed, missing or of another mode; a
unit not loaded, masked, enabled when the image leaves it off (or the other
way round), a timer not active, a long-running service not active, a unit
overridden or extended at runtime (``systemctl edit --runtime``,
``set-property``); any failed unit but a pipeline unit; a Debian or Python
package added, removed or at another version.

A failed pipeline unit (a sync, job or push: builder.host.health) is judged
as the health probe judges it with nothing recorded before a rebuild: shown
("tolerated"), not drift. It fails when an instrument is down or its inputs
are empty, which is the data's state, not the host's difference from its
image; and whether such a unit's first run has happened yet must not decide
an audit. A failed service, or a unit the image does not classify, is drift.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from builder.errors import AuroraError
from builder.host import health
from builder.host.observation import (
    IDENTITY,
    MARK,
    FileState,
    Observation,
    normalise,
    parse,
    parse_identity,
    parse_os_release,
    preset_enabled,
    rendered_units,
    script,
    split_sections,
)
from builder.image.manifest import Manifest

# Where systemctl puts what an operator changes at run time: `edit --runtime`,
# `mask --runtime`, `set-property` (persistent or not) and transient units.
RUNTIME_PREFIXES = (
    "/run/systemd/system/",
    "/run/systemd/system.control/",
    "/run/systemd/transient/",
    "/etc/systemd/system.control/",
)
DRIFT = frozenset({"changed", "missing", "extra", "failed"})
TOLERATED = "tolerated"  # a failed pipeline unit: shown, not drift
PIPELINE_FAILED = "failed (a pipeline unit: its instrument or data, not drift)"


class Runner(Protocol):
    """What the audit needs of :class:`builder.host.remote.Remote` (one call)."""

    @property
    def name(self) -> str: ...

    def run(self, command: str, *, timeout: float = 60, check: bool = True) -> str: ...


@dataclass(frozen=True)
class Row:
    """One thing compared: what, the image's value, the host's value, the verdict."""

    kind: str
    what: str
    expected: str
    found: str
    verdict: str = "ok"

    @property
    def drift(self) -> bool:
        return self.verdict in DRIFT


@dataclass(frozen=True)
class AuditReport:
    """The result of one audit; ``ok`` when nothing drifted."""

    host: str
    image: str
    claimed: str | None
    rows: tuple[Row, ...]

    @property
    def ok(self) -> bool:
        return not any(row.drift for row in self.rows)

    @property
    def drifted(self) -> list[Row]:
        return [row for row in self.rows if row.drift]

    @property
    def tolerated(self) -> list[Row]:
        return [row for row in self.rows if row.verdict == TOLERATED]

    def summary(self) -> str:
        """One line: host, image, verdict, drift counted by kind, failed pipeline units."""
        checks = len(self.rows)
        failing = ", ".join(row.what for row in self.tolerated)
        if failing:
            failing = f"; failed pipeline units, not drift: {failing}"
        if self.ok:
            return f"{self.host}: matches image {self.image} ({checks} checks, no drift{failing})"
        kinds: dict[str, int] = {}
        for row in self.drifted:
            kinds[row.kind] = kinds.get(row.kind, 0) + 1
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return (
            f"{self.host}: DRIFT from image {self.image}: {len(self.drifted)} of {checks} "
            f"checks ({detail}){failing}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "image": self.image,
            "claimed_image": self.claimed,
            "ok": self.ok,
            "checks": len(self.rows),
            "drift": len(self.drifted),
            "tolerated": len(self.tolerated),
            "summary": self.summary(),
            "rows": [asdict(row) for row in self.rows],
        }


# --------------------------------------------------------------------------
# Comparison (pure)
# --------------------------------------------------------------------------


def claimed_image(seen: Observation) -> str | None:
    """The image tag a host says it runs (its identity file, else os-release
    IMAGE_VERSION), or None when it does not say."""
    tag = seen.identity.get("tag") or seen.os_release.get("IMAGE_VERSION")
    return str(tag) if tag else None


def _mode(value: str) -> int | None:
    try:
        return int(value, 8)
    except ValueError:
        return None


def compare_file(path: str, entry: Mapping[str, str], found: FileState | None) -> Row:
    if "link" in entry:
        expected = f"link -> {entry['link']}"
    elif "directory" in entry:
        expected = f"directory {entry['directory']}"
    else:
        expected = f"{entry.get('mode', '')} sha256:{entry.get('sha256', '')}"
    if found is None:
        return Row("file", path, expected, "absent", "missing")
    if found.kind == "l":
        got, same = f"link -> {found.link}", found.link == entry.get("link")
    elif found.kind == "d":
        got = f"directory {_mode(found.mode) or 0:04o}"
        same = "directory" in entry and _mode(found.mode) == _mode(entry["directory"])
    elif found.kind == "f":
        mode = _mode(found.mode)
        got = f"{mode or 0:04o} sha256:{found.sha256 or '(unreadable)'}"
        same = (
            "sha256" in entry
            and found.sha256 == entry["sha256"]
            and mode == _mode(entry.get("mode", ""))
        )
    else:
        got, same = f"not a file (find type {found.kind})", False
    return Row("file", path, expected, got, "ok" if same else "changed")


def compare_unit(
    name: str, wanted: bool, show: Mapping[str, str] | None, *, pipeline: bool = False
) -> Row:
    """One unit against the image: loaded, enablement as the preset says, running
    if it should be, nothing layered on at run time. A ``pipeline`` unit's failure
    alone is tolerated (shown, not drift); anything else about it still counts."""
    expected = "enabled" if wanted else "not enabled"
    if wanted and name.endswith(".timer"):
        expected += ", active"
    if show is None:
        return Row("unit", name, expected, "not reported by systemctl", "missing")
    load, active = show.get("LoadState", ""), show.get("ActiveState", "")
    state, kind = show.get("UnitFileState", ""), show.get("Type", "")
    found = f"{state or 'no unit file state'}, {active}/{show.get('SubState', '')}"
    problems, failed = [], False
    if load != "loaded":
        problems.append(load or "not loaded")
    if state.endswith("-runtime"):
        problems.append(f"{state} (changed at run time)")
    elif wanted and state != "enabled":
        problems.append("not enabled")
    elif not wanted and state == "enabled":
        problems.append("enabled, the image leaves it off")
    if active == "failed":
        failed = True
        if not pipeline:
            problems.append("failed")
    elif wanted and active != "active":
        long_running = name.endswith((".timer", ".socket", ".path")) or (
            name.endswith(".service") and kind not in ("oneshot", "")
        )
        if long_running:
            problems.append(f"not active ({active})")
    fragment = show.get("FragmentPath", "")
    if fragment.startswith(RUNTIME_PREFIXES):
        problems.append(f"replaced by {fragment}")
    dropins = [d for d in show.get("DropInPaths", "").split() if d.startswith(RUNTIME_PREFIXES)]
    if dropins:
        problems.append(f"drop-in {' '.join(dropins)}")
    if not problems:
        if failed:
            return Row("unit", name, expected, f"{found}: {PIPELINE_FAILED}", TOLERATED)
        return Row("unit", name, expected, found, "ok")
    if failed and pipeline:
        problems.append(PIPELINE_FAILED)
    verdict = (
        "failed" if failed and not pipeline else "missing" if load == "not-found" else "changed"
    )
    return Row("unit", name, expected, f"{found}: {'; '.join(problems)}", verdict)


def compare_packages(kind: str, expected: Mapping[str, str], found: Mapping[str, str]) -> list[Row]:
    rows = []
    for name in sorted(expected.keys() | found.keys()):
        want, got = expected.get(name), found.get(name)
        if got is None:
            rows.append(Row(kind, name, str(want), "not installed", "missing"))
        elif want is None:
            rows.append(Row(kind, name, "not in the image", got, "extra"))
        else:
            rows.append(Row(kind, name, want, got, "ok" if want == got else "changed"))
    return rows


def compare(manifest: Manifest, seen: Observation) -> list[Row]:
    """Every check as a row, in a stable order: image, files, units, failed, packages."""
    tag = manifest.tag
    claimed = claimed_image(seen)
    rows = [
        Row(
            "image",
            f"tag in {IDENTITY}",
            tag,
            claimed or "not recorded (image built before it carried its tag)",
            "unknown" if claimed is None else "ok" if claimed == tag else "changed",
        )
    ]
    booted_words = dict(w.partition("=")[::2] for w in seen.cmdline.split() if "=" in w)
    for word, expected, what in (
        ("roothash", manifest.root_hash, "dm-verity root"),
        ("aurora.config_hash", manifest.config_hash, "dm-verity config layer"),
    ):
        if expected:
            booted = booted_words.get(word, "")
            rows.append(
                Row(
                    "image",
                    f"{word}= the kernel booted with ({what})",
                    str(expected),
                    booted
                    or f"none: the {what.removeprefix('dm-verity ')} is not verity-protected",
                    "ok" if booted == expected else "changed",
                )
            )
    for path, entry in sorted(manifest.rendered.items()):
        rows.append(compare_file(path, entry, seen.files.get(path)))
    wanted = set(preset_enabled(seen.presets))
    # The probe's rule with nothing recorded before a rebuild: pipeline failures excused.
    pipeline = health.judge(dict.fromkeys(seen.failed, "failed"), seen.classes, None)
    for name in sorted(wanted | set(rendered_units(manifest))):
        show = seen.units.get(name)
        excused = name in pipeline.tolerated_units
        rows.append(compare_unit(name, name in wanted, show, pipeline=excused))
    checked = {row.what for row in rows if row.kind == "unit"}
    for name in sorted(set(seen.failed) - checked):
        if name in pipeline.tolerated_units:
            rows.append(Row("unit", name, "not failed", PIPELINE_FAILED, TOLERATED))
        else:
            rows.append(Row("unit", name, "not failed", "failed", "failed"))
    rows += compare_packages("debian", manifest.debian_packages, seen.dpkg)
    expected_py = {normalise(k): v for k, v in manifest.python_packages.items()}
    if seen.python is None:
        rows.append(Row("python", "dashboard venv", "present", seen.python_error, "missing"))
    else:
        rows += compare_packages("python", expected_py, seen.python)
    return rows


# --------------------------------------------------------------------------
# Side effects: one ssh call
# --------------------------------------------------------------------------


class AuditError(AuroraError):
    """The audit could not observe the host (not drift: nothing was compared)."""


def observe(remote: Runner, manifest: Manifest, *, timeout: float = 120) -> Observation:
    """Run the script on the host (one ssh round trip) and parse what it printed."""
    output = remote.run(script(manifest), timeout=timeout, check=False)
    try:
        return parse(output)
    except ValueError as exc:
        raise AuditError(f"{remote.name}: {exc}; is it a Linux host with systemd?") from None


def identify(remote: Runner, *, timeout: float = 60) -> str | None:
    """The image tag the host says it runs, or None when it does not say."""
    command = f"echo '{MARK}identity'; cat {IDENTITY}; echo '{MARK}os-release'; cat /etc/os-release"
    sections = split_sections(remote.run(command, timeout=timeout, check=False))
    return claimed_image(
        Observation(
            identity=parse_identity(sections.get("identity", [])),
            os_release=parse_os_release(sections.get("os-release", [])),
        )
    )


def audit(remote: Runner, manifest: Manifest, *, timeout: float = 120) -> AuditReport:
    """Compare the host behind ``remote`` with ``manifest``; observe only."""
    seen = observe(remote, manifest, timeout=timeout)
    return AuditReport(
        host=remote.name,
        image=manifest.tag,
        claimed=claimed_image(seen),
        rows=tuple(compare(manifest, seen)),
    )


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _short(value: str, width: int) -> str:
    value = re.sub(r"sha256:([0-9a-f]{12})[0-9a-f]{52}", r"sha256:\1", value)
    return value if len(value) <= width else value[: width - 1] + "…"


def format_table(report: AuditReport, *, everything: bool = False) -> str:
    """Drifted and tolerated rows (or all of them) as a table, then the summary line."""
    rows = list(report.rows) if everything else [*report.drifted, *report.tolerated]
    lines = []
    if rows:
        what_w = min(max(len(r.what) for r in rows), 56)
        lines.append(f"{'VERDICT':<8} {'KIND':<7} {'WHAT':<{what_w}}  {'EXPECTED':<28}  FOUND")
        for r in rows:
            lines.append(
                f"{r.verdict:<8} {r.kind:<7} {_short(r.what, what_w):<{what_w}}  "
                f"{_short(r.expected, 28):<28}  {_short(r.found, 80)}"
            )
    lines.append(report.summary())
    return "\n".join(lines) + "\n"
