"""Load YAML while remembering where each value came from.

``yaml.safe_load`` throws line numbers away, so a validation error in a host
spec could only say *which* field is wrong, not *where*. This module keeps a
map from key path to line so errors read ``hosts/web.yaml:12: ...``. It also
rejects duplicate keys, which ``safe_load`` silently resolves to the last one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import yaml

from builder.errors import SpecError, SpecProblem

__all__ = ["KeyPath", "SpecSyntaxError", "line_for", "load_yaml_with_lines"]

KeyPath = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"


class SpecSyntaxError(SpecError):
    """A spec file that is not well-formed YAML (or has duplicate keys).

    The parser stops at the first syntax error, so that is one problem; every
    duplicate key of a well-formed file is listed, each a problem of its own.
    """

    def __init__(
        self, path: Path | str, line: int, message: str, more: Sequence[tuple[int, str]] = ()
    ) -> None:
        problems = [SpecProblem(str(path), n, "", text) for n, text in [(line, message), *more]]
        super().__init__("", problems)
        self.path = path
        self.line = line
        self.message = message


# PyYAML's words for a mistake, and what they mean to someone editing a spec.
_PLAIN = (
    ("mapping values are not allowed here",
     "a 'key: value' where none can start: check this line's indentation, "
     "or quote a value that contains ': '"),
    ("could not find expected ':'",
     "a line that is neither 'key: value' nor a '- ' list item: add the ':' or indent it "
     "like its siblings"),
    ("expected <block end>",
     "indentation does not line up with the lines above: align it with its siblings"),
    ("found character '\\t'", "a tab: YAML indents with spaces only"),
    ("found undefined alias", "'*name' refers to an anchor '&name' not defined above it"),
    ("expected a single document", "more than one YAML document ('---'): a spec is one document"),
    ("could not determine a constructor", "a '!!' tag that cannot be loaded safely: remove it"),
    ("expected ',' or ']'", "a '[' list is not closed with ']' (or lacks a ',' between items)"),
    ("expected ',' or '}'", "a '{' mapping is not closed with '}' (or lacks a ',' between items)"),
    ("found unexpected end of stream", "a quote is not closed"),
    ("found unhashable key", "a key that is a list or mapping: keys are plain words"),
    ("found unknown escape character",
     "an unknown backslash escape in a double-quoted value: use single quotes"),
    ("that cannot start any token", "a value starting with '@', '`' or '%' must be quoted"),
)  # fmt: skip


def plain_words(problem: str) -> str:
    """PyYAML's message with what it means in a spec in front, when we know that."""
    for words, meaning in _PLAIN:
        if words in problem:
            return f"{meaning} (YAML: {problem})"
    return problem


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers where aliases used as sequence items stand.

    The composer replaces ``*name`` by the anchored node, whose mark is the
    anchor's; an error in ``streams: [*a, *b]`` should point at the alias.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_lines: dict[tuple[int, int], int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        line = self.peek_event().start_mark.line + 1 if self.check_event(yaml.AliasEvent) else 0
        node = super().compose_node(parent, index)
        if line and isinstance(parent, yaml.SequenceNode):
            self.alias_lines[(id(parent), index)] = line
        return node


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> SpecSyntaxError:
    """Turn a PyYAML error into a SpecSyntaxError that names the line."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        message = ", ".join(part for part in (exc.context, exc.problem) if part)
        return SpecSyntaxError(path, line, plain_words(message or str(exc)))
    if isinstance(exc, yaml.reader.ReaderError):  # e.g. a control character
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return SpecSyntaxError(path, line, f"unacceptable character #x{exc.character:04x}")
    return SpecSyntaxError(path, 1, plain_words(str(exc)))


def _walk(
    loader: _LineLoader,
    path: Path,
    node: yaml.Node,
    key_path: KeyPath,
    lines: dict[KeyPath, int],
    visited: set[int],
    duplicates: list[tuple[int, str]],
) -> None:
    """Record the line of every mapping key and sequence item below ``node``.

    Each node is walked once: a node reached again through an alias or a
    ``<<`` merge keeps the lines of its anchor, so alias bombs stay cheap and
    errors below an alias fall back to the line of the key holding the alias.
    """
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # "<<: *base" is not a key of its own
                continue
            line = key_node.start_mark.line + 1
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # construct_document() reports unhashable keys
            if key in seen:
                duplicates.append(
                    (line, f"duplicate key {key!r} (first defined on line {seen[key]}): keep one")
                )
                continue
            seen[key] = line
            child = (*key_path, key)
            lines[child] = line
            _walk(loader, path, value_node, child, lines, visited, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*key_path, index)
            lines[child] = loader.alias_lines.get((id(node), index), item.start_mark.line + 1)
            _walk(loader, path, item, child, lines, visited, duplicates)


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Load ``path`` like ``yaml.safe_load`` and map key paths to 1-based lines.

    The map has an entry for every mapping key (the key's line) and sequence
    item (the item's first line), e.g. ``("source_sync", "streams", 1, "every")``;
    ``()`` is the document's first line. Paths only reachable through an alias
    or ``<<`` merge have no entry; ``line_for`` then falls back to the key
    holding the alias. Raises SpecSyntaxError for invalid YAML, several
    documents, or duplicate keys (all of them at once).
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecSyntaxError(path, line, "file is not valid UTF-8") from None

    try:
        loader = _LineLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        raise _yaml_error(path, text, exc) from None
    try:
        node = loader.get_single_node()
        if node is None:  # empty file or only comments
            return None, {}
        lines: dict[KeyPath, int] = {(): node.start_mark.line + 1}
        # Walk before constructing: construction flattens "<<" merges in place,
        # which would make a merged key look like a duplicate.
        duplicates: list[tuple[int, str]] = []
        _walk(loader, path, node, (), lines, set(), duplicates)
        if duplicates:
            raise SpecSyntaxError(path, *duplicates[0], more=duplicates[1:])
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, text, exc) from None
    finally:
        loader.dispose()
    return data, lines


def line_for(lines_map: dict[KeyPath, int], loc: Sequence[str | int]) -> int | None:
    """Best line for a pydantic error ``loc``: that of its longest known prefix.

    pydantic locations can name things that are not in the file: a missing
    field, or union/validator tags such as ``("streams", 0, "Timer", "every")``.
    Falling back to the nearest enclosing key still points at the right block.
    """
    loc = tuple(loc)
    for end in range(len(loc), -1, -1):
        line = lines_map.get(loc[:end])
        if line is not None:
            return line
    return None
