"""`aurora-image explain UNIT`: a rendered file with where each value came from.

Render records on every file the producer and the spec keys its row of the
carried table declares (builder.render.carried). Explain reads that record and
pins each line on the values under those keys that shape it: the spec is
rendered again with one value changed, and the value is a line's source if the
line changes with it. Nothing is guessed from the text, so a template's own
``network-online.target`` is never pinned on an equal spec value. A value no
variant of passes validation cannot be checked that way; it is listed with
the file's keys but pinned on no line.

Sources are named by file, line and key path, as spec errors are; values the
spec leaves at their model default are ``(default)``. Overlays (``base:``)
are followed: a key comes from the file that set it last.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import AuroraError
from builder.render.tree import Provenance, Tree
from builder.render.unitfile import UNIT_SUFFIXES
from builder.spec.model import HostSpec, SpecSource
from builder.spec.yaml_lines import KeyPath, SpecSyntaxError, load_yaml_with_lines


@dataclass(frozen=True)
class Source:
    """Where a value was set: file and line (None for a model default) and key path."""

    file: str | None
    line: int | None
    key: KeyPath
    value: str

    @property
    def key_text(self) -> str:
        return format_key(self.key)

    def label(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else "(default)"
        return f"{where} {self.key_text}"

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "key": self.key_text, "value": self.value}


@dataclass(frozen=True)
class ExplainedLine:
    text: str
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Explanation:
    path: str
    spec: str
    producer: str
    keys: tuple[str, ...]
    lines: tuple[ExplainedLine, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "spec": self.spec,
            "producer": self.producer,
            "keys": list(self.keys),
            "lines": [
                {"n": n, "text": line.text, "sources": [s.to_json() for s in line.sources]}
                for n, line in enumerate(self.lines, 1)
            ],
        }


class ExplainError(AuroraError):
    """The unit or file asked about is not in the rendered tree."""


def format_key(key: KeyPath) -> str:
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --------------------------------------------------------------------------
# Where each spec key was written (following base: overlays)
# --------------------------------------------------------------------------


def _get(data: Any, key: KeyPath) -> Any:
    for part in key:
        data = data[part]
    return data


def key_origins(source: SpecSource, display: Path | None = None) -> dict[KeyPath, tuple[str, int]]:
    """Key path -> (file, line) of the file that set it last, as spec loading merges
    (mappings merge key by key; a list or scalar in an overlay replaces the base's).
    The files are the ones the spec was loaded from: its `base:` chain, then itself."""
    origins: dict[KeyPath, tuple[str, int]] = {}
    for path in reversed((source.path, *source.bases)):
        try:
            data, lines = load_yaml_with_lines(path)
        except (OSError, SpecSyntaxError) as exc:
            raise ExplainError(f"{path}: cannot read the spec ({exc})") from None
        name = _display(path, display)
        for key, line in sorted(lines.items(), key=lambda item: len(item[0])):
            if not key or key[0] == "base":
                continue
            if not isinstance(_get(data, key), dict):
                origins = {k: v for k, v in origins.items() if k[: len(key)] != key or k == key}
            origins[key] = (name, line)
    return origins


def _display(path: Path, relative_to: Path | None) -> str:
    path = path.resolve()
    root = (relative_to or Path.cwd()).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _leaves(value: Any, key: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*key, k))]
    if isinstance(value, list | tuple):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*key, i))]
    return [] if value is None else [(key, value)]


def spec_sources(spec: HostSpec, origins: Mapping[KeyPath, tuple[str, int]]) -> list[Source]:
    """Every scalar of the validated spec with where it was set (or that it is a default)."""
    sources = []
    for key, value in _leaves(spec.model_dump(mode="json")):
        origin = _origin(origins, key)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        sources.append(Source(*(origin or (None, None)), key, text))
    return sources


def _origin(origins: Mapping[KeyPath, tuple[str, int]], key: KeyPath) -> tuple[str, int] | None:
    """The key's own line; an item of a list written inline takes the list's line."""
    for end in range(len(key), 0, -1):
        found = origins.get(key[:end])
        if found is not None:
            return found if end == len(key) or isinstance(key[end], int) else None
    return None


# --------------------------------------------------------------------------
# Confirmation: change the value, render again, see whether the line changes
# --------------------------------------------------------------------------


def _variants(value: Any) -> list[Any]:
    """Other values of the same kind, most likely to pass validation first."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int | float):
        return [value + 1, value - 1]
    text = str(value)
    out = []
    digit = re.search(r"[0-9]", text)
    if digit:
        bumped = str((int(digit.group()) + 1) % 10)
        out.append(text[: digit.start()] + bumped + text[digit.end() :])
    out += [text + "x", text + "-x", text + "/x"]
    if "." in text:  # a value whose suffix is its kind (network-online.target)
        dot = text.rindex(".")
        out.append(text[:dot] + "x" + text[dot:])
    return out


def _replace(data: Any, key: KeyPath, value: Any) -> Any:
    if not key:
        return value
    head, rest = key[0], key[1:]
    if isinstance(data, list):
        copy = list(data)
        copy[int(head)] = _replace(copy[int(head)], rest, value)
        return copy
    return {**data, head: _replace(data[head], rest, value)}


class Confirmer:
    """Which lines of one rendered file a value shapes: render with the value
    changed and see which lines go. Cached per key; None for a value that no
    variant of passes validation."""

    def __init__(self, spec: HostSpec, record: Provenance) -> None:
        self._data = spec.model_dump(mode="json")
        self._record = record
        self._before = self._render(spec)
        self._lines: dict[KeyPath, set[str] | None] = {}

    def _render(self, spec: HostSpec) -> set[str]:
        from builder.render.engine import remake

        entry = remake(spec, self._record)
        return set(entry.content.decode(errors="replace").splitlines()) if entry else set()

    def changed_lines(self, key: KeyPath) -> set[str] | None:
        """Lines of the file that vanish when the value at ``key`` changes."""
        if key not in self._lines:
            self._lines[key] = self._probe(key)
        return self._lines[key]

    def _probe(self, key: KeyPath) -> set[str] | None:
        from pydantic import ValidationError

        for variant in _variants(_get(self._data, key)):
            try:
                spec = HostSpec.model_validate(_replace(self._data, key, variant))
                return self._before - self._render(spec)
            except (ValidationError, ValueError, TypeError, KeyError):
                continue
        return None


def _parse_key(text: str) -> KeyPath:
    """``gws.jobs[2].name`` -> ("gws", "jobs", 2, "name")."""
    return tuple(
        int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", text)
    )


def declared(sources: list[Source], keys: tuple[str, ...]) -> list[Source]:
    """The spec values under the keys a file's record names."""
    prefixes = [_parse_key(k) for k in keys]
    return [s for s in sources if any(s.key[: len(p)] == p for p in prefixes)]


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def find_path(tree: Tree, name: str, spec_path: Path) -> str:
    """The rendered path ``name`` means: a path, a file name, or a unit without suffix."""
    if name in tree:
        return name
    exact = [p for p in tree if p.rsplit("/", 1)[-1] == name]
    if not exact:
        exact = [p for p in tree if p.rsplit("/", 1)[-1] in {name + s for s in UNIT_SUFFIXES}]
    files = [p for p in exact if tree[p].link is None and not tree[p].directory]
    if len(files) == 1:
        return files[0]
    if len(files) > 1:
        raise ExplainError(f"{name!r} is ambiguous in {spec_path}: say which of {', '.join(files)}")
    units = sorted(p.rsplit("/", 1)[-1] for p in tree if p.endswith(UNIT_SUFFIXES))
    hint = ", ".join(units[:4]) + (", ..." if len(units) > 4 else "")
    raise ExplainError(
        f"{spec_path} renders no unit or file named {name!r} (units include {hint}); "
        "`aurora-image render` writes them all"
    )


def explain(spec: HostSpec, tree: Tree, name: str, *, root: Path | None = None) -> Explanation:
    """Annotate the rendered file ``name`` line by line with its spec sources."""
    spec_path = spec.source.path
    path = find_path(tree, name, spec_path)
    record = tree[path].provenance
    if record is None:
        raise ExplainError(f"{path} has no provenance record; it was not rendered from the spec")
    try:
        text = tree[path].content.decode()
    except UnicodeDecodeError:
        raise ExplainError(f"{path} is not a text file; nothing to explain") from None
    sources = declared(spec_sources(spec, key_origins(spec.source, root)), record.keys)
    confirmer = Confirmer(spec, record)
    shaped = [(s, confirmer.changed_lines(s.key)) for s in sources]
    lines = tuple(
        ExplainedLine(line, tuple(s for s, changed in shaped if changed and line in changed))
        for line in text.splitlines()
    )
    return Explanation(
        path=path,
        spec=_display(spec_path, root),
        producer=record.producer,
        keys=record.keys,
        lines=lines,
    )


def format_text(explanation: Explanation) -> str:
    """The file with a comment column naming each line's sources."""
    column = min(max((len(line.text) for line in explanation.lines), default=0), 58)
    out = [
        f"# {explanation.path}, rendered from {explanation.spec}",
        f"# made by {explanation.producer} from {', '.join(explanation.keys) or 'no spec key'}",
    ]
    for line in explanation.lines:
        if not line.sources:
            out.append(line.text)
            continue
        note = "; ".join(s.label() for s in line.sources)
        out.append(f"{line.text:<{column}}  # {note}")
    return "\n".join(out) + "\n"
