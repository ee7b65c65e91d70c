"""Generate the spec reference page (docs/reference/spec.md) from the spec models.

The page is written by this module and never edited by hand, so it cannot
drift from the models (HostSpec in builder/spec/model.py and its sections):
tests/unit/cli/test_docs.py compares the committed page with a fresh rendering.
Each key's description is its attribute docstring in the model that declares it
(a key without one stops the generator);
examples are the values in hosts/aurora.yml, else in the production overlay
hosts/aurora-jasmin.yml.

    python -m builder.spec.reference          # (re)write docs/reference/spec.md
    python -m builder.spec.reference --check  # exit 1 if the page is stale
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from builder.errors import AuroraError
from builder.generated import page_main
from builder.spec import validators
from builder.spec.model import HostSpec

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "reference" / "spec.md"
EXAMPLE_SPECS = (REPO / "hosts" / "aurora.yml", REPO / "hosts" / "aurora-jasmin.yml")
EXAMPLE_WIDTH = 60

# The spec's own value types, named the way an operator reads them.
VALIDATOR_NAMES = {
    validators._absolute: "absolute path",
    validators._relative: "relative path (no `..`)",
    validators._timespan: "time span (`30s`, `2min`, `6h`)",
    validators._calendar: "calendar expression (`*:02/5`)",
    validators._env_name: "environment variable name",
    validators.no_secrets: "no secret values (secret-looking keys hold a path)",
}
SCALAR_NAMES = {str: "string", int: "integer", bool: "boolean", float: "number"}

# `base:` is read before validation (builder.spec.model._read), so no model declares it.
BASE_KEY_DESCRIPTION = (
    "Another spec file (relative to this one) to start from: mappings merge key by key, "
    "lists and scalars are replaced. The production overlay uses it."
)


class ReferenceError(AuroraError):
    """The models cannot be documented as they stand (e.g. a key has no docstring)."""


@dataclass(frozen=True)
class Entry:
    """One key of the spec as the reference shows it."""

    path: str
    """Dotted key path; `[]` marks the items of a list (`jobs[].name`)."""
    type: str
    default: str
    description: str
    example: str
    section: str | None
    """When the value is a mapping of keys (or a list of them): the section listing them."""


@dataclass(frozen=True)
class Section:
    """A mapping of keys: the top level or one nested model."""

    path: str
    title: str
    intro: str
    entries: tuple[Entry, ...]


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


_CODE_SPAN = re.compile(r"(``.*?``|`[^`]*`)")


def _pipe_safe(text: str) -> str:
    """Escape `|` for a table cell; inside code spans the table parser leaves it alone."""
    parts = _CODE_SPAN.split(text)
    return "".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _code(value: str) -> str:
    ticks = "``" if "`" in value else "`"
    pad = " " if ticks == "``" else ""
    return f"{ticks}{pad}{value}{pad}{ticks}"


def _yaml_flow(value: Any) -> str:
    """A value as a one-line YAML flow scalar, list or mapping."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _short(value: Any) -> str:
    text = _yaml_flow(value)
    if len(text) > EXAMPLE_WIDTH:
        text = text[: EXAMPLE_WIDTH - 1].rstrip() + "…"
    return _code(text)


