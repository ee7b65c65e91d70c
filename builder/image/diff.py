"""What changed between two built images, read from their manifests.

Before rolling an image onto JASMIN the operator wants to know what it
changes against the live one: units and configs (with the lines that
differ), packages, size and inputs. Manifests hold only digests, so the
lines come from each image's rendered.tar; an image built before that file
existed still diffs, showing digest changes only. Either side may be a
release's files fetched from Glance (builder.release.live), e.g. `diff live TAG`.
"""

from __future__ import annotations

import difflib
import hashlib
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.image.manifest import Artifact, Entry, InputsRecord, Manifest
from builder.image.store import RENDERED_TAR, human_size, read_manifest

UNIT_DIRS = ("/etc/systemd/system/", "/usr/lib/systemd/system/")
FIELDS = ("release", "hostname", "cmdline", "source_date_epoch")


@dataclass(frozen=True)
class MappingDiff:
    """Keys added, removed and changed between two name → value mappings."""

    added: dict[str, Any]
    removed: dict[str, Any]
    changed: dict[str, tuple[Any, Any]]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, object]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": {k: {"a": a, "b": b} for k, (a, b) in self.changed.items()},
        }


def diff_mappings(a: dict[str, Any], b: dict[str, Any]) -> MappingDiff:
    return MappingDiff(
        added={k: b[k] for k in sorted(b.keys() - a.keys())},
        removed={k: a[k] for k in sorted(a.keys() - b.keys())},
        changed={k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]},
    )


@dataclass(frozen=True)
class FileChange:
    """One rendered path present in both images with a different entry."""

    path: str
    before: Entry
    after: Entry
    diff: str | None  # unified diff of the contents, when both are text and stored
    no_diff_reason: str = ""  # why `diff` is None although the contents differ

    def notes(self) -> list[str]:
        """What changed besides the lines, e.g. mode or link target."""
        a, b = self.before, self.after
        kind_a, kind_b = _kind(a), _kind(b)
        if kind_a != kind_b:
            return [f"{kind_a} → {kind_b}"]
        notes = []
        if a.get("link") != b.get("link"):
            notes.append(f"link {a.get('link')} → {b.get('link')}")
        mode_a, mode_b = a.get("mode", a.get("directory")), b.get("mode", b.get("directory"))
        if mode_a != mode_b:
            notes.append(f"mode {mode_a} → {mode_b}")
        if a.get("sha256") != b.get("sha256") and self.diff is None:
            notes.append(
                f"content sha256 {str(a.get('sha256'))[:12]} → {str(b.get('sha256'))[:12]}, "
                f"lines not shown: {self.no_diff_reason}"
            )
        return notes

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "a": self.before,
            "b": self.after,
            "diff": self.diff,
            "notes": self.notes(),
        }


def _kind(entry: Entry) -> str:
    return "link" if "link" in entry else "directory" if "directory" in entry else "file"


@dataclass(frozen=True)
class TreeDiff:
    """Rendered paths added, removed and changed."""

    added: dict[str, Entry]
    removed: dict[str, Entry]
    changed: list[FileChange]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, object]:
        return {
            "added": sorted(self.added),
            "removed": sorted(self.removed),
            "changed": [c.to_json() for c in self.changed],
        }


@dataclass(frozen=True)
class ImageDiff:
    """Everything `aurora-image diff A B` reports, A being the older side."""

    a: Path
    b: Path
    a_tag: str
    b_tag: str
    fields: dict[str, tuple[Any, Any]]
    inputs_digest: tuple[str | None, str | None]
    input_files: MappingDiff
    artifacts: dict[str, tuple[int | None, int | None]]
    units: TreeDiff
    files: TreeDiff
    debian_packages: MappingDiff
    python_packages: MappingDiff
    # Where each side was read: its directory, or e.g. the Glance upload it came from.
    origins: tuple[str, str] = ("", "")

    @property
    def identical(self) -> bool:
        sizes_same = all(a == b for a, b in self.artifacts.values())
        parts = (self.fields, self.input_files, self.units, self.files)
        packages = (self.debian_packages, self.python_packages)
        return (
            self.inputs_digest[0] == self.inputs_digest[1]
            and sizes_same
            and not any(parts)
            and not any(packages)
        )


