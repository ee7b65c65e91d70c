"""Drift audit: does a running host still match the manifest of its image?

Observe only. One ssh round trip runs a POSIX shell script on the host that
prints, in marked sections, what the comparison needs: the image identity
file and os-release, the type, mode and sha256 of every rendered path, the
image's presets, ``systemctl show`` for every unit the image ships, failed
units, dpkg's package list and the dashboard venv's Python distributions.
Everything after that is pure (:func:`compare`), so the rules are
unit-tested on recorded output. On a dm-verity image the kernel's roothash=
is compared too: with it matching, every block of the root is the image's.

What counts as drift: a rendered file changed, missing or of another mode; a
unit not loaded, masked, enabled when the image leaves it off (or the other
way round), a timer not active, a long-running service not active, a unit
overridden or extended at runtime (``systemctl edit --runtime``,
``set-property``); any failed unit; a Debian or Python package added, removed
or at another version.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from builder.errors import AuroraError
from builder.image.manifest import Manifest

MARK = "@@audit:"
SECTIONS = (
    "identity",
    "os-release",
    "cmdline",
    "files",
    "sha256",
    "presets",
    "units",
    "failed",
    "dpkg",
    "python",
)
SHOW_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "Type",
    "FragmentPath",
    "DropInPaths",
)
# Where systemctl puts what an operator changes at run time: `edit --runtime`,
# `mask --runtime`, `set-property` (persistent or not) and transient units.
RUNTIME_PREFIXES = (
    "/run/systemd/system/",
    "/run/systemd/system.control/",
    "/run/systemd/transient/",
    "/etc/systemd/system.control/",
)
# What a host says about the image it runs (builder.image.build writes it at build time).
IDENTITY = "/usr/lib/aurora/image.json"
# The dashboard's venv when the manifest does not name it: its unit's ExecStart.
DASHBOARD_UNIT = "aurora-dashboard.service"
# systemctl marks failed units with a bullet unless told --plain (older versions still do).
BULLETS = frozenset({"\u25cf", "*", "\u00d7"})
DRIFT = frozenset({"changed", "missing", "extra", "failed"})


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

    def summary(self) -> str:
        """One line: host, image, verdict, and drift counted by kind."""
        checks = len(self.rows)
        if self.ok:
            return f"{self.host}: matches image {self.image} ({checks} checks, no drift)"
        kinds: dict[str, int] = {}
        for row in self.drifted:
            kinds[row.kind] = kinds.get(row.kind, 0) + 1
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return (
            f"{self.host}: DRIFT from image {self.image}: {len(self.drifted)} of {checks} "
            f"checks ({detail})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "image": self.image,
            "claimed_image": self.claimed,
            "ok": self.ok,
            "checks": len(self.rows),
            "drift": len(self.drifted),
            "summary": self.summary(),
            "rows": [asdict(row) for row in self.rows],
        }


@dataclass(frozen=True)
class FileState:
    """A path on the host: find's type letter (f, d, l, ...), mode, link target, digest."""

    kind: str
    mode: str = ""
    link: str = ""
    sha256: str = ""