def _model_in(tp: Any) -> type[BaseModel] | None:
    """The model a field holds (directly, optionally, or as list items), if any."""
    tp = _strip(tp)[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        found = [m for a in get_args(tp) if (m := _model_in(a)) is not None]
        return found[0] if found else None
    if origin is list:
        return _model_in(get_args(tp)[0])
    return None


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    """Split `Annotated[T, ...]` into T and its metadata."""
    if get_origin(tp) is Annotated:
        inner, *meta = get_args(tp)
        more_tp, more_meta = _strip(inner)
        return more_tp, [*meta, *more_meta]
    return tp, []


def _constraints(metadata: list[Any]) -> list[str]:
    words: list[str] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            words += _constraints(list(item.metadata))
        elif isinstance(item, AfterValidator):
            words.append(_validator_name(item.func))
        elif isinstance(item, annotated_types.Ge):
            words.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            words.append(f"at least {item.min_length} item{'s' if item.min_length != 1 else ''}")
        elif getattr(item, "pattern", None):
            words.append(f"matching {_code(item.pattern)}")
    return words


def _validator_name(func: Any) -> str:
    if func in VALIDATOR_NAMES:
        return VALIDATOR_NAMES[func]
    if func.__qualname__.startswith("_charset."):
        return inspect.getclosurevars(func).nonlocals["what"]
    if func.__qualname__.startswith("unique_by."):
        key = inspect.getclosurevars(func).nonlocals["key"]
        return f"no two items with the same `{key}`"
    raise ReferenceError(
        f"builder/spec/validators.py: validator {func.__qualname__} has no reader's name: "
        "add it to VALIDATOR_NAMES in builder/spec/reference.py"
    )


def _type_name(tp: Any, metadata: list[Any] | None = None) -> str:
    """How the reference names a field's type, constraints included."""
    tp, inner_meta = _strip(tp)
    metadata = [*(metadata or []), *inner_meta]
    named = [_validator_name(m.func) for m in metadata if isinstance(m, AfterValidator)]
    base_names = [n for n in named if not n.startswith("no two items")]
    rest = [c for c in _constraints(metadata) if c not in base_names]
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(_type_name(a) for a in options)
        text = f"{text} or null" if type(None) in get_args(tp) else text
        return ", ".join([text, *rest])
    if origin is Literal:
        head = "one of " + ", ".join(_code(str(v)) for v in get_args(tp))
    elif origin is list:
        head = "list of: " + _type_name(get_args(tp)[0])
    elif origin is dict:
        key, value = get_args(tp)
        head = f"mapping: {_type_name(key)} → {_type_name(value)}"
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        head = "mapping"
    elif base_names:
        head, rest = base_names[0], [c for c in rest if c != base_names[0]]
    elif tp in SCALAR_NAMES:
        head = SCALAR_NAMES[tp]
    else:
        raise ReferenceError(f"builder/spec/validators.py: no reader's name for type {tp!r}")
    return ", ".join([head, *rest])


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "the defaults below"
    return _short(value)


def _lookup(data: Any, parts: list[str]) -> tuple[bool, Any]:
    """Find a key path in loaded YAML; `name[]` looks through the list's items."""
    if not parts:
        return True, data
    head, rest = parts[0], parts[1:]
    key = head.removesuffix("[]")
    if not isinstance(data, dict) or key not in data:
        return False, None
    value = data[key]
    if not head.endswith("[]"):
        return _lookup(value, rest)
    for item in value if isinstance(value, list) else []:
        found, result = _lookup(item, rest)
        if found:
            return True, result
    return False, None


def _example(path: str, examples: list[tuple[str, Any]]) -> str:
    for label, data in examples:
        found, value = _lookup(data, path.split("."))
        if found:
            suffix = "" if label == "aurora.yml" else f" ({label})"
            return _short(value) + suffix
    return ""


def _load_examples() -> list[tuple[str, Any]]:
    return [(p.name, yaml.safe_load(p.read_text())) for p in EXAMPLE_SPECS if p.exists()]


def _source(model: type[BaseModel]) -> str:
    path = Path(inspect.getsourcefile(model) or model.__module__)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _description(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    text = _one_line(field.description)
    if not text:
        raise ReferenceError(
            f"{_source(model)}: {model.__name__}.{name} has no docstring: "
            "add one line under the field saying what it is for"
        )
    return text


def _sections(
    model: type[BaseModel],
    path: str,
    intro: str,
    examples: list[tuple[str, Any]],
) -> Iterator[Section]:
    children: list[tuple[type[BaseModel], str, str]] = []
    entries: list[Entry] = []
    for name, field in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        sub = _model_in(field.annotation)
        is_list = get_origin(_strip(field.annotation)[0]) is list
        child_path = f"{key}[]" if is_list and sub is not None else key
        description = _description(model, name, field)
        entries.append(
            Entry(
                path=key,
                type=_type_name(field.annotation, list(field.metadata)),
                default=_default(field),
                description=description,
                example="" if sub is not None else _example(key, examples),
                section=child_path if sub is not None else None,
            )
        )
        if sub is not None:
            doc = _one_line(inspect.getdoc(sub)) if sub.__doc__ else ""
            children.append((sub, child_path, doc or description))
    if not path:
        entries.insert(
            0,
            Entry(
                "base",
                "relative path",
                "none",
                BASE_KEY_DESCRIPTION,
                _example("base", examples),
                None,
            ),
        )
    yield Section(path, path or "Top level", intro, tuple(entries))
    for sub, child_path, child_intro in children:
        yield from _sections(sub, child_path, child_intro, examples)


def sections() -> list[Section]:
    """Every mapping of the spec, top level first, each followed by its nested ones."""
    intro = "The keys a host spec (`hosts/<name>.yml`) may contain; anything else is an error."
    return list(_sections(HostSpec, "", intro, _load_examples()))


def entries() -> list[Entry]:
    """Every key of the spec, in page order."""
    return [entry for section in sections() for entry in section.entries]


HEADER = """\
<!-- Generated by `python -m builder.spec.reference` (`make docs`) from the models in builder/spec/.
     Do not edit: change the model's docstrings and regenerate. -->
# Spec reference

A host spec is one YAML file: `hosts/aurora.yml` is the default (the QEMU
tests build it), `hosts/aurora-jasmin.yml` the production overlay. Every key
below is checked by `aurora-image validate` before anything is rendered or
built; an unknown or misspelled key is an error that names the file and line.

- **key**: the path of the key; `[]` marks each item of a list
  (`jobs[].name` is the `name` of every job).
- **default**: *required* keys must be given; the others take this value when left out.
- **example**: the value in `hosts/aurora.yml` (or, marked, in the
  production overlay); long values are cut short with `…`.

Time spans and calendar expressions are checked the way systemd parses them
(`systemd.time(7)`), so a timer that would not start is caught here.
"""


def _anchor(path: str) -> str:
    """A section's id in the page: its key path without `[]` (`source_sync.streams`)."""
    return path.replace("[]", "") or "top-level"


def render_page() -> str:
    """The whole reference page as Markdown."""
    out = [HEADER]
    for section in sections():
        anchor = _anchor(section.path)
        out.append(f"\n## {section.title} {{#{anchor}}}\n")
        if section.intro:
            out.append(f"\n{section.intro}\n")
        out.append("\n| key | type | default | description | example |\n")
        out.append("|---|---|---|---|---|\n")
        for e in section.entries:
            key = f"[{_code(e.path)}](#{_anchor(e.section)})" if e.section else _code(e.path)
            cells = (key, e.type, e.default, e.description, e.example or "—")
            out.append("| " + " | ".join(_pipe_safe(c) for c in cells) + " |\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    return page_main(
        argv, module="builder.spec.reference", doc=__doc__ or "", page=PAGE, render=render_page
    )


if __name__ == "__main__":
    sys.exit(main())