def rendered_contents(image_dir: Path, rendered: dict[str, Entry]) -> dict[str, bytes]:
    """Regular files from rendered.tar whose digest is the manifest's (else left out)."""
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(image_dir / RENDERED_TAR) as tar:
            for member in tar:
                path = "/" + member.name.lstrip("/")
                expected = rendered.get(path, {}).get("sha256")
                handle = tar.extractfile(member) if member.isfile() and expected else None
                if handle is None:
                    continue
                data = handle.read()
                if hashlib.sha256(data).hexdigest() == expected:
                    contents[path] = data
    except (OSError, tarfile.TarError):
        return {}
    return contents


def unified(path: str, a: bytes, b: bytes, a_label: str, b_label: str) -> str | None:
    """A unified diff of two text files, or None if either is not UTF-8."""
    try:
        a_lines = a.decode().splitlines(keepends=True)
        b_lines = b.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return None
    out = []
    for line in difflib.unified_diff(
        a_lines, b_lines, fromfile=f"{a_label}{path}", tofile=f"{b_label}{path}"
    ):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _tree_diff(
    a: dict[str, Entry],
    b: dict[str, Entry],
    contents: tuple[dict[str, bytes], dict[str, bytes]],
    labels: tuple[str, str],
) -> TreeDiff:
    mapping = diff_mappings(a, b)
    changed = []
    for path, (before, after) in mapping.changed.items():
        text, reason = None, ""
        old, new = contents[0].get(path), contents[1].get(path)
        if before.get("sha256") != after.get("sha256"):
            if old is None or new is None:
                reason = f"no stored contents ({RENDERED_TAR} missing or stale)"
            else:
                text = unified(path, old, new, *labels)
                reason = "not text" if text is None else ""
        changed.append(FileChange(path, before, after, text, reason))
    return TreeDiff(mapping.added, mapping.removed, changed)


def diff_images(a: Path, b: Path, *, origins: tuple[str, str] | None = None) -> ImageDiff:
    """Compare two image directories (A the base, B the candidate); `origins` says
    where each was read when that is not the directory (a release fetched from Glance)."""
    ma, mb = read_manifest(a), read_manifest(b)
    tag_a, tag_b = ma.tag, mb.tag
    ra, rb = ma.rendered, mb.rendered
    contents = (rendered_contents(a, ra), rendered_contents(b, rb))
    labels = (f"{tag_a}:", f"{tag_b}:") if tag_a != tag_b else ("a:", "b:")

    def split(rendered: dict[str, Entry], units: bool) -> dict[str, Entry]:
        return {p: e for p, e in rendered.items() if p.startswith(UNIT_DIRS) == units}

    arts_a, arts_b = ma.artifacts, mb.artifacts
    inputs_a, inputs_b = ma.inputs or InputsRecord(), mb.inputs or InputsRecord()

    def field(manifest: Manifest, name: str) -> object:
        return getattr(manifest, name)

    def size(artifacts: dict[str, Artifact], name: str) -> int | None:
        return artifacts[name].size if name in artifacts else None

    return ImageDiff(
        a=a,
        b=b,
        a_tag=tag_a,
        b_tag=tag_b,
        fields={f: (field(ma, f), field(mb, f)) for f in FIELDS if field(ma, f) != field(mb, f)},
        inputs_digest=(inputs_a.digest, inputs_b.digest),
        input_files=diff_mappings(
            {**inputs_a.files, **inputs_a.extra}, {**inputs_b.files, **inputs_b.extra}
        ),
        artifacts={
            name: (size(arts_a, name), size(arts_b, name))
            for name in sorted(arts_a.keys() | arts_b.keys())
        },
        units=_tree_diff(split(ra, True), split(rb, True), contents, labels),
        files=_tree_diff(split(ra, False), split(rb, False), contents, labels),
        debian_packages=diff_mappings(ma.debian_packages, mb.debian_packages),
        python_packages=diff_mappings(ma.python_packages, mb.python_packages),
        origins=origins or (str(a), str(b)),
    )


