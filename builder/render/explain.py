"""`aurora-image explain UNIT`: a rendered file with where each value came from.

The renderer does not record provenance, so it is recovered in two steps.
First matching: every scalar of the spec (and the forms the templates turn
it into, e.g. a time span in seconds) is looked for in each rendered line;
a file named after a list item (``aurora-cl61-source-sync`` after the
stream ``cl61``) only takes values from that item, never a sibling; key
names break ties (``Persistent=true`` prefers a key called ``persistent``);
short and boolean values count only when the key names agree. Then
confirmation: the spec is rendered again with the value changed, and a
source is kept only if the line changes with it, so a template's own
``network-online.target`` is not pinned on an equal spec value. A value no
variant of passes validation cannot be checked that way and is kept.

Sources are named by file, line and key path, as spec errors are; values the
spec leaves at their model default are ``(default)``. Overlays (``base:``)
are followed: a key comes from the file that set it last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import AuroraError
from builder.render.engine import Tree
from builder.spec.model import HostSpec
from builder.spec.systemd_values import parse_timespan
from builder.spec.yaml_lines import KeyPath, SpecSyntaxError, load_yaml_with_lines

UNIT_SUFFIXES = (".service", ".timer", ".mount", ".socket", ".path", ".target")
MIN_FREE_MATCH = 4  # shorter values need agreeing key names
_WORD = r"[A-Za-z0-9_]"
# A value matched outside its context must not touch a hyphen either: the
# "aurora" in "aurora-dashboard.service" is the template's prefix, not user.name.
_WORD_OR_HYPHEN = r"[A-Za-z0-9_-]"
# Where the unit templates write a spec key under another name (units/timer.j2).
KEY_ALIASES = {
    "onunitactivesec": "every",
    "onunitinactivesec": "everyafterfinish",
    "randomizeddelaysec": "jitter",
}


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
    context: str | None
    lines: tuple[ExplainedLine, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "spec": self.spec,
            "context": self.context,
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


def key_origins(spec_path: Path, display: Path | None = None) -> dict[KeyPath, tuple[str, int]]:
    """Key path -> (file, line) of the file that set it last, as spec loading merges
    (mappings merge key by key; a list or scalar in an overlay replaces the base's)."""
    try:
        data, lines = load_yaml_with_lines(spec_path)
    except (OSError, SpecSyntaxError) as exc:
        raise ExplainError(f"{spec_path}: cannot read the spec ({exc})") from None
    name = _display(spec_path, display)
    origins: dict[KeyPath, tuple[str, int]] = {}
    base = data.get("base") if isinstance(data, dict) else None
    if base is not None:
        origins = key_origins((spec_path.parent / str(base)).resolve(), display)
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
# Matching
# --------------------------------------------------------------------------


def forms(source: Source) -> set[str]:
    """How a value can appear in rendered text: as written, and a time span in
    seconds or milliseconds (the templates' ``seconds``/``milliseconds`` filters)."""
    found = {source.value}
    try:
        seconds = parse_timespan(source.value)
    except (ValueError, TypeError):
        return found
    if re.search(r"[a-z]", source.value):
        found.add(str(int(seconds)) if seconds == int(seconds) else str(seconds))
        found.add(str(round(seconds * 1000)))
    return found


def context_of(filename: str, sources: list[Source]) -> KeyPath | None:
    """The list item a file is named after (the longest item ``name`` in the file name)."""
    best: tuple[int, KeyPath] | None = None
    for source in sources:
        key = source.key
        if len(key) < 2 or key[-1] != "name" or not isinstance(key[-2], int):
            continue
        named = re.search(rf"(?<!{_WORD}){re.escape(source.value)}(?!{_WORD})", filename)
        if named and (best is None or len(source.value) > best[0]):
            best = (len(source.value), key[:-1])
    return best[1] if best else None


def _sibling(key: KeyPath, context: KeyPath | None) -> bool:
    """Whether ``key`` lies in another item of the context's list."""
    if context is None:
        return False
    parent = context[:-1]
    return (
        key[: len(parent)] == parent and len(key) > len(parent) and key[: len(context)] != context
    )


def _line_key(line: str) -> str:
    match = re.match(r'\s*"?([A-Za-z_][\w.-]*)"?\s*[=:]', line) or re.match(r"\s*(\S+)", line)
    return re.sub(r"[^a-z0-9]", "", match.group(1).lower()) if match else ""


def _names_agree(line_key: str, key: KeyPath) -> bool:
    words = [p for p in key if isinstance(p, str)]
    if not words or not line_key:
        return False
    last = re.sub(r"[^a-z0-9]", "", words[-1].lower())
    if KEY_ALIASES.get(line_key) == last:
        return True
    return bool(last) and (last in line_key or line_key in last)


def candidates(
    line: str, sources: list[Source], context: KeyPath | None
) -> list[tuple[tuple[bool, int, bool, bool], int, int, Source]]:
    """Every spec value found in ``line``: (score, start, end, source), best first."""
    line_key = _line_key(line)
    found = []
    for source in sources:
        if _sibling(source.key, context):
            continue
        agree = _names_agree(line_key, source.key)
        inside = context is not None and source.key[: len(context)] == context
        for form in forms(source):
            if not form.strip():
                continue
            short = len(form) < MIN_FREE_MATCH or form in ("true", "false")
            if short and not agree:
                continue
            edge = _WORD if agree or inside else _WORD_OR_HYPHEN
            pattern = rf"(?<!{edge}){re.escape(form)}(?!{edge})"
            for match in re.finditer(pattern, line):
                score = (agree, len(form), inside, source.file is not None)
                found.append((score, match.start(), match.end(), source))
    return sorted(found, key=lambda c: c[0], reverse=True)


def explain_line(
    line: str,
    sources: list[Source],
    context: KeyPath | None,
    confirms: Callable[[Source], bool] = lambda source: True,
) -> list[Source]:
    """The spec values found in ``line``, best confirmed match per stretch of text."""
    taken: list[tuple[int, int]] = []
    chosen: list[tuple[int, Source]] = []
    for _score, start, end, source in candidates(line, sources, context):
        if any(start < b and a < end for a, b in taken) or not confirms(source):
            continue
        taken.append((start, end))
        chosen.append((start, source))
    return [source for _, source in sorted(chosen, key=lambda c: c[0])]


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
    """Whether a source really shapes a rendered file: render with the value
    changed and look for the line's text. Cached per source; a value that no
    variant of passes validation cannot be checked and is trusted."""

    def __init__(self, spec: HostSpec, path: str, units_dir: Path | None = None) -> None:
        self._data = spec.model_dump(mode="json")
        self._path = path
        self._units_dir = units_dir
        self._lines: dict[KeyPath, set[str] | None] = {}
        self._before: set[str] | None = None

    def changed_lines(self, key: KeyPath) -> set[str] | None:
        """Lines of the file that vanish when the value at ``key`` changes."""
        if key not in self._lines:
            self._lines[key] = self._probe(key)
        return self._lines[key]

    def _probe(self, key: KeyPath) -> set[str] | None:
        from pydantic import ValidationError

        from builder.render.engine import render

        if self._before is None:
            self._before = self._render(self._data)
        before = self._before
        for variant in _variants(_get(self._data, key)):
            try:
                spec = HostSpec.model_validate(_replace(self._data, key, variant))
                after = render(spec, *([self._units_dir] if self._units_dir else []))
            except (ValidationError, ValueError, TypeError, KeyError):
                continue
            entry = after.get(self._path)
            now = set(entry.content.decode(errors="replace").splitlines()) if entry else set()
            return before - now
        return None

    def _render(self, data: dict[str, Any]) -> set[str]:
        from builder.render.engine import render

        tree = render(
            HostSpec.model_validate(data), *([self._units_dir] if self._units_dir else [])
        )
        return set(tree[self._path].content.decode(errors="replace").splitlines())

    def confirms(self, line: str) -> Callable[[Source], bool]:
        def check(source: Source) -> bool:
            lines = self.changed_lines(source.key)
            return lines is None or line in lines

        return check


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
    sources = spec_sources(spec, key_origins(spec_path, root))
    context = context_of(path.rsplit("/", 1)[-1], sources)
    try:
        text = tree[path].content.decode()
    except UnicodeDecodeError:
        raise ExplainError(f"{path} is not a text file; nothing to explain") from None
    confirmer = Confirmer(spec, path)
    lines = tuple(
        ExplainedLine(line, tuple(explain_line(line, sources, context, confirmer.confirms(line))))
        for line in text.splitlines()
    )
    return Explanation(
        path=path,
        spec=_display(spec_path, root),
        context=format_key(context) if context else None,
        lines=lines,
    )


def format_text(explanation: Explanation) -> str:
    """The file with a comment column naming each line's sources."""
    column = min(max((len(line.text) for line in explanation.lines), default=0), 58)
    out = [f"# {explanation.path}, rendered from {explanation.spec}"]
    if explanation.context:
        out.append(f"# values of {explanation.context} (the item this file is named after)")
    for line in explanation.lines:
        if not line.sources:
            out.append(line.text)
            continue
        note = "; ".join(s.label() for s in line.sources)
        out.append(f"{line.text:<{column}}  # {note}")
    return "\n".join(out) + "\n"