@dataclass
class Observation:
    """The host's side, parsed from the script's sections."""

    identity: dict[str, Any] = field(default_factory=dict)
    os_release: dict[str, str] = field(default_factory=dict)
    cmdline: str = ""
    files: dict[str, FileState] = field(default_factory=dict)
    presets: str = ""
    units: dict[str, dict[str, str]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    dpkg: dict[str, str] = field(default_factory=dict)
    python: dict[str, str] | None = None
    python_error: str = ""


# --------------------------------------------------------------------------
# What the image says
# --------------------------------------------------------------------------


def rendered_units(manifest: Manifest) -> list[str]:
    """Units the image renders, as its build recorded them (the manifest's ``carried``
    record, builder.render.carried); templates excluded: only instances run."""
    carried = manifest.carried or {}
    units = {str(e["unit"]) for e in carried.values() if isinstance(e, dict) and e.get("unit")}
    return sorted(u for u in units if "@." not in u)


def preset_paths(manifest: Manifest) -> list[str]:
    return sorted(p for p in manifest.rendered if "/system-preset/" in p)


def preset_enabled(text: str) -> list[str]:
    """Units a preset file enables, template instances expanded; globs are skipped."""
    units: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "enable" or any(c in words[1] for c in "*?["):
            continue
        name = words[1]
        if "@." in name and len(words) > 2:
            units += [name.replace("@.", f"@{instance}.", 1) for instance in words[2:]]
        elif "@." not in name:
            units.append(name)
    return units


def venv_of(manifest: Manifest) -> str | None:
    venv = manifest.python_venv
    return venv if isinstance(venv, str) and venv.startswith("/") else None


# --------------------------------------------------------------------------
# The script and its output
# --------------------------------------------------------------------------


def script(manifest: Manifest) -> str:
    """The shell script that gathers everything in one ssh call; observes, never changes."""
    rendered = manifest.rendered
    paths = " ".join(shlex.quote(p) for p in sorted(rendered))
    regular = " ".join(shlex.quote(p) for p, e in sorted(rendered.items()) if "sha256" in e)
    presets = " ".join(shlex.quote(p) for p in preset_paths(manifest))
    units = " ".join(shlex.quote(u) for u in rendered_units(manifest))
    venv = shlex.quote(venv_of(manifest) or "")
    props = ",".join(SHOW_PROPERTIES)
    py = (
        "import importlib.metadata as m\n"
        "for d in m.distributions(): print(d.metadata['Name'], d.version, sep='\\t')"
    )
    return f"""set +e
export LC_ALL=C SYSTEMD_COLORS=0 SYSTEMD_PAGER= SYSTEMD_LESS= PYTHONDONTWRITEBYTECODE=1
echo '{MARK}identity'
cat {IDENTITY} 2>/dev/null; echo
echo '{MARK}os-release'
cat /etc/os-release 2>/dev/null
echo '{MARK}cmdline'
cat /proc/cmdline
echo '{MARK}files'
find {paths} -maxdepth 0 -printf '%y\\t%p\\t%m\\t%l\\n' 2>/dev/null
echo '{MARK}sha256'
sha256sum -- {regular} 2>/dev/null
echo '{MARK}presets'
for p in {presets}; do cat -- "$p" 2>/dev/null; echo; done
echo '{MARK}units'
enabled=$(for p in {presets}; do cat -- "$p" 2>/dev/null; echo; done | awk '
  $1 == "enable" && $2 !~ /[*?[]/ {{
    if ($2 !~ /@\\./) {{ print $2; next }}
    for (i = 3; i <= NF; i++) {{ u = $2; sub(/@\\./, "@" $i ".", u); print u }} }}')
systemctl show --no-pager -p {props} -- $(printf '%s\\n' {units} $enabled | sort -u)
echo '{MARK}failed'
systemctl list-units --failed --all --plain --no-legend --no-pager
echo '{MARK}dpkg'
dpkg-query -W -f '${{db:Status-Abbrev}}\\t${{Package}}\\t${{Version}}\\n'
echo '{MARK}python'
venv={venv}
if [ -z "$venv" ]; then
  exe=$(systemctl show -P ExecStart {DASHBOARD_UNIT} 2>/dev/null \\
    | sed -n 's/.*path=\\([^ ;]*\\).*/\\1/p' | head -n 1)
  venv=${{exe%/bin/*}}
fi
if [ -x "$venv/bin/python" ]; then
  "$venv/bin/python" -c {shlex.quote(py)} 2>&1 || echo "error: $venv/bin/python failed"
else
  echo "error: no Python venv at ${{venv:-(unknown: no {DASHBOARD_UNIT} ExecStart)}}"
fi
echo '{MARK}end'
"""


def split_sections(output: str) -> dict[str, list[str]]:
    """The script's output cut at its markers; a missing end means it was cut short."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(MARK):
            current = sections.setdefault(line[len(MARK) :].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def parse_files(found: Iterable[str], digests: Iterable[str]) -> dict[str, FileState]:
    """find's ``%y\\t%p\\t%m\\t%l`` lines joined with sha256sum's; absent paths are left out."""
    sums = {}
    for line in digests:
        digest, _, path = line.partition("  ")
        if path:
            sums[path] = digest
    files = {}
    for line in found:
        parts = line.split("\t")
        if len(parts) == 4:
            kind, path, mode, link = parts
            files[path] = FileState(kind, mode, link, sums.get(path, ""))
    return files


def parse_identity(lines: Iterable[str]) -> dict[str, Any]:
    """The image's identity file; empty when absent (images built before it existed)."""
    try:
        data = json.loads("\n".join(lines) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def parse_os_release(lines: Iterable[str]) -> dict[str, str]:
    values = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = " ".join(shlex.split(value)) if value.strip() else ""
    return values


def parse_show(lines: Iterable[str]) -> dict[str, dict[str, str]]:
    """`systemctl show` blocks (blank-line separated) keyed by Id."""
    units: dict[str, dict[str, str]] = {}
    block: dict[str, str] = {}
    for line in [*lines, ""]:
        if not line.strip():
            if block.get("Id"):
                units[block["Id"]] = block
            block = {}
            continue
        key, _, value = line.partition("=")
        block[key] = value
    return units


def parse_failed(lines: Iterable[str]) -> list[str]:
    failed = []
    for line in lines:
        words = [w for w in line.split() if w not in BULLETS]
        if words:
            failed.append(words[0])
    return failed


def parse_dpkg(lines: Iterable[str]) -> dict[str, str]:
    """Installed packages only (status ``ii``): removed ones keeping config are gone."""
    packages = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].strip() == "ii":
            packages[parts[1]] = parts[2]
    return packages


def normalise(name: str) -> str:
    """PEP 503 name, so ``typing_extensions`` and ``typing-extensions`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_python(lines: list[str]) -> tuple[dict[str, str] | None, str]:
    if lines and lines[0].startswith("error:"):
        return None, lines[0].removeprefix("error:").strip()
    packages = {}
    for line in lines:
        name, sep, version = line.partition("\t")
        if sep:
            packages[normalise(name)] = version.strip()
    return packages, ""


def parse(output: str) -> Observation:
    sections = split_sections(output)
    if "end" not in sections:
        got = ", ".join(s for s in SECTIONS if s in sections) or "nothing"
        raise ValueError(f"the audit script stopped early (got {got})")
    python, python_error = parse_python(sections.get("python", []))
    return Observation(
        identity=parse_identity(sections.get("identity", [])),
        os_release=parse_os_release(sections.get("os-release", [])),
        cmdline=" ".join(sections.get("cmdline", [])),
        files=parse_files(sections.get("files", []), sections.get("sha256", [])),
        presets="\n".join(sections.get("presets", [])),
        units=parse_show(sections.get("units", [])),
        failed=parse_failed(sections.get("failed", [])),
        dpkg=parse_dpkg(sections.get("dpkg", [])),
        python=python,
        python_error=python_error,
    )


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


def compare_unit(name: str, wanted: bool, show: Mapping[str, str] | None) -> Row:
    """One unit against the image: loaded, enablement as the preset says, running
    if it should be, nothing layered on at run time."""
    expected = "enabled" if wanted else "not enabled"
    if wanted and name.endswith(".timer"):
        expected += ", active"
    if show is None:
        return Row("unit", name, expected, "not reported by systemctl", "missing")
    load, active = show.get("LoadState", ""), show.get("ActiveState", "")
    state, kind = show.get("UnitFileState", ""), show.get("Type", "")
    found = f"{state or 'no unit file state'}, {active}/{show.get('SubState', '')}"
    problems = []
    if load != "loaded":
        problems.append(load or "not loaded")
    if state.endswith("-runtime"):
        problems.append(f"{state} (changed at run time)")
    elif wanted and state != "enabled":
        problems.append("not enabled")
    elif not wanted and state == "enabled":
        problems.append("enabled, the image leaves it off")
    if active == "failed":
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
        return Row("unit", name, expected, found, "ok")
    verdict = "failed" if active == "failed" else "missing" if load == "not-found" else "changed"
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
    root_hash = manifest.root_hash
    if root_hash:
        booted = next(
            (w.partition("=")[2] for w in seen.cmdline.split() if w.startswith("roothash=")), ""
        )
        rows.append(
            Row(
                "image",
                "roothash= the kernel booted with (dm-verity root)",
                str(root_hash),
                booted or "none: the root is not verity-protected",
                "ok" if booted == root_hash else "changed",
            )
        )
    for path, entry in sorted(manifest.rendered.items()):
        rows.append(compare_file(path, entry, seen.files.get(path)))
    wanted = set(preset_enabled(seen.presets))
    for name in sorted(wanted | set(rendered_units(manifest))):
        rows.append(compare_unit(name, name in wanted, seen.units.get(name)))
    checked = {row.what for row in rows if row.kind == "unit"}
    for name in sorted(set(seen.failed) - checked):
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
    """Drifted rows (or all of them) as a table, then the summary line."""
    rows = list(report.rows) if everything else report.drifted
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