def _size_change(a: int | None, b: int | None) -> str:
    if a is None or b is None:
        return f"{'-' if a is None else human_size(a)} → {'-' if b is None else human_size(b)}"
    delta = b - a
    if delta == 0:
        return f"{human_size(b)} (same)"
    sign = "+" if delta > 0 else "-"
    return f"{human_size(a)} → {human_size(b)} ({sign}{human_size(abs(delta))})"


def _counts(d: MappingDiff | TreeDiff) -> str:
    return f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed"


def change_lines(
    added: Iterable[str], removed: Iterable[str], changed: list[FileChange], indent: str = ""
) -> list[str]:
    """`+ path`, `- path`, `~ path [notes]` and each change's unified diff below it."""
    lines = [f"{indent}+ {p}" for p in added]
    lines += [f"{indent}- {p}" for p in removed]
    for change in changed:
        notes = change.notes()
        lines.append(f"{indent}~ {change.path}" + (f"  [{'; '.join(notes)}]" if notes else ""))
        if change.diff:
            lines += [f"{indent}    {line}" for line in change.diff.rstrip("\n").split("\n")]
    return lines


def _tree_text(title: str, tree: TreeDiff) -> list[str]:
    lines = [f"{title}: {_counts(tree)}" if tree else f"{title}: no changes"]
    return lines + change_lines(tree.added, tree.removed, tree.changed, indent="  ")


def _packages_text(title: str, packages: MappingDiff) -> list[str]:
    lines = [f"{title}: {_counts(packages)}" if packages else f"{title}: no changes"]
    lines += [f"  + {name} {version}" for name, version in packages.added.items()]
    lines += [f"  - {name} {version}" for name, version in packages.removed.items()]
    lines += [f"  ~ {name} {a} → {b}" for name, (a, b) in packages.changed.items()]
    return lines


def format_text(diff: ImageDiff) -> str:
    """The diff for a terminal: a summary line per section, then the details."""
    lines = [f"a: {diff.a_tag}  ({diff.origins[0]})", f"b: {diff.b_tag}  ({diff.origins[1]})"]
    if diff.identical:
        return "\n".join([*lines, "identical: same inputs, same contents"]) + "\n"
    for field, (a, b) in diff.fields.items():
        lines.append(f"{field}: {a} → {b}")
    da, db = diff.inputs_digest
    if da == db:
        lines.append(f"inputs: same digest {str(da)[:12]}")
    else:
        lines.append(f"inputs: {str(da)[:12]} → {str(db)[:12]} ({_counts(diff.input_files)})")
        lines += [f"  + {name}" for name in diff.input_files.added]
        lines += [f"  - {name}" for name in diff.input_files.removed]
        lines += [f"  ~ {name}" for name in diff.input_files.changed]
    lines.append("size:")
    width = max((len(n) for n in diff.artifacts), default=0)
    for name, (a, b) in diff.artifacts.items():
        lines.append(f"  {name:<{width}}  {_size_change(a, b)}")
    lines += _tree_text("units", diff.units)
    lines += _tree_text("other rendered files", diff.files)
    lines += _packages_text("debian packages", diff.debian_packages)
    lines += _packages_text("python packages", diff.python_packages)
    return "\n".join(lines) + "\n"


def _side(tag: str, path: Path, origin: str) -> dict[str, object]:
    """A fetched release's directory is temporary: its origin names it, not its path."""
    local = origin == str(path)
    return {"tag": tag, "path": str(path) if local else None, "from": origin}


def to_json(diff: ImageDiff) -> dict[str, object]:
    """The diff as plain JSON types, for scripts and the release tooling."""
    da, db = diff.inputs_digest
    return {
        "a": _side(diff.a_tag, diff.a, diff.origins[0]),
        "b": _side(diff.b_tag, diff.b, diff.origins[1]),
        "identical": diff.identical,
        "fields": {f: {"a": a, "b": b} for f, (a, b) in diff.fields.items()},
        "inputs": {"a": da, "b": db, "changed": da != db, "files": diff.input_files.to_json()},
        "artifacts": {
            name: {"a": a, "b": b, "delta": None if a is None or b is None else b - a}
            for name, (a, b) in diff.artifacts.items()
        },
        "units": diff.units.to_json(),
        "files": diff.files.to_json(),
        "debian_packages": diff.debian_packages.to_json(),
        "python_packages": diff.python_packages.to_json(),
    }
