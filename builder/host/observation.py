"""What the drift audit sees of a host: the one script it runs there and the
parsing of its output. Pure.

The script prints, in marked sections, what the comparison needs: the image
identity file and os-release, the kernel command line, the type, mode and
sha256 of every rendered path, the image's presets, ``systemctl show`` for
every unit the image carries (the manifest's ``carried`` record) and the
preset enables, failed units, the image's unit classes (service or pipeline,
builder.host.health; the file is a rendered path, so its digest is checked
too), dpkg's package list and the dashboard venv's Python distributions. It
observes, never changes.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from builder.host.health import parse_classes
from builder.image.manifest import Manifest
from builder.render.names import IDENTITY, UNIT_CLASSES_FILE

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
    "classes",
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
# The dashboard's venv when the manifest does not name it: its unit's ExecStart.
DASHBOARD_UNIT = "aurora-dashboard.service"
# systemctl marks failed units with a bullet unless told --plain (older versions still do).
BULLETS = frozenset({"\u25cf", "*", "\u00d7"})


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
    classes: dict[str, str] = field(default_factory=dict)  # unit -> service | pipeline
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
echo '{MARK}classes'
cat {UNIT_CLASSES_FILE} 2>/dev/null; echo
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
        classes=parse_classes("\n".join(sections.get("classes", []))),
        dpkg=parse_dpkg(sections.get("dpkg", [])),
        python=python,
        python_error=python_error,
    )
